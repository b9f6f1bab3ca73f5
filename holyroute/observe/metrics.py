"""Prometheus metrics: counters and histograms from holyroute's events, live gauges read from routers at scrape time.

:class:`Metrics` is an event sink (``sink(event, fields)``). ``metrics.instrument(client)`` adds it to a client's
router and remembers the router (weakly), so that each scrape also reads what is true *now*: which endpoints are
healthy, how many attempts are in flight, how long each cooldown has left, where each rollout stands.
:func:`serve` exposes a registry on ``http://127.0.0.1:PORT/metrics``. Every label value comes from the configuration
(route, arm, endpoint and upstream model names) or from a small fixed set (outcome, reason class, token kind),
never from request ids, users, tags or free text, so the number of series is bounded by the configuration. The sink
runs on the request path: it never performs I/O and never raises into a call. Scrapes only read router state; they
never advance a rollout or emit an event. Install with ``pip install 'holyroute[prometheus]'``; ``import holyroute``
never imports ``prometheus_client``.

>>> import prometheus_client, holyroute
>>> from holyroute.metrics import Metrics, serve
>>> metrics = Metrics(prometheus_client.CollectorRegistry())
>>> client = metrics.instrument(holyroute.client("holyroute.yaml"))  # doctest: +SKIP
>>> server = serve(9464, registry=metrics.registry)  # doctest: +SKIP
"""

from __future__ import annotations

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as error:  # prometheus-client is an optional extra
    raise ImportError(
        "holyroute.metrics needs prometheus-client, which is not installed: pip install 'holyroute[prometheus]'",
        name="prometheus_client",
    ) from error

import re
import socket
import socketserver
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from holyroute.drivers.transport import router_of
from holyroute.forking import new_lock

if TYPE_CHECKING:
    import httpx2
    from prometheus_client.metrics_core import Metric

    from holyroute.core.call import Router
    from holyroute.drivers.transport import AsyncTransport, Transport
    from holyroute.rollout.engine import RolloutState

__all__ = ["LATENCY_BUCKETS", "TTFT_BUCKETS", "Metrics", "MetricsServer", "serve"]

#: Seconds, for a whole call: model calls take from tens of milliseconds (cached, embeddings) to minutes.
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: Seconds, to a stream's first byte.
TTFT_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0)

_CALL_LABELS: Final = ("route", "arm", "endpoint", "upstream_model", "shadow")
#: (token kind label, ``holyroute.request`` field). Cached tokens are part of prompt tokens, reasoning tokens part
#: of completion tokens, exactly as providers count them: never add the kinds together.
_TOKEN_KINDS: Final = (
    ("prompt", "prompt_tokens"),
    ("completion", "completion_tokens"),
    ("cached", "cached_tokens"),
    ("reasoning", "reasoning_tokens"),
)
_ROLLOUT_STATUSES: Final = ("progressing", "paused", "aborted", "completed")
_NAMESPACE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: How often the metrics server's loop checks for close(): close() returns within about this long.
_POLL_S: Final = 0.05
_JOIN_S: Final = 5.0

_Target = TypeVar("_Target", bound="Router | Transport | AsyncTransport | httpx2.Client | httpx2.AsyncClient")


@dataclass(slots=True)
class _CallSeries:
    """The children of the per-call metrics for one (route, arm, endpoint, upstream_model, shadow): looked up once,
    so an event costs a dict lookup instead of a ``labels()`` call (a lock and label checks) per metric."""

    attempts: Counter
    tokens: tuple[tuple[Counter, str], ...]
    cost: Counter
    outcomes: dict[str, tuple[Counter, Histogram]]
    ttft: Histogram | None = None  # made at the first stream: non-stream series get no empty histogram


#: The values of a ``holyroute.request``'s ``cache`` field (a bounded label).
_CACHE_RESULTS = frozenset({"hit", "miss", "stored", "bypass"})


