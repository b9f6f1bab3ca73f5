"""Active health checks: what one cheap probe of an endpoint says about it, and when to send the next one.

A probe is ``GET {base_url}/models`` (or, with ``probe: chat``, a one-token chat completion) sent with the endpoint's
own credentials, exactly as the transports would send them. :func:`classify` turns the answer into a verdict:
``healthy``, ``degraded`` (rate-limited or slower than ``slow_ms``), ``unhealthy`` (no answer, 5xx, 401, 403, 404) or
``unknown`` (an answer that says nothing about health, such as a 400 to a malformed probe). The decisions
(:func:`probe_request`, :func:`classify`, the schedule, :func:`route_paths`) perform no I/O; the drivers
(:class:`HealthChecker`, one daemon thread; :class:`AsyncHealthChecker`, one task; :func:`check_once`, a pool of at
most eight threads) only send what they are told, one probe at a time per checker, each bounded by ``timeout_s``. This
module must never log or return a key, a header value or response text: an error is reported as an exception type
(``ConnectError``) or an HTTP status with the provider's error code (``401 invalid_api_key``), nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx2

from holyroute.config.schema import Config, EndpointRef, HealthCheck
from holyroute.core.health import ProbeStatus
from holyroute.exceptions import ConfigError
from holyroute.forking import after_fork_in_child, new_lock

if TYPE_CHECKING:
    from holyroute.core.call import Router

__all__ = [
    "ArmCheck",
    "AsyncHealthChecker",
    "HealthChecker",
    "PathCheck",
    "ProbeResult",
    "RouteCheck",
    "check_once",
    "check_paths",
    "classify",
    "dead_arms",
    "judge_routes",
    "listed_models",
    "probe_request",
    "render_arms",
    "render_results",
    "route_endpoints",
    "route_paths",
]

#: Statuses that count as a usable path for a route.
LIVE: Final = frozenset({"healthy", "degraded"})
_UNHEALTHY_STATUS: Final = frozenset({401, 403, 404})
_TRANSIENT_STATUS: Final = frozenset({408, 409, 429})
_MAX_BODY: Final = 16384  # an error body or a one-token answer fits; a long model list is not read to the end
_MAX_MODEL_LIST: Final = 4 * 1024 * 1024  # holyroute check reads a model list whole, up to this
_CHECK_ONCE_WORKERS: Final = 8
_JOIN_GRACE_S: Final = 1.0
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_EVENT: Final = "holyroute.endpoint_health"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict on one endpoint. ``error`` is an exception type or ``"<status> <code>"``, never text."""

    endpoint: str
    status: ProbeStatus
    latency_ms: float | None
    http_status: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything needed to probe one endpoint, prepared once. ``headers`` hold the key: never log them."""

    endpoint: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    label: str  # "GET /models": safe to log
    check: HealthCheck

    def __repr__(self) -> str:
        return f"_Plan(endpoint={self.endpoint!r}, label={self.label!r})"


# ---- the decisions (no I/O) -----------------------------------------------------------------------------------


def probe_request(config: Config, endpoint: str) -> tuple[str, str, list[tuple[str, str]], bytes | None]:
    """Method, URL, headers and body of one probe of ``endpoint``, with its credentials as the transports send them.

    >>> cfg = Config.load({"endpoints": {"e": {"base_url": "http://127.0.0.1:1/v1", "api_key": "k"}},
    ...                    "routes": {"r": {"targets": [{"model": "m", "endpoints": ["e"]}]}}})
    >>> method, url, _, body = probe_request(cfg, "e")
    >>> method, url, body
    ('GET', 'http://127.0.0.1:1/v1/models', None)
    """
    plan = _plan(config, endpoint)
    return plan.method, plan.url, list(plan.headers), plan.body


def classify(
    endpoint: str,
    *,
    http_status: int | None,
    headers: Mapping[str, str],
    latency_ms: float | None,
    error: str | None,
    body: bytes,
    slow_ms: float,
) -> ProbeResult:
    """The verdict on one probe's answer (``http_status``) or failure (``error``, an exception type name).

    No answer, 5xx, 401, 403, 404: unhealthy. 408, 409, 429, no requests or tokens left
    (``x-ratelimit-remaining-*: 0``), or an answer slower than ``slow_ms``: degraded. Other 2xx: healthy. Anything
    else (3xx, other 4xx) says nothing about the endpoint's health: unknown.

    >>> classify("e", http_status=429, headers={}, latency_ms=3.0, error=None, body=b"", slow_ms=2000).status
    'degraded'
    """
    lower = {key.lower(): value for key, value in headers.items()}
    remaining_requests = _count(lower.get("x-ratelimit-remaining-requests"))
    remaining_tokens = _count(lower.get("x-ratelimit-remaining-tokens"))
    status: ProbeStatus
    if error is not None or http_status is None:
        status = "unhealthy"
        error = error or "no answer"
    else:
        if http_status >= 400:
            code = _error_code(body)
            error = f"{http_status} {code}" if code else str(http_status)
        if http_status >= 500 or http_status in _UNHEALTHY_STATUS:
            status = "unhealthy"
        elif (
            http_status in _TRANSIENT_STATUS
            or (200 <= http_status < 300 and 0 in (remaining_requests, remaining_tokens))
            or (200 <= http_status < 300 and latency_ms is not None and latency_ms > slow_ms)
        ):
            status = "degraded"
        elif 200 <= http_status < 300:
            status = "healthy"
        else:
            status = "unknown"
            error = error or str(http_status)
    return ProbeResult(endpoint, status, latency_ms, http_status, remaining_requests, remaining_tokens, error)


def route_paths(config: Config, results: Mapping[str, ProbeResult]) -> dict[str, bool]:
    """For each route alias: whether a healthy or degraded endpoint serves one of its targets or its fallbacks.

    Fallbacks are followed one level deep, as the router follows them. An endpoint with no result counts as down.
    """
    return {
        alias: any(_live(results, name) for name in route_endpoints(config, alias, fallbacks=True))
        for alias in config.routes
    }


def route_endpoints(config: Config, alias: str, *, fallbacks: bool) -> list[str]:
    """The endpoints a route's targets (and, with ``fallbacks``, its fallback aliases') send to, in order, once each."""
    aliases = [alias, *config.routes[alias].fallbacks] if fallbacks else [alias]
    names: dict[str, None] = {}
    for name in aliases:
        for target in config.routes[name].arms:  # a rollout's stable and candidate, or the targets
            for entry in target.endpoints:
                names[entry if isinstance(entry, str) else entry.endpoint] = None
    return list(names)


def dead_arms(config: Config, alias: str, results: Mapping[str, ProbeResult]) -> list[str]:
    """Arms of ``alias`` (positive weight) with no live endpoint of their own and no live fallback endpoint.

    Failover never crosses to another arm of the split, so the calls such an arm draws fail even when
    :func:`route_paths` finds a path through another arm.
    """
    route = config.routes[alias]
    if any(
        _live(results, name)
        for fallback in route.fallbacks
        for name in route_endpoints(config, fallback, fallbacks=False)
    ):
        return []
    return [
        target.arm
        for target in route.arms
        if target.weight > 0
        and not any(_live(results, e if isinstance(e, str) else e.endpoint) for e in target.endpoints)
    ]


def _live(results: Mapping[str, ProbeResult], endpoint: str) -> bool:
    found = results.get(endpoint)
    return found is not None and found.status in LIVE


def _plan(config: Config, name: str, *, probe: str | None = None, model: str | None = None) -> _Plan:
    """How to probe endpoint ``name``: as its ``health_check`` says, or with ``probe`` (and, for chat, ``model``)."""
    try:
        endpoint = config.endpoints[name]
    except KeyError:
        known = ", ".join(sorted(config.endpoints)) or "(none defined)"
        raise KeyError(f"unknown endpoint {name!r}; known: {known}") from None
    check = endpoint.health_check or HealthCheck()
    # The same credentials, in the same form, as a routed attempt gets (one method builds both).
    headers = list(endpoint.request_headers())
    query = endpoint.query_string()
    suffix = f"?{query}" if query else ""
    if (probe or check.probe) == "models":
        return _Plan(name, "GET", f"{endpoint.base_url}/models{suffix}", tuple(headers), None, "GET /models", check)
    model = model or check.model or _first_model(config, name)
    if model is None:
        raise ConfigError(
            f"endpoints.{name}.health_check.model: no route sends traffic to '{name}', so a chat probe has no "
            "model to ask; set health_check.model or use probe: models"
        )
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
        separators=(",", ":"),
    ).encode("utf-8")
    if not any(k == "content-type" for k, _ in headers):
        headers.append(("content-type", "application/json"))
    url = f"{endpoint.base_url}/chat/completions{suffix}"
    return _Plan(name, "POST", url, tuple(headers), body, "POST /chat/completions", check)


def _first_model(config: Config, endpoint: str) -> str | None:
    """The upstream model the first route in the configuration sends to ``endpoint`` (its rename, if any)."""
    for route in config.routes.values():
        for target in route.targets:
            for entry in target.endpoints:
                ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
                if ref.endpoint == endpoint:
                    return ref.model or target.model
    return None


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(float(value.strip()))
    except (ValueError, OverflowError):
        return None
    return number if number >= 0 else None


def _error_code(body: bytes) -> str | None:
    """OpenAI's ``error.code`` or ``error.type`` (Google's ``error.status``) when it is a short token; never text."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; a deeply nested body recurses
        return None
    if isinstance(data, list) and data:
        data = data[0]  # Gemini's compatibility layer wraps the error in a list
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    for field in ("code", "type", "status"):
        value = error.get(field)
        if isinstance(value, str) and _SAFE_CODE.match(value):
            return value
    return None


