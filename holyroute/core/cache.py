"""The response cache's decisions: which calls it applies to, what makes two requests the same, which answers are kept,
and how a kept answer is given again as a stream. Sans-I/O: the stores (``holyroute.state.cache``) and the drivers do
the reading and writing; this module never imports a store.

A call's :class:`CacheTicket` is opened once its route is planned (:meth:`CachePolicy.ticket`). Its key is the SHA-256
of canonical JSON (sorted keys, no spaces, integral numbers written as integers) of: the route, the upstream models of
the arm the call was planned on, the API, the tenant (when the route scopes by one), and the request body without
``user``, ``metadata``, ``stream``, ``stream_options`` and the route's ``ignore_fields``. When the call ends,
:meth:`CacheTicket.settle` says whether its answer is kept: only a whole 2xx answer of the arm it was planned on (not a
fallback's), never an error, a torn stream, an answer the quality check rejected, or (unless the route says so) one cut
off by ``finish_reason: length``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from holyroute.boundary.cache import (
    CACHE_HEADER,
    CACHE_TTL_HEADER,
    StoredAnswer,
    parse_cache_directives,
    parse_cache_ttl,
)
from holyroute.config.schema import Config, RouteCache
from holyroute.core.plan import sticky_key

__all__ = [
    "LEFT_OUT_FIELDS",
    "CachePolicy",
    "CacheState",
    "CacheStore",
    "CacheTicket",
    "cache_key",
    "canonical_json",
    "compile_caches",
    "replay",
]

#: Body fields that never change the answer, left out of every key.
LEFT_OUT_FIELDS = frozenset({"user", "metadata", "stream", "stream_options"})
#: The APIs whose answers can be kept.
CACHED_APIS = frozenset({"chat", "completions", "responses", "embeddings"})

CacheState = Literal["hit", "miss", "stored", "bypass"]


class HeaderLookup(Protocol):
    def get(self, key: str, /) -> str | None: ...


class CacheStore(Protocol):
    """Where kept answers live (``holyroute.state.cache`` implements it). Either method may raise: the drivers turn
    any failure into a miss and one ``holyroute.cache_failed`` event. ``blocking``: whether a call does I/O (the async
    driver then calls it from a worker thread)."""

    blocking: bool

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""
        ...

    def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds (within the store's bounds); False when it was not kept
        (larger than the store's cap, or a TTL of 0)."""
        ...

    def close(self) -> None:
        """Let go of connections."""


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # JSON has one number type: 0 and 0.0 ask the same
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON: sorted keys, no spaces, integral numbers as integers, UTF-8.

    >>> canonical_json({"b": 1.0, "a": [0.5, {"d": 2, "c": 3}]})
    b'{"a":[0.5,{"c":3,"d":2}],"b":1}'
    """
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(
    *,
    route: str,
    models: Iterable[str],
    api: str,
    tenant: str | None,
    data: Mapping[str, Any],
    ignored: frozenset[str] = frozenset(),
) -> str:
    """The key of a request: see the module docstring. Independent of the body's field order and of left-out fields.

    >>> a = cache_key(route="r", models=["m"], api="chat", tenant=None, data={"x": 1, "user": "u1"})
    >>> a == cache_key(route="r", models=["m"], api="chat", tenant=None, data={"user": "u2", "x": 1.0})
    True
    """
    body = {k: v for k, v in data.items() if k not in LEFT_OUT_FIELDS and k not in ignored}
    scope = {"v": 1, "route": route, "models": sorted(set(models)), "api": api, "tenant": tenant, "body": body}
    return hashlib.sha256(canonical_json(scope)).hexdigest()


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def deterministic(api: str, data: Mapping[str, Any]) -> bool:
    """Whether a request's answer is meant to repeat: embeddings, or ``temperature: 0`` with ``n`` absent or 1.

    >>> deterministic("chat", {"temperature": 0}), deterministic("chat", {"temperature": 0, "n": 2})
    (True, False)
    """
    if api == "embeddings":
        return True
    if _number(data.get("temperature")) != 0.0:
        return False
    n = data.get("n")
    return n is None or _number(n) == 1.0


def _present(value: object) -> bool:
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return value is not None and value is not False


class CacheTicket:
    """One call's dealings with the cache: its key (None: bypassed), whether it may read and write, the TTL of what
    it writes, and once it ended, its :attr:`state` and the :attr:`answer` to store (when kept)."""

    __slots__ = ("answer", "api", "body", "held", "key", "max_bytes", "read", "reason", "saved_usd", "state",
                 "store_truncated", "ttl_s", "write")  # fmt: skip

    def __init__(
        self,
        key: str | None,
        *,
        api: str = "",
        read: bool = False,
        write: bool = False,
        ttl_s: float = 0.0,
        reason: str = "",
        max_bytes: int = 0,
        store_truncated: bool = False,
    ) -> None:
        self.key = key
        self.api = api
        self.read = read
        self.write = write
        self.ttl_s = ttl_s
        self.reason = reason
        self.max_bytes = max_bytes
        self.store_truncated = store_truncated
        self.state: CacheState = "bypass" if key is None else "miss"
        self.body: bytes | None = None  # the whole answer (a stream's put back together), set before the call ends
        self.answer: StoredAnswer | None = None  # what to store, once settled as "stored"
        #: The call's ``holyroute.request`` fields while its answer is being written: emitted once the store said.
        self.held: dict[str, Any] | None = None
        self.saved_usd: float | None = None

    @property
    def collecting(self) -> bool:
        """Whether the answer's body is wanted (a stream's bytes are then kept, up to the cap, to be put together)."""
        return self.key is not None and self.write

    def hit(self, answer: StoredAnswer) -> None:
        self.state = "hit"
        self.saved_usd = answer.cost_usd

    def settle(
        self,
        *,
        ok: bool,
        status: int | None,
        api: str,
        finish_reason: str | None,
        quality: bool | None,
        primary: bool,
        upstream_model: str | None,
        cost_usd: float | None,
        now: float,
    ) -> CacheState:
        """The call ended: keep its answer or not. Returns the state its event reports."""
        if self.key is None or self.state == "hit":
            return self.state
        body = self.body
        keep = (
            self.write
            and ok
            and status is not None
            and 200 <= status < 300
            and body is not None
            and len(body) <= self.max_bytes
            and quality is not False
            and primary
            and upstream_model is not None
            and (self.store_truncated or finish_reason != "length")
            and _complete(api, body)
        )
        if keep:
            assert body is not None
            assert upstream_model is not None
            self.answer = StoredAnswer(body, upstream_model, cost_usd, now)
            self.state = "stored"
        self.body = None
        return self.state


def _complete(api: str, body: bytes) -> bool:
    """A JSON object, and for the Responses API a completed response (an ``incomplete`` one was cut off)."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict) or data.get("error") is not None:
        return False
    return api != "responses" or data.get("status") == "completed"


