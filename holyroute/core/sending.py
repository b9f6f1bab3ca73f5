"""The request an attempt sends: the body for the chosen upstream model, its URL and query, its timeouts, the
headers to drop and add.

The body is the caller's with only the model swapped in place when that is certain (no re-encoding), else re-encoded
once per model; a stream is asked for its usage on the wire when the caller did not ask (the tap hides that chunk
again), by inserting ``stream_options`` when the body has none, so a large prompt is never re-encoded for it. The
caller's credentials never reach an upstream: neither its auth headers nor its credential query values.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

from holyroute.core.attempts import Attempts
from holyroute.core.plan import DROPPED_QUERY, Upstream
from holyroute.core.steps import Send

__all__ = ["Sending"]


class Sending(Attempts):
    __slots__ = ()

    def _send(self, upstream: Upstream, now: float) -> Send:
        """Begin an attempt on ``upstream`` and say what to send for it."""
        router = self._router
        deadline = self._bound()  # before the attempt counts: within the floor it gets the whole timeout
        self._begin_attempt(upstream, now)
        # Ask for stream usage on the wire when the caller did not, so every stream is costed; the tap hides
        # the extra usage-only chunk again.
        inject = self._wants_usage_injected and upstream.stream_usage
        self._hide_usage = inject
        body = self._bodies.get((upstream.model, inject)) if self._bodies else None  # none yet: the first attempt
        if body is None:
            body = _swap_model(self._raw_body, self._alias_token, upstream.token)
            if body is not None and inject:
                body = None if "stream_options" in self._data else _with_usage_option(body)
        if body is None:
            data = dict(self._data)
            data["model"] = upstream.model
            if inject:
                options = data.get("stream_options")
                data["stream_options"] = {
                    **(options if isinstance(options, Mapping) else {}),
                    "include_usage": True,
                }
            try:
                body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate the caller escaped (\ud83d): only an escape carries it
                body = json.dumps(data, separators=(",", ":")).encode("ascii")
        self._bodies[(upstream.model, inject)] = body
        query = _merge_query(self._query, upstream.query) if self._query else upstream.query
        url = f"{upstream.base_url}/{self._operation}"
        if query:
            url = f"{url}?{query}"
        timeout = upstream.timeout
        left = self._timeout if deadline is None else deadline - now  # within the floor: the whole timeout
        if left is not None:
            timeout = left if timeout is None else min(timeout, left)
        retry = router.retry
        headers_timeout = retry.stream_headers_timeout_s if self.stream else retry.headers_timeout_s
        if headers_timeout is not None and timeout is not None:
            headers_timeout = min(headers_timeout, timeout)
        return Send(
            url,
            # Streams uncompressed (events pass as they come); JSON only in codings the usage reader opens.
            upstream.sent_headers[self.stream],
            body,
            timeout,
            upstream.endpoint,
            headers_timeout,
            _forwarding(router.dropped_headers, upstream.forward) if upstream.forward else router.dropped_headers,
        )


@functools.lru_cache(maxsize=512)
def _merge_query(caller: str, own: str) -> str:
    """The caller's raw query string without its credentials (``DROPPED_QUERY``) and without the parameters the
    endpoint sets itself, then the endpoint's: one ``api-version``, the endpoint's. The caller's kept parameters are
    forwarded exactly as they were encoded."""
    replaced = DROPPED_QUERY.union(_query_name(part) for part in own.split("&") if part)
    kept = [part for part in caller.split("&") if part and _query_name(part) not in replaced]
    if own:
        kept.append(own)
    return "&".join(kept)


def _query_name(part: str) -> str:
    return unquote_plus(part.partition("=")[0]).lower()


@functools.lru_cache(maxsize=64)
def _forwarding(dropped: frozenset[str], forward: frozenset[str]) -> frozenset[str]:
    return dropped - forward


def _swap_model(body: bytes, alias: bytes, model: bytes) -> bytes | None:
    """``body`` with its top-level model replaced, without re-serialising; ``None`` when that is not certain.

    ``alias`` and ``model`` are JSON string tokens (``b'"chat-default"'``). The top-level ``"model": "<alias>"``
    value is always in the body, so if the alias token occurs exactly once, that occurrence is the model's value (an
    escaped quote inside a longer string could only add a second occurrence, never remove this one).
    """
    if len(body) <= _SPLIT_AT_MOST:
        # One search through the body (count then replace would search it twice).
        parts = body.split(alias, 2)
        if len(parts) != 2:
            return None
        return model.join(parts)
    # A large body: one pass finds the model (the OpenAI SDK writes it first) and proves no other occurrence follows
    # (the search a split makes too), then the new body is copied once from views of the old (a split and a join
    # copy it twice).
    at = body.find(alias)
    if at < 0:
        return None
    after = at + len(alias)
    if body.find(alias, after) >= 0:
        return None
    view = memoryview(body)
    return b"".join((view[:at], model, view[after:]))


#: Up to this size a body is split at the alias and joined again; beyond it, joined from views (one copy, not two).
_SPLIT_AT_MOST: Final = 4096


#: What asks a stream for its usage, put first in a body that has no ``stream_options`` of its own.
_USAGE_OPTION: Final = b'"stream_options":{"include_usage":true},'


def _with_usage_option(body: bytes) -> bytes | None:
    """``body`` (a JSON object with at least one field and no ``stream_options``) asking for stream usage, without
    re-serialising: the option goes in right after the opening brace. ``None`` when that is not certain."""
    start = body.find(b"{")
    if start < 0 or body[:start].strip(b" \t\r\n"):
        return None
    return body[: start + 1] + _USAGE_OPTION + body[start + 1 :]
