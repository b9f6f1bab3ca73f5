"""Prometheus metrics (``holyroute.metrics``): real SDK calls against fake upstreams, scraped over HTTP on 127.0.0.1.

The end-to-end tests run a known sequence through ``OpenAI`` + ``holyroute.client`` and ``AsyncOpenAI`` +
``holyroute.async_client``, scrape ``/metrics`` and check every count against the sequence and against the events a
second sink captured. The sink's own rules (labels, unknown events, errors) are checked without sockets.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import holyroute
import holyroute.metrics
import holyroute.observe.metrics
from holyroute.metrics import Metrics, MetricsServer, serve
from holyroute.testing import FakeUpstream, Reply

MESSAGES: Any = [{"role": "user", "content": "hello"}]
CALL = {"route": "chat-default", "arm": "gpt-4.1", "upstream_model": "gpt-4.1", "shadow": "false"}
TOKEN_FIELDS = {
    "prompt": "prompt_tokens",
    "completion": "completion_tokens",
    "cached": "cached_tokens",
    "reasoning": "reasoning_tokens",
}


class Events:
    """A second sink: every event as the router emitted it."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.items.append((event, dict(fields)))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.items if event == name]


def config_for(main: FakeUpstream, backup: FakeUpstream) -> dict[str, Any]:
    return {
        "endpoints": {
            "main": {"base_url": main.base_url, "api_key": "key-main"},
            "backup": {"base_url": backup.base_url, "api_key": "key-backup"},
        },
        "routes": {
            "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main", "backup"]}]},
            "chat-canary": {
                "rollout": {
                    "stable": {"model": "gpt-4o", "endpoints": ["main"]},
                    "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
                    "steps": [{"set_weight": 25}, {"pause": {}}],
                }
            },
        },
        "retry": {"max_attempts": 3, "backoff_initial_s": 0.001, "backoff_jitter_s": 0},
        "health": {"consecutive_failures": 1},
        "alerts": [
            {
                "scope": "endpoint",
                "name": "backup",
                "metric": "error_rate",
                "above": 0.2,
                "min_calls": 3,
                "alert": "oops",
            }
        ],
        "state": {"backend": "memory"},
    }


class Driver:
    """One face over the sync and async SDK clients: each method makes one call and returns plain results."""

    def __init__(self, mode: str, config: dict[str, Any], sinks: list[Callable[[str, dict[str, Any]], None]]) -> None:
        self.mode = mode
        options: dict[str, Any] = {"api_key": "x", "base_url": "http://unused/v1", "max_retries": 0}
        self.http: Any
        self.sdk: Any
        if mode == "sync":
            self.http = holyroute.client(config, log=False, sinks=sinks)
            self.sdk = openai.OpenAI(http_client=self.http, **options)
        else:
            self._runner = asyncio.Runner()
            self.http = holyroute.async_client(config, log=False, sinks=sinks)
            self.sdk = openai.AsyncOpenAI(http_client=self.http, **options)

    def _run(self, make: Callable[[], Any]) -> Any:
        if self.mode == "sync":
            return make()

        async def awaited() -> Any:
            return await make()

        return self._runner.run(awaited())

    def chat(self) -> Any:
        return self._run(lambda: self.sdk.chat.completions.create(model="chat-default", messages=MESSAGES))

    def stream(self) -> list[Any]:
        """Every chunk of a streamed call that asks for usage (so the SDK sees the usage the event reports)."""
        options: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
        if self.mode == "sync":
            with self.sdk.chat.completions.create(model="chat-default", messages=MESSAGES, **options) as stream:
                return list(stream)

        async def consume() -> list[Any]:
            create = self.sdk.chat.completions.create
            async with await create(model="chat-default", messages=MESSAGES, **options) as stream:
                return [chunk async for chunk in stream]

        return list(self._runner.run(consume()))

    def close(self) -> None:
        if self.mode == "sync":
            self.sdk.close()
        else:
            self._runner.run(self.sdk.close())
            self._runner.close()


# ---- scraping ------------------------------------------------------------------------------------------------