#: How many request keys a route's policy remembers (about 200 bytes each).
_KEYS_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """A route's cache configuration, compiled: when a call is cached, its key, and the TTL of what it writes."""

    route: str
    ttl_s: float
    when: Literal["deterministic", "marked", "always"]
    exclude: tuple[str, ...]
    ignored: frozenset[str]
    tenant: str | None
    store_truncated: bool
    max_entry_bytes: int
    #: Keys already computed, by (api, tenant, models, SHA-256 of the raw body): a repeated request (what a cache is
    #: for) is keyed without decoding and canonicalising its body again. Exact: the key is a function of these and
    #: the policy's own fields. Bounded: emptied when full.
    _keys: dict[tuple[str, str | None, tuple[str, ...], bytes], str] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, route: str, cache: RouteCache, max_entry_bytes: int) -> CachePolicy:
        return cls(
            route, cache.ttl, cache.when, tuple(cache.exclude), frozenset(cache.ignore_fields), cache.tenant,
            cache.store_truncated, max_entry_bytes,
        )  # fmt: skip

    def ticket(
        self,
        api: str,
        data: Mapping[str, Any],
        headers: HeaderLookup,
        models: Iterable[str],
        body: bytes | None = None,
    ) -> CacheTicket:
        """This call's ticket: bypassed (with the reason) or keyed, with what the caller's headers allow."""
        directives = parse_cache_directives(headers.get(CACHE_HEADER))
        if api not in CACHED_APIS:
            return CacheTicket(None, reason=f"{api} answers are not cached")
        if not directives.read and not directives.write:
            return CacheTicket(None, reason=f"{CACHE_HEADER}: no-cache")
        excluded = next((name for name in self.exclude if _present(data.get(name))), None)
        if excluded is not None:
            return CacheTicket(None, reason=f"'{excluded}' is excluded by the route")
        wanted = self.when == "always" or (self.when == "deterministic" and deterministic(api, data))
        if not directives.mark and not wanted:
            return CacheTicket(None, reason="not deterministic" if self.when == "deterministic" else "not marked")
        tenant = None
        if self.tenant is not None:
            tenant = sticky_key(self.tenant, data, headers)  # a tenant is read as a sticky key is
            if tenant is None:
                return CacheTicket(None, reason=f"no tenant ({self.tenant})")
        ttl = parse_cache_ttl(headers.get(CACHE_TTL_HEADER))
        ttl_s = self.ttl_s if ttl is None else ttl
        models = tuple(models)
        memo = (api, tenant, models, hashlib.sha256(body).digest()) if body is not None else None
        key = self._keys.get(memo) if memo is not None else None
        if key is None:
            key = cache_key(route=self.route, models=models, api=api, tenant=tenant, data=data, ignored=self.ignored)
            if memo is not None:
                if len(self._keys) >= _KEYS_REMEMBERED:
                    self._keys.clear()
                self._keys[memo] = key
        return CacheTicket(
            key,
            api=api,
            read=directives.read,
            write=directives.write and ttl_s > 0,
            ttl_s=ttl_s,
            max_bytes=self.max_entry_bytes,
            store_truncated=self.store_truncated,
        )


