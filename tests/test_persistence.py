"""At least as persistent as the SDK, per-route retry budgets, owned shadow tasks and surviving background loops.

Core tests run on the fake clock (``drive`` plays the transport); the shadow tests run the async driver under asyncio
and trio with in-memory upstreams; the health-check tests inject a failing iteration into the real loops.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from holyroute import Router, load_config
from holyroute.core.health import HealthBook
from holyroute.core.steps import GiveUp, Respond
from holyroute.drivers.probe import AsyncHealthChecker, HealthChecker
from holyroute.drivers.transport import AsyncTransport

from .conftest import Events, FakeClock, Harness, drive, ok, status

ERROR = ConnectionError("refused")


def solo(**retry: Any) -> dict[str, Any]:
    """One route whose only arm has one endpoint; passive health ejects it on the first failure."""
    return {
        "endpoints": {"solo": {"base_url": "https://solo.example/v1", "api_key": "key-solo"}},
        "routes": {"chat-default": {"targets": [{"model": "m", "endpoints": ["solo"]}]}},
        "retry": {"backoff_initial_s": 0.1, "backoff_jitter_s": 0, **retry},
        "health": {"consecutive_failures": 1, "base_ejection_s": 30},
    }


class TestFloor:
    """A call gives up on transient errors only after the SDK's number of attempts (retry.min_attempts = 3)."""

    def test_ejected_mid_call_is_still_tried(self, make_harness: Callable[..., Harness]) -> None:
        """The call's first failure ejects the only endpoint: panic is judged again, so the call goes on."""
        h = make_harness(solo())
        outcome = drive(h.call(), [ERROR, ERROR, ok()], h.clock)
        assert outcome.endpoints == ["solo", "solo", "solo"]
        assert h.events.named("holyroute.endpoint_ejected")
        assert h.events.named("holyroute.request")[-1]["outcome"] == "ok"

    def test_every_endpoint_ejected_before_the_call(self, make_harness: Callable[..., Harness]) -> None:
        """An arm whose every endpoint is ejected is in panic: tried, and given the full floor of attempts."""
        h = make_harness(solo())
        drive(h.call(), [ERROR, ERROR, ERROR], h.clock)
        assert h.router.health.ejected("solo", h.clock()) is not None
        outcome = drive(h.call(), [ERROR, ERROR, ok()], h.clock)
        assert outcome.endpoints == ["solo"] * 3
        assert h.events.named("holyroute.panic")[0]["arm"] == "m"

    def test_floor_beats_the_retry_budget(self, make_harness: Callable[..., Harness]) -> None:
        """With no retry budget at all, the floor's retries are still made; the budget stops the ones beyond it."""
        h = make_harness(solo(max_attempts=5, budget_ratio=0, budget_min_per_s=0))
        outcome = drive(h.call(), [status(503)] * 3, h.clock)
        assert len(outcome.sent) == 3
        assert isinstance(outcome.final, Respond)
        assert "retry budget exhausted" in h.events.named("holyroute.request")[-1]["error"]

    def test_floor_beats_a_long_cooldown(self, make_harness: Callable[..., Harness]) -> None:
        """A cooldown longer than max_wait_s does not end the call: it backs off and tries again, health ignored."""
        h = make_harness(solo(max_wait_s=1))
        answers = [status(429, {"retry-after": "300"}), status(429, {"retry-after": "300"}), ok()]
        outcome = drive(h.call(), answers, h.clock)
        assert outcome.endpoints == ["solo"] * 3
        assert outcome.waits == [pytest.approx(0.1), pytest.approx(0.2)]

    def test_floor_treats_the_timeout_as_the_sdk_does(self, make_harness: Callable[..., Harness]) -> None:
        """Within the floor the caller's timeout bounds each attempt, as the SDK's does, not the whole call: a
        backoff longer than the timeout still runs, and each attempt gets the whole timeout."""
        h = make_harness(solo(backoff_initial_s=0.5))
        outcome = drive(h.call(timeout=0.3), [ERROR, ERROR, ERROR], h.clock)
        assert len(outcome.sent) == 3
        assert [send.timeout for send in outcome.sent] == [pytest.approx(0.3)] * 3
        assert isinstance(outcome.final, GiveUp)

    def test_beyond_the_floor_the_deadline_bounds_the_call(self, make_harness: Callable[..., Harness]) -> None:
        """No wait that ends after the caller's timeout once the floor's attempts are made."""
        h = make_harness(solo(backoff_initial_s=0.5, min_attempts=1))
        outcome = drive(h.call(timeout=0.3), [ERROR], h.clock)
        assert len(outcome.sent) == 1
        assert isinstance(outcome.final, GiveUp)

    def test_floor_is_at_most_max_attempts(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(solo(max_attempts=2))
        assert len(drive(h.call(), [ERROR, ERROR], h.clock).sent) == 2

    def test_beyond_the_floor_the_budget_decides(self, make_harness: Callable[..., Harness]) -> None:
        """min_attempts: 1 and no retry budget: one attempt, then the budget refuses the retry."""
        h = make_harness(solo(min_attempts=1, budget_ratio=0, budget_min_per_s=0))
        assert len(drive(h.call(), [ERROR, ERROR, ERROR], h.clock).sent) == 1
        assert "retry budget exhausted" in h.events.named("holyroute.request")[-1]["error"]

    def test_shadow_floor_is_one(self, make_harness: Callable[..., Harness]) -> None:
        config = solo()
        config["routes"]["chat-default"]["shadow"] = {"model": "m", "endpoints": ["solo"], "sample": 1.0}
        h = make_harness(config)
        call = h.call()
        assert call.shadow is not None
        assert len(drive(call.shadow, [ERROR], h.clock).sent) == 1


class TestRetryBudgetPerRoute:
    """One route's outage spends its own retry budget, not the budget another route needs to fail over."""

    def test_outage_on_x_does_not_block_failover_on_y(self, make_harness: Callable[..., Harness]) -> None:
        config = {
            "endpoints": {
                name: {"base_url": f"https://{name}.example/v1", "api_key": f"key-{name}"}
                for name in ("x1", "x2", "y1", "y2")
            },
            "routes": {
                "route-x": {"targets": [{"model": "m", "endpoints": ["x1", "x2"]}]},
                "route-y": {"targets": [{"model": "m", "endpoints": ["y1", "y2"]}]},
            },
            # No floor: the budget alone decides every retry here.
            "retry": {"min_attempts": 1, "budget_ratio": 0.1, "budget_min_per_s": 0.5, "backoff_jitter_s": 0},
            "health": {"consecutive_failures": 1000},
        }
        h = make_harness(config)
        for _ in range(100):  # route X is down: its budget runs out
            drive(h.call({"model": "route-x"}), [status(503)] * 3, h.clock)
        exhausted = h.events.named("holyroute.retry_budget_exhausted")
        assert exhausted
        assert {e["route"] for e in exhausted} == {"route-x"}
        for _ in range(5):  # route Y: its first endpoint fails, the failover is still allowed
            drive(h.call({"model": "route-y"}), [ok()], h.clock)
        outcome = drive(h.call({"model": "route-y"}), [status(503), ok()], h.clock)
        assert outcome.endpoints == ["y1", "y2"]
        assert h.events.named("holyroute.request")[-1]["outcome"] == "ok"


# ---- shadows under asyncio and trio ----------------------------------------------------------------------------


def shadow_config() -> dict[str, Any]:
    return {
        "endpoints": {
            "served": {"base_url": "https://served.example/v1", "api_key": "key-served"},
            "shadow": {"base_url": "https://shadow.example/v1", "api_key": "key-shadow"},
        },
        "routes": {
            "chat": {
                "targets": [{"model": "m", "endpoints": ["served"]}],
                "shadow": {"model": "m2", "endpoints": ["shadow"], "sample": 1.0},
            }
        },
    }


ANSWER = json.dumps({"choices": [{"index": 0, "message": {"content": "hi"}}]}).encode()


class Upstream(httpx2.AsyncBaseTransport):
    """Answers at once, except the shadow endpoint when ``hold`` is set: it waits until cancelled."""

    def __init__(self, *, hold: bool) -> None:
        self.hold = hold
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.hosts.append(request.url.host)
        if self.hold and request.url.host == "shadow.example":
            await anyio.sleep_forever()
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=ANSWER)