def scrape(server: MetricsServer) -> list[Sample]:
    """Every sample ``/metrics`` serves now, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(server.url, timeout=5) as response:
        text = response.read().decode("utf-8")
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def series(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    # Cached and reasoning tokens in every answer, so each token kind has something to count.
    with (
        FakeUpstream("main", cached_tokens=4, reasoning_tokens=3) as main,
        FakeUpstream("backup", cached_tokens=4, reasoning_tokens=3) as backup,
    ):
        yield main, backup


@pytest.fixture
def server(registry: prometheus_client.CollectorRegistry) -> Iterator[MetricsServer]:
    with serve(0, registry=registry) as running:
        yield running


# ---- end to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sync", "async"])
def known(request: pytest.FixtureRequest) -> Iterator[tuple[list[Sample], Events, list[Any]]]:
    """Seven SDK calls (three ok, a 429 that fails over, a stream, a 400, a 503 that ejects), then one scrape.

    Run once per client family; every test of :class:`TestKnownSequence` reads the same scrape.
    """
    registry = prometheus_client.CollectorRegistry()
    events = Events()
    metrics = Metrics(registry)
    with (
        FakeUpstream("main", cached_tokens=4, reasoning_tokens=3) as main,
        FakeUpstream("backup", cached_tokens=4, reasoning_tokens=3) as backup,
        serve(0, registry=registry) as server,
    ):
        cfg = config_for(main, backup)
        # Call 7 gives up after one attempt (backup ejected, main cooling): the sequence counts metrics, so the
        # persistence floor (tests/test_persistence.py) is off here.
        cfg["retry"]["min_attempts"] = 1
        driver = Driver(str(request.param), cfg, [events])
        try:
            assert metrics.instrument(driver.http) is driver.http
            usages = [driver.chat().usage for _ in range(3)]  # 1-3: main answers
            main.push(Reply.rate_limited(retry_after_s=60))
            usages.append(driver.chat().usage)  # 4: main 429 (cooldown 60 s), backup answers
            usages.append(driver.stream()[-1].usage)  # 5: main cooling down, backup streams
            backup.push(Reply.error(400))
            with pytest.raises(openai.BadRequestError):
                driver.chat()  # 6: a 400 is returned at once
            backup.push(Reply.error(503))
            with pytest.raises(openai.InternalServerError):
                driver.chat()  # 7: backup 503 ejects it (consecutive_failures 1); main still cooling: give up
            yield scrape(server), events, usages
        finally:
            driver.close()


class TestKnownSequence:
    """Seven SDK calls with a failover, a stream and two errors: every metric matches what happened."""

    def test_calls_by_endpoint_and_outcome(self, known: tuple[list[Sample], Events, list[Any]]) -> None:
        """Calls are counted on the endpoint that answered, with the call's outcome."""
        samples, events, _ = known
        assert series(samples, "holyroute_requests_total") == {
            tuple(sorted({**CALL, "endpoint": "main", "outcome": "ok"}.items())): 3.0,
            tuple(sorted({**CALL, "endpoint": "backup", "outcome": "ok"}.items())): 2.0,
            tuple(sorted({**CALL, "endpoint": "backup", "outcome": "error"}.items())): 2.0,
        }
        from_events = Counter((e["endpoint"], e["outcome"]) for e in events.named("holyroute.request"))
        assert from_events == {("main", "ok"): 3, ("backup", "ok"): 2, ("backup", "error"): 2}

    def test_attempts_failovers_cooldowns_ejections(self, known: tuple[list[Sample], Events, list[Any]]) -> None:
        """Upstream attempts sum the events' attempts; failovers, cooldowns and ejections count their events."""
        samples, events, _ = known
        attempts = sum(e["attempts"] for e in events.named("holyroute.request"))
        assert attempts == 8
        assert value(samples, "holyroute_upstream_attempts_total", route="chat-default", shadow="false") == 8
        assert series(samples, "holyroute_failovers_total") == {
            (("endpoint", "main"), ("reason", "429"), ("route", "chat-default"), ("upstream_model", "gpt-4.1")): 1.0
        }
        assert series(samples, "holyroute_cooldowns_total") == {
            (("endpoint", "main"), ("upstream_model", "gpt-4.1")): 1
        }
        assert series(samples, "holyroute_endpoint_ejections_total") == {
            (("cause", "failures"), ("endpoint", "backup")): 1
        }
        assert value(samples, "holyroute_events_total", event="holyroute.request") == 7
        assert value(samples, "holyroute_events_total", event="holyroute.failover") == 1
        assert value(samples, "holyroute_metrics_sink_errors_total") == 0

    def test_histograms(self, known: tuple[list[Sample], Events, list[Any]]) -> None:
        """One latency observation per call; one time-to-first-token observation per stream."""
        samples, events, _ = known
        requests = events.named("holyroute.request")
        assert value(samples, "holyroute_request_duration_seconds_count") == 7
        assert value(samples, "holyroute_request_duration_seconds_count", endpoint="backup", outcome="error") == 2
        latency_s = sum(e["latency_ms"] for e in requests) / 1000
        assert value(samples, "holyroute_request_duration_seconds_sum") == pytest.approx(latency_s)
        assert value(samples, "holyroute_request_duration_seconds_bucket", le="+Inf") == 7
        assert value(samples, "holyroute_time_to_first_token_seconds_count") == 1
        assert value(samples, "holyroute_time_to_first_token_seconds_count", endpoint="backup") == 1
        (stream,) = [e for e in requests if e["stream"]]
        assert value(samples, "holyroute_time_to_first_token_seconds_sum") == pytest.approx(stream["ttft_ms"] / 1000)

    def test_tokens_match_the_upstream_usage(self, known: tuple[list[Sample], Events, list[Any]]) -> None:
        """Each token kind sums the usage blocks the fake upstreams sent (as the SDK saw them) and the events."""
        samples, events, usages = known
        requests = events.named("holyroute.request")
        seen = {
            "prompt": sum(u.prompt_tokens for u in usages),
            "completion": sum(u.completion_tokens for u in usages),
            "cached": sum(u.prompt_tokens_details.cached_tokens for u in usages),
            "reasoning": sum(u.completion_tokens_details.reasoning_tokens for u in usages),
        }
        assert seen["cached"] == 4 * 5
        assert seen["reasoning"] == 3 * 5
        for kind, field in TOKEN_FIELDS.items():
            assert value(samples, "holyroute_tokens_total", kind=kind) == seen[kind]
            assert seen[kind] == sum(e.get(field) or 0 for e in requests)
        assert value(samples, "holyroute_tokens_total", kind="prompt", endpoint="backup") == sum(
            u.prompt_tokens for u in usages[3:]
        )

    def test_cost_is_the_sum_of_the_events(self, known: tuple[list[Sample], Events, list[Any]]) -> None:
        samples, events, _ = known
        costs = [e["cost_usd"] for e in events.named("holyroute.request") if e.get("cost_usd") is not None]
        assert len(costs) == 5
        assert value(samples, "holyroute_cost_usd_total") == pytest.approx(sum(costs))
        assert value(samples, "holyroute_cost_usd_total") > 0
        assert value(samples, "holyroute_unpriced_requests_total") == 0

    def test_live_gauges(self, known: tuple[list[Sample], Events, list[Any]]) -> None:
        """Health, in-flight and cooldowns per endpoint, and the canary's rollout state, as they are at the scrape."""
        samples, _, _ = known
        assert series(samples, "holyroute_endpoint_healthy") == {
            (("endpoint", "backup"),): 0,
            (("endpoint", "main"),): 1,
        }
        assert series(samples, "holyroute_endpoint_in_flight") == {
            (("endpoint", "backup"),): 0,
            (("endpoint", "main"),): 0,
        }
        cooling = series(samples, "holyroute_cooldown_seconds")
        assert set(cooling) == {
            (("endpoint", "main"), ("upstream_model", "gpt-4.1")),
            (("endpoint", "backup"), ("upstream_model", "gpt-4.1")),
            (("endpoint", "main"), ("upstream_model", "gpt-4o")),
        }
        assert 50 < cooling[(("endpoint", "main"), ("upstream_model", "gpt-4.1"))] <= 60
        assert cooling[(("endpoint", "backup"), ("upstream_model", "gpt-4.1"))] == 0
        assert cooling[(("endpoint", "main"), ("upstream_model", "gpt-4o"))] == 0
        assert value(samples, "holyroute_rollout_candidate_weight_percent", route="chat-canary") == 25
        assert value(samples, "holyroute_rollout_step", route="chat-canary") == 1
        assert value(samples, "holyroute_rollout_steps", route="chat-canary") == 2
        assert series(samples, "holyroute_rollout_status") == {
            (("route", "chat-canary"), ("status", status)): float(status == "paused")
            for status in ("progressing", "paused", "aborted", "completed")
        }
        # backup: ok, ok, then the 400 makes 1 error in 3 calls > 20%: one incident, still open.
        assert series(samples, "holyroute_alert_firing") == {(("alert", "oops"), ("name", "backup")): 1}
        assert series(samples, "holyroute_alerts_total") == {
            (("alert", "oops"), ("name", "backup"), ("scope", "endpoint"), ("state", "firing")): 1
        }
        # Changes made before instrument() are not counted; the gauges still show where the rollout stands.
        assert value(samples, "holyroute_rollout_changes_total") == 0