def compile_caches(config: Config) -> dict[str, CachePolicy]:
    """The routes that cache, by alias: empty when none does (the drivers then never look)."""
    limit = config.cache.max_entry_bytes
    return {alias: CachePolicy.of(alias, r.cache, limit) for alias, r in config.routes.items() if r.cache is not None}


# ---- giving a kept answer again as a stream ---------------------------------------------------------------------


def _sse(data: Any, event: str | None = None) -> bytes:
    line = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    return b"event: " + event.encode() + b"\n" + line if event else line


def replay(api: str, body: bytes, *, stream: bool, include_usage: bool) -> bytes | None:
    """The bytes a kept answer is given back as: the JSON body itself, or for a streaming caller an SSE stream the SDK
    parses into the same answer (chat, completions: a usage chunk only with ``include_usage``); None when it cannot
    be."""
    if not stream:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if api == "chat":
        return _chat_stream(data, include_usage)
    if api == "completions":
        return _completions_stream(data, include_usage)
    if api == "responses":
        return _responses_stream(data)
    return None


def _chat_stream(data: dict[str, Any], include_usage: bool) -> bytes | None:
    choices = data.get("choices")
    if not isinstance(choices, list):
        return None
    names = ("id", "created", "model", "service_tier", "system_fingerprint")
    common: dict[str, Any] = {k: data[k] for k in names if k in data}
    common["object"] = "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: Any) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**common, "choices": [choice], **extra})

    out = []
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict) or choice.get("logprobs"):
            return None  # token logprobs are not replayed: such a call is routed
        index, message = choice.get("index", 0), choice["message"]
        out.append(chunk(index, {"role": message.get("role", "assistant"), "content": "", "refusal": None}, None))
        delta: dict[str, Any] = {}
        for key in ("content", "refusal"):
            if message.get(key):
                delta[key] = message[key]
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls) if isinstance(call, dict)]
        if delta:
            out.append(chunk(index, delta, None))
        out.append(chunk(index, {}, choice.get("finish_reason")))
    if include_usage and data.get("usage") is not None:
        out.append(_sse({**common, "choices": [], "usage": data["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _completions_stream(data: dict[str, Any], include_usage: bool) -> bytes | None:
    """A legacy completions answer as OpenAI streams one: per choice a chunk with its whole text, then a chunk with
    its finish reason; a usage chunk (``choices: []``) only with ``include_usage``; ``[DONE]``."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        return None
    common: dict[str, Any] = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
    common["object"] = "text_completion"
    extra = {"usage": None} if include_usage else {}
    out = []
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("text"), str) or choice.get("logprobs"):
            return None  # token logprobs are not replayed: such a call is routed
        index = choice.get("index", 0)
        for text, finish in ((choice["text"], None), ("", choice.get("finish_reason"))):
            piece = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            out.append(_sse({**common, "choices": [piece], **extra}))
    if include_usage and data.get("usage") is not None:
        out.append(_sse({**common, "choices": [], "usage": data["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _responses_stream(data: dict[str, Any]) -> bytes | None:
    items = data.get("output")
    if not isinstance(items, list):
        return None
    started = {**data, "status": "in_progress", "output": [], "usage": None}
    steps: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for o_index, item in enumerate(items):
        if not isinstance(item, dict):
            return None
        parts = item.get("content") if item.get("type") == "message" else None
        opening = {**item, "status": "in_progress", "content": []} if isinstance(parts, list) else item
        steps.append({"type": "response.output_item.added", "output_index": o_index, "item": opening})
        for c_index, part in enumerate(parts if isinstance(parts, list) else ()):
            where = {"item_id": item.get("id"), "output_index": o_index, "content_index": c_index}
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "output_text" else None
            opened = {**part, "text": ""} if text is not None else part
            steps.append({"type": "response.content_part.added", **where, "part": opened})
            if text is not None:
                steps.append({"type": "response.output_text.delta", **where, "delta": text, "logprobs": []})
                steps.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
            steps.append({"type": "response.content_part.done", **where, "part": part})
        steps.append({"type": "response.output_item.done", "output_index": o_index, "item": item})
    steps.append({"type": "response.completed", "response": data})
    return b"".join(_sse({**step, "sequence_number": n}, step["type"]) for n, step in enumerate(steps))
