"""Passive health, headroom, client-side limits, retry budget, balancing and deadlines, decided by the core.

Fake clock, no sockets: each test plays calls against scripted answers with ``drive``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from holyroute.core.steps import Accepted, Respond, Send, Wait

from .conftest import Harness, base_config, drive, ok, status

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}


def health_config(**health: Any) -> dict[str, Any]:
    config = base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0, "budget_min_per_s": 100})
    config["health"] = {"consecutive_failures": 3, "base_ejection_s": 30, "max_ejection_s": 100, **health}
    return config


def complete(call: Any) -> None:
    """Finish an accepted JSON answer as a transport would: hand over its body."""
    if not call.done:
        assert call.on_body(b"{}")


class TestEjection:
    """Consecutive 5xx, connection errors and timeouts eject an endpoint, Envoy style."""

    def fail_main(self, h: Harness, times: int, answer: Any = None) -> None:
        for _ in range(times):
            outcome = drive(h.call(headers=PRIMARY), [answer or status(503), ok()], h.clock)
            assert outcome.endpoints == ["main", "backup"]

    def test_ejected_after_consecutive_failures(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(health_config())
        self.fail_main(h, 3)
        (event,) = h.events.named("holyroute.endpoint_ejected")
        assert event["endpoint"] == "main"
        assert event["reason"] == "3 consecutive 503 >= consecutive_failures (3); ejected for 30s"
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]

    def test_mixed_failures_named(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(health_config())
        for answer in (status(502), ConnectionError(), TimeoutError()):
            drive(h.call(headers=PRIMARY), [answer, ok()], h.clock)
        reason = h.events.named("holyroute.endpoint_ejected")[0]["reason"]
        assert reason.startswith("3 consecutive failures (502, ConnectionError, TimeoutError)")

    def test_success_resets_the_count(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(health_config())
        self.fail_main(h, 2)
        drive(h.call(headers=PRIMARY), [ok()])
        self.fail_main(h, 2)
        assert h.events.named("holyroute.endpoint_ejected") == []

    def test_429_is_not_a_failure(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(health_config())
        for _ in range(5):
            drive(h.call(headers=PRIMARY), [status(429, {"retry-after-ms": "1"}), ok()], h.clock)
            h.clock.advance(0.01)
        assert h.events.named("holyroute.endpoint_ejected") == []

    def test_half_open_trial_restores(self, make_harness: Callable[..., Harness]) -> None:
        """After the ejection one trial request goes through; while it is in flight others skip; success restores."""
        h = make_harness(health_config())
        self.fail_main(h, 3)
        h.clock.advance(30)
        trial = h.call(headers=PRIMARY)
        step = trial.next_step()
        assert isinstance(step, Send)
        assert step.endpoint == "main"
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"], "one trial at a time"
        assert isinstance(trial.on_response(200, {}), Accepted)
        complete(trial)
        (restored,) = h.events.named("holyroute.endpoint_restored")
        assert restored["reason"] == "trial request succeeded after a 30s ejection"
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["main"]

    def test_failed_trial_doubles_then_caps(self, make_harness: Callable[..., Harness]) -> None:
        """Ejections in a row last base x n, capped at max_ejection_s."""
        h = make_harness(health_config())
        self.fail_main(h, 3)
        lengths = []
        for _ in range(4):
            h.clock.advance(h.events.named("holyroute.endpoint_ejected")[-1]["ejection_s"])
            drive(h.call(headers=PRIMARY), [status(500), ok()], h.clock)
            lengths.append(h.events.named("holyroute.endpoint_ejected")[-1]["ejection_s"])
        assert lengths == [60, 90, 100, 100]
        assert h.events.named("holyroute.endpoint_ejected")[1]["reason"].startswith("trial request failed (500)")

    def test_multiplier_decays_with_health(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(health_config())
        self.fail_main(h, 3)
        h.clock.advance(30)
        drive(h.call(headers=PRIMARY), [status(500), ok()], h.clock)  # trial fails: 60 s
        h.clock.advance(60)
        trial = h.call(headers=PRIMARY)
        drive(trial, [ok()])
        complete(trial)  # restored at level 2
        h.clock.advance(2 * 30)  # two base periods of health: the level decays to 0
        self.fail_main(h, 3)
        assert h.events.named("holyroute.endpoint_ejected")[-1]["ejection_s"] == 30

    def test_max_ejected_percent(self, make_harness: Callable[..., Harness]) -> None:
        """With 50% of two endpoints, the second one is never ejected too."""
        h = make_harness(health_config())
        for _ in range(3):
            drive(h.call(headers=PRIMARY), [status(503), status(503), ok()], h.clock)
        for _ in range(3):
            drive(h.call(headers=PRIMARY), [status(503), ok()], h.clock)
        assert [e["endpoint"] for e in h.events.named("holyroute.endpoint_ejected")] == ["main"]

    def test_panic_mode(self, make_harness: Callable[..., Harness]) -> None:
        """When fewer than half of an arm's endpoints are healthy, health is ignored and load spread."""
        config = health_config(max_ejected_percent=100)
        config["routes"]["chat-default"]["targets"][0]["endpoints"] = ["main", "backup", "deep"]
        h = make_harness(config)
        for _ in range(3):
            drive(h.call(headers=PRIMARY), [status(503), status(503), ok()], h.clock)
        assert [e["endpoint"] for e in h.events.named("holyroute.endpoint_ejected")] == ["main", "backup"]
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["main"], "panic: ejected endpoints serve again"
        (panic,) = h.events.named("holyroute.panic")
        assert panic["reason"] == "1 of 3 endpoints healthy (< half)"

    def test_insufficient_quota(self, make_harness: Callable[..., Harness]) -> None:
        """A 429 insufficient_quota ejects for quota_ejection_s and is never retried within the call."""
        h = make_harness(health_config(quota_ejection_s=3600))
        body = json.dumps({"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}})
        outcome = drive(h.call(headers=PRIMARY), [status(429, body=body.encode()), status(503), status(503)], h.clock)
        assert outcome.endpoints.count("main") == 1
        (event,) = h.events.named("holyroute.endpoint_ejected")
        assert event["reason"] == "429 insufficient_quota; ejected for 3600s"
        h.clock.advance(1800)
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]


class TestHeadroom:
    """OpenAI's rate-limit headers steer traffic away before a 429 happens."""

    def test_no_requests_left(self, harness: Harness) -> None:
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
        drive(harness.call(headers=PRIMARY), [ok(headers)])
        assert drive(harness.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]
        harness.clock.advance(360.01)
        assert drive(harness.call(headers=PRIMARY), [ok()]).endpoints == ["main"]

    def test_tokens_below_estimate(self, harness: Harness) -> None:
        headers = {"x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "2s"}
        drive(harness.call(headers=PRIMARY), [ok(headers)])
        assert drive(harness.call({"max_tokens": 100}, headers=PRIMARY), [ok()]).endpoints == ["main"]
        assert drive(harness.call({"max_tokens": 4000}, headers=PRIMARY), [ok()]).endpoints == ["backup"]
        harness.clock.advance(2.01)
        assert drive(harness.call({"max_tokens": 4000}, headers=PRIMARY), [ok()]).endpoints == ["main"]


class TestClientLimits:
    """Client-side rpm / tpm per endpoint."""

    def config(self, when_limited: str) -> dict[str, Any]:
        config = base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0, "when_limited": when_limited})
        config["endpoints"]["main"]["rpm"] = 2
        return config

    def test_failover_when_out_of_rpm(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config("failover"))
        assert [drive(h.call(headers=PRIMARY), [ok()]).endpoints[0] for _ in range(3)] == ["main", "main", "backup"]
        h.clock.advance(30)  # one request's worth of refill at 2 per minute
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["main"]

    def test_wait_when_out_of_rpm(self, make_harness: Callable[..., Harness]) -> None:
        config = self.config("wait")
        config["routes"]["chat-default"]["targets"][0]["endpoints"] = ["main"]
        config["retry"]["max_wait_s"] = 60
        h = make_harness(config)
        drive(h.call(headers=PRIMARY), [ok()])
        drive(h.call(headers=PRIMARY), [ok()])
        outcome = drive(h.call(headers=PRIMARY), [ok()], h.clock)
        assert outcome.waits == [pytest.approx(30.0)]
        assert outcome.endpoints == ["main"]

    def test_tpm(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config()
        config["endpoints"]["main"]["tpm"] = 1000
        h = make_harness(config)
        assert drive(h.call({"max_tokens": 900}, headers=PRIMARY), [ok()]).endpoints == ["main"]
        assert drive(h.call({"max_tokens": 900}, headers=PRIMARY), [ok()]).endpoints == ["backup"]


class TestRetryBudget:
    """Failovers and retries are capped at a fraction of recent calls: an outage is not a storm."""

    def test_total_outage(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config(
            # min_attempts 1: the budget limits the retries beyond the persistence floor; here it decides every retry.
            retry={
                "max_attempts": 3,
                "min_attempts": 1,
                "budget_ratio": 0.2,
                "budget_min_per_s": 1,
                "budget_window_s": 10,
            }
        )
        h = make_harness(config)
        calls = 500
        attempts = 0
        for n in range(calls):
            outcome = drive(h.call(headers=PRIMARY), [status(503)] * 3, h.clock)
            attempts += len(outcome.sent)
            assert isinstance(outcome.final, Respond)
            h.clock.advance(0.02 if n % 2 else 0.0)
        floor = 1 * 10
        assert attempts <= 1.2 * calls + floor
        assert attempts > calls, "some failovers were still allowed"
        assert h.events.named("holyroute.retry_budget_exhausted")[0]["reason"].startswith("retries (")
        assert "retry budget exhausted" in h.events.named("holyroute.request")[-1]["error"]


class TestBalance:
    """How a target orders its healthy endpoints."""

    def config(self, balance: str) -> dict[str, Any]:
        config = base_config()
        config["routes"]["chat-default"]["targets"][0]["balance"] = balance
        return config

    def test_round_robin(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config("round_robin"))
        firsts = [drive(h.call(headers=PRIMARY), [ok()]).endpoints[0] for _ in range(4)]
        assert firsts == ["main", "backup", "main", "backup"]

    def test_least_busy(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config("least_busy"))
        busy = h.call({"stream": True}, headers=PRIMARY)
        drive(busy, [(200, {"content-type": "text/event-stream"}, b"")])  # a stream still flowing on main
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]

    def test_latency(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config("latency"))
        slow = h.call(headers=PRIMARY)
        assert isinstance(slow.next_step(), Send)
        h.clock.advance(2.0)
        slow.on_response(200, {})
        complete(slow)
        fast = h.call(headers={"x-holyroute-arm": "gpt-4.1"})
        fast.next_step()
        fast.on_response(200, {})
        complete(fast)
        # main measured 2 s; backup unmeasured counts as 0 and is explored first, then measured fast.
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]


