"""Active health checks: the probe, its verdict, the two checkers, and `holyroute check`."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import pytest

from holyroute import Router, load_config
from holyroute.cli import main
from holyroute.drivers.probe import (
    AsyncHealthChecker,
    HealthChecker,
    ProbeResult,
    check_once,
    classify,
    dead_arms,
    probe_request,
    route_paths,
)
from holyroute.exceptions import ConfigError
from holyroute.testing import FakeUpstream, Reply

from .conftest import Events, FakeClock

Answer = tuple[int | None, dict[str, str], float, str | None, bytes]
KEYS = ("sk-good-SECRET", "sk-down-SECRET", "sk-limited-SECRET")
_FOREVER = 3600.0


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def health_events(events: Events) -> dict[str, dict[str, Any]]:
    return {fields["endpoint"]: fields for fields in events.named("holyroute.endpoint_health")}


def assert_no_key(text: str) -> None:
    for key in KEYS:
        assert key not in text


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    """good answers normally; down answers 503 and limited answers 429 to everything."""
    ups = {name: FakeUpstream(name).start() for name in ("good", "down", "limited")}
    try:
        ups["down"].fail_for(_FOREVER, Reply.error(503))
        ups["limited"].fail_for(_FOREVER, Reply.rate_limited(retry_after_s=1))
        yield ups
    finally:
        for up in ups.values():
            up.stop()


def checked_config(ups: dict[str, FakeUpstream], **check: Any) -> dict[str, Any]:
    intervals = {"good": 10.0, "down": 20.0, "limited": 30.0}
    return {
        "endpoints": {
            name: {
                "base_url": up.base_url,
                "api_key": key,
                "health_check": {"interval_s": intervals[name], "timeout_s": 2, **check},
            }
            for (name, up), key in zip(ups.items(), KEYS, strict=True)
        },
        "routes": {"chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["good", "down", "limited"]}]}},
    }


def make_router(config: dict[str, Any]) -> tuple[Router, FakeClock, Events]:
    clock, events = FakeClock(), Events()
    return Router(load_config(config), clock=clock, log=False, sinks=[events]), clock, events


def checker_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "holyroute-health"]


# ---- the verdict ------------------------------------------------------------------------------------------------


def _error(code: str | None, kind: str = "server_error", message: str = "boom") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class TestClassify:
    """classify() turns one probe's answer or failure into a status, headroom and a short error."""

    # (http_status, headers, latency_ms, error, body) -> (status, error)
    TABLE: ClassVar[list[tuple[Answer, tuple[str, str | None]]]] = [
        ((200, {}, 5.0, None, b"{}"), ("healthy", None)),
        ((204, {}, 5.0, None, b""), ("healthy", None)),
        ((200, {"x-ratelimit-remaining-requests": "0"}, 5.0, None, b"{}"), ("degraded", None)),
        ((200, {"X-RateLimit-Remaining-Tokens": "0"}, 5.0, None, b"{}"), ("degraded", None)),
        ((200, {}, 2500.0, None, b"{}"), ("degraded", None)),
        ((429, {}, 5.0, None, _error("rate_limit_exceeded", "requests")), ("degraded", "429 rate_limit_exceeded")),
        ((408, {}, 5.0, None, b""), ("degraded", "408")),
        ((503, {}, 5.0, None, _error(None)), ("unhealthy", "503 server_error")),
        ((503, {}, 9000.0, None, _error(None)), ("unhealthy", "503 server_error")),
        ((502, {}, 5.0, None, b"<html>Bad Gateway</html>"), ("unhealthy", "502")),
        ((401, {}, 5.0, None, _error("invalid_api_key", "x")), ("unhealthy", "401 invalid_api_key")),
        ((403, {}, 5.0, None, _error(None, "permission_error")), ("unhealthy", "403 permission_error")),
        ((404, {}, 5.0, None, _error("model_not_found", "x")), ("unhealthy", "404 model_not_found")),
        ((400, {}, 5.0, None, _error("unsupported_parameter", "x")), ("unknown", "400 unsupported_parameter")),
        ((None, {}, 3.0, "ConnectError", b""), ("unhealthy", "ConnectError")),
        ((200, {}, 3.0, "ReadTimeout", b""), ("unhealthy", "ReadTimeout")),
    ]

    @pytest.mark.parametrize(("answer", "expected"), TABLE)
    def test_table(self, answer: Answer, expected: tuple[str, str | None]) -> None:
        """Transport error, 5xx, 401, 403, 404: unhealthy; 408, 429, no headroom, slow: degraded; 2xx: healthy."""
        http_status, headers, latency_ms, error, body = answer
        result = classify(
            "e", http_status=http_status, headers=headers, latency_ms=latency_ms, error=error, body=body, slow_ms=2000
        )
        assert (result.status, result.error) == expected

    def test_headroom(self) -> None:
        """x-ratelimit-remaining-requests / -tokens are read when present and sane, else None."""
        result = classify(
            "e",
            http_status=200,
            headers={"x-ratelimit-remaining-requests": "9999", "x-ratelimit-remaining-tokens": "nonsense"},
            latency_ms=1.0,
            error=None,
            body=b"",
            slow_ms=2000,
        )
        assert ProbeResult("e", "healthy", 1.0, 200, 9999, None, None) == result

    def test_error_body_text_never_kept(self) -> None:
        """Only a short code or type survives; messages and odd codes (which might echo a key) are dropped."""
        body = _error("sk-live bad key sk-good-SECRET", "invalid_request_error", message="Incorrect key sk-good-SECRET")
        result = classify("e", http_status=401, headers={}, latency_ms=1.0, error=None, body=body, slow_ms=2000)
        assert result.error == "401 invalid_request_error"

    def test_gemini_list_error(self) -> None:
        """Google's compatibility layer wraps the error in a list; its status token is used."""
        body = json.dumps([{"error": {"code": 400, "message": "API key not valid", "status": "INVALID_ARGUMENT"}}])
        result = classify("e", http_status=403, headers={}, latency_ms=1.0, error=None, body=body.encode(), slow_ms=1)
        assert (result.status, result.error) == ("unhealthy", "403 INVALID_ARGUMENT")


