"""OpenTelemetry traces from holyroute's events: one span per call, one child span per upstream attempt.

holyroute emits an event only when an attempt or a call has ended, so :class:`Tracer` (an event sink) builds its
spans afterwards, with explicit timestamps: a call starts ``latency_ms`` before its ``holyroute.request`` event, a
failed attempt ``attempt_ms`` before its ``holyroute.failover`` event, and the final attempt the request event's own
``attempt_ms`` before it (each attempt kept inside the call and after the one before it). A call's failovers arrive
before its request event and wait for it in a small locked table keyed by the ``call_id`` both events carry, so
concurrent calls never take each other's attempts, and a stream opened on one thread or task and finished on another
keeps them. ``call_id`` is counted per router, so a tracer serves the one router it was built for. The table is
bounded, because a stream abandoned unclosed never emits its request event: failovers whose call has not ended within
an hour, or beyond the newest 10,000, are dropped and counted in :attr:`Tracer.dropped`, and a call ending after that
has no spans for those attempts. The call's span is a child of whatever span is current when its request event
arrives: for a stream, in the code that finished it, not the code that opened it. Attributes follow the OpenTelemetry
GenAI semantic conventions.

This module never records prompt or completion text (holyroute's events carry none), never sets a global tracer
provider, and never lets a failure of its own reach the call being traced. It is the only module that imports
OpenTelemetry, and it needs only ``opentelemetry-api`` (``pip install 'holyroute[otel]'``).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as error:  # pragma: no cover - exercised in a test with the package hidden
    raise ImportError(
        "holyroute.tracing needs the OpenTelemetry API, which is not installed: pip install 'holyroute[otel]'"
    ) from error

from holyroute import __version__
from holyroute.drivers.transport import router_of
from holyroute.forking import new_lock

if TYPE_CHECKING:
    import httpx2

    from holyroute.core.call import Router
    from holyroute.drivers.transport import AsyncTransport, Transport

__all__ = ["Tracer", "instrument"]

#: ``api`` of an event -> ``gen_ai.operation.name``. The Responses API is a chat operation in the GenAI conventions,
#: told apart by ``openai.api.type``.
_OPERATIONS: Final = {
    "chat": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "completions": "text_completion",
}
_API_TYPES: Final = {"chat": "chat_completions", "responses": "responses"}

#: Host patterns -> ``gen_ai.provider.name`` (the conventions' well-known values). Any other host (a proxy, a
#: self-hosted server, 127.0.0.1) names no provider: the attribute is left out rather than guessed.
_PROVIDERS: Final = (
    (re.compile(r"(^|\.)openai\.com$"), "openai"),
    (re.compile(r"\.openai\.azure\.com$"), "azure.ai.openai"),
    (re.compile(r"\.(services\.ai|models\.ai|inference\.ai)\.azure\.com$"), "azure.ai.inference"),
    (re.compile(r"^generativelanguage\.googleapis\.com$"), "gcp.gemini"),
    (re.compile(r"(^|-)aiplatform\.googleapis\.com$"), "gcp.vertex_ai"),
    (re.compile(r"^bedrock(-runtime)?[.-].*\.amazonaws\.com$"), "aws.bedrock"),
    (re.compile(r"(^|\.)anthropic\.com$"), "anthropic"),
    (re.compile(r"(^|\.)deepseek\.com$"), "deepseek"),
    (re.compile(r"(^|\.)mistral\.ai$"), "mistral_ai"),
    (re.compile(r"(^|\.)groq\.com$"), "groq"),
    (re.compile(r"(^|\.)x\.ai$"), "x_ai"),
    (re.compile(r"(^|\.)perplexity\.ai$"), "perplexity"),
    (re.compile(r"(^|\.)cohere\.(com|ai)$"), "cohere"),
    (re.compile(r"\.ml\.cloud\.ibm\.com$"), "ibm.watsonx.ai"),
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

#: Failovers kept (over all calls) while they wait for their call's request event; past this, the calls waiting
#: longest are dropped first. At most ``retry.max_attempts`` (50) per call, so this holds hundreds of calls.
_MAX_WAITING: Final = 10_000
#: Seconds a call's failovers wait for its request event (a stream may run long after its failovers): a call that
#: never ends, such as a stream abandoned unclosed, is forgotten after this.
_MAX_WAIT_S: Final = 3600.0
#: error.type for a failure without a low-cardinality name (the conventions' fallback value).
_OTHER: Final = "_OTHER"
_ERROR_NAME: Final = re.compile(r"[A-Za-z][\w .-]{0,63}")


@dataclass(frozen=True, slots=True)
class _Failed:
    """One abandoned attempt, from its ``holyroute.failover`` event, waiting for its call's request event."""

    route: str
    arm: str | None
    endpoint: str | None
    upstream_model: str | None
    attempt: int
    status: int | None
    error: str | None
    reason: str | None
    wait_ns: int
    next_endpoint: str | None
    start_ns: int  # wall clock, for the span
    end_ns: int
    seen_s: float  # the router's clock when its event came, for forgetting it if its call never ends