class TestInFlight:
    """An open stream holds its attempt in flight until its body ends."""

    def test_sync(
        self,
        upstreams: tuple[FakeUpstream, FakeUpstream],
        registry: prometheus_client.CollectorRegistry,
        server: MetricsServer,
    ) -> None:
        metrics = Metrics(registry)
        http = metrics.instrument(holyroute.client(config_for(*upstreams), log=False, sinks=[]))
        with openai.OpenAI(api_key="x", base_url="http://unused/v1", max_retries=0, http_client=http) as sdk:
            stream: Any = sdk.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True)
            with stream:
                assert value(scrape(server), "holyroute_endpoint_in_flight", endpoint="main") == 1
                list(stream)
            assert value(scrape(server), "holyroute_endpoint_in_flight", endpoint="main") == 0

    async def test_async(
        self,
        upstreams: tuple[FakeUpstream, FakeUpstream],
        registry: prometheus_client.CollectorRegistry,
        server: MetricsServer,
    ) -> None:
        metrics = Metrics(registry)
        http = metrics.instrument(holyroute.async_client(config_for(*upstreams), log=False, sinks=[]))
        async with openai.AsyncOpenAI(api_key="x", base_url="http://unused/v1", max_retries=0, http_client=http) as sdk:
            stream: Any = await sdk.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True)
            async with stream:
                assert value(scrape(server), "holyroute_endpoint_in_flight", endpoint="main") == 1
                _ = [chunk async for chunk in stream]
            assert value(scrape(server), "holyroute_endpoint_in_flight", endpoint="main") == 0