def _reason(result: ProbeResult, label: str, slow_ms: float) -> str:
    """A human sentence for the event: ``"GET /models answered 503 in 12 ms"``."""
    took = f"{result.latency_ms:.0f} ms" if result.latency_ms is not None else "unknown time"
    if result.http_status is None:
        return f"{label} failed after {took}: {result.error}"
    text = f"{label} answered {result.http_status} in {took}"
    if result.error is not None and result.error != str(result.http_status):
        text += f" ({result.error.partition(' ')[2]})"
    if result.status == "degraded" and 200 <= result.http_status < 300:
        if result.remaining_requests == 0:
            text += "; x-ratelimit-remaining-requests 0"
        elif result.remaining_tokens == 0:
            text += "; x-ratelimit-remaining-tokens 0"
        else:
            text += f"; slower than slow_ms ({slow_ms:g})"
    return text


class _Schedule:
    """When each endpoint is next due. Each keeps its own interval; a probe that overran its interval is not
    made up for (the next one is a full interval after it ended), so a slow endpoint never causes a burst."""

    __slots__ = ("_due", "_intervals")

    def __init__(self, intervals: Mapping[str, float]) -> None:
        self._intervals = dict(intervals)
        self._due: dict[str, float] = {}

    def due(self, now: float) -> list[str]:
        if not self._due:
            self._due = dict.fromkeys(self._intervals, now)
        return sorted((name for name, at in self._due.items() if at <= now), key=lambda name: self._due[name])

    def done(self, name: str, now: float) -> None:
        following = self._due[name] + self._intervals[name]
        self._due[name] = following if following > now else now + self._intervals[name]

    def delay(self, now: float) -> float:
        if not self._due:
            return 0.0
        return max(0.0, min(self._due.values()) - now)