# ---- the request ------------------------------------------------------------------------------------------------


def _config(endpoint: dict[str, Any], targets: list[dict[str, Any]] | None = None) -> Any:
    return load_config(
        {
            "endpoints": {"e": {"base_url": "https://e.example/v1", **endpoint}, "other": {"base_url": "http://o/v1"}},
            "routes": {"r": {"targets": targets or [{"model": "gpt-4.1", "endpoints": ["other", "e"]}]}},
        }
    )


class TestProbeRequest:
    """probe_request() builds a cheap probe carrying the endpoint's own credentials."""

    def test_models(self) -> None:
        """By default: GET /models with the endpoint's query parameters and a bearer key."""
        config = _config({"api_key": "k1", "query": {"api-version": "2025-04-01"}})
        assert (probe_request(config, "e")) == (
            "GET",
            "https://e.example/v1/models?api-version=2025-04-01",
            [("authorization", "Bearer k1")],
            None,
        )

    def test_chat_uses_first_routed_model(self) -> None:
        """probe: chat asks the first model routed to the endpoint for one token."""
        config = _config({"api_key": "k1", "health_check": {"probe": "chat"}})
        method, url, headers, body = probe_request(config, "e")
        assert (method, url) == ("POST", "https://e.example/v1/chat/completions")
        assert ("content-type", "application/json") in headers
        assert body is not None
        assert json.loads(body) == {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }

    def test_chat_uses_rename_then_explicit_model(self) -> None:
        """An {endpoint, model} rename is the model asked; health_check.model overrides both."""
        targets = [{"model": "gpt-4.1", "endpoints": [{"endpoint": "e", "model": "my-deployment"}]}]
        renamed = _config({"health_check": {"probe": "chat"}}, targets)
        explicit = _config({"health_check": {"probe": "chat", "model": "gpt-4.1-nano"}}, targets)
        assert json.loads(probe_request(renamed, "e")[3] or b"")["model"] == "my-deployment"
        assert json.loads(probe_request(explicit, "e")[3] or b"")["model"] == "gpt-4.1-nano"

    def test_api_key_auth_and_extra_headers(self) -> None:
        """auth: api-key sends `api-key`, plus organization, project and the endpoint's headers."""
        config = _config(
            {
                "api_key": "k2",
                "auth": "api-key",
                "organization": "org-1",
                "project": "p-1",
                "headers": {"X-Tenant": "t"},
            }
        )
        expected = [("api-key", "k2"), ("openai-organization", "org-1"), ("openai-project", "p-1"), ("x-tenant", "t")]
        assert expected == probe_request(config, "e")[2]

    def test_auth_none(self) -> None:
        """auth: none sends no credentials at all."""
        assert probe_request(_config({"auth": "none"}), "e")[2] == []

    @pytest.mark.parametrize("auth", ["bearer", "api-key", "none"])
    def test_same_credentials_as_routed_calls(self, auth: str) -> None:
        """The probe's headers are exactly the ones the router compiles for a routed attempt to that endpoint."""
        key = {} if auth == "none" else {"api_key": "k3"}
        config = _config({**key, "auth": auth, "organization": "o", "headers": {"X-A": "1"}})
        router = Router(config, log=False, sinks=[])
        upstream = next(u for u in router.routes["r"].arms[0].upstreams if u.endpoint == "e")
        assert list(upstream.headers) == probe_request(config, "e")[2]

    def test_chat_without_model_is_a_config_error(self) -> None:
        """A chat probe of an endpoint no route uses, without health_check.model, fails with the key path."""
        config = _config({"health_check": {"probe": "chat"}}, [{"model": "m", "endpoints": ["other"]}])
        with pytest.raises(ConfigError, match=r"endpoints\.e\.health_check\.model"):
            probe_request(config, "e")

    def test_unknown_endpoint(self) -> None:
        with pytest.raises(KeyError, match="unknown endpoint 'nope'"):
            probe_request(_config({}), "nope")