# ---- registries ----------------------------------------------------------------------------------------------

COOLDOWN = {"endpoint": "main", "upstream_model": "gpt-4.1", "cooldown_s": 1.0, "reason": "429 retry-after 1s"}


class TestRegistry:
    def test_a_given_registry_receives_the_metrics(self, registry: prometheus_client.CollectorRegistry) -> None:
        """The user's registry gets the metrics; the global one does not."""
        Metrics(registry)("holyroute.cooldown", COOLDOWN)
        labels = {"endpoint": "main", "upstream_model": "gpt-4.1"}
        assert registry.get_sample_value("holyroute_cooldowns_total", labels) == 1
        assert prometheus_client.REGISTRY.get_sample_value("holyroute_cooldowns_total", labels) is None

    def test_the_default_is_the_global_registry(self) -> None:
        metrics = Metrics()
        try:
            assert metrics.registry is prometheus_client.REGISTRY
            metrics("holyroute.cooldown", COOLDOWN)
            labels = {"endpoint": "main", "upstream_model": "gpt-4.1"}
            assert prometheus_client.REGISTRY.get_sample_value("holyroute_cooldowns_total", labels) == 1
        finally:
            metrics.unregister()
        assert prometheus_client.REGISTRY.get_sample_value("holyroute_cooldowns_total", labels) is None

    def test_registering_twice_is_a_clear_error(self, registry: prometheus_client.CollectorRegistry) -> None:
        """A second Metrics on the same registry fails and says what to do; the first keeps working."""
        first = Metrics(registry)
        with pytest.raises(ValueError, match=r"already has holyroute_\* metrics .*one Metrics per registry"):
            Metrics(registry)
        first("holyroute.cooldown", COOLDOWN)
        assert registry.get_sample_value("holyroute_cooldowns_total", {"endpoint": "main", "upstream_model": "gpt-4.1"})

    def test_another_namespace_shares_a_registry(self, registry: prometheus_client.CollectorRegistry) -> None:
        Metrics(registry)
        Metrics(registry, namespace="canary")("holyroute.cooldown", COOLDOWN)
        assert registry.get_sample_value("canary_cooldowns_total", {"endpoint": "main", "upstream_model": "gpt-4.1"})

    def test_a_bad_namespace_is_refused(self, registry: prometheus_client.CollectorRegistry) -> None:
        with pytest.raises(ValueError, match="namespace='holy-route'"):
            Metrics(registry, namespace="holy-route")