class _Book:
    """The part both checkers share: the plans, the schedule, and recording a verdict (with its event)."""

    __slots__ = ("_reported", "clock", "plans", "router", "schedule")

    def __init__(self, router: Router, clock: Callable[[], float] | None) -> None:
        self._reported: str | None = None  # the exception type last reported by a failed iteration
        self.router = router
        self.clock = clock or router.clock
        config = router.config
        self.plans = {name: _plan(config, name) for name, e in config.endpoints.items() if e.health_check is not None}
        self.schedule = _Schedule({name: plan.check.interval_s for name, plan in self.plans.items()})

    def record(self, plan: _Plan, result: ProbeResult) -> None:
        now = self.clock()
        self.schedule.done(plan.endpoint, now)
        previous = self.router.health.record_probe(
            plan.endpoint, result.status, now, latency_ms=result.latency_ms, error=result.error
        )
        if previous is not None:
            self.router.emit(
                _EVENT,
                {
                    "endpoint": plan.endpoint,
                    "status": result.status,
                    "previous": previous,
                    "latency_ms": result.latency_ms,
                    "remaining_requests": result.remaining_requests,
                    "remaining_tokens": result.remaining_tokens,
                    "error": result.error,
                    "reason": _reason(result, plan.label, plan.check.slow_ms),
                },
            )

    def iteration_ok(self) -> None:
        self._reported = None

    def iteration_failed(self, loop: str, exc: Exception) -> float:
        """One iteration of a checker's loop raised: report it (once while the same failure repeats, as a type,
        never a message that could hold a secret) and return how long to pause before the next iteration."""
        kind = type(exc).__name__
        if kind != self._reported:
            self._reported = kind
            self.router.emit(
                "holyroute.background_error",
                {
                    "loop": loop,
                    "error": kind,
                    "reason": f"{loop}: one iteration raised {kind}; the loop goes on (repeats are not reported)",
                },
            )
        return min((plan.check.interval_s for plan in self.plans.values()), default=1.0)

    @property
    def join_timeout(self) -> float:
        # An in-flight probe ends within its own timeout (per connect / read / write phase).
        return max((plan.check.timeout_s for plan in self.plans.values()), default=0.0) + _JOIN_GRACE_S