# ---- the sync checker -------------------------------------------------------------------------------------------


class TestHealthChecker:
    """HealthChecker probes configured endpoints on their intervals, records verdicts and reports changes."""

    def test_round_records_and_emits(self, upstreams: dict[str, FakeUpstream]) -> None:
        """One round probes each endpoint once; each first verdict is recorded and emitted with a reason."""
        router, _, events = make_router(checked_config(upstreams))
        with httpx2.HTTPTransport() as transport:
            checker = HealthChecker(router, transport)
            assert checker.probe_due() == 10.0
            checker.close()
        statuses = {name: router.health.probe_status(name) for name in upstreams}
        assert statuses == {"good": "healthy", "down": "unhealthy", "limited": "degraded"}
        emitted = health_events(events)
        assert {"good", "down", "limited"} == set(emitted)
        down = emitted["down"]
        assert (down["status"], down["previous"], down["error"]) == ("unhealthy", "unknown", "503 server_error")
        assert down["reason"].startswith("GET /models answered 503 in ")
        assert down["reason"].endswith(" ms (server_error)")
        assert emitted["limited"]["error"] == "429 rate_limit_exceeded"
        assert set(down) == {
            "endpoint",
            "status",
            "previous",
            "latency_ms",
            "remaining_requests",
            "remaining_tokens",
            "error",
            "reason",
        }
        assert [(r.method, r.path) for r in upstreams["good"].requests] == [("GET", "/v1/models")]
        assert upstreams["good"].requests[0].headers["authorization"] == "Bearer sk-good-SECRET"
        assert_no_key(json.dumps(events.items))

    def test_each_endpoint_on_its_interval(self, upstreams: dict[str, FakeUpstream]) -> None:
        """good (10 s), down (20 s) and limited (30 s) are probed on their own schedules."""
        router, clock, _ = make_router(checked_config(upstreams))
        with httpx2.HTTPTransport() as transport:
            checker = HealthChecker(router, transport)
            delays = []
            for _ in range(4):
                delays.append(checker.probe_due())
                clock.advance(delays[-1])
        assert delays == [10.0, 10.0, 10.0, 10.0]
        assert {n: len(up.requests) for n, up in upstreams.items()} == {"good": 4, "down": 2, "limited": 2}

    def test_change_is_emitted_once(self, upstreams: dict[str, FakeUpstream]) -> None:
        """An unchanged verdict emits nothing; a recovery emits healthy with the previous status."""
        router, clock, events = make_router(checked_config(upstreams))
        with httpx2.HTTPTransport() as transport:
            checker = HealthChecker(router, transport)
            checker.probe_due()
            clock.advance(20)
            checker.probe_due()
            assert len(events.named("holyroute.endpoint_health")) == 3
            upstreams["down"].clear()
            clock.advance(20)
            checker.probe_due()
        last = events.named("holyroute.endpoint_health")[-1]
        assert (last["endpoint"], last["status"], last["previous"]) == ("down", "healthy", "unhealthy")
        assert last["reason"].startswith("GET /models answered 200 in ")

    def test_slow_answer_is_degraded(self) -> None:
        """An answer slower than slow_ms is degraded, and the reason says so."""
        with FakeUpstream("slow") as up:
            up.push(Reply(delay_s=0.03))
            config = {
                "endpoints": {"slow": {"base_url": up.base_url, "health_check": {"slow_ms": 10}}},
                "routes": {"r": {"targets": [{"model": "m", "endpoints": ["slow"]}]}},
            }
            router, _, events = make_router(config)
            with httpx2.HTTPTransport() as transport:
                HealthChecker(router, transport, clock=time.monotonic).probe_due()
        (event,) = events.named("holyroute.endpoint_health")
        assert event["status"] == "degraded"
        assert event["latency_ms"] >= 30
        assert event["reason"].endswith("; slower than slow_ms (10)")

    def test_chat_probe(self, upstreams: dict[str, FakeUpstream]) -> None:
        """probe: chat sends a one-token chat completion for the routed model."""
        router, _, _ = make_router(checked_config(upstreams, probe="chat"))
        with httpx2.HTTPTransport() as transport:
            HealthChecker(router, transport).probe_due()
        (request,) = upstreams["good"].requests
        assert (request.method, request.path) == ("POST", "/v1/chat/completions")
        assert request.json == {"model": "gpt-4.1", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        assert router.health.probe_status("good") == "healthy"

    def test_probe_bounded_by_timeout(self) -> None:
        """A probe that gets no answer within timeout_s is unhealthy with the timeout's type."""
        gate = threading.Event()
        with FakeUpstream("stuck") as up:
            up.push(Reply(gate=gate, gate_timeout_s=5))
            config = {
                "endpoints": {"stuck": {"base_url": up.base_url, "health_check": {"timeout_s": 0.05}}},
                "routes": {"r": {"targets": [{"model": "m", "endpoints": ["stuck"]}]}},
            }
            router, _, events = make_router(config)
            try:
                with httpx2.HTTPTransport() as transport:
                    HealthChecker(router, transport).probe_due()
            finally:
                gate.set()
        (event,) = events.named("holyroute.endpoint_health")
        assert (event["status"], event["error"]) == ("unhealthy", "ReadTimeout")
        assert event["reason"].startswith("GET /models failed after ")

    def test_thread_probes_then_close_stops_it(self, upstreams: dict[str, FakeUpstream]) -> None:
        """start() runs one thread; close() interrupts its wait and joins it."""
        router, _, events = make_router(checked_config(upstreams))
        seen = threading.Event()

        def sink(name: str, fields: dict[str, Any]) -> None:
            events(name, fields)
            if len(events.named("holyroute.endpoint_health")) == 3:
                seen.set()

        router.sinks = (sink,)
        with httpx2.HTTPTransport() as transport:
            checker = HealthChecker(router, transport)
            checker.start()
            checker.start()
            assert len(checker_threads()) == 1
            assert seen.wait(5)
            checker.close()  # the next round is 10 s away on the clock: only an interrupted wait ends this fast
            assert checker_threads() == []
            checker.start()
            assert checker_threads() == []
        assert {n: len(up.requests) for n, up in upstreams.items()} == {"good": 1, "down": 1, "limited": 1}

    def test_injected_sleep(self, upstreams: dict[str, FakeUpstream]) -> None:
        """The wait between rounds can be injected; the thread sleeps for the time to the next due probe."""
        router, clock, _ = make_router(checked_config(upstreams))
        sleeps: list[float] = []
        done = threading.Event()
        with httpx2.HTTPTransport() as transport:

            def sleep(seconds: float) -> None:
                sleeps.append(seconds)
                clock.advance(seconds)
                if len(sleeps) == 2:
                    checker.close()  # from the checker's own thread: stops the loop after this wait
                    done.set()

            checker = HealthChecker(router, transport, sleep=sleep)
            checker.start()
            assert done.wait(5)
            checker.close()
            assert checker_threads() == []
        assert sleeps == [10.0, 10.0]
        assert {n: len(up.requests) for n, up in upstreams.items()} == {"good": 2, "down": 1, "limited": 1}

    def test_no_health_check_no_thread(self) -> None:
        """Without any health_check configured, start() starts nothing."""
        router, _, _ = make_router(
            {
                "endpoints": {"e": {"base_url": "http://127.0.0.1:1/v1"}},
                "routes": {"r": {"targets": [{"model": "m", "endpoints": ["e"]}]}},
            }
        )
        with httpx2.HTTPTransport() as transport:
            checker = HealthChecker(router, transport)
            checker.start()
            assert checker.endpoints == []
            assert checker_threads() == []
            checker.close()


# ---- the async checker ------------------------------------------------------------------------------------------


def checker_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "holyroute-health" and not task.done()]