# ---- the sink, without sockets ---------------------------------------------------------------------------------


def request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "route": "chat-default",
        "arm": "gpt-4.1",
        "endpoint": "main",
        "upstream_model": "gpt-4.1",
        "outcome": "ok",
        "attempts": 1,
        "latency_ms": 12.5,
        "ttft_ms": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": None,
        "cost_usd": 0.0001,
        "priced": True,
        "request_id": "req_123",
        "shadow": False,
    }
    return {**base, **fields}


class TestSink:
    @pytest.fixture
    def metrics(self, registry: prometheus_client.CollectorRegistry) -> Metrics:
        return Metrics(registry)

    def sample(self, metrics: Metrics, metric: str, /, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(metric, labels)

    def test_unknown_events_are_only_counted_by_name(self, metrics: Metrics) -> None:
        metrics("holyroute.alert", {"rule": "error rate", "anything": object()})
        metrics("someone.else", {})
        assert self.sample(metrics, "holyroute_events_total", event="holyroute.alert") == 1
        assert self.sample(metrics, "holyroute_events_total", event="someone.else") is None
        assert self.sample(metrics, "holyroute_metrics_sink_errors_total") == 0

    def test_shadow_calls_carry_shadow_true(self, metrics: Metrics) -> None:
        metrics("holyroute.request", request(shadow=True, arm="gpt-5"))
        metrics("holyroute.request", request())
        labels = {"route": "chat-default", "endpoint": "main", "upstream_model": "gpt-4.1", "outcome": "ok"}
        assert self.sample(metrics, "holyroute_requests_total", **labels, arm="gpt-5", shadow="true") == 1
        assert self.sample(metrics, "holyroute_requests_total", **labels, arm="gpt-4.1", shadow="false") == 1
        assert self.sample(metrics, "holyroute_upstream_attempts_total", route="chat-default", shadow="true") == 1

    def test_labels_never_carry_request_data(self, metrics: Metrics) -> None:
        """Request ids and other per-call values never become label values."""
        metrics("holyroute.request", request(user="alice", request_id="req_abc"))
        text = prometheus_client.generate_latest(metrics.registry).decode()
        assert "req_abc" not in text
        assert "alice" not in text

    def test_failover_reasons_are_classes(self, metrics: Metrics) -> None:
        base = {"route": "r", "endpoint": "e", "upstream_model": "m"}
        metrics("holyroute.failover", {**base, "status": 503, "error": None, "reason": "503 from upstream"})
        metrics("holyroute.failover", {**base, "status": None, "error": "ConnectError", "reason": "connection error"})
        metrics("holyroute.failover", {**base, "status": 200, "error": "malformed body", "reason": "200 with a body"})
        metrics("holyroute.failover", {**base, "status": 429, "error": None, "reason": "429 insufficient_quota"})
        families = metrics.registry.collect()
        reasons = {
            s.labels["reason"] for family in families for s in family.samples if s.name.endswith("failovers_total")
        }
        assert reasons == {"503", "ConnectError", "200", "insufficient_quota"}

    def test_quota_ejections_have_their_own_cause(self, metrics: Metrics) -> None:
        metrics("holyroute.endpoint_ejected", {"endpoint": "e", "reason": "429 insufficient_quota; ejected for 3600s"})
        metrics("holyroute.endpoint_ejected", {"endpoint": "e", "reason": "5 consecutive 503 >= ...; ejected for 30s"})
        assert self.sample(metrics, "holyroute_endpoint_ejections_total", endpoint="e", cause="quota") == 1
        assert self.sample(metrics, "holyroute_endpoint_ejections_total", endpoint="e", cause="failures") == 1

    def test_budget_and_rollout_events(self, metrics: Metrics) -> None:
        budget = {"scope": "route", "name": "chat-default", "period": "day", "usd": 5.0, "spent_usd": 5.1}
        metrics("holyroute.budget_exceeded", {**budget, "action": "block", "reason": "budget route chat-default"})
        metrics("holyroute.rollout", {"route": "chat-canary", "action": "abort", "weight": 0.0, "reason": "x"})
        assert self.sample(metrics, "holyroute_budget_exceeded_total", scope="route", name="chat-default", period="day")
        assert self.sample(metrics, "holyroute_rollout_changes_total", route="chat-canary", action="abort") == 1

    def test_unpriced_calls_are_counted(self, metrics: Metrics) -> None:
        metrics("holyroute.request", request(upstream_model="my-model", cost_usd=None, priced=False))
        metrics("holyroute.request", request(endpoint=None, upstream_model=None, cost_usd=None, priced=False))
        assert self.sample(metrics, "holyroute_unpriced_requests_total", upstream_model="my-model") == 1
        assert self.sample(metrics, "holyroute_unpriced_requests_total", upstream_model="") is None

    def test_a_broken_event_never_raises_into_the_call(self, metrics: Metrics) -> None:
        metrics("holyroute.request", None)  # type: ignore[arg-type]
        metrics("holyroute.request", request(attempts="two", latency_ms=None, prompt_tokens=-1))
        assert self.sample(metrics, "holyroute_metrics_sink_errors_total") == 1
        labels = {**CALL, "endpoint": "main", "outcome": "ok"}
        assert self.sample(metrics, "holyroute_requests_total", **labels) == 1
        assert self.sample(metrics, "holyroute_tokens_total", **labels, kind="prompt") is None


class TestInstrument:
    @pytest.fixture
    def config(self) -> dict[str, Any]:
        return {
            "endpoints": {"local": {"base_url": "http://127.0.0.1:1/v1"}},
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["local"]}]}},
            "state": {"backend": "memory"},
        }

    def test_instrumenting_twice_adds_the_sink_once(
        self, config: dict[str, Any], registry: prometheus_client.CollectorRegistry
    ) -> None:
        metrics = Metrics(registry)
        with holyroute.client(config, log=False, sinks=[metrics]) as client:
            router = holyroute.router_of(client)
            metrics.instrument(client)
            metrics.instrument(router)
            assert router.sinks.count(metrics) == 1
            assert metrics.routers() == [router]

    def test_a_dropped_client_is_not_kept_alive(
        self, config: dict[str, Any], registry: prometheus_client.CollectorRegistry
    ) -> None:
        metrics = Metrics(registry)
        client = metrics.instrument(holyroute.client(config, log=False, sinks=[]))
        assert registry.get_sample_value("holyroute_endpoint_healthy", {"endpoint": "local"}) == 1
        client.close()
        del client
        gc.collect()
        assert metrics.routers() == []
        assert registry.get_sample_value("holyroute_endpoint_healthy", {"endpoint": "local"}) is None

    def test_not_a_holyroute_client(self, registry: prometheus_client.CollectorRegistry) -> None:
        with pytest.raises(TypeError, match="expected a holyroute client"):
            Metrics(registry).instrument(object())  # type: ignore[type-var]