class TestDeadline:
    """The caller's timeout, as the SDK's: it bounds each attempt within the persistence floor (``min_attempts``),
    and the whole call, every attempt and every wait, beyond it."""

    def test_attempt_timeout_is_what_is_left(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(base_config(retry={"max_attempts": 3, "min_attempts": 1, "backoff_jitter_s": 0}))
        call = h.call(headers=PRIMARY, timeout=10.0)
        first = call.next_step()
        assert isinstance(first, Send)
        assert first.timeout == pytest.approx(10.0)
        h.clock.advance(7.5)
        call.on_error(TimeoutError(), timeout=True)
        second = call.next_step()
        assert isinstance(second, Send)
        assert second.timeout == pytest.approx(2.5)

    def test_each_attempt_within_the_floor_gets_the_whole_timeout(self, make_harness: Callable[..., Harness]) -> None:
        """As the SDK gives each of its attempts its whole timeout: a hung endpoint does not cut the next short."""
        h = make_harness()
        call = h.call(headers=PRIMARY, timeout=10.0)
        first = call.next_step()
        assert isinstance(first, Send)
        h.clock.advance(10.0)
        call.on_error(TimeoutError(), timeout=True)
        second = call.next_step()
        assert isinstance(second, Send)
        assert second.timeout == pytest.approx(10.0)

    def test_no_attempt_after_the_deadline(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(base_config(retry={"max_attempts": 3, "min_attempts": 1, "backoff_jitter_s": 0}))
        call = h.call(headers=PRIMARY, timeout=1.0)
        call.next_step()
        h.clock.advance(1.0)
        call.on_error(TimeoutError(), timeout=True)
        final = call.next_step()
        assert not isinstance(final, Send)
        assert "deadline reached" in h.events.named("holyroute.request")[-1]["error"]

    def test_no_attempt_after_the_deadline_beyond_the_floor(self, make_harness: Callable[..., Harness]) -> None:
        """With every attempt timing out, the SDK's three attempts are made, then the deadline (long past) ends it."""
        h = make_harness(base_config(retry={"max_attempts": 5, "backoff_jitter_s": 0}))
        call = h.call(headers=PRIMARY, timeout=1.0)
        sent = 0
        step = call.next_step()
        while isinstance(step, Send | Wait):
            if isinstance(step, Send):
                sent += 1
                h.clock.advance(1.0)
                call.on_error(TimeoutError(), timeout=True)
            else:
                h.clock.advance(step.seconds)
            step = call.next_step()
        assert sent == 3
        assert "deadline reached" in h.events.named("holyroute.request")[-1]["error"]

    def test_stream_headers_timeout(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness()
        stream = h.call({"stream": True}, headers=PRIMARY).next_step()
        plain = h.call(headers=PRIMARY).next_step()
        assert isinstance(stream, Send)
        assert isinstance(plain, Send)
        assert (stream.headers_timeout, plain.headers_timeout) == (20.0, None)


class TestActiveHealth:
    """Active health check verdicts steer routing: unhealthy endpoints are skipped, degraded ones tried last."""

    def config(self) -> dict[str, Any]:
        config = base_config()
        config["endpoints"]["main"]["health_check"] = {"interval_s": 60}
        return config

    def test_unhealthy_skipped(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config())
        h.router.health.record_probe("main", "unhealthy", h.clock.now)
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]

    def test_degraded_tried_last(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config())
        h.router.health.record_probe("main", "degraded", h.clock.now)
        assert drive(h.call(headers=PRIMARY), [status(503), ok()]).endpoints == ["backup", "main"]