class TestAsyncHealthChecker:
    """The async twin: one task, the same verdicts, the same events."""

    async def test_round_records_and_emits(self, upstreams: dict[str, FakeUpstream]) -> None:
        router, _, events = make_router(checked_config(upstreams))
        transport = httpx2.AsyncHTTPTransport()
        try:
            checker = AsyncHealthChecker(router, transport)
            assert await checker.aprobe_due() == 10.0
            await checker.aclose()
        finally:
            await transport.aclose()
        statuses = {name: router.health.probe_status(name) for name in upstreams}
        assert statuses == {"good": "healthy", "down": "unhealthy", "limited": "degraded"}
        down = health_events(events)["down"]
        assert (down["status"], down["previous"], down["error"]) == ("unhealthy", "unknown", "503 server_error")
        assert down["reason"].startswith("GET /models answered 503 in ")
        assert_no_key(json.dumps(events.items))

    async def test_each_endpoint_on_its_interval(self, upstreams: dict[str, FakeUpstream]) -> None:
        router, clock, _ = make_router(checked_config(upstreams))
        transport = httpx2.AsyncHTTPTransport()
        try:
            checker = AsyncHealthChecker(router, transport)
            delays = []
            for _ in range(4):
                delays.append(await checker.aprobe_due())
                clock.advance(delays[-1])
        finally:
            await transport.aclose()
        assert delays == [10.0, 10.0, 10.0, 10.0]
        assert {n: len(up.requests) for n, up in upstreams.items()} == {"good": 4, "down": 2, "limited": 2}

    async def test_probe_bounded_by_timeout(self) -> None:
        gate = threading.Event()
        with FakeUpstream("stuck") as up:
            up.push(Reply(gate=gate, gate_timeout_s=5))
            config = {
                "endpoints": {"stuck": {"base_url": up.base_url, "health_check": {"timeout_s": 0.05}}},
                "routes": {"r": {"targets": [{"model": "m", "endpoints": ["stuck"]}]}},
            }
            router, _, events = make_router(config)
            transport = httpx2.AsyncHTTPTransport()
            try:
                await AsyncHealthChecker(router, transport).aprobe_due()
            finally:
                gate.set()
                await transport.aclose()
        (event,) = events.named("holyroute.endpoint_health")
        assert (event["status"], event["error"]) == ("unhealthy", "ReadTimeout")

    async def test_task_probes_then_aclose_cancels_it(self, upstreams: dict[str, FakeUpstream]) -> None:
        """ensure_started() creates the task once; aclose() cancels and awaits it; it is not restarted."""
        router, _, events = make_router(checked_config(upstreams))
        seen = asyncio.Event()

        def sink(name: str, fields: dict[str, Any]) -> None:
            events(name, fields)
            if len(events.named("holyroute.endpoint_health")) == 3:
                seen.set()

        router.sinks = (sink,)
        transport = httpx2.AsyncHTTPTransport()
        try:
            checker = AsyncHealthChecker(router, transport)
            checker.ensure_started()
            checker.ensure_started()
            assert len(checker_tasks()) == 1
            await asyncio.wait_for(seen.wait(), 5)
            await checker.aclose()
            assert checker_tasks() == []
            checker.ensure_started()
            assert checker_tasks() == []
        finally:
            await transport.aclose()
        assert {n: len(up.requests) for n, up in upstreams.items()} == {"good": 1, "down": 1, "limited": 1}

    async def test_injected_sleep(self, upstreams: dict[str, FakeUpstream]) -> None:
        router, clock, _ = make_router(checked_config(upstreams))
        sleeps: list[float] = []
        second = asyncio.Event()

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.advance(seconds)
            if len(sleeps) == 2:
                second.set()
                await asyncio.Event().wait()  # parked until aclose() cancels the task

        transport = httpx2.AsyncHTTPTransport()
        try:
            checker = AsyncHealthChecker(router, transport, sleep=sleep)
            checker.ensure_started()
            await asyncio.wait_for(second.wait(), 5)
            await checker.aclose()
            assert checker_tasks() == []
        finally:
            await transport.aclose()
        assert sleeps == [10.0, 10.0]
        assert {n: len(up.requests) for n, up in upstreams.items()} == {"good": 2, "down": 1, "limited": 1}

    async def test_no_health_check_no_task(self) -> None:
        router, _, _ = make_router(
            {
                "endpoints": {"e": {"base_url": "http://127.0.0.1:1/v1"}},
                "routes": {"r": {"targets": [{"model": "m", "endpoints": ["e"]}]}},
            }
        )
        transport = httpx2.AsyncHTTPTransport()
        try:
            checker = AsyncHealthChecker(router, transport)
            checker.ensure_started()
            assert checker_tasks() == []
            await checker.aclose()
        finally:
            await transport.aclose()