class Metrics:
    """An event sink that turns holyroute's events into Prometheus metrics, plus live gauges at scrape time.

    ``registry``: where the metrics are registered (default: ``prometheus_client.REGISTRY``, the one
    ``start_http_server`` and most frameworks expose). One :class:`Metrics` per registry and namespace: a second
    one raises ``ValueError``; instrument every client with the same object instead. ``namespace`` prefixes every
    name (``holyroute_requests_total``). Shadow calls are counted with ``shadow="true"`` (they cost money and load
    endpoints); filter ``shadow="false"`` for what callers see.

    >>> metrics = Metrics(prometheus_client.CollectorRegistry())
    >>> metrics("holyroute.cooldown", {"endpoint": "main", "upstream_model": "gpt-4.1", "cooldown_s": 2.0})
    >>> metrics.registry.get_sample_value(
    ...     "holyroute_cooldowns_total", {"endpoint": "main", "upstream_model": "gpt-4.1"})
    1.0
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "holyroute",
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        ttft_buckets: Sequence[float] = TTFT_BUCKETS,
    ) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"Metrics(namespace={namespace!r}): use letters, digits and '_', not starting with a digit"
            )
        self.registry: CollectorRegistry = registry if registry is not None else prometheus_client.REGISTRY
        self.namespace = namespace
        self._routers: weakref.WeakSet[Router] = weakref.WeakSet()
        self._lock = new_lock()
        self._create_instruments(latency_buckets, ttft_buckets)
        self._calls: dict[tuple[str, ...], _CallSeries] = {}
        self._event_children: dict[str, Counter] = {}
        self._handlers = self._event_handlers()
        self._collector = _Collector(self)
        try:
            self.registry.register(self._collector)
        except ValueError as error:
            raise ValueError(
                f"holyroute.metrics: this registry already has {namespace}_* metrics ({error}). Make one Metrics per "
                "registry and call metrics.instrument(client) for every client; or pass "
                "registry=prometheus_client.CollectorRegistry(), or another namespace=..."
            ) from None

    def _create_instruments(self, latency_buckets: Sequence[float], ttft_buckets: Sequence[float]) -> None:
        # one assignment per instrument: a table of names and help texts, long but flat
        ns = self.namespace

        def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(f"{ns}_{name}", documentation, labels, registry=None)

        self._requests = counter(
            "requests", "Calls to routed aliases, by the endpoint that answered", [*_CALL_LABELS, "outcome"]
        )
        self._attempts = counter(
            "upstream_attempts", "Upstream attempts made by calls, failovers and retries included", ["route", "shadow"]
        )
        self._failovers = counter(
            "failovers",
            "Failed attempts after which the call went on (next endpoint, or a wait and another pass), by cause",
            ["route", "endpoint", "upstream_model", "reason"],
        )
        self._cooldowns = counter(
            "cooldowns",
            "Cooldowns started (429 or retry-after), per endpoint and model",
            ["endpoint", "upstream_model"],
        )
        self._ejections = counter(
            "endpoint_ejections", "Endpoints taken out of rotation (failures or quota)", ["endpoint", "cause"]
        )
        self._restorations = counter(
            "endpoint_restorations", "Ejected endpoints restored by a successful trial", ["endpoint"]
        )
        self._panics = counter(
            "panics", "Arms entering panic mode (fewer than half their endpoints healthy)", ["route", "arm"]
        )
        self._tokens = counter(
            "tokens", "Tokens by kind (cached is part of prompt, reasoning part of completion)", [*_CALL_LABELS, "kind"]
        )
        self._cost = counter("cost_usd", "Cost of calls in USD, from the configured or built-in prices", _CALL_LABELS)
        self._unpriced = counter(
            "unpriced_requests", "Calls whose upstream model has no price (cost unknown)", ["upstream_model"]
        )
        self._budgets = counter(
            "budget_exceeded",
            "Spend budgets found spent (once per budget and period bucket)",
            ["scope", "name", "period"],
        )
        self._alerts = counter(
            "alerts", "Alert rules firing and resolving (holyroute.alert)", ["alert", "scope", "name", "state"]
        )
        self._rollout_changes = counter("rollout_changes", "Rollout state changes by action", ["route", "action"])
        self._cache = counter(
            "cache_lookups", "Calls on caching routes by what the response cache did: hit, miss, stored, bypass",
            ["route", "result"],
        )  # fmt: skip
        self._cache_saved = counter(
            "cache_saved_usd", "What the calls answered from the cache cost when first made, in USD", ["route"]
        )
        self._events = counter("events", "Every holyroute event, by name", ["event"])
        self._sink_errors = counter(
            "metrics_sink_errors", "Events the metrics sink could not record (a bug: please report)"
        )
        self._latency = Histogram(
            f"{ns}_request_duration_seconds",
            "Whole call duration, failovers and waits included (streams: until the body ends)",
            [*_CALL_LABELS, "outcome"],
            registry=None,
            buckets=latency_buckets,
        )
        self._ttft = Histogram(
            f"{ns}_time_to_first_token_seconds",
            "Streams: time from the call's start to the first byte handed to the caller",
            _CALL_LABELS,
            registry=None,
            buckets=ttft_buckets,
        )
        self._owned: tuple[Counter | Histogram, ...] = (
            self._requests,
            self._attempts,
            self._failovers,
            self._cooldowns,
            self._ejections,
            self._restorations,
            self._panics,
            self._tokens,
            self._cost,
            self._unpriced,
            self._budgets,
            self._alerts,
            self._rollout_changes,
            self._cache,
            self._cache_saved,
            self._events,
            self._sink_errors,
            self._latency,
            self._ttft,
        )

    def _event_handlers(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        return {
            "holyroute.request": self._on_request,
            "holyroute.failover": self._on_failover,
            "holyroute.cooldown": self._on_cooldown,
            "holyroute.endpoint_ejected": self._on_ejected,
            "holyroute.endpoint_restored": self._on_restored,
            "holyroute.panic": self._on_panic,
            "holyroute.budget_exceeded": self._on_budget,
            "holyroute.alert": self._on_alert,
            "holyroute.rollout": self._on_rollout,
        }

    # ---- attaching ---------------------------------------------------------------------------------------------

    def instrument(self, target: _Target) -> _Target:
        """Count ``target``'s events and read its live state at each scrape; returns ``target``.

        ``target`` is a client from :func:`holyroute.client` / :func:`holyroute.async_client`, a transport or a
        :class:`~holyroute.Router`. Instrumenting the same router twice changes nothing. The router is held weakly:
        a client that is closed and dropped disappears from the live gauges (its counts stay).

        >>> client = metrics.instrument(holyroute.client("holyroute.yaml"))  # doctest: +SKIP
        """
        router = router_of(target)
        with self._lock:
            if router in self._routers:
                return target
            self._routers.add(router)
            if self not in router.sinks:  # already given as holyroute.client(..., sinks=[metrics])
                router.add_sink(self)
        return target

    def unregister(self) -> None:
        """Remove these metrics from their registry (tests, reloads). The sink then records into nothing visible."""
        self.registry.unregister(self._collector)

    def routers(self) -> list[Router]:
        """The instrumented routers still alive."""
        return list(self._routers)

    # ---- the sink ----------------------------------------------------------------------------------------------

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        """Record one event. Unknown events are only counted by name; nothing here may fail a call."""
        try:
            if event.startswith("holyroute."):  # names come from holyroute's code, so the label set is bounded
                child = self._event_children.get(event)
                if child is None:
                    child = self._event_children.setdefault(event, self._events.labels(event))
                child.inc()
            handler = self._handlers.get(event)
            if handler is not None:
                handler(fields)
        except Exception:
            self._sink_errors.inc()

    def _series(self, key: tuple[str, str, str, str, str]) -> _CallSeries:
        series = _CallSeries(
            attempts=self._attempts.labels(key[0], key[4]),
            tokens=tuple((self._tokens.labels(*key, kind), name) for kind, name in _TOKEN_KINDS),
            cost=self._cost.labels(*key),
            outcomes={},
        )
        return self._calls.setdefault(key, series)

    def _on_request(self, fields: dict[str, Any]) -> None:
        endpoint = _label(fields.get("endpoint"))
        key = (
            _label(fields.get("route")),
            _label(fields.get("arm")),
            endpoint,
            _label(fields.get("upstream_model")),
            "true" if fields.get("shadow") else "false",
        )
        series = self._calls.get(key) or self._series(key)
        outcome = _label(fields.get("outcome"))
        pair = series.outcomes.get(outcome)
        if pair is None:
            pair = series.outcomes.setdefault(
                outcome, (self._requests.labels(*key, outcome), self._latency.labels(*key, outcome))
            )
        pair[0].inc()
        latency_ms = _number(fields.get("latency_ms"))
        if latency_ms is not None:
            pair[1].observe(latency_ms / 1000.0)
        ttft_ms = _number(fields.get("ttft_ms"))
        if ttft_ms is not None:
            if series.ttft is None:
                series.ttft = self._ttft.labels(*key)
            series.ttft.observe(ttft_ms / 1000.0)
        attempts = _number(fields.get("attempts"))
        if attempts:
            series.attempts.inc(attempts)
        for counter, name in series.tokens:
            tokens = _number(fields.get(name))
            if tokens:
                counter.inc(tokens)
        cost = _number(fields.get("cost_usd"))
        if cost:
            series.cost.inc(cost)
        elif fields.get("priced") is False and endpoint:  # sent, but its model has no price
            self._unpriced.labels(key[3]).inc()
        cache = fields.get("cache")
        if cache in _CACHE_RESULTS:
            self._cache.labels(key[0], cache).inc()
            saved = _number(fields.get("saved_usd"))
            if saved:
                self._cache_saved.labels(key[0]).inc(saved)

    def _on_failover(self, fields: dict[str, Any]) -> None:
        self._failovers.labels(
            _label(fields.get("route")),
            _label(fields.get("endpoint")),
            _label(fields.get("upstream_model")),
            _reason_class(fields),
        ).inc()

    def _on_cooldown(self, fields: dict[str, Any]) -> None:
        self._cooldowns.labels(_label(fields.get("endpoint")), _label(fields.get("upstream_model"))).inc()

    def _on_ejected(self, fields: dict[str, Any]) -> None:
        cause = "quota" if "insufficient_quota" in str(fields.get("reason") or "") else "failures"
        self._ejections.labels(_label(fields.get("endpoint")), cause).inc()

    def _on_restored(self, fields: dict[str, Any]) -> None:
        self._restorations.labels(_label(fields.get("endpoint"))).inc()

    def _on_panic(self, fields: dict[str, Any]) -> None:
        self._panics.labels(_label(fields.get("route")), _label(fields.get("arm"))).inc()

    def _on_budget(self, fields: dict[str, Any]) -> None:
        # Budget names are configured (routes, endpoints, tags named in `budgets:`), so they are bounded too.
        self._budgets.labels(
            _label(fields.get("scope")), _label(fields.get("name")), _label(fields.get("period"))
        ).inc()

    def _on_alert(self, fields: dict[str, Any]) -> None:
        # The rule's name and the route or endpoint it watched: both come from the configuration.
        self._alerts.labels(
            _label(fields.get("alert")),
            _label(fields.get("scope")),
            _label(fields.get("name")),
            _label(fields.get("state")),
        ).inc()

    def _on_rollout(self, fields: dict[str, Any]) -> None:
        self._rollout_changes.labels(_label(fields.get("route")), _label(fields.get("action"))).inc()

    # ---- what a scrape reads -----------------------------------------------------------------------------------

    def _describe(self) -> Iterator[Metric]:
        for metric in self._owned:
            yield from metric.describe()
        yield from _live_families(self.namespace)

    def _collect(self) -> Iterator[Metric]:
        for metric in self._owned:
            yield from metric.collect()
        yield from self._live()

    def _live(self) -> Iterator[Metric]:
        """Gauges read from the routers now. With several routers, one label set is combined: in-flight attempts
        are summed, an endpoint is healthy only if every router finds it so, the longest cooldown wins, and a
        rollout is read from the router whose copy of its state is newest."""
        healthy: dict[str, int] = {}
        in_flight: dict[str, int] = {}
        cooling: dict[tuple[str, str], float] = {}
        rollouts: dict[str, tuple[RolloutState, int]] = {}
        firing: set[tuple[str, str]] = set()
        for router in self.routers():
            now = router.clock()
            health = router.health
            for endpoint in router.config.endpoints:
                # The same judgement the core makes before panic mode: ejected, half-open trial pending, out of
                # quota, or (with active checks) unhealthy.
                usable = health.ejected(endpoint, now) is None and not (
                    router.probing and health.probe_status(endpoint) == "unhealthy"
                )
                healthy[endpoint] = min(healthy.get(endpoint, 1), int(usable))
                in_flight[endpoint] = in_flight.get(endpoint, 0) + health.in_flight(endpoint)
            for pair in _pairs(router):
                cooldown = health.cooldown(*pair, now)
                left = max(0.0, cooldown.until - now) if cooldown is not None else 0.0
                cooling[pair] = max(cooling.get(pair, 0.0), left)
            if router.alerts is not None:
                firing.update(router.alerts.firing())
            if router.rollouts is not None:
                for alias in router.rollouts:
                    engine = router.rollouts.get(alias)
                    if engine is None:
                        continue
                    state = engine.state  # read, never tick(): a scrape must not move a rollout or emit events
                    found = rollouts.get(alias)
                    if found is None or state.version > found[0].version:
                        rollouts[alias] = (state, len(engine.steps))
        families = _live_families(self.namespace)
        healthy_f, in_flight_f, cooling_f, weight_f, step_f, steps_f, status_f, firing_f = families
        for endpoint, value in sorted(healthy.items()):
            healthy_f.add_metric([endpoint], value)
            in_flight_f.add_metric([endpoint], in_flight[endpoint])
        for (endpoint, model), left in sorted(cooling.items()):
            cooling_f.add_metric([endpoint, model], round(left, 3))
        for alias, (state, steps) in sorted(rollouts.items()):
            weight_f.add_metric([alias], state.weight)
            step_f.add_metric([alias], state.step)
            steps_f.add_metric([alias], steps)
            for status in _ROLLOUT_STATUSES:
                status_f.add_metric([alias, status], 1 if state.status == status else 0)
        for alert, name in sorted(firing):
            firing_f.add_metric([alert, name], 1)
        return iter(families)


class _Collector(Collector):
    """What the registry holds: every metric of one :class:`Metrics`, so registering is all or nothing."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._metrics._describe())

    def collect(self) -> Iterable[Metric]:
        return self._metrics._collect()