async def shadowed_calls(hold: bool) -> tuple[list[dict[str, Any]], list[str]]:
    events = Events()
    router = Router(load_config(shadow_config()), log=False, sinks=[events])
    upstream = Upstream(hold=hold)
    transport = AsyncTransport(router=router, transport=upstream)
    async with httpx2.AsyncClient(transport=transport) as client:
        for _ in range(5):
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            response = await client.post("https://api.example/v1/chat/completions", json=body)
            assert response.status_code == 200
        for _ in range(100):  # let the background copies run (bounded; no real sleep)
            if hold or sum(e["shadow"] for e in events.named("holyroute.request")) == 5:
                break
            await anyio.sleep(0)
        if hold:
            await anyio.sleep(0)
            assert len(transport._shadows) == 5
        await transport.aclose()  # ends the shadows still running
        assert len(transport._shadows) == 0
    return events.named("holyroute.request"), upstream.hosts


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
class TestShadowTasks:
    """Shadow copies run as tasks of whichever loop runs the call; aclose() ends the ones still running."""

    def test_shadows_run(self, backend: str) -> None:
        done, hosts = anyio.run(shadowed_calls, False, backend=backend)
        assert [e["outcome"] for e in done if not e["shadow"]] == ["ok"] * 5
        assert [e["outcome"] for e in done if e["shadow"]] == ["ok"] * 5
        assert hosts.count("shadow.example") == 5

    def test_aclose_cancels_running_shadows(self, backend: str) -> None:
        done, _ = anyio.run(shadowed_calls, True, backend=backend)
        assert [e["outcome"] for e in done if not e["shadow"]] == ["ok"] * 5
        assert [e["outcome"] for e in done if e["shadow"]] == ["cancelled"] * 5


