"""The core's failover, cooldown and give-up decisions, step by step, with a fake clock. No sockets."""

from __future__ import annotations

import json
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest

from holyroute import Router, load_config
from holyroute.core.steps import Accepted, GiveUp, Respond

from .conftest import Events, FakeClock, Harness, base_config, drive, ok, status

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}


class TestFailoverOrder:
    """Failover walks the chosen arm's endpoints, then the fallback aliases; never another arm."""

    @pytest.mark.parametrize("code", [429, 408, 409, 500, 502, 503, 504])
    def test_retryable_status_moves_on(self, harness: Harness, code: int) -> None:
        """A retryable status on the primary endpoint moves to the backup endpoint of the same arm."""
        outcome = drive(harness.call(headers=PRIMARY), [status(code), ok()], harness.clock)
        assert outcome.endpoints == ["main", "backup"]
        assert isinstance(outcome.final, Accepted)

    def test_transport_error_moves_on(self, harness: Harness) -> None:
        """Connection errors and timeouts move on too."""
        outcome = drive(harness.call(headers=PRIMARY), [ConnectionError("refused"), TimeoutError(), ok()])
        assert outcome.endpoints == ["main", "backup", "cheap"]

    @pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'{"id": "chatcmpl-1", "choices": [', b""])
    def test_malformed_200_fails_over(self, harness: Harness, body: bytes) -> None:
        """A 2xx whose body is not JSON (an HTML error page, a truncated answer) is an upstream fault."""
        outcome = drive(harness.call(headers=PRIMARY), [(200, {"content-type": "application/json"}, body), ok()])
        assert outcome.endpoints == ["main", "backup"]
        (failover,) = harness.events.named("holyroute.failover")
        assert failover["reason"] == "200 with a body that is not JSON"

    def test_then_fallback_alias(self, harness: Harness) -> None:
        """When the arm is exhausted the fallback alias serves, and the event names it."""
        call = harness.call(headers=PRIMARY)
        outcome = drive(call, [status(500), status(503), ok()])
        assert outcome.endpoints == ["main", "backup", "cheap"]
        call.on_complete(None)
        event = harness.events.named("holyroute.request")[-1]
        assert (event["fallback"], event["arm"], event["endpoint"], event["attempts"]) == (
            "chat-cheap",
            "gemini-2.5-flash",
            "cheap",
            3,
        )

    def test_never_another_arm(self, harness: Harness) -> None:
        """A failing candidate arm never spills onto the stable arm of the same split."""
        outcome = drive(harness.call(headers={"x-holyroute-arm": "deepseek-chat"}), [status(503), ok()])
        assert outcome.endpoints == ["deep", "cheap"]

    @pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
    def test_caller_errors_return_at_once(self, harness: Harness, code: int) -> None:
        """A 4xx other than 408/409/429 is the caller's: returned as is, no failover."""
        call = harness.call(headers=PRIMARY)
        outcome = drive(call, [status(code)])
        assert outcome.endpoints == ["main"]
        assert isinstance(outcome.final, Accepted)
        call.on_complete(None)
        assert harness.events.named("holyroute.request")[-1]["outcome"] == "error"

    def test_failover_events_explain(self, harness: Harness) -> None:
        """Each abandoned attempt emits holyroute.failover with status, reason, wait and the next endpoint."""
        drive(harness.call(headers=PRIMARY), [status(503), ConnectionError(), ok()])
        first, second = harness.events.named("holyroute.failover")
        assert first["endpoint"] == "main"
        assert first["status"] == 503
        assert first["reason"] == "503 from upstream"
        assert first["wait_s"] == 0.0
        assert first["next_endpoint"] == "backup"
        assert (second["endpoint"], second["error"], second["reason"]) == (
            "backup",
            "ConnectionError",
            "connection error: ConnectionError",
        )