# ---- the drivers ----------------------------------------------------------------------------------------------


def _request(plan: _Plan) -> httpx2.Request:
    t = plan.check.timeout_s
    return httpx2.Request(
        plan.method,
        plan.url,
        headers=list(plan.headers),
        content=plan.body,
        extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
    )


def _judge(
    plan: _Plan,
    *,
    status: int | None,
    headers: Mapping[str, str],
    took_s: float,
    error: BaseException | None,
    body: bytes,
) -> ProbeResult:
    return classify(
        plan.endpoint,
        http_status=status,
        headers=headers,
        latency_ms=round(took_s * 1000, 3),
        error=type(error).__name__ if error is not None else None,
        body=body,
        slow_ms=plan.check.slow_ms,
    )


def _probe(transport: httpx2.BaseTransport, plan: _Plan, clock: Callable[[], float]) -> ProbeResult:
    """Send one probe and judge it; never raises for a failed probe, always closes the response."""
    return _probe_reading(transport, plan, clock, _MAX_BODY)[0]


def _probe_reading(
    transport: httpx2.BaseTransport, plan: _Plan, clock: Callable[[], float], limit: int
) -> tuple[ProbeResult, bytes]:
    """:func:`_probe`, also handing back the first ``limit`` bytes of the answer (a model list, for check)."""
    status: int | None = None
    headers: Mapping[str, str] = {}
    body = bytearray()
    failure: BaseException | None = None
    started = clock()
    try:
        response = transport.handle_request(_request(plan))
        try:
            status, headers = response.status_code, dict(response.headers)
            stream = response.stream
            assert isinstance(stream, httpx2.SyncByteStream)
            chunks = iter(stream)
            try:
                for chunk in chunks:
                    body += chunk
                    if len(body) >= limit:
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        finally:
            response.close()
    except Exception as exc:  # any failure to get an answer is the verdict, not a crash of the checker
        failure = exc
    took = clock() - started
    return _judge(plan, status=status, headers=headers, took_s=took, error=failure, body=bytes(body)), bytes(body)


