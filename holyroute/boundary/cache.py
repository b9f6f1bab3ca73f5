"""Total parsers for what the response cache reads from outside: the caller's cache headers, a stored entry, and a
streamed answer to be kept whole.

Each function takes any input and returns a value or ``None``; none raises. The caller's headers are read in the
spirit of HTTP ``Cache-Control`` (``x-holyroute-cache: no-cache``, ``no-store``, ``refresh``, ``on``;
``x-holyroute-cache-ttl: 10m``); a stored entry is a one-line JSON header and the answer's bytes; a streamed chat or
Responses answer (and a legacy completions one) is put back together as the JSON body the same call would have had
unstreamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from holyroute.boundary.parse import CACHE_HEADER, CACHE_TTL_HEADER, header_seconds

__all__ = [
    "CACHE_HEADER",
    "CACHE_TTL_HEADER",
    "MAX_CACHE_TTL_S",
    "CacheDirectives",
    "StoredAnswer",
    "parse_cache_directives",
    "parse_cache_ttl",
    "parse_stored",
    "reassemble_stream",
    "stored_bytes",
]

#: The longest TTL a caller may ask for (30 days), as Redis and the memory store both hold it.
MAX_CACHE_TTL_S = 30 * 24 * 3600.0
_MAX_HEADER = 200


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    """What the caller's ``x-holyroute-cache`` asks: ``mark`` (``on``: cache this call although the route's ``when``
    would not), ``read`` (may be answered from the cache; not with ``no-cache`` or ``refresh``), ``write`` (its
    answer may be kept; not with ``no-cache`` or ``no-store``)."""

    mark: bool = False
    read: bool = True
    write: bool = True


#: No header: the route's rule decides.
DEFAULT_DIRECTIVES = CacheDirectives()


def parse_cache_directives(value: str | None) -> CacheDirectives:
    """The directives in ``x-holyroute-cache``: comma-separated, any case, unknown ones ignored (as HTTP caches ignore
    unknown ``Cache-Control`` directives).

    >>> parse_cache_directives("refresh")
    CacheDirectives(mark=False, read=False, write=True)
    >>> parse_cache_directives("on, no-store")
    CacheDirectives(mark=True, read=True, write=False)
    """
    if not value:
        return DEFAULT_DIRECTIVES
    mark, read, write = False, True, True
    for token in value[:_MAX_HEADER].lower().split(","):
        word = token.strip()
        if word == "on":
            mark = True
        elif word == "no-cache":
            read = write = False
        elif word == "refresh":
            read = False
        elif word == "no-store":
            write = False
    return CacheDirectives(mark, read, write)


def parse_cache_ttl(value: str | None) -> float | None:
    """Seconds in ``x-holyroute-cache-ttl`` (``90``, ``1.5``, ``10m``, ``1h30m``), at most :data:`MAX_CACHE_TTL_S`;
    ``None`` when absent or unreadable (the route's TTL applies). ``0`` means: store nothing.

    >>> parse_cache_ttl("10m"), parse_cache_ttl("0"), parse_cache_ttl("soon")
    (600.0, 0.0, None)
    """
    if not value or len(value) > _MAX_HEADER or value.lstrip().startswith("-"):
        return None  # a negative TTL is a mistake, not "store nothing"
    seconds = header_seconds(value.strip(), max_s=MAX_CACHE_TTL_S)
    if seconds is None or not seconds >= 0:  # also NaN
        return None
    return min(seconds, MAX_CACHE_TTL_S)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A kept answer: its JSON body, the upstream model that wrote it, what it cost, and when (Unix time)."""

    body: bytes
    upstream_model: str
    cost_usd: float | None
    stored_at: float


def stored_bytes(answer: StoredAnswer) -> bytes:
    """The bytes a store keeps for ``answer``: a one-line JSON header, a newline, the body."""
    head = {"v": 1, "model": answer.upstream_model, "cost_usd": answer.cost_usd, "at": answer.stored_at}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + answer.body


def parse_stored(raw: object) -> StoredAnswer | None:
    """A stored entry read back, or ``None`` when it is not one (corrupt, another version, another type).

    >>> parse_stored(b'{"v":1,"model":"m","cost_usd":0.5,"at":1.0}\\n{}')
    StoredAnswer(body=b'{}', upstream_model='m', cost_usd=0.5, stored_at=1.0)
    >>> parse_stored(b"garbage") is None
    True
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        return None
    data = bytes(raw)
    head, sep, body = data.partition(b"\n")
    if not sep or not body or len(head) > 4096:
        return None
    try:
        meta = json.loads(head)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("v") != 1:
        return None
    model, cost, at = meta.get("model"), meta.get("cost_usd"), meta.get("at")
    if not isinstance(model, str) or not isinstance(at, int | float) or isinstance(at, bool):
        return None
    if cost is not None and (not isinstance(cost, int | float) or isinstance(cost, bool) or not cost >= 0):
        return None
    if body[:1] != b"{" or body.rstrip()[-1:] != b"}":
        return None
    return StoredAnswer(body, model, None if cost is None else float(cost), float(at))


def _events(raw: bytes) -> list[Any]:
    """The JSON ``data:`` payloads of an SSE stream, in order; ``[DONE]`` and unreadable events are skipped."""
    found: list[Any] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            continue
        try:
            found.append(json.loads(data))
        except ValueError:
            continue
    return found


def reassemble_stream(api: str, raw: bytes) -> bytes | None:
    """The JSON body an unstreamed call would have had, put together from a complete streamed answer's bytes; ``None``
    when it cannot be (another API, an error event, a choice without its end).

    Chat: the chunks' deltas joined per choice (content, refusal, tool calls), their ``finish_reason`` and the usage
    chunk's usage. Completions: the chunks' ``text`` joined per choice, their ``finish_reason`` and the usage chunk's
    usage. Responses: the ``response.completed`` event's response, which is the whole answer.
    """
    events = _events(raw)
    if api == "responses":
        for event in reversed(events):
            if isinstance(event, dict) and event.get("type") == "response.completed":
                response = event.get("response")
                if isinstance(response, dict) and response.get("status") == "completed":
                    return json.dumps(response, separators=(",", ":")).encode()
                return None
        return None
    if not events:
        return None
    if api == "completions":
        return _completion_body(events)
    if api != "chat":
        return None
    return _chat_body(events)


def _completion_body(events: list[Any]) -> bytes | None:
    """A legacy completions stream put back together: per choice its text pieces joined and its finish reason."""
    head: dict[str, Any] | None = None
    texts: dict[int, list[str]] = {}
    finished: dict[int, Any] = {}
    usage: Any = None
    for event in events:
        if not isinstance(event, dict) or "error" in event or event.get("object") != "text_completion":
            return None
        if head is None:
            head = {k: event.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if event.get("usage") is not None:
            usage = event["usage"]
        choices = event.get("choices")
        if not isinstance(choices, list):
            return None
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("logprobs") is not None:  # logprobs: not put back together
                return None
            index, text = choice.get("index", 0), choice.get("text")
            if not isinstance(index, int) or not isinstance(text, str | None):
                return None
            texts.setdefault(index, []).append(text or "")
            if choice.get("finish_reason") is not None:
                finished[index] = choice["finish_reason"]
    if head is None or not texts or set(finished) != set(texts):
        return None
    body: dict[str, Any] = {
        "id": head["id"],
        "object": "text_completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [
            {"text": "".join(texts[i]), "index": i, "logprobs": None, "finish_reason": finished[i]}
            for i in sorted(texts)
        ],
    }
    if head.get("system_fingerprint") is not None:
        body["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body, separators=(",", ":")).encode()


def _chat_body(events: list[Any]) -> bytes | None:
    head: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    usage: Any = None
    for event in events:
        if not isinstance(event, dict) or "error" in event:
            return None
        if event.get("choices") == [] and event.get("usage") is None:
            continue  # nothing of the answer (Azure's first chunk carries only prompt_filter_results)
        if event.get("object") != "chat.completion.chunk":
            return None
        if head is None:
            head = {k: event.get(k) for k in ("id", "created", "model", "service_tier", "system_fingerprint")}
        if event.get("usage") is not None:
            usage = event["usage"]
        deltas = event.get("choices")
        if not isinstance(deltas, list):
            return None
        for choice in deltas:
            if not _add_delta(choices, choice):
                return None
    if head is None or not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    body: dict[str, Any] = {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [_choice(index, choices[index]) for index in sorted(choices)],
    }
    for key in ("service_tier", "system_fingerprint"):
        if head.get(key) is not None:
            body[key] = head[key]
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body, separators=(",", ":")).encode()


def _add_delta(choices: dict[int, dict[str, Any]], choice: object) -> bool:
    if not isinstance(choice, dict):
        return False
    index = choice.get("index", 0)
    delta = choice.get("delta") or {}
    if not isinstance(index, int) or not isinstance(delta, dict):
        return False
    into = choices.setdefault(
        index, {"role": "assistant", "content": None, "refusal": None, "tools": {}, "finish_reason": None}
    )
    if isinstance(delta.get("role"), str):
        into["role"] = delta["role"]
    for key in ("content", "refusal"):
        piece = delta.get(key)
        if isinstance(piece, str):
            into[key] = (into[key] or "") + piece
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
            return False
        slot = into["tools"].setdefault(call.get("index", 0), {"id": None, "type": "function", "name": "", "args": ""})
        if isinstance(call.get("id"), str):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        if isinstance(function, dict):
            slot["name"] += function.get("name") or ""
            slot["args"] += function.get("arguments") or ""
    if choice.get("finish_reason") is not None:
        into["finish_reason"] = choice["finish_reason"]
    # Token logprobs are not put back together: such a stream is not kept.
    return choice.get("logprobs") is None


def _choice(index: int, parts: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": parts["role"], "content": parts["content"], "refusal": parts["refusal"]}
    if parts["tools"]:
        message["tool_calls"] = [
            {"id": t["id"], "type": t["type"], "function": {"name": t["name"], "arguments": t["args"]}}
            for _, t in sorted(parts["tools"].items())
        ]
    return {"index": index, "message": message, "logprobs": None, "finish_reason": parts["finish_reason"]}