class TestGiveUp:
    """When everything is exhausted the caller gets the real last answer, marked not to be retried."""

    def test_last_response_with_should_retry_false(self, harness: Harness) -> None:
        """The last upstream body and status come back unchanged, plus x-should-retry: false."""
        body = json.dumps({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}})
        outcome = drive(
            harness.call(headers=PRIMARY),
            [status(500), status(502), status(429, {"x-request-id": "req_9"}, body.encode())],
            harness.clock,
        )
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 429
        assert outcome.final.body == body.encode()
        headers = dict(outcome.final.headers)
        assert headers["x-should-retry"] == "false"
        assert headers["x-request-id"] == "req_9"
        event = harness.events.named("holyroute.request")[-1]
        assert (event["status"], event["outcome"], event["attempts"], event["request_id"]) == (429, "error", 3, "req_9")

    def test_transport_errors_only(self, harness: Harness) -> None:
        """With no HTTP answer at all, the last transport error is handed back to be raised."""
        error = TimeoutError("read")
        outcome = drive(harness.call(headers=PRIMARY), [ConnectionError(), ConnectionError(), error])
        assert isinstance(outcome.final, GiveUp)
        assert outcome.final.error is error
        assert outcome.final.timeout is True
        assert "3 attempt(s) for 'chat-default' failed" in outcome.final.summary

    def test_answer_preferred_over_later_error(self, harness: Harness) -> None:
        """An HTTP answer beats a later transport error: it carries the provider's explanation."""
        outcome = drive(harness.call(headers=PRIMARY), [status(503), ConnectionError(), ConnectionError()])
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 503
        event = harness.events.named("holyroute.request")[-1]
        assert (event["endpoint"], event["status"], event["attempts"]) == ("main", 503, 3)

    def test_attempts_bounded(self, make_harness: Callable[..., Harness]) -> None:
        """`retry.max_attempts` bounds upstream attempts per call, passes and fallbacks included."""
        config = base_config(retry={"max_attempts": 5, "backoff_jitter_s": 0, "backoff_initial_s": 0.1})
        h = make_harness(config)
        outcome = drive(h.call(headers=PRIMARY), [status(500)] * 10, h.clock)
        assert len(outcome.sent) == 5
        assert outcome.endpoints == ["main", "backup", "cheap", "main", "backup"]
        assert outcome.waits == [0.1]

    def test_backoff_between_passes(self, make_harness: Callable[..., Harness]) -> None:
        """A single-endpoint route retries with tenacity's exponential schedule between passes."""
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 4, "backoff_initial_s": 0.5, "backoff_max_s": 8, "backoff_jitter_s": 0},
        )
        h = make_harness(config)
        outcome = drive(h.call(), [status(500)] * 4, h.clock)
        assert outcome.waits == [0.5, 1.0, 2.0]
        assert len(outcome.sent) == 4

    def test_deadline_stops_waiting(self, make_harness: Callable[..., Harness]) -> None:
        """No wait runs past the caller's timeout: the call ends with what it has."""
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 4, "min_attempts": 1, "backoff_initial_s": 5, "backoff_jitter_s": 0},
        )
        h = make_harness(config)
        outcome = drive(h.call(timeout=3.0), [status(500)] * 4, h.clock)
        assert outcome.waits == []
        assert isinstance(outcome.final, Respond)

    def test_floor_waits_the_backoff_whatever_the_timeout(self, make_harness: Callable[..., Harness]) -> None:
        """Within min_attempts the SDK's persistence holds: its backoff runs even past a short timeout."""
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 4, "backoff_initial_s": 5, "backoff_jitter_s": 0},
        )
        h = make_harness(config)
        outcome = drive(h.call(timeout=3.0), [status(500)] * 4, h.clock)
        assert outcome.waits == [5.0, 8.0]  # capped at backoff_max_s, as the SDK caps its own at 8 s
        assert len(outcome.sent) == 3


