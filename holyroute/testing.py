"""A local fake of an OpenAI-compatible upstream, with scripted faults, for tests, demos and benchmarks.

:class:`FakeUpstream` speaks OpenAI's wire format (chat completions, Responses, embeddings, legacy
completions and the model list, as JSON or as SSE streams with usage blocks and OpenAI's response headers)
from an h11 server that runs its own event loop in a daemon thread. Each request to a ``/v1`` operation first
consumes a scripted :class:`Reply` (a 429, a 5xx, a slow answer, a torn stream, a dropped connection, a stream
paused on a gate), then falls back to deterministic default answers; every request is recorded. Deciding
what to answer (``_plan``) is pure; the server only carries the answer out. It never binds anything but
127.0.0.1, never opens an outbound connection, never reads credentials or the environment, and never sleeps
in the caller's thread: delays and gates wait on its own event loop, so one slow answer never holds up
another connection.

Example::

    with FakeUpstream("primary") as up:
        up.push(Reply.rate_limited(retry_after_s=2))
        client = openai.OpenAI(base_url=up.base_url, api_key="test", max_retries=0)
        ...  # the first call raises openai.RateLimitError, the next one gets a normal completion
"""

from __future__ import annotations

import array
import asyncio
import base64
import collections
import contextlib
import hashlib
import http
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import h11

__all__ = ["FakeUpstream", "RecordedRequest", "Reply"]

_HOST = "127.0.0.1"


async def close_all(server: asyncio.Server, handlers: dict[asyncio.Task[Any], asyncio.StreamWriter]) -> None:
    """Close ``server`` and every connection it accepted, each transport closed before this returns (so before the
    loop closes: a socket left to the garbage collector is reported in whatever runs next). ``handlers``: the
    connection handlers running, each listing itself at its first step and delisting itself once :func:`closed`.

    A connection accepted just before the close reaches its handler's first step three loop steps later (the accept
    task, ``connection_made``, the handler); cancelled before that step, a handler would never close its transport
    (and Python 3.12's ``wait_closed`` would wait for it). So the list is read again three steps after each round
    of aborting, until it stays empty.
    """
    server.close()
    while True:
        for _ in range(3):
            await asyncio.sleep(0)
        listed = list(handlers.items())
        if not listed:
            break
        for task, writer in listed:
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for task, _ in listed), return_exceptions=True)
        for task, _ in listed:  # delisted by itself as it ended; this only makes sure every round ends some
            handlers.pop(task, None)
    await server.wait_closed()


async def closed(writer: asyncio.StreamWriter) -> None:
    """Close a connection and wait until its transport is closed (a close with unsent data waits for it to go, or
    for :func:`close_all`'s abort). Ends quietly: a reset peer, or a cancel from :func:`close_all` (asyncio's stream
    callback logs a handler that ends cancelled as an error)."""
    writer.close()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await writer.wait_closed()


_STOP_TIMEOUT_S = 5.0
_START_TIMEOUT_S = 5.0
_GATE_POLL_S = 0.001
_READ_SIZE = 65536
_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
_MODELS_CREATED = 1715367049
# The framing of a response is the server's business; a scripted header must not contradict the body sent.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