def _live_families(ns: str) -> list[GaugeMetricFamily]:
    return [
        GaugeMetricFamily(
            f"{ns}_endpoint_healthy",
            "1 when the endpoint may take calls; 0 when ejected, half-open with its trial in flight, out of quota, "
            "or unhealthy by active checks",
            labels=["endpoint"],
        ),
        GaugeMetricFamily(
            f"{ns}_endpoint_in_flight", "Upstream attempts in flight to the endpoint", labels=["endpoint"]
        ),
        GaugeMetricFamily(
            f"{ns}_cooldown_seconds",
            "Seconds left of the endpoint's cooldown for this model (0: not cooling down)",
            labels=["endpoint", "upstream_model"],
        ),
        GaugeMetricFamily(
            f"{ns}_rollout_candidate_weight_percent", "Rollout candidate's share of calls, in %", labels=["route"]
        ),
        GaugeMetricFamily(
            f"{ns}_rollout_step", "Rollout steps completed (the index of the current step)", labels=["route"]
        ),
        GaugeMetricFamily(f"{ns}_rollout_steps", "Rollout steps in all", labels=["route"]),
        GaugeMetricFamily(
            f"{ns}_rollout_status", "1 for the rollout's current status, 0 for the others", labels=["route", "status"]
        ),
        GaugeMetricFamily(
            f"{ns}_alert_firing",
            "1 for each open alert incident (rule, route or endpoint); absent once resolved",
            labels=["alert", "name"],
        ),
    ]