@dataclass(frozen=True, slots=True)
class _Frame:
    """A call's span, as the parent context of its attempts, and the time bounds they are drawn within."""

    context: Context
    operation: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Server:
    """What the conventions say about one configured endpoint: where it is and, if known, who runs it."""

    address: str | None
    port: int | None
    provider: str | None

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.provider is not None:
            attrs["gen_ai.provider.name"] = self.provider
        if self.address is not None:
            attrs["server.address"] = self.address
            if self.port is not None:
                attrs["server.port"] = self.port
        return attrs


class Tracer:
    """An event sink that turns a router's events into OpenTelemetry spans; see the module docstring.

    ``target`` is the client (or transport, or router) whose endpoints the spans describe; attach the tracer to the
    same one, or let :func:`instrument` do both; a tracer serves that one router (its calls' ``call_id`` are counted
    per router). ``tracer_provider`` defaults to the global one. ``capture_content`` is not supported: holyroute's
    events hold no prompt or completion text, so there is nothing to capture.
    """

    def __init__(
        self,
        target: Router | Transport | AsyncTransport | httpx2.Client | httpx2.AsyncClient,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        capture_content: bool = False,
    ) -> None:
        if capture_content:
            raise ValueError(
                "holyroute.tracing: capture_content=True is not supported; holyroute's events carry no prompt or "
                "completion text. Use an SDK-level GenAI instrumentation to record content."
            )
        router = router_of(target)
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("holyroute", __version__, tracer_provider=tracer_provider)
        self._servers = {name: _server_of(endpoint.base_url) for name, endpoint in router.config.endpoints.items()}
        self._no_server = _Server(None, None, None)
        self._routes = router.routes
        self._clock = router.clock
        self._lock = new_lock()
        # call_id -> its failovers so far, the call whose first failover came earliest first.
        self._waiting: OrderedDict[int, list[_Failed]] = OrderedDict()
        self._held = 0  # failovers in self._waiting
        #: Failovers dropped before their call's request event came (see the module docstring), or without a call_id.
        self.dropped = 0

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        try:
            if event == "holyroute.failover":
                self._failover(fields)
            elif event == "holyroute.request":
                self._request(fields)
        except Exception:  # tracing must never break the call it describes
            import structlog

            structlog.get_logger("holyroute").exception("holyroute.tracing_failed", event_name=event)

    # ---- the two events ------------------------------------------------------------------------------------------

    def _failover(self, fields: Mapping[str, Any]) -> None:
        wall, now = time.time_ns(), self._clock()
        took = _ns(fields.get("attempt_ms"))
        call_id = fields.get("call_id")
        failed = _Failed(
            route=str(fields.get("route")),
            arm=fields.get("arm"),
            endpoint=fields.get("endpoint"),
            upstream_model=fields.get("upstream_model"),
            attempt=int(fields.get("attempt") or 0),
            status=fields.get("status"),
            error=fields.get("error"),
            reason=fields.get("reason"),
            wait_ns=_ns((fields.get("wait_s") or 0.0) * 1000),
            next_endpoint=fields.get("next_endpoint"),
            start_ns=wall - took,
            end_ns=wall,
            seen_s=now,
        )
        with self._lock:
            if not isinstance(call_id, int):
                self.dropped += 1
                return
            self._waiting.setdefault(call_id, []).append(failed)
            self._held += 1
            self._forget_stale(now)

    def _forget_stale(self, now: float) -> None:
        """Under the lock: drop the calls waiting longest while one has waited too long or too much is held."""
        waiting = self._waiting
        while waiting:
            failed = next(iter(waiting.values()))
            if self._held <= _MAX_WAITING and now - failed[0].seen_s <= _MAX_WAIT_S:
                return
            waiting.popitem(last=False)
            self._held -= len(failed)
            self.dropped += len(failed)

    def _request(self, fields: Mapping[str, Any]) -> None:
        end = time.time_ns()
        start = end - _ns(fields.get("latency_ms"))
        attempts = int(fields.get("attempts") or 0)
        failed_call = fields.get("outcome") == "error"
        call_id = fields.get("call_id")
        failed: Sequence[_Failed] = ()
        if isinstance(call_id, int):
            with self._lock:
                failed = self._waiting.pop(call_id, ())
                self._held -= len(failed)

        api = str(fields.get("api"))
        operation = _OPERATIONS.get(api, api)
        alias = str(fields.get("model") or fields.get("route"))
        server = self._server(fields.get("endpoint"))
        call = self._tracer.start_span(
            f"{operation} {alias}",
            kind=SpanKind.CLIENT,
            start_time=start,
            attributes=_call_attributes(fields, operation, alias, server),
        )
        frame = _Frame(trace.set_span_in_context(call), operation, start, end)
        floor = start
        for attempt in failed:
            floor = self._attempt_span(frame, attempt, floor)
        # A failed call that waited after its last attempt and then gave up reported that attempt as a failover too.
        if attempts > len(failed):
            self._final_attempt_span(frame, fields, attempts, failed[-1] if failed else None, floor)
        if failed_call:
            call.set_status(Status(StatusCode.ERROR, _description(fields)))
        call.end(end_time=end)

    # ---- attempt spans -------------------------------------------------------------------------------------------

    def _attempt_span(self, frame: _Frame, failed: _Failed, floor: int) -> int:
        """A failed attempt's span, starting no earlier than ``floor`` (the previous one's end); returns its end."""
        start = _within(failed.start_ns, floor, frame.end)
        end = _within(failed.end_ns, start, frame.end)
        attrs = _attempt_attributes(
            frame.operation,
            route=failed.route,
            arm=failed.arm,
            endpoint=failed.endpoint,
            model=failed.upstream_model,
            number=failed.attempt,
        )
        attrs.update(self._server(failed.endpoint).attributes())
        if failed.status is not None:
            attrs["http.response.status_code"] = failed.status
        attrs["error.type"] = _error_type(failed.status, failed.error)
        if failed.reason:
            attrs["holyroute.reason"] = failed.reason
        if failed.wait_ns:
            attrs["holyroute.wait_s"] = failed.wait_ns / 1e9
        span = self._tracer.start_span(
            _span_name(frame.operation, failed.upstream_model),
            context=frame.context,
            kind=SpanKind.CLIENT,
            start_time=start,
            attributes=attrs,
        )
        span.set_status(Status(StatusCode.ERROR, failed.reason or attrs["error.type"]))
        span.end(end_time=end)
        return end

    def _final_attempt_span(
        self, frame: _Frame, fields: Mapping[str, Any], number: int, before: _Failed | None, floor: int
    ) -> None:
        """The attempt that produced the call's outcome: it started ``attempt_ms`` before the call ended (or, without
        that field, when the one before ended plus the wait), no earlier than ``floor`` (the one before's end)."""
        took = fields.get("attempt_ms")
        if isinstance(took, int | float):
            sent = frame.end - _ns(took)
        else:
            sent = frame.start if before is None else before.end_ns + before.wait_ns
        start = _within(sent, floor, frame.end)
        route = str(fields.get("route"))
        arm, endpoint, model = fields.get("arm"), fields.get("endpoint"), fields.get("upstream_model")
        status: int | None = fields.get("status")
        error: str | None = fields.get("error")
        description: str | None = _description(fields)
        if before is not None and before.next_endpoint is not None and before.next_endpoint != endpoint:
            # The call gave up after this attempt raised, and its event describes an earlier answer (the one handed
            # back to the caller): this attempt's own error is not reported.
            endpoint, status, error, description = before.next_endpoint, None, None, None
            arm, model = self._upstream_at(route, before.arm, endpoint)
        attrs = _attempt_attributes(
            frame.operation, route=route, arm=arm, endpoint=endpoint, model=model, number=number
        )
        attrs.update(self._server(endpoint).attributes())
        if fields.get("fallback") is not None and arm == fields.get("arm"):
            attrs["holyroute.fallback"] = fields["fallback"]
        if status is not None:
            attrs["http.response.status_code"] = status
        failed = fields.get("outcome") == "error"
        if failed:
            attrs["error.type"] = _error_type(status, error)
        elif model is not None:
            attrs["gen_ai.response.model"] = model
        span = self._tracer.start_span(
            _span_name(frame.operation, model),
            context=frame.context,
            kind=SpanKind.CLIENT,
            start_time=start,
            attributes=attrs,
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, description))
        span.end(end_time=frame.end)

    def _upstream_at(self, route: str, arm: str | None, endpoint: str) -> tuple[str | None, str | None]:
        """The arm and model an attempt on ``endpoint`` used, when the route and its fallbacks say so unambiguously
        (preferring ``arm``, the previous attempt's)."""
        plan = self._routes.get(route)
        if plan is None:
            return None, None
        plans = [plan, *(self._routes[alias] for alias in plan.fallbacks if alias in self._routes)]
        found = {(a.name, u.model) for p in plans for a in p.arms for u in a.upstreams if u.endpoint == endpoint}
        same_arm = {pair for pair in found if pair[0] == arm}
        if len(same_arm) == 1:
            return same_arm.pop()
        return found.pop() if len(found) == 1 else (None, None)

    def _server(self, endpoint: object) -> _Server:
        return self._servers.get(endpoint, self._no_server) if isinstance(endpoint, str) else self._no_server