# ---- background loops ------------------------------------------------------------------------------------------


def checked() -> dict[str, Any]:
    return {
        "endpoints": {
            "e": {"base_url": "http://127.0.0.1:9/v1", "api_key": "key-e", "health_check": {"interval_s": 5}}
        },
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["e"]}]}},
    }


def flaky_router(monkeypatch: pytest.MonkeyPatch) -> tuple[Router, FakeClock, Events, list[int]]:
    """A router whose health book raises on its first two probe verdicts (a bug in one iteration)."""
    clock, events = FakeClock(), Events()
    router = Router(load_config(checked()), clock=clock, log=False, sinks=[events])
    record = HealthBook.record_probe
    calls = [0]

    def failing(self: HealthBook, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= 2:
            raise RuntimeError("bug")
        return record(self, *args, **kwargs)

    monkeypatch.setattr(HealthBook, "record_probe", failing)
    return router, clock, events, calls


def answer(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json={"data": []})


class TestBackgroundLoops:
    """A failing iteration of a health-check loop is reported once and the loop goes on."""

    def test_thread_survives(self, monkeypatch: pytest.MonkeyPatch) -> None:
        router, clock, events, calls = flaky_router(monkeypatch)
        sleeps: list[float] = []
        done = threading.Event()

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.advance(seconds)
            if len(sleeps) == 4:
                checker.close()
                done.set()

        checker = HealthChecker(router, httpx2.MockTransport(answer), sleep=sleep)
        checker.start()
        assert done.wait(5)
        checker.close()
        assert calls[0] == 4, "the loop went on after two failed iterations"
        (error,) = events.named("holyroute.background_error")
        assert (error["loop"], error["error"]) == ("health_check", "RuntimeError")
        assert "bug" not in error["reason"]
        assert router.health.probe_status("e") == "healthy"

    async def test_task_survives(self, monkeypatch: pytest.MonkeyPatch) -> None:
        router, clock, events, calls = flaky_router(monkeypatch)
        fourth = asyncio.Event()
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.advance(seconds)
            if len(sleeps) == 4:
                fourth.set()
                await asyncio.Event().wait()  # parked until aclose() cancels the task

        checker = AsyncHealthChecker(router, httpx2.MockTransport(answer), sleep=sleep)
        checker.ensure_started()
        await asyncio.wait_for(fourth.wait(), 5)
        await checker.aclose()
        assert calls[0] == 4
        assert [e["error"] for e in events.named("holyroute.background_error")] == ["RuntimeError"]
        assert router.health.probe_status("e") == "healthy"


# ---- the floor as a property ------------------------------------------------------------------------------------

TRANSIENT = st.one_of(
    st.just(ERROR),
    st.just(TimeoutError("slow")),
    st.sampled_from([500, 502, 503, 408, 409]).map(status),
    st.integers(0, 1000).map(lambda s: status(429, {"retry-after": str(s)})),
    st.just(status(429)),
)


@settings(max_examples=150)
@given(
    endpoints=st.integers(1, 3),
    failures=st.integers(1, 5),
    max_attempts=st.integers(1, 6),
    min_attempts=st.integers(1, 6),
    ratio=st.sampled_from([0.0, 0.2, 1.0]),
    max_wait_s=st.sampled_from([0.0, 1.0, 10.0]),
    calls=st.lists(st.tuples(st.lists(TRANSIENT, min_size=6, max_size=6), st.booleans()), min_size=1, max_size=6),
)
def test_floor_holds_whatever_health_says(  # noqa: PLR0917 (Hypothesis passes the draws by name)
    endpoints: int,
    failures: int,
    max_attempts: int,
    min_attempts: int,
    ratio: float,
    max_wait_s: float,
    calls: list[tuple[list[Any], bool]],
) -> None:
    """For any run of transient failures, health state and budget: a call that fails has made at least
    min(min_attempts, max_attempts) attempts and at most max_attempts, emits one event, and leaves nothing in flight."""
    names = [f"e{n}" for n in range(endpoints)]
    config = {
        "endpoints": {name: {"base_url": f"https://{name}.example/v1", "api_key": f"key-{name}"} for name in names},
        "routes": {"chat-default": {"targets": [{"model": "m", "endpoints": names}]}},
        "retry": {
            "max_attempts": max_attempts,
            "min_attempts": min_attempts,
            "budget_ratio": ratio,
            "budget_min_per_s": 0,
            "max_wait_s": max_wait_s,
            "backoff_jitter_s": 0,
        },
        "health": {"consecutive_failures": failures, "max_ejected_percent": 100},
    }
    clock, events = FakeClock(), Events()
    router = Router(load_config(config), clock=clock, log=False, sinks=[events])
    floor = min(min_attempts, max_attempts)
    for failed, succeed_last in calls:
        # A success within the floor is always reached.
        answers = [*failed[: floor - 1], ok()] if succeed_last else failed
        before = len(events.named("holyroute.request"))
        call = router.begin("POST", "/v1/chat/completions", "", {}, b'{"model": "chat-default"}')
        assert call is not None
        outcome = drive(call, answers, clock)
        assert len(events.named("holyroute.request")) == before + 1
        assert all(router.health.in_flight(name) == 0 for name in names)
        assert len(outcome.sent) <= max_attempts
        event = events.named("holyroute.request")[-1]
        if event["outcome"] != "ok":
            assert len(outcome.sent) >= floor, (outcome, event)
        elif succeed_last:
            assert len(outcome.sent) <= floor
        clock.advance(1.0)
