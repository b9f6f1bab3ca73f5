"""The floor: the benchmarks' routed chat call, written as plainly and as cheaply as we know how, to measure
holyroute against.

Issue 14 asks for holyroute's overhead "near the physical limit". This transport is our best estimate of that limit
for the call the benchmarks make: it does what holyroute does on that call and nothing more, with none of its
structure:
- it reads the request's model, ``stream`` and ``max_tokens``;
- it swaps the model named for the route's, without encoding the body again;
- it sends the request to the route's one endpoint with that endpoint's key, ``Host`` and ``Content-Length``;
- it reads the whole answer and checks that it is one JSON object (by pydantic-core, building only ``model``,
  ``service_tier`` and ``usage``, as holyroute does);
- it finds the first ``finish_reason``;
- it prices the usage;
- it emits the same ``holyroute.request`` event, with the same fields and values, through structlog;
- it hands the answer on in memory.

What it leaves out is holyroute's bookkeeping for failover and limits: no health, cooldown or ejection book, no retry
budget, no deadline, no second attempt, no rate-limit headroom, no plan of legs, no rules, no check that the alias
occurs once in the body, and no bound on what a body may hold: it reads the body with :func:`json.loads` (cheap only
for a short prompt, and not flat in its size). It serves exactly one route and answers only the non-streaming chat
call, and reads ``finish_reason`` only when it is a string.
So it is a floor for what any router must spend on this call, not a router. Benchmark-only: nothing in
``holyroute`` imports it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

import httpx2
import structlog
from pydantic_core import SchemaValidator, core_schema

_ANSWER = SchemaValidator(
    core_schema.typed_dict_schema(
        {
            key: core_schema.typed_dict_field(core_schema.any_schema(), required=False)
            for key in ("model", "service_tier", "usage")
        },
        extra_behavior="ignore",
    )
)
_FINISH_KEY = b'"finish_reason":'
#: Set for the attempt (the endpoint's key and framing), or hop-by-hop (``connection``): not copied from the caller's.
_REPLACED = frozenset((b"host", b"authorization", b"content-length", b"connection", b"accept-encoding"))


class _Floor:
    """One route (``alias`` → ``model`` at ``base_url`` with ``api_key``), priced at ``prices`` (USD per million
    input, cached input and output tokens), named ``price_source`` in its event: the work before the request is sent
    (:meth:`_sent`) and after its answer is read (:meth:`_answered`), which the sync and async transports share."""

    def __init__(
        self,
        inner: Any,
        *,
        alias: str,
        model: str,
        endpoint: str,
        base_url: str,
        api_key: str,
        prices: tuple[float, float, float],
        price_source: str,
    ) -> None:
        self._inner = inner
        self._alias, self._model, self._endpoint = alias, model, endpoint
        self._swap = (f'"model":"{alias}"'.encode(), f'"model":"{model}"'.encode())
        self._url = httpx2.URL(base_url.rstrip("/") + "/chat/completions")
        self._host = self._url.netloc
        self._authorization = f"Bearer {api_key}".encode()
        self._prices = tuple(price / 1e6 for price in prices)
        self._price_source = price_source
        self._ids = itertools.count(1)
        self._logger: Any = None
        self._info_on = True

    def _sent(self, request: httpx2.Request) -> tuple[httpx2.Request, float, float]:
        """The request to send for ``request``, when the call started, and when the request was ready."""
        started = time.monotonic()
        body = request.content
        data = json.loads(body)
        if data.get("model") != self._alias or data.get("stream") is True:
            raise ValueError("the floor serves one route's non-streaming chat call")
        out = data.get("max_tokens")  # what holyroute reads for its token guess (no tpm limit here: unused)
        del out
        body = body.replace(*self._swap, 1)
        headers = object.__new__(httpx2.Headers)
        headers._encoding = None
        headers._list = [(b"Host", b"host", self._host)]
        headers._list += [item for item in request.headers._list if item[1] not in _REPLACED]
        headers._list += [
            (b"authorization", b"authorization", self._authorization),
            (b"accept-encoding", b"accept-encoding", b"gzip, deflate"),  # what the answer may be decoded from
            (b"Content-Length", b"content-length", str(len(body)).encode()),
        ]
        stream = object.__new__(httpx2.ByteStream)
        stream._stream = body
        sent = object.__new__(httpx2.Request)
        sent.method, sent.url, sent.headers, sent.stream = request.method, self._url, headers, stream
        sent.extensions = dict(request.extensions)
        return sent, started, time.monotonic()

    def _answered(self, response: httpx2.Response, raw: bytes, started: float, sent_at: float) -> httpx2.Response:
        """``response``, whose body ``raw`` was read, checked, priced and reported, handed on in memory."""
        if response.status_code != 200:
            raise ValueError("the floor answers only the call that succeeds")
        top = _ANSWER.validate_json(raw)
        usage = top.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        inputs, outputs = usage.get("prompt_tokens_details") or {}, usage.get("completion_tokens_details") or {}
        cached = inputs.get("cached_tokens", 0)
        at = raw.find(_FINISH_KEY)
        finish = None
        if at >= 0:  # '"finish_reason":"stop"' or with a space after the colon
            begin = raw.find(b'"', at + len(_FINISH_KEY)) + 1
            finish = raw[begin : raw.find(b'"', begin)].decode()
        input_price, cached_price, output_price = self._prices
        cost = (prompt - cached) * input_price + cached * cached_price + completion * output_price
        now = time.monotonic()
        fields = {
            "call_id": next(self._ids),
            "route": self._alias,
            "arm": self._model,
            "split_arm": self._model,
            "model": self._alias,
            "upstream_model": self._model,
            "endpoint": self._endpoint,
            "api": "chat",
            "status": 200,
            "outcome": "ok",
            "attempts": 1,
            "attempt_ms": round((now - sent_at) * 1e6) / 1000,
            "sticky": False,
            "stream": False,
            "latency_ms": round((now - started) * 1e6) / 1000,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_tokens": cached,
            "reasoning_tokens": outputs.get("reasoning_tokens", 0),
            "cache_write_tokens": inputs.get("cache_write_tokens", 0),
            "audio_tokens": inputs.get("audio_tokens", 0) + outputs.get("audio_tokens", 0),
            "image_tokens": inputs.get("image_tokens", 0) + outputs.get("image_tokens", 0),
            "cost_usd": round(cost, 10),
            "priced": True,
            "price_source": self._price_source,
            "request_id": _header(response, b"x-request-id"),
            "finish_reason": finish,
            "shadow": False,
        }
        self._emit(fields)
        response.stream = httpx2.ByteStream(raw)
        return response

    def _emit(self, fields: dict[str, Any]) -> None:
        """What ``logger.info("holyroute.request", **fields)`` does on structlog's filtering logger, through the two
        hooks structlog documents for wrapper classes (as holyroute's default sink does): the fields are not spread
        as keywords on the way."""
        logger = self._logger
        if logger is None:
            logger = self._logger = structlog.get_logger("holyroute").bind()
            self._info_on = logger.is_enabled_for(logging.INFO)
        if not self._info_on:
            return
        try:
            args, kw = logger._process_event("info", "holyroute.request", fields)
            logger._logger.info(*args, **kw)
        except structlog.DropEvent:
            pass


class FloorTransport(_Floor, httpx2.BaseTransport):
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        sent, started, sent_at = self._sent(request)
        response = self._inner.handle_request(sent)
        answer = response.stream
        assert isinstance(answer, httpx2.SyncByteStream)
        try:
            raw = b"".join(answer)
        finally:
            answer.close()
        return self._answered(response, raw, started, sent_at)

    def close(self) -> None:
        self._inner.close()


class AsyncFloorTransport(_Floor, httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        sent, started, sent_at = self._sent(request)
        response = await self._inner.handle_async_request(sent)
        answer = response.stream
        assert isinstance(answer, httpx2.AsyncByteStream)
        try:
            raw = b"".join([chunk async for chunk in answer])
        finally:
            await answer.aclose()
        return self._answered(response, raw, started, sent_at)

    async def aclose(self) -> None:
        await self._inner.aclose()


def floor_for(inner: httpx2.BaseTransport, base_url: str, *, api_key: str = "bench-key") -> FloorTransport:
    """The floor for the benchmarks' route (``chat-default`` → ``gpt-4.1`` at endpoint ``bench``), priced as
    holyroute's catalogue prices ``gpt-4.1``, so both emit the same event for the same call."""
    return FloorTransport(inner, **_route(base_url, api_key))


def async_floor_for(
    inner: httpx2.AsyncBaseTransport, base_url: str, *, api_key: str = "bench-key"
) -> AsyncFloorTransport:
    """:func:`floor_for` over an async inner transport."""
    return AsyncFloorTransport(inner, **_route(base_url, api_key))


def _route(base_url: str, api_key: str) -> dict[str, Any]:
    from holyroute.config.catalogue import catalogue_source

    return {
        "alias": "chat-default",
        "model": "gpt-4.1",
        "endpoint": "bench",
        "base_url": base_url,
        "api_key": api_key,
        "prices": (2.0, 0.5, 8.0),  # the catalogue's gpt-4.1 (per million input, cached input, output tokens)
        "price_source": catalogue_source(),
    }


def _header(response: httpx2.Response, name: bytes) -> str | None:
    for _, lower, value in response.headers._list:
        if lower == name:
            return value.decode("latin-1")
    return None