def instrument(
    target: Router | Transport | AsyncTransport | httpx2.Client | httpx2.AsyncClient,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    capture_content: bool = False,
) -> Tracer:
    """Trace every later call through ``target`` (a client from ``holyroute.client()`` / ``async_client()``, a
    transport or a router) and return the :class:`Tracer`. Instrumenting the same target twice for the same
    provider returns the first tracer instead of doubling every span. Example::

        http_client = holyroute.client("holyroute.yaml")
        instrument(http_client)  # spans go to the global tracer provider, or pass tracer_provider=...
        client = openai.OpenAI(http_client=http_client)
    """
    router = router_of(target)
    for sink in router.sinks:
        if isinstance(sink, Tracer) and sink.tracer_provider is tracer_provider:
            return sink
    tracer = Tracer(router, tracer_provider=tracer_provider, capture_content=capture_content)
    router.add_sink(tracer)
    return tracer


# ---- pure helpers: attributes, names ------------------------------------------------------------------------------


def _call_attributes(fields: Mapping[str, Any], operation: str, alias: str, server: _Server) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.request.model": alias}
    attrs.update(server.attributes())
    api_type = _API_TYPES.get(str(fields.get("api")))
    if api_type is not None:
        attrs["openai.api.type"] = api_type
    status = fields.get("status")
    if status is not None:
        attrs["http.response.status_code"] = status
    failed = fields.get("outcome") == "error"
    if failed:
        attrs["error.type"] = _error_type(status, fields.get("error"))
    elif fields.get("upstream_model") is not None:
        attrs["gen_ai.response.model"] = fields["upstream_model"]
    if fields.get("stream"):
        attrs["gen_ai.request.stream"] = True
        if fields.get("ttft_ms") is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = fields["ttft_ms"] / 1000
    usage = {
        "gen_ai.usage.input_tokens": "prompt_tokens",
        "gen_ai.usage.output_tokens": "completion_tokens",
        "gen_ai.usage.cache_read.input_tokens": "cached_tokens",
        "gen_ai.usage.reasoning.output_tokens": "reasoning_tokens",
    }
    for name, key in usage.items():
        if fields.get(key) is not None:
            attrs[name] = fields[key]
    if fields.get("finish_reason"):
        attrs["gen_ai.response.finish_reasons"] = (fields["finish_reason"],)
    own = {
        "holyroute.route": "route",
        "holyroute.arm": "arm",
        "holyroute.endpoint": "endpoint",
        "holyroute.fallback": "fallback",
        "holyroute.attempts": "attempts",
        "holyroute.cost_usd": "cost_usd",
        "holyroute.outcome": "outcome",
        "holyroute.request_id": "request_id",
        "holyroute.cache": "cache",
        "holyroute.saved_usd": "saved_usd",
    }
    for name, key in own.items():
        if fields.get(key) is not None:
            attrs[name] = fields[key]
    if fields.get("split_arm") not in (None, fields.get("arm")):
        attrs["holyroute.split_arm"] = fields["split_arm"]
    if fields.get("shadow"):
        attrs["holyroute.shadow"] = True
    return attrs