# ---- serving and importing -----------------------------------------------------------------------------------


class TestServe:
    def test_binds_loopback_and_closes(self, registry: prometheus_client.CollectorRegistry) -> None:
        Metrics(registry)("holyroute.cooldown", COOLDOWN)
        server = serve(0, registry=registry)
        try:
            assert server.host == "127.0.0.1"
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            assert value(scrape(server), "holyroute_cooldowns_total", endpoint="main") == 1
        finally:
            server.close()
            server.close()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(server.url, timeout=1)

    def test_a_bad_port_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not a TCP port"):
            serve(70000)


class TestImport:
    def test_missing_prometheus_client_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without prometheus-client, importing the module says which extra to install."""
        path = Path(holyroute.observe.metrics.__file__)  # the implementation behind holyroute.metrics
        spec = importlib.util.spec_from_file_location("holyroute._metrics_without_prometheus", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        with pytest.raises(ImportError, match=r"pip install 'holyroute\[prometheus\]'"):
            spec.loader.exec_module(module)

    def test_import_holyroute_does_not_load_prometheus(self) -> None:
        code = "import sys, holyroute; print(json.dumps('prometheus_client' in sys.modules))"
        out = subprocess.run(
            [sys.executable, "-c", f"import json; {code}"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        assert json.loads(out) is False