# ---- one-shot checks and routes ---------------------------------------------------------------------------------


def result(endpoint: str, status: Any) -> ProbeResult:
    return ProbeResult(endpoint, status, 1.0, 200, None, None, None)


class TestRoutePaths:
    """route_paths() says whether a route can still reach a live endpoint, through its targets or fallbacks."""

    config = load_config(
        {
            "endpoints": {name: {"base_url": f"http://{name}/v1"} for name in ("a", "b", "c", "d")},
            "routes": {
                "main": {
                    "targets": [
                        {"model": "m1", "endpoints": ["a"], "weight": 90},
                        {"model": "m2", "endpoints": ["b"], "weight": 10},
                    ],
                    "fallbacks": ["cheap"],
                },
                "cheap": {"targets": [{"model": "m3", "endpoints": ["c"]}]},
                "solo": {"targets": [{"model": "m4", "endpoints": ["d"]}]},
            },
        }
    )

    def test_paths(self) -> None:
        results = {"a": result("a", "unhealthy"), "b": result("b", "unhealthy"), "c": result("c", "degraded")}
        assert route_paths(self.config, results) == {"main": True, "cheap": True, "solo": False}

    def test_no_path(self) -> None:
        results = {name: result(name, "unhealthy") for name in "abc"} | {"d": result("d", "unknown")}
        assert route_paths(self.config, results) == {"main": False, "cheap": False, "solo": False}

    def test_dead_arm(self) -> None:
        """An arm with no live endpoint and no live fallback is named even though the route has a path."""
        results = {"a": result("a", "unhealthy"), "b": result("b", "healthy"), "c": result("c", "unhealthy")}
        assert route_paths(self.config, results)["main"] is True
        assert dead_arms(self.config, "main", results) == ["m1"]
        results["c"] = result("c", "healthy")
        assert dead_arms(self.config, "main", results) == []