# ----------------------------------------------------------------------------------------------------
# Public data


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake upstream received it; header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float = 0.0  # time.time() when the whole request was in (for timing tests across processes)

    @property
    def json(self) -> Any | None:
        """The parsed JSON body, or None when the body is empty or not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def model(self) -> str | None:
        """The ``model`` field of a JSON object body, if any."""
        parsed = self.json
        model = parsed.get("model") if isinstance(parsed, dict) else None
        return model if isinstance(model, str) else None


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer; a field left at its default keeps the realistic default behaviour.

    ``body=None`` means the default body for the operation (or, with ``status >= 400``, an OpenAI error body
    naming the status), so ``Reply(delay_s=2)`` is a slow but normal answer and ``Reply(tear_after=2)`` a torn
    default stream when the request asked for one. ``tear_after`` on a non-stream answer sends the headers and
    the first ``tear_after`` bytes of the body, then closes. ``gate`` on a non-stream answer holds the whole
    answer until the gate is set (or ``gate_timeout_s`` passes). ``drop`` closes with a TCP reset after the
    delays, sending nothing.

    >>> Reply.rate_limited(retry_after_s=0.5, retry_after_ms=True).headers["retry-after-ms"]
    '500'
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | Mapping[str, Any] | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    tear_after: int | None = None
    drop: bool = False
    gate: threading.Event | None = None
    gate_after: int = 1
    gate_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"Reply.status: {self.status} is not a final HTTP status; use 200..599")
        for key in ("delay_s", "chunk_delay_s", "gate_timeout_s"):
            if getattr(self, key) < 0:
                raise ValueError(f"Reply.{key}: must be >= 0, got {getattr(self, key)!r}")
        if self.tear_after is not None and self.tear_after < 0:
            raise ValueError(f"Reply.tear_after: must be None or >= 0, got {self.tear_after!r}")
        if self.gate_after < 0:
            raise ValueError(f"Reply.gate_after: must be >= 0, got {self.gate_after!r}")

    @classmethod
    def rate_limited(
        cls,
        retry_after_s: float | None = 1.0,
        *,
        retry_after_ms: bool = False,
        code: str = "rate_limit_exceeded",
        reset_requests: str | None = None,
        reset_tokens: str | None = None,
    ) -> Reply:
        """A 429 with OpenAI's rate-limit error body and headers.

        ``retry_after_s`` goes out as ``retry-after`` (seconds), or as ``retry-after-ms`` when
        ``retry_after_ms`` is true; None sends neither. ``x-ratelimit-remaining-requests`` is 0;
        ``reset_requests`` / ``reset_tokens`` (OpenAI's duration strings such as ``"1s"`` or ``"6m0s"``) fill
        ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` (the latter also zeroes the remaining
        tokens).
        """
        headers = {"x-ratelimit-remaining-requests": "0"}
        if reset_requests is not None:
            headers["x-ratelimit-reset-requests"] = reset_requests
        if reset_tokens is not None:
            headers["x-ratelimit-reset-tokens"] = reset_tokens
            headers["x-ratelimit-remaining-tokens"] = "0"
        wait = ""
        if retry_after_s is not None:
            if retry_after_ms:
                headers["retry-after-ms"] = str(round(retry_after_s * 1000))
            else:
                headers["retry-after"] = f"{retry_after_s:g}"
            wait = f" Please try again in {retry_after_s:g}s."
        if code == "insufficient_quota":
            message = "You exceeded your current quota, please check your plan and billing details."
            kind = "insufficient_quota"
        else:
            message = f"Rate limit reached on requests per min (RPM): Limit 10000, Used 10000, Requested 1.{wait}"
            kind = "requests"
        return cls(status=429, headers=headers, body=_error_body(message, kind, code))

    @classmethod
    def error(
        cls, status: int, message: str | None = None, *, type: str | None = None, code: str | None = None
    ) -> Reply:
        """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with ``status``.

        The message defaults to one naming the status; the type to OpenAI's for that status class.
        """
        return cls(status=status, body=_status_error_body(status, message, type, code))


# ----------------------------------------------------------------------------------------------------
# The decision: what to answer to one request. Pure: no I/O, no clock (ids come from a sequence number).


@dataclass(frozen=True, slots=True)
class _Profile:
    name: str
    cached_tokens: int
    reasoning_tokens: int
    embedding_dims: int
    latency_s: float
    models: tuple[str, ...] = _MODELS
    strict_models: bool = False  # answer 404 model_not_found for a model not in ``models``


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the server sends: a whole body, or SSE events written one by one, and when and how."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    events: tuple[bytes, ...] | None = None
    wait_s: float = 0.0
    chunk_delay_s: float = 0.0
    tear_after: int | None = None
    drop: bool = False
    gate: threading.Event | None = None
    gate_after: int = 1
    gate_timeout_s: float = 10.0


_DEFAULT_REPLY = Reply()


def _plan(request: RecordedRequest, reply: Reply | None, profile: _Profile, seq: int, created: int) -> _Answer:
    """Decide the answer to ``request``: the scripted ``reply`` over the default behaviour of its path."""
    reply = reply or _DEFAULT_REPLY
    body: bytes = b""
    events: tuple[bytes, ...] | None = None
    if reply.body is not None:
        status = reply.status
        body = reply.body if isinstance(reply.body, bytes) else _dumps(reply.body)
    elif reply.status >= 400:
        status = reply.status
        body = _dumps(_status_error_body(reply.status, None, None, None))
    else:
        default_status, payload = _default(request, profile, seq, created)
        status = reply.status if default_status == 200 else default_status
        if isinstance(payload, bytes):
            body = payload
        else:
            events = payload
    if status in (204, 304):
        body, events = b"", None

    wait_s = profile.latency_s + reply.delay_s
    headers = {
        "content-type": _SSE if events is not None else _JSON,
        "x-request-id": "req_" + _digest(profile.name, seq, "req", 32),
        "openai-version": "2020-10-01",
        "openai-processing-ms": str(max(1, round(wait_s * 1000))),
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-limit-tokens": "30000000",
        "x-ratelimit-remaining-tokens": "29999000",
        "x-ratelimit-reset-tokens": "2ms",
        "x-fake-upstream": profile.name,
    }
    if events is not None:
        headers["transfer-encoding"] = "chunked"
    else:
        headers["content-length"] = str(len(body))
    for key, value in reply.headers.items():
        if key.lower() not in _FRAMING_HEADERS:
            headers[key.lower()] = value

    if request.method == "HEAD":  # the headers of the GET answer, and no body
        body, events = b"", None

    limit = len(events) if events is not None else len(body)
    return _Answer(
        status=status,
        headers=tuple(headers.items()),
        body=body,
        events=events,
        wait_s=wait_s,
        chunk_delay_s=reply.chunk_delay_s,
        tear_after=None if reply.tear_after is None else min(reply.tear_after, limit),
        drop=reply.drop,
        gate=reply.gate,
        gate_after=min(reply.gate_after, limit),
        gate_timeout_s=reply.gate_timeout_s,
    )


def _default(
    request: RecordedRequest, profile: _Profile, seq: int, created: int
) -> tuple[int, bytes | tuple[bytes, ...]]:
    """The default status and body (bytes) or SSE events for the operation named by the path after ``/v1``."""
    operation = _operation(request.path)
    method = "GET" if request.method == "HEAD" else request.method
    if method == "GET" and operation == "/models":
        models = [_model_object(model) for model in profile.models]
        return 200, _dumps({"object": "list", "data": models})
    if method == "GET" and operation is not None and operation.startswith("/models/"):
        model = operation.removeprefix("/models/")
        if profile.strict_models and model not in profile.models:
            return 404, _dumps(_model_not_found(model))
        return 200, _dumps(_model_object(model))
    builders = {
        "/chat/completions": _chat,
        "/responses": _responses,
        "/embeddings": _embeddings,
        "/completions": _completions,
    }
    builder = builders.get(operation or "") if request.method == "POST" else None
    if builder is None:
        message = f"Invalid URL ({request.method} {request.path})"
        return 404, _dumps(_error_body(message, "invalid_request_error", None))
    params = request.json
    if not isinstance(params, dict):
        message = "We could not parse the JSON body of your request. (HINT: send a JSON object.)"
        return 400, _dumps(_error_body(message, "invalid_request_error", None))
    if not isinstance(params.get("model"), str):
        return 400, _dumps(_error_body("you must provide a model parameter", "invalid_request_error", None))
    if profile.strict_models and params["model"] not in profile.models:
        return 404, _dumps(_model_not_found(params["model"]))
    return 200, builder(params, profile, seq, created)


def _model_not_found(model: str) -> dict[str, Any]:
    message = f"The model `{model}` does not exist or you do not have access to it."
    return _error_body(message, "invalid_request_error", "model_not_found")


def _operation(path: str) -> str | None:
    """The path after the last ``/v1`` segment (``"/chat/completions"``), or None outside ``/v1``."""
    _, sep, tail = path.rpartition("/v1")
    if not sep or (tail and not tail.startswith("/")):
        return None
    return tail.rstrip("/") or "/"


def _chat(params: dict[str, Any], profile: _Profile, seq: int, created: int) -> bytes | tuple[bytes, ...]:
    model = params["model"]
    pieces = _pieces(profile.name, model)
    usage = _chat_usage(_estimate_tokens(params.get("messages")), len(pieces), profile)
    common: dict[str, Any] = {
        "id": "chatcmpl-" + _digest(profile.name, seq, "chatcmpl", 29),
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": _fingerprint(profile.name),
    }
    if params.get("stream") is not True:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(pieces),
            "refusal": None,
            "annotations": [],
        }
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return _dumps({**common, "object": "chat.completion", "choices": [choice], "usage": usage})

    include_usage = _include_usage(params)

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        data: dict[str, Any] = {**common, "object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return _sse(data)

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": piece}, None) for piece in pieces]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(_sse({**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return tuple(events)


# Long but flat: the Responses API's body and its streamed event sequence, written out as the wire has them.
def _responses(params: dict[str, Any], profile: _Profile, seq: int, created: int) -> bytes | tuple[bytes, ...]:
    # Long but flat: the Responses API's object has ~25 fixed fields, and its stream is one literal list of events.
    model = params["model"]
    pieces = _pieces(profile.name, model)
    text = "".join(pieces)
    response_id = "resp_" + _digest(profile.name, seq, "resp", 48)
    item_id = "msg_" + _digest(profile.name, seq, "msg", 48)
    prompt = _estimate_tokens(params.get("input"))
    output = len(pieces) + profile.reasoning_tokens
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(profile.cached_tokens, prompt)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": profile.reasoning_tokens},
        "total_tokens": prompt + output,
    }
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": item_id, "type": "message", "status": "completed", "content": [part], "role": "assistant"}

    def response(status: str, items: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": params.get("instructions"),
            "max_output_tokens": params.get("max_output_tokens"),
            "model": model,
            "output": items,
            "parallel_tool_calls": True,
            "previous_response_id": params.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    if params.get("stream") is not True:
        return _dumps(response("completed", [item], usage))

    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    empty_part = {**part, "text": ""}
    steps: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("in_progress", [], None)},
        {"type": "response.in_progress", "response": response("in_progress", [], None)},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": empty_part},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []} for piece in pieces),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response("completed", [item], usage)},
    ]
    return tuple(_sse({**step, "sequence_number": n}, event=step["type"]) for n, step in enumerate(steps))


def _embeddings(params: dict[str, Any], profile: _Profile, seq: int, created: int) -> bytes | tuple[bytes, ...]:
    del seq, created
    raw = params.get("input")
    # OpenAI accepts a string, a list of strings, a token list, or a list of token lists.
    if isinstance(raw, list) and raw and not all(isinstance(item, int) for item in raw):
        inputs: list[Any] = raw
    else:
        inputs = [raw]
    dims = params.get("dimensions")
    if not isinstance(dims, int) or dims < 1:
        dims = profile.embedding_dims
    as_base64 = params.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(item if isinstance(item, str) else json.dumps(item), dims)
        embedding: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_estimate_tokens(item) for item in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _dumps({"object": "list", "data": data, "model": params["model"], "usage": usage})


def _completions(params: dict[str, Any], profile: _Profile, seq: int, created: int) -> bytes | tuple[bytes, ...]:
    model = params["model"]
    pieces = _pieces(profile.name, model)
    prompt = _estimate_tokens(params.get("prompt"))
    completion = len(pieces)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    common: dict[str, Any] = {
        "id": "cmpl-" + _digest(profile.name, seq, "cmpl", 29),
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": _fingerprint(profile.name),
    }
    if params.get("stream") is not True:
        choice = {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": "stop"}
        return _dumps({**common, "choices": [choice], "usage": usage})

    include_usage = _include_usage(params)

    def chunk(text: str, finish_reason: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        data: dict[str, Any] = {**common, "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return _sse(data)

    events = [chunk(piece, None) for piece in pieces]
    events.append(chunk("", "stop"))
    if include_usage:
        events.append(_sse({**common, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return tuple(events)


def _chat_usage(prompt: int, words: int, profile: _Profile) -> dict[str, Any]:
    # As on OpenAI, reasoning tokens are part of completion_tokens, and cached tokens part of prompt_tokens.
    completion = words + profile.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": min(profile.cached_tokens, prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": profile.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": "system"}


def _pieces(name: str, model: str) -> list[str]:
    """The default answer text, split the way it is streamed: one piece per word, spaces leading."""
    first, *rest = f"Hello from {name} via {model}.".split(" ")
    return [first, *(" " + word for word in rest)]


def _estimate_tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


def _include_usage(params: dict[str, Any]) -> bool:
    options = params.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``, exactly representable in float32 (so base64 round-trips)."""
    raw = b""
    block = 0
    while len(raw) < 4 * dims:
        raw += hashlib.sha256(f"{block}:{text}".encode()).digest()
        block += 1
    values = [n / 2**31 - 1.0 for n in struct.unpack(f"<{dims}I", raw[: 4 * dims])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return array.array("f", [v / norm for v in values]).tolist()


def _digest(name: str, seq: int, kind: str, length: int) -> str:
    return hashlib.sha256(f"{name}\0{seq}\0{kind}".encode()).hexdigest()[:length]


def _fingerprint(name: str) -> str:
    return "fp_" + hashlib.sha256(name.encode()).hexdigest()[:10]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event is not None else ""
    return prefix.encode() + b"data: " + _dumps(data) + b"\n\n"


def _error_body(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _status_error_body(status: int, message: str | None, kind: str | None, code: str | None) -> dict[str, Any]:
    if message is None:
        message = f"The fake upstream answered {status} {_phrase(status)}.".replace(" .", ".")
    if kind is None:
        kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    return _error_body(message, kind, code)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


# ----------------------------------------------------------------------------------------------------
# The server: carries out answers over h11, on its own event loop in a daemon thread.


class FakeUpstream:
    """A fake OpenAI-compatible upstream on ``127.0.0.1``; see the module docstring.

    >>> with FakeUpstream("backup", latency_s=0.05) as up:
    ...     up.base_url.startswith("http://127.0.0.1:")
    True

    ``models``: the models ``GET /models`` lists and the only ones it serves (any other gets 404
    ``model_not_found``, as OpenAI answers); by default it lists three and answers for any model.

    ``requests`` lists every request received, in order; ``gate_log`` records how each gate wait ended
    (``"set"`` or ``"timeout"``); ``connections`` counts accepted TCP connections. ``clock`` (monotonic
    seconds) only drives :meth:`fail_for`, so tests can move it forward instead of sleeping.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        latency_s: float = 0.0,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        embedding_dims: int = 8,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        record: bool = True,
        models: Sequence[str] | None = None,
    ) -> None:
        if not name or not name.isascii() or not name.isprintable():
            raise ValueError(f"FakeUpstream.name: {name!r} must be non-empty printable ASCII (it is a header value)")
        numbers = {
            "latency_s": latency_s,
            "cached_tokens": cached_tokens,
            "reasoning_tokens": reasoning_tokens,
        }
        for key, value in numbers.items():
            if value < 0:
                raise ValueError(f"FakeUpstream.{key}: must be >= 0, got {value!r}")
        if embedding_dims < 1:
            raise ValueError(f"FakeUpstream.embedding_dims: must be >= 1, got {embedding_dims!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"FakeUpstream.port: {port!r} is not a TCP port; use 0 for a free one")
        self.name = name
        self.requests: list[RecordedRequest] = []
        self.received = 0  # requests received, recorded or not
        self._record = record  # False for long load runs: count requests without keeping them
        self.gate_log: list[str] = []
        self.connections = 0
        listed = _MODELS if models is None else tuple(models)
        self._profile = _Profile(
            name, cached_tokens, reasoning_tokens, embedding_dims, latency_s, listed, strict_models=models is not None
        )
        self._requested_port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: collections.deque[Reply] = collections.deque()
        self._failing: tuple[float, Reply] | None = None
        self._seq = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "stopped"
        return f"<FakeUpstream {self.name!r} {where}>"

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port; raises RuntimeError when not started."""
        if self._port is None:
            raise RuntimeError(f"FakeUpstream {self.name!r} is not running; call start() or use `with`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``; raises RuntimeError when not started."""
        return f"http://{_HOST}:{self.port}/v1"

    def start(self) -> FakeUpstream:
        """Bind ``127.0.0.1:port`` (0 picks a free port), start serving, and return self."""
        if self._thread is not None:
            raise RuntimeError(f"FakeUpstream {self.name!r} is already running at {self.base_url}")
        ready = threading.Event()
        self._startup_error = None
        thread = threading.Thread(target=self._run, args=(ready,), name=f"holyroute-fake-{self.name}", daemon=True)
        thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            raise RuntimeError(f"FakeUpstream {self.name!r} did not start within {_START_TIMEOUT_S}s")
        if self._startup_error is not None:
            thread.join(_STOP_TIMEOUT_S)
            raise self._startup_error
        self._thread = thread
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection, and join the server thread (bounded)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"FakeUpstream {self.name!r} did not stop within {_STOP_TIMEOUT_S}s")
        self._thread = self._loop = self._stopping = None
        self._port = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------------------------------

    def push(self, *replies: Reply) -> None:
        """Queue scripted replies; each request to a ``/v1`` operation consumes one, oldest first."""
        with self._lock:
            self._queue.extend(replies)

    def fail_for(self, seconds: float, reply: Reply) -> None:
        """Answer every request with ``reply`` until ``seconds`` from now; the queue waits meanwhile."""
        with self._lock:
            self._failing = (self._clock() + seconds, reply)

    def clear(self) -> None:
        """Forget queued replies, any ``fail_for``, recorded requests and the gate log."""
        with self._lock:
            self._queue.clear()
            self._failing = None
            self.requests.clear()
            self.gate_log.clear()

    def _receive(self, request: RecordedRequest) -> tuple[Reply | None, int]:
        """Record ``request`` and take the scripted reply it gets, if any, with its sequence number."""
        with self._lock:
            if self._record:
                self.requests.append(request)
            self.received += 1
            self._seq += 1
            if self._failing is not None:
                until, reply = self._failing
                if self._clock() < until:
                    return reply, self._seq
                self._failing = None
            if self._queue and _operation(request.path) is not None:
                return self._queue.popleft(), self._seq
            return None, self._seq

    # -- the event loop thread -------------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # reported to start(); nothing else can see this thread
            if not ready.is_set():
                self._startup_error = exc
                ready.set()
            else:
                raise

    async def _serve(self, ready: threading.Event) -> None:
        try:
            server = await asyncio.start_server(self._handle, host=_HOST, port=self._requested_port, backlog=1024)
        except OSError as exc:
            self._startup_error = exc
            ready.set()
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            await close_all(server, self._open)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        self.connections += 1
        # A zero high-water mark makes every drain() wait until the kernel has the bytes: no SSE event sits in
        # a buffer, and a torn stream closes only after the events before the tear went out.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            await self._converse(reader, writer)
        except (OSError, h11.ProtocolError):
            pass  # the client went away or spoke broken HTTP: nothing left to answer
        except asyncio.CancelledError:
            # Only stop() cancels a connection. Ending quietly matters: asyncio's stream callback asks a
            # cancelled handler for its exception and logs the CancelledError as an error.
            pass
        finally:
            await closed(writer)
            del self._open[task]

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                request = await self._read_request(conn, reader)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = _dumps(_error_body(f"Bad request: {exc}", "invalid_request_error", None))
                    headers = [
                        ("content-type", _JSON),
                        ("content-length", str(len(body))),
                        ("connection", "close"),
                    ]
                    status = exc.error_status_hint
                    writer.write(
                        conn.send(h11.Response(status_code=status, headers=headers, reason=_phrase(status))) or b""
                    )
                    writer.write((conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
                    await writer.drain()
                return
            if request is None:
                return
            reply, seq = self._receive(request)
            answer = _plan(request, reply, self._profile, seq, int(time.time()))
            if not await self._send(conn, writer, answer):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                path, _, query = head.target.decode("latin-1").partition("?")
                headers: dict[str, str] = {}
                for name, value in head.headers:
                    key, text = name.decode("latin-1"), value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                return RecordedRequest(head.method.decode("latin-1"), path, query, headers, bytes(body), time.time())
            else:  # ConnectionClosed between requests, or PAUSED (cannot happen: one request at a time)
                return None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, answer: _Answer) -> bool:
        """Carry out ``answer``; False when the connection must not be reused."""
        if answer.wait_s > 0:
            await asyncio.sleep(answer.wait_s)
        if answer.drop:
            # SO_LINGER 0 turns close into a TCP reset, the rudest way a provider or proxy can go away.
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        head = h11.Response(status_code=answer.status, headers=list(answer.headers), reason=_phrase(answer.status))

        if answer.events is None:
            if answer.gate is not None:
                await self._hold(answer.gate, answer.gate_timeout_s)
            if answer.tear_after is not None:
                writer.write(
                    (conn.send(head) or b"") + (conn.send(h11.Data(data=answer.body[: answer.tear_after])) or b"")
                )
                await writer.drain()
                return False
            # One write for the whole response: the fastest path, used by the latency benchmark.
            data = conn.send(head) or b""
            if answer.body:
                data += conn.send(h11.Data(data=answer.body)) or b""
            writer.write(data + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
            return True

        writer.write(conn.send(head) or b"")
        await writer.drain()
        for index in range(len(answer.events) + 1):
            if answer.gate is not None and index == answer.gate_after:
                await self._hold(answer.gate, answer.gate_timeout_s)
            if index == answer.tear_after:
                return False  # closing now leaves the chunked body without its terminator
            if index == len(answer.events):
                break
            if index and answer.chunk_delay_s > 0:
                await asyncio.sleep(answer.chunk_delay_s)
            writer.write(conn.send(h11.Data(data=answer.events[index])) or b"")
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return True

    async def _hold(self, gate: threading.Event, timeout_s: float) -> None:
        """Wait for ``gate`` without blocking the loop (short polls), and log how the wait ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not gate.is_set() and loop.time() < deadline:
            await asyncio.sleep(_GATE_POLL_S)
        outcome = "set" if gate.is_set() else "timeout"
        with self._lock:
            self.gate_log.append(outcome)