def _attempt_attributes(
    operation: str, *, route: str, arm: object, endpoint: object, model: object, number: int
) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation}
    if model is not None:
        attrs["gen_ai.request.model"] = model
    attrs["holyroute.route"] = route
    if arm is not None:
        attrs["holyroute.arm"] = arm
    if endpoint is not None:
        attrs["holyroute.endpoint"] = endpoint
    attrs["holyroute.attempt"] = number
    return attrs


def _span_name(operation: str, model: object) -> str:
    return f"{operation} {model}" if model else operation


def _error_type(status: object, error: object) -> str:
    """A low-cardinality error.type: the HTTP status, else the exception's type name, else a short label."""
    if isinstance(status, int) and status >= 400:
        return str(status)
    if not isinstance(error, str) or not error:
        return _OTHER
    head = error.split(";", 1)[0].strip().removeprefix("stream broken: ")
    if _ERROR_NAME.fullmatch(head):
        return head.replace(" ", "_")
    if "without its final event" in error:
        return "incomplete_stream"
    return _OTHER


def _description(fields: Mapping[str, Any]) -> str:
    error = fields.get("error")
    return str(error) if error else f"HTTP {fields.get('status')}"


def _server_of(base_url: str) -> _Server:
    parts = urlsplit(base_url)
    host = parts.hostname  # never the userinfo
    if not host:
        return _Server(None, None, None)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    provider = next((name for pattern, name in _PROVIDERS if pattern.search(host)), None)
    return _Server(host, port, provider)


def _ns(milliseconds: object) -> int:
    return round(float(milliseconds) * 1_000_000) if isinstance(milliseconds, int | float) else 0


def _within(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))