def write_config(tmp_path: Path, endpoints: dict[str, str]) -> Path:
    config = {
        "endpoints": {
            name: {"base_url": url, "api_key": key} for (name, url), key in zip(endpoints.items(), KEYS, strict=False)
        },
        "routes": {
            "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": list(endpoints)}]},
        },
    }
    path = tmp_path / "holyroute.json"
    path.write_text(json.dumps(config))
    return path


class TestCheckOnce:
    def test_probes_every_endpoint(self) -> None:
        """Every endpoint is probed once, with or without health_check, in configuration order."""
        with FakeUpstream("good") as up:
            config = load_config(
                {
                    "endpoints": {
                        "dead": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": KEYS[1]},
                        "good": {"base_url": up.base_url, "api_key": KEYS[0]},
                    },
                    "routes": {"r": {"targets": [{"model": "m", "endpoints": ["dead", "good"]}]}},
                }
            )
            results = check_once(config)
            assert len(up.requests) == 1
        dead, good = results
        assert (dead.endpoint, dead.status, dead.error, dead.http_status) == ("dead", "unhealthy", "ConnectError", None)
        assert (
            good.endpoint,
            good.status,
            good.http_status,
            good.remaining_requests,
            good.remaining_tokens,
        ) == ("good", "healthy", 200, 9999, 29999000)