class TestCooldown:
    """A rate-limited endpoint is skipped by later calls until its cooldown ends."""

    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({"retry-after-ms": "1500"}, 1.5),
            ({"retry-after": "7"}, 7.0),
            ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"}, 90.0),
            (
                {
                    "x-ratelimit-remaining-requests": "10",
                    "x-ratelimit-reset-requests": "2s",
                    "x-ratelimit-remaining-tokens": "0",
                    "x-ratelimit-reset-tokens": "45ms",
                },
                0.045,
            ),
            ({}, 1.0),
        ],
    )
    def test_duration_from_headers(self, harness: Harness, headers: dict[str, str], seconds: float) -> None:
        """retry-after-ms, retry-after, then the reset of the limit that ran out; the default otherwise."""
        drive(harness.call(headers=PRIMARY), [status(429, headers), ok()])
        (cooldown,) = harness.events.named("holyroute.cooldown")
        assert cooldown["endpoint"] == "main"
        assert cooldown["cooldown_s"] == pytest.approx(seconds)

    def test_http_date(self, harness: Harness) -> None:
        """retry-after as an HTTP date counts from the wall clock."""
        when = formatdate(1_700_000_000.0 + harness.clock.now + 30, usegmt=True)
        drive(harness.call(headers=PRIMARY), [status(429, {"retry-after": when}), ok()])
        assert harness.events.named("holyroute.cooldown")[0]["cooldown_s"] == pytest.approx(30, abs=1)

    def test_skipped_then_restored(self, harness: Harness) -> None:
        """While cooling, later calls go straight to the backup; after it ends, the primary again."""
        drive(harness.call(headers=PRIMARY), [status(429, {"retry-after": "5"}), ok()])
        assert drive(harness.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]
        harness.clock.advance(5.01)
        assert drive(harness.call(headers=PRIMARY), [ok()]).endpoints == ["main"]

    def test_per_model(self, make_harness: Callable[..., Harness]) -> None:
        """A 429 for one model does not cool the same endpoint for another model."""
        config = base_config(
            routes={
                "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]},
                "mini": {"targets": [{"model": "gpt-4.1-mini", "endpoints": ["main"]}]},
            }
        )
        h = make_harness(config)
        drive(h.call(), [status(429, {"retry-after": "60"})] * 3)  # the SDK's three attempts (retry.min_attempts)
        assert drive(h.call({"model": "mini"}), [ok()]).endpoints == ["main"]

    def test_waits_for_short_cooldown(self, make_harness: Callable[..., Harness]) -> None:
        """When every endpoint cools down briefly, the call waits (within max_wait_s) rather than failing."""
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 3, "backoff_initial_s": 0.1, "backoff_jitter_s": 0, "max_wait_s": 5},
        )
        h = make_harness(config)
        outcome = drive(h.call(), [status(429, {"retry-after": "2"}), ok()], h.clock)
        assert outcome.waits == [2.0]
        assert outcome.endpoints == ["main", "main"]

    def test_all_cooling_answers_429_locally(self, make_harness: Callable[..., Harness]) -> None:
        """With the persistence floor off (min_attempts: 0), if every endpoint cools for longer than max_wait_s, a
        local 429 says which and for how long."""
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 3, "min_attempts": 0, "max_wait_s": 1},
        )
        h = make_harness(config)
        drive(h.call(), [status(429, {"retry-after": "30"})], h.clock)
        outcome = drive(h.call(), [], h.clock)
        assert outcome.sent == []
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 429
        headers = dict(outcome.final.headers)
        assert headers["x-should-retry"] == "false"
        assert headers["retry-after"] == "30"
        message = json.loads(outcome.final.body)["error"]["message"]
        assert "main/gpt-4.1 cooling down (429 retry-after 30s) for 30.0s" in message

    def test_all_cooling_still_tried_below_the_floor(self, make_harness: Callable[..., Harness]) -> None:
        """With the floor (default min_attempts 3), a call facing only long cooldowns still makes the SDK's three
        attempts (backing off between them), so a failure is the upstream's own answer, never the router's."""
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 3, "max_wait_s": 1},
        )
        h = make_harness(config)
        first = drive(h.call(), [status(429, {"retry-after": "30"})] * 3, h.clock)
        assert len(first.sent) == 3
        assert all(wait < 2 for wait in first.waits), "the backoff, not the 30s cooldown"
        second = drive(
            h.call(), [status(429, {"retry-after": "30"}), status(429, {"retry-after": "30"}), ok()], h.clock
        )
        assert len(second.sent) == 3
        assert h.events.named("holyroute.request")[-1]["outcome"] == "ok"

    def test_cooldown_capped(self, make_harness: Callable[..., Harness]) -> None:
        """An absurd retry-after is capped at retry.max_cooldown_s."""
        h = make_harness(base_config(retry={"max_cooldown_s": 60}))
        drive(h.call(headers=PRIMARY), [status(429, {"retry-after": "86400"}), ok()])
        assert h.events.named("holyroute.cooldown")[0]["cooldown_s"] == 60


class TestSinks:
    """Event sinks are the user's code: one that raises never breaks the call that emitted the event."""

    def test_a_failing_sink_is_reported_once_and_the_call_goes_on(self) -> None:
        events = Events()
        calls = []

        def broken(event: str, fields: dict[str, Any]) -> None:
            calls.append(event)
            raise RuntimeError("exporter down")

        router = Router(load_config(base_config()), log=False, sinks=[broken, events])
        h = Harness(router, FakeClock(), events)
        for _ in range(3):
            outcome = drive(h.call(headers={"x-holyroute-arm": "gpt-4.1"}), [ok()])
            assert outcome.endpoints == ["main"]
        assert calls == ["holyroute.request"] * 3, "the broken sink still gets every event"
        assert len(events.named("holyroute.request")) == 3, "later sinks get every event"
        [report] = events.named("holyroute.sink_failed")
        assert report["sink"].endswith("broken")
        assert report["reason"].startswith("RuntimeError: exporter down")

    def test_call_ids_tie_failovers_to_their_call(self, harness: Harness) -> None:
        first = drive(harness.call(headers={"x-holyroute-arm": "gpt-4.1"}), [status(503), ok()])
        second = drive(harness.call(headers={"x-holyroute-arm": "gpt-4.1"}), [ok()])
        assert first.endpoints == ["main", "backup"]
        assert second.endpoints == ["main"]
        [failover] = harness.events.named("holyroute.failover")
        one, two = harness.events.named("holyroute.request")
        assert failover["call_id"] == one["call_id"] != two["call_id"]
        assert failover["attempt_ms"] >= 0
        assert one["attempt_ms"] is not None
