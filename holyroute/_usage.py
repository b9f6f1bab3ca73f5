"""Token usage and cost: read from JSON bodies and SSE events as they pass, normalised, priced.

Chat Completions, legacy Completions and Embeddings report ``prompt_tokens`` / ``completion_tokens`` with
``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``; the Responses API reports
``input_tokens`` / ``output_tokens`` with ``input_tokens_details`` / ``output_tokens_details`` (in a stream, inside the
``response.completed`` event). :class:`Usage` is the one shape both become. Cached input tokens are a subset of the
prompt tokens and are priced once, at the cached rate. This module does no I/O; the :class:`SSEScanner` is fed bytes
by the stream tap and never holds back more than one incomplete event.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._prices import BUILTIN_PRICES, PriceRow, normalise_model_name

__all__ = [
    "SSEScanner",
    "Usage",
    "cost_usd",
    "decompress",
    "find_price",
    "finish_reason",
    "usage_from_body",
    "usage_from_mapping",
]

_DECODER = json.JSONDecoder()
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]+)"')
_TERMINAL_TYPE = re.compile(rb'"type"\s*:\s*"(response\.completed|response\.incomplete|response\.failed|error)"')
_INTERESTING = re.compile(
    rb'"finish_reason"\s*:\s*"|"usage"\s*:\s*\{|"error"|"type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)"'
)
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, in the Chat Completions vocabulary."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_mapping(usage: Mapping[str, Any]) -> Usage:
    """Normalise a provider's ``usage`` object (chat, responses, embeddings, DeepSeek's cache fields)."""
    if "input_tokens" in usage or "output_tokens" in usage:
        prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        in_details, out_details = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    else:
        prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        in_details, out_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, Mapping) else 0
    if not cached:
        cached = _int(usage.get("prompt_cache_hit_tokens"))  # DeepSeek
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, Mapping) else 0
    return Usage(prompt, completion, min(cached, prompt), reasoning)


def usage_from_body(body: bytes, encoding: str | None = None) -> Usage | None:
    """Usage of a JSON answer, read from its last top-level ``usage`` object; ``None`` when there is none.

    ``encoding`` is the answer's ``content-encoding`` (gzip and deflate are opened; others yield ``None``).
    """
    if encoding and encoding != "identity":
        try:
            body = decompress(body, encoding)
        except (zlib.error, ValueError):
            return None
    # Providers put usage at the end; decoding from the last '"usage":{' avoids parsing a large body twice.
    # Inside JSON strings a quote is escaped, so this byte pattern can only be a key.
    position = body.rfind(b'"usage"')
    while position >= 0:
        match = _USAGE_KEY.match(body, position)
        if match is not None:
            try:
                found, _ = _DECODER.raw_decode(body[match.end() - 1 :].decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                break
            if isinstance(found, Mapping):
                return usage_from_mapping(found)
            break
        position = body.rfind(b'"usage"', 0, position)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, Mapping):
        usage = data.get("usage")
        if isinstance(usage, Mapping):
            return usage_from_mapping(usage)
    return None


def decompress(body: bytes, encoding: str) -> bytes:
    """``body`` decoded from gzip or deflate; ValueError for an encoding it cannot open."""
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise ValueError(f"cannot open content-encoding {encoding!r}")


def finish_reason(body: bytes) -> str | None:
    """The first ``finish_reason`` of a chat or completions answer (``stop``, ``length``, ``content_filter``...)."""
    found = _FINISH.search(body)
    return found.group(1).decode("ascii") if found is not None else None


def find_price(model: str, overrides: Mapping[str, PriceRow], *, builtin: bool = True) -> PriceRow | None:
    """The price row for an upstream model: configured first, then built in (unless ``builtin`` is false); dated
    snapshots fall back to their base model."""
    for table in (overrides, BUILTIN_PRICES) if builtin else (overrides,):
        for name in normalise_model_name(model):
            row = table.get(name)
            if row is not None:
                return row
    return None


def cost_usd(usage: Usage, price: PriceRow) -> float:
    """USD for ``usage`` at ``price`` (per million tokens); cached tokens at the cached rate, reasoning tokens at
    the reasoning rate when one is set; none counted twice."""
    uncached = usage.prompt_tokens - usage.cached_tokens
    total = uncached * price.input + usage.cached_tokens * price.cached_input + usage.completion_tokens * price.output
    if price.reasoning is not None and usage.reasoning_tokens:
        total += usage.reasoning_tokens * (price.reasoning - price.output)  # reasoning is part of the completion
    return round(total / 1_000_000, 10)


class SSEScanner:
    """Watches a server-sent-events byte stream for usage, errors and a proper end; optionally drops one event.

    ``feed`` returns the bytes to hand on. Without ``hide_usage_chunk`` that is the input itself, untouched, and
    parsing happens on the side. With it (holyroute asked for ``stream_options.include_usage`` on the caller's
    behalf), complete events are handed on as they complete and the usage-only chunk (``"choices": []``) is left
    out, so the caller sees the stream it asked for.
    """

    __slots__ = ("_hide", "_pending", "done", "error", "events", "finish_reason", "finished", "usage")

    def __init__(self, *, hide_usage_chunk: bool = False) -> None:
        self._hide = hide_usage_chunk
        self._pending = b""
        self.usage: Usage | None = None
        self.events = 0
        self.done = False  # a terminal marker: [DONE] or a final Responses event
        self.finished = False  # a choice reported finish_reason (lenient end for providers without [DONE])
        self.finish_reason: str | None = None  # the first one reported
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the stream reached an end the protocol defines (not merely a closed connection)."""
        return self.done or self.finished

    def feed(self, data: bytes) -> bytes:
        if not self._pending and data.endswith(b"\n\n") and data.find(b"\n\n") == len(data) - 2:
            # The common case: one whole event per chunk, as providers write them.
            keep = self._scan(data[:-2])
            return data if keep or not self._hide else b""
        buffer = self._pending + data if self._pending else data
        kept: list[bytes] = []
        start = 0
        for boundary in _BOUNDARY.finditer(buffer):
            if self._scan(buffer[start : boundary.start()]) or not self._hide:
                kept.append(buffer[start : boundary.end()])
            start = boundary.end()
        self._pending = buffer[start:]
        if not self._hide:
            return data
        return b"".join(kept)

    def end(self) -> bytes:
        """At the end of the stream: scan and return what is left of an unterminated last event."""
        rest, self._pending = self._pending, b""
        # A last event cut off mid-line is discarded (as the SSE spec says); one missing only its blank line
        # (`data: [DONE]\n`) still counts.
        if rest.strip() and rest.endswith((b"\n", b"\r")):
            self._scan(rest)
        return rest if self._hide else b""

    def _scan(self, event: bytes) -> bool:
        """Record what the event says; return False when it is the hidden usage-only chunk."""
        if event.startswith(b"data: ") and b"\n" not in event:
            data = event[6:]
        else:
            lines = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
            if not lines:
                return True
            data = b"\n".join(lines)
        self.events += 1
        if data == b"[DONE]":
            self.done = True
            return True
        if _INTERESTING.search(data) is None:
            return True  # a content delta: nothing to record
        finish = _FINISH.search(data)
        if finish is not None:
            self.finished = True
            if self.finish_reason is None:
                self.finish_reason = finish.group(1).decode("ascii")
        terminal = _TERMINAL_TYPE.search(data)
        if terminal is None and not _USAGE_KEY.search(data) and b'"error"' not in data:
            return True
        try:
            obj = json.loads(data)
        except ValueError:
            return True
        if not isinstance(obj, dict):
            return True
        if terminal is not None:
            kind = terminal.group(1).decode()
            if obj.get("type") == kind:
                self.done = True
                if kind in ("response.failed", "error"):
                    self.error = _error_text(obj) or kind
        elif isinstance(obj.get("error"), Mapping):
            self.error = _error_text(obj) or "error event in stream"
        usage = obj.get("usage")
        response = obj.get("response")
        if not isinstance(usage, Mapping) and isinstance(response, Mapping):
            usage = response.get("usage")
        if isinstance(usage, Mapping):
            self.usage = usage_from_mapping(usage)
            if self._hide and obj.get("choices") == []:
                return False
        return True


def _error_text(obj: Mapping[str, Any]) -> str | None:
    error = obj.get("error")
    if not isinstance(error, Mapping):
        response = obj.get("response")
        error = response.get("error") if isinstance(response, Mapping) else None
    if isinstance(error, Mapping):
        code = error.get("code") or error.get("type")
        return str(code) if code else "error"
    return None