class TestCheckCommand:
    """`holyroute check CONFIG` prints a table and one line per route; the exit code says if every route has a path."""

    def test_dead_endpoint_exits_1(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        with FakeUpstream("down") as up:
            up.fail_for(_FOREVER, Reply.error(503))
            path = write_config(tmp_path, {"down": up.base_url, "dead": f"http://127.0.0.1:{free_port()}/v1"})
            assert main(["check", "--config", str(path)]) == 1
        out, err = capsys.readouterr()
        lines = out.splitlines()
        header = "endpoint status latency ms http remaining requests remaining tokens error"
        assert lines[0].split() == header.split()
        assert lines[1].split()[:2] == ["down", "unhealthy"]
        assert lines[1].split()[3:] == ["503", "9999", "29999000", "503", "server_error"]
        assert lines[2].split()[:2] == ["dead", "unhealthy"]
        assert lines[2].split()[3:] == ["-", "-", "-", "ConnectError"]
        # issue 15: the verdict names the share of the traffic and the arm; the arm table says why
        assert (
            lines[-1] == "route chat-default: NO HEALTHY PATH for 100% of its traffic (arm gpt-4.1); those calls fail"
        )
        assert (
            "chat-default  gpt-4.1   100%  NONE: down unhealthy (503 server_error); dead unhealthy (ConnectError)"
            in (lines)
        )
        assert err == ""
        assert_no_key(out)

    def test_healthy_exits_0(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        # issue 15: check now asks whether the arm's model is listed, so the upstream lists it
        with FakeUpstream("good", models=["gpt-4.1"]) as up:
            path = write_config(tmp_path, {"good": up.base_url, "dead": f"http://127.0.0.1:{free_port()}/v1"})
            assert main(["check", "--config", str(path)]) == 0
        out, _ = capsys.readouterr()
        assert out.splitlines()[-1] == "route chat-default: ok"
        assert_no_key(out)

    def test_bad_config_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "holyroute.yaml"
        path.write_text(
            "endpoints:\n  main: {base_url: http://127.0.0.1:1/v1, api_key: sk-good-SECRET, apikey: sk-down-SECRET}\n"
            "routes:\n  chat: {targets: [{model: m, endpoints: [main]}]}\n"
        )
        assert main(["check", "--config", str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"invalid holyroute configuration ({path}): 1 problem")
        assert "endpoints.main.apikey: unknown key; did you mean 'api_key'?" in err
        assert "Traceback" not in err
        assert_no_key(err)