def _pairs(router: Router) -> list[tuple[str, str]]:
    """Every configured (endpoint, upstream model) pair: where cooldowns can be."""
    pairs: dict[tuple[str, str], None] = {}
    for plan in router.routes.values():
        arms = [*plan.arms, plan.shadow] if plan.shadow is not None else plan.arms
        for arm in arms:
            for upstream in arm.upstreams:
                pairs[(upstream.endpoint, upstream.model)] = None
    return list(pairs)


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def _reason_class(fields: dict[str, Any]) -> str:
    """A failover's cause as a bounded label: the status code, ``insufficient_quota``, or the error's type name."""
    if "insufficient_quota" in str(fields.get("reason") or ""):
        return "insufficient_quota"
    status = fields.get("status")
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    error = fields.get("error")
    return str(error).replace(" ", "_") if error else "unknown"


# ---- serving /metrics ------------------------------------------------------------------------------------------


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a line on stderr


class MetricsServer:
    """A running ``/metrics`` endpoint (a daemon thread). :meth:`close` stops it; also a context manager."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the free one chosen when ``serve(0)``)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_JOIN_S)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}{' closed' if self._closed else ''}>"


def serve(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``registry`` (default: ``prometheus_client.REGISTRY``) at ``http://addr:port/metrics`` from a daemon
    thread, until :meth:`MetricsServer.close`. ``port=0`` picks a free port (``server.port``). Binds 127.0.0.1
    unless told otherwise: pass ``addr="0.0.0.0"`` only where the port is not reachable from outside.

    >>> with serve(0) as server:  # doctest: +SKIP
    ...     print(server.url)
    http://127.0.0.1:40123/metrics

    Like ``prometheus_client.start_http_server``, but its loop notices :meth:`~MetricsServer.close` within 50 ms
    instead of 500 ms.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"serve(port={port!r}): not a TCP port; use 0 for a free one")
    app = prometheus_client.make_wsgi_app(registry if registry is not None else prometheus_client.REGISTRY)
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    server_class = _Server6 if family == socket.AF_INET6 else _Server
    server = make_server(addr, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": _POLL_S}, name="holyroute-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread)