async def _aprobe(transport: httpx2.AsyncBaseTransport, plan: _Plan, clock: Callable[[], float]) -> ProbeResult:
    """The async twin of :func:`_probe`."""
    status: int | None = None
    headers: Mapping[str, str] = {}
    body = bytearray()
    failure: BaseException | None = None
    started = clock()
    try:
        response = await transport.handle_async_request(_request(plan))
        try:
            status, headers = response.status_code, dict(response.headers)
            stream = response.stream
            assert isinstance(stream, httpx2.AsyncByteStream)
            chunks = aiter(stream)
            try:
                async for chunk in chunks:
                    body += chunk
                    if len(body) >= _MAX_BODY:
                        break
            finally:
                aclose: Callable[[], Awaitable[Any]] | None = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        finally:
            await response.aclose()
    except Exception as exc:  # CancelledError is not an Exception: closing the checker still cancels a probe
        failure = exc
    return _judge(plan, status=status, headers=headers, took_s=clock() - started, error=failure, body=bytes(body))


class HealthChecker:
    """Probes every endpoint that has ``health_check`` configured, each on its own interval, from one daemon thread.

    Probes go one at a time through ``transport`` and their verdicts go to ``router.health``; a change of status
    emits ``holyroute.endpoint_health``. ``clock`` (default: the router's) times probes and schedules them;
    ``sleep`` replaces the wait between rounds (default: an event wait that :meth:`close` interrupts at once).

    >>> checker = HealthChecker(router, transport)  # doctest: +SKIP
    >>> checker.start(); ...; checker.close()       # doctest: +SKIP
    """

    def __init__(
        self,
        router: Router,
        transport: httpx2.BaseTransport,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self._book = _Book(router, clock)
        self._transport = transport
        self._stop = threading.Event()
        self._given_sleep = sleep
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._thread: threading.Thread | None = None
        self._lock = new_lock()
        after_fork_in_child(self, type(self)._in_forked_child)

    @property
    def endpoints(self) -> list[str]:
        """The endpoints this checker probes."""
        return list(self._book.plans)

    def start(self) -> None:
        """Start the probing thread, once; nothing happens when no endpoint has ``health_check`` or after close."""
        with self._lock:
            if self._thread is not None or self._stop.is_set() or not self._book.plans:
                return
            self._thread = threading.Thread(target=self._run, name="holyroute-health", daemon=True)
            self._thread.start()

    def use(self, transport: httpx2.BaseTransport) -> None:
        """Probe through ``transport`` from now on (a forked child's own connection pool)."""
        self._transport = transport

    def _in_forked_child(self) -> None:
        """This checker's copy in a forked child (``holyroute.forking``): its thread was the parent's. One that was
        probing probes again from a thread of the child's own, started on the child's first request (no thread may
        start inside the fork); until then the child keeps the verdicts it was forked with."""
        probing = self._thread is not None and not self._stop.is_set()
        self._thread = None
        if probing:
            self._stop = threading.Event()  # the parent's thread may have held the old one's lock as it forked
            self._sleep = self._given_sleep if self._given_sleep is not None else self._stop.wait
            self._book.router.on_next_call(self.start)

    def probe_due(self) -> float:
        """Probe, in this thread, every endpoint due now; return the seconds until the next one is due."""
        book = self._book
        for name in book.schedule.due(book.clock()):
            if self._stop.is_set():
                break
            plan = book.plans[name]
            book.record(plan, _probe(self._transport, plan, book.clock))
        return book.schedule.delay(book.clock())

    def close(self) -> None:
        """Stop probing and join the thread (bounded by the longest probe timeout). Safe to call twice, or from
        the checker's own thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._book.join_timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.probe_due()
            except Exception as exc:  # one bad iteration never ends the thread: reported, paused, retried
                delay = self._book.iteration_failed("health_check", exc)
            else:
                self._book.iteration_ok()
            if self._stop.is_set():
                break
            self._sleep(delay)


class AsyncHealthChecker:
    """The async twin of :class:`HealthChecker`: one task, started from inside the event loop on first use.

    Under asyncio it is an ``asyncio`` task; under trio a system task with its own cancel scope (it outlives the
    caller's task, as the checker must). ``sleep`` defaults to ``anyio.sleep``, which both run.
    """

    def __init__(
        self,
        router: Router,
        transport: httpx2.AsyncBaseTransport,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._book = _Book(router, clock)
        self._transport = transport
        if sleep is None:
            import anyio

            sleep = anyio.sleep
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._trio: tuple[Any, Any] | None = None  # (trio.CancelScope, trio.Event set when the task ended)
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        """The endpoints this checker probes."""
        return list(self._book.plans)

    def ensure_started(self) -> None:
        """Create the probing task in the running loop unless one is running; a no-op after :meth:`aclose`.

        A task that ended with its event loop (``asyncio.run`` returned) is replaced in the next loop.
        """
        if self._closed or not self._book.plans or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio, if it is running (else nothing to attach a task to)
            self._start_trio()
            return
        self._task = loop.create_task(self._run(), name="holyroute-health")

    def _start_trio(self) -> None:
        if "trio" not in sys.modules or (self._trio is not None and not self._trio[1].is_set()):
            return
        import trio

        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            return
        scope, ended = trio.CancelScope(), trio.Event()

        async def task() -> None:
            try:
                with scope:
                    await self._run()
            finally:
                ended.set()

        self._trio = (scope, ended)
        try:
            trio.lowlevel.spawn_system_task(task, name="holyroute-health")
        except RuntimeError:  # trio is shutting down
            self._trio = None

    async def aprobe_due(self) -> float:
        """Probe every endpoint due now, one at a time; return the seconds until the next one is due."""
        book = self._book
        for name in book.schedule.due(book.clock()):
            plan = book.plans[name]
            book.record(plan, await _aprobe(self._transport, plan, book.clock))
        return book.schedule.delay(book.clock())

    async def aclose(self) -> None:
        """Cancel the probing task and wait for it to end."""
        self._closed = True
        found, self._trio = self._trio, None
        if found is not None:
            scope, ended = found
            scope.cancel()
            if not ended.is_set():
                await ended.wait()
        task, self._task = self._task, None
        if task is None or task.done():
            if task is not None and not task.cancelled():
                task.exception()  # retrieved, so asyncio does not report it as never retrieved
            return
        try:
            same_loop = task.get_loop() is asyncio.get_running_loop()
        except RuntimeError:
            same_loop = False
        if not same_loop:
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                task.get_loop().call_soon_threadsafe(task.cancel)
            return
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.aprobe_due()
            except Exception as exc:  # CancelledError is not an Exception: aclose() still ends the task
                delay = self._book.iteration_failed("health_check", exc)
            else:
                self._book.iteration_ok()
            await self._sleep(delay)


def check_once(config: Config, transport: httpx2.BaseTransport | None = None) -> list[ProbeResult]:
    """Probe every endpoint once (at most eight at a time); results in configuration order.

    Endpoints without ``health_check`` are probed with the defaults (``GET /models``, 5 s timeout).
    """
    plans = [_plan(config, name) for name in config.endpoints]
    own = transport is None
    inner = transport if transport is not None else httpx2.HTTPTransport()
    try:
        if not plans:
            return []
        with ThreadPoolExecutor(max_workers=min(_CHECK_ONCE_WORKERS, len(plans))) as pool:
            return list(pool.map(lambda plan: _probe(inner, plan, time.monotonic), plans))
    finally:
        if own:
            inner.close()


def render_results(results: Sequence[ProbeResult]) -> str:
    """The ``holyroute check`` table: one row per endpoint."""
    head = ("endpoint", "status", "latency ms", "http", "remaining requests", "remaining tokens", "error")
    rows = [head, *(_row(result) for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    numeric = {2, 3, 4, 5}
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _row(result: ProbeResult) -> tuple[str, ...]:
    def number(value: float | None, spec: str = "") -> str:
        return "-" if value is None else format(value, spec)

    return (
        result.endpoint,
        result.status,
        number(result.latency_ms, ".0f"),
        number(result.http_status),
        number(result.remaining_requests),
        number(result.remaining_tokens),
        result.error or "",
    )


# ---- holyroute check: arms, not hosts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathCheck:
    """Whether ``endpoint`` serves ``model`` (the upstream model an arm sends it): ``ok``, or ``why`` not."""

    endpoint: str
    model: str
    ok: bool
    why: str


@dataclass(frozen=True, slots=True)
class ArmCheck:
    """One arm of a route: its share of the route's traffic (None when unknown) and each endpoint's path."""

    arm: str
    share: float | None
    paths: tuple[PathCheck, ...]

    @property
    def ok(self) -> bool:
        return any(path.ok for path in self.paths)


@dataclass(frozen=True, slots=True)
class RouteCheck:
    """A route's arms and the fallback aliases that have a healthy path of their own."""

    route: str
    arms: tuple[ArmCheck, ...]
    live_fallbacks: tuple[str, ...]

    @property
    def unserved(self) -> float | None:
        """The share of the route's traffic drawn by arms with no healthy path (None when a share is unknown)."""
        dead = [arm.share for arm in self.arms if not arm.ok]
        if any(share is None for share in dead):
            return None
        return sum(share for share in dead if share is not None)

    @property
    def ok(self) -> bool:
        """Every arm that may draw traffic has a healthy endpoint serving its model."""
        return all(arm.ok for arm in self.arms if arm.share is None or arm.share > 0)


def listed_models(body: bytes) -> frozenset[str] | None:
    """The model ids of a ``GET /models`` answer (``{"data": [{"id": ...}]}``); None when it is not such a list."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return frozenset(item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str))


def _pairs(config: Config) -> list[tuple[str, str]]:
    """Every (endpoint, upstream model) an arm of a route sends to, in configuration order, once each."""
    pairs: dict[tuple[str, str], None] = {}
    for route in config.routes.values():
        for target in route.arms:
            for entry in target.endpoints:
                ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
                pairs[(ref.endpoint, ref.model or target.model)] = None
    return list(pairs)


def _path(endpoint: str, model: str, result: ProbeResult, listed: frozenset[str] | None) -> PathCheck:
    if result.http_status == 404 and result.error is not None and "model" in result.error:  # a chat probe's answer
        return PathCheck(endpoint, model, False, f"{endpoint} does not serve {model} ({result.error})")
    if result.status not in LIVE:
        return PathCheck(endpoint, model, False, f"{endpoint} {result.status} ({result.error or result.http_status})")
    if listed is not None and model not in listed:
        return PathCheck(endpoint, model, False, f"{endpoint} does not list {model} in GET /models")
    return PathCheck(endpoint, model, True, "")


def check_paths(
    config: Config, transport: httpx2.BaseTransport | None = None, *, probe: str | None = None
) -> tuple[list[ProbeResult], dict[tuple[str, str], PathCheck]]:
    """``holyroute check``'s probes: whether each endpoint answers, and each (endpoint, model) an arm uses is served.

    With ``probe="models"`` one ``GET /models`` per endpoint, its list read whole: a model it does not list is not
    served there (a list that cannot be read counts as serving it). With ``probe="chat"`` one one-token chat call per
    (endpoint, model): served when it answers. ``None``: each endpoint's ``health_check.probe`` (default models).
    The results come in configuration order: one per endpoint, or with chat one per (endpoint, model), its
    ``endpoint`` then reading ``"name (model)"``.
    """
    pairs = _pairs(config)
    chat = {name for name in config.endpoints if (probe or _configured_probe(config, name)) == "chat"}
    plans: list[tuple[_Plan, str | None]] = []
    for name in config.endpoints:
        models = [model for endpoint, model in pairs if endpoint == name]
        check = config.endpoints[name].health_check
        if name in chat and not models and check is not None and check.model:
            models = [check.model]
        if name in chat and models:
            plans += [(_plan(config, name, probe="chat", model=model), model) for model in models]
        else:  # GET /models: asked for, or a chat probe with no model to ask (no route uses the endpoint)
            chat.discard(name)
            plans.append((_plan(config, name, probe="models"), None))
    own = transport is None
    inner = transport if transport is not None else httpx2.HTTPTransport()
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(_CHECK_ONCE_WORKERS, len(plans)))) as pool:
            answers = list(
                pool.map(lambda planned: _probe_reading(inner, planned[0], time.monotonic, _MAX_MODEL_LIST), plans)
            )
    finally:
        if own:
            inner.close()
    results = [
        dataclasses.replace(result, endpoint=f"{plan.endpoint} ({model})") if model is not None else result
        for (plan, model), (result, _) in zip(plans, answers, strict=True)
    ]
    paths: dict[tuple[str, str], PathCheck] = {}
    for (plan, model), (result, body) in zip(plans, answers, strict=True):
        if plan.endpoint in chat:
            if model is not None:
                paths[(plan.endpoint, model)] = _path(plan.endpoint, model, result, None)
            continue
        listed = listed_models(body) if result.status in LIVE else None
        for endpoint, used in pairs:
            if endpoint == plan.endpoint:
                paths[(endpoint, used)] = _path(endpoint, used, result, listed)
    return results, paths


def _configured_probe(config: Config, name: str) -> str:
    check = config.endpoints[name].health_check
    return check.probe if check is not None else "models"


def judge_routes(
    config: Config, paths: Mapping[tuple[str, str], PathCheck], rollout_weights: Mapping[str, float | None]
) -> list[RouteCheck]:
    """Each route's arms judged from ``paths`` (no I/O). A route's share per arm is its weight over the route's total;
    a rollout's candidate has ``rollout_weights[route]`` percent (None: unknown) and its stable arm the rest."""
    checks: dict[str, tuple[ArmCheck, ...]] = {}
    for alias, route in config.routes.items():
        shares: list[float | None]
        if route.rollout is not None:
            weight = rollout_weights.get(alias)
            shares = [None, None] if weight is None else [1 - weight / 100, weight / 100]
        else:
            total = sum(target.weight for target in route.targets)
            shares = [target.weight / total if total > 0 else None for target in route.targets]
        arms = []
        for target, share in zip(route.arms, shares, strict=True):
            refs = [EndpointRef(endpoint=e) if isinstance(e, str) else e for e in target.endpoints]
            found = tuple(
                paths.get((ref.endpoint, ref.model or target.model))
                or PathCheck(ref.endpoint, ref.model or target.model, False, f"{ref.endpoint} was not probed")
                for ref in refs
            )
            arms.append(ArmCheck(target.arm, share, found))
        checks[alias] = tuple(arms)
    return [
        RouteCheck(
            alias,
            arms,
            tuple(fallback for fallback in config.routes[alias].fallbacks if any(arm.ok for arm in checks[fallback])),
        )
        for alias, arms in checks.items()
    ]


def render_arms(checks: Sequence[RouteCheck]) -> str:
    """The ``holyroute check`` arm table, then one verdict line per route."""
    head = ("route", "arm", "share", "served by")
    rows = [head]
    for check in checks:
        for arm in check.arms:
            share = "?" if arm.share is None else f"{100 * arm.share:.0f}%"
            healthy = [path.endpoint for path in arm.paths if path.ok]
            served = ", ".join(healthy) if healthy else "NONE: " + "; ".join(path.why for path in arm.paths)
            rows.append((check.route, arm.arm, share, served))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.append("")
    lines += [_verdict(check) for check in checks]
    return "\n".join(lines)


def _verdict(check: RouteCheck) -> str:
    if check.ok:
        return f"route {check.route}: ok"
    dead = [arm for arm in check.arms if not arm.ok and (arm.share is None or arm.share > 0)]
    share = check.unserved
    how_much = "some" if share is None else f"{100 * share:.0f}%"
    names = ", ".join(arm.arm for arm in dead)
    rescue = (
        f"; fallback {', '.join(check.live_fallbacks)} answers those calls instead"
        if check.live_fallbacks
        else "; those calls fail"
    )
    return f"route {check.route}: NO HEALTHY PATH for {how_much} of its traffic (arm {names}){rescue}"
