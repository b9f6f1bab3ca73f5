"""Each part of a call on its own, on the fake clock: planning, eligibility, waiting, accounting, attempts, sending.

:class:`~holyroute.core.call.Call` is a chain of small classes (``core/call_state.py`` says which); these tests ask
each part its one question directly, without driving a whole call through the step machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from holyroute.core.call import Call
from holyroute.core.plan import Upstream
from holyroute.core.steps import Respond, Send

from .conftest import Harness, base_config

MODELS = {"main": "gpt-4.1", "backup": "gpt-4.1", "deep": "deepseek-chat", "cheap": "gemini-2.5-flash"}


def cool_everything(h: Harness, seconds: float) -> None:
    for endpoint, model in MODELS.items():
        h.router.health.cool(endpoint, model, seconds, "429", h.clock())


class TestPlanning:
    def test_a_pin_chooses_the_arm_and_the_split_is_not_asked(self, harness: Harness) -> None:
        call = harness.call(headers={"x-holyroute-arm": "deepseek-chat"})
        assert [leg.arm.model for leg in call._legs] == ["deepseek-chat"]
        assert call._final is None

    def test_a_pin_that_matches_no_arm_is_answered_locally_with_400(self, harness: Harness) -> None:
        call = harness.call(headers={"x-holyroute-arm": "nope"})
        assert isinstance(call._final, Respond)
        assert call._final.status == 400
        assert json.loads(call._final.body)["error"]["code"] == "holyroute_unknown_arm"


class TestEligibility:
    def test_a_cooling_endpoint_is_unavailable_until_its_cooldown_ends(self, harness: Harness) -> None:
        call = harness.call(headers={"x-holyroute-arm": "gpt-4.1"})
        leg, upstream = call._sequence[0]
        assert call._unavailable(leg, upstream, harness.clock()) is None
        harness.router.health.cool(upstream.endpoint, upstream.model, 30.0, "429", harness.clock())
        why = call._unavailable(leg, upstream, harness.clock())
        assert why is not None
        assert why[0].startswith("cooling down")
        assert why[1] == harness.clock() + 30.0
        harness.clock.advance(30.001)
        assert call._unavailable(leg, upstream, harness.clock()) is None

    def test_a_ceiling_below_the_worst_case_cost_rules_an_endpoint_out_whatever_its_health(
        self, harness: Harness
    ) -> None:
        call = harness.call({"max_tokens": 1000}, headers={"x-holyroute-max-cost": "0.000001"})
        leg, upstream = call._sequence[0]
        why = call._unavailable(leg, upstream, harness.clock(), force=True)
        assert why is not None
        assert why[0].startswith("cost: up to $")
        assert why[1] is None


class TestWaiting:
    def test_when_every_endpoint_cools_the_call_waits_for_the_first_to_come_back(self, harness: Harness) -> None:
        call = harness.call(headers={"x-holyroute-arm": "gpt-4.1"})
        cool_everything(harness, 5.0)
        assert call._wait_before_next_pass(harness.clock()) == 5.0

    def test_the_caller_deadline_ends_the_walk_beyond_the_floor(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(base_config(retry={"max_attempts": 3, "min_attempts": 0}))
        call = h.call(timeout=2.0)
        assert not call._past_deadline(h.clock())
        h.clock.advance(2.0)
        assert call._past_deadline(h.clock())
        assert call._stop_reason == "deadline reached"

    def test_within_the_floor_the_timeout_bounds_attempts_not_the_walk(self, harness: Harness) -> None:
        call = harness.call(timeout=2.0)
        harness.clock.advance(2.0)
        assert not call._past_deadline(harness.clock())


class TestAccounting:
    def test_giving_up_before_any_attempt_answers_429_with_the_soonest_retry_and_one_event(
        self, harness: Harness
    ) -> None:
        call = harness.call(headers={"x-holyroute-arm": "gpt-4.1"})
        now = harness.clock()
        call._skipped = {("main", "gpt-4.1"): ("cooling down (429)", now + 2.5), ("backup", "gpt-4.1"): ("x", None)}
        answer = call._give_up(now)
        assert isinstance(answer, Respond)
        assert answer.status == 429
        assert dict(answer.headers)["retry-after-ms"] == "2500"
        assert "main/gpt-4.1 cooling down (429) for 2.5s" in json.loads(answer.body)["error"]["message"]
        [event] = harness.events.named("holyroute.request")
        assert (event["status"], event["outcome"], event["attempts"]) == (429, "error", 0)
        assert event["error"] == "no endpoint available"
        assert call.done


PRIMARY = {"x-holyroute-arm": "gpt-4.1"}


def first_upstream(call: Call, now: float) -> Upstream:
    """The endpoint the walk would try first (and the leg it belongs to, remembered by the call)."""
    upstream = call._next_available(now)
    assert upstream is not None
    return upstream


def one_failure_ejects() -> dict[str, Any]:
    config = base_config()
    config["health"] = {"consecutive_failures": 1, "base_ejection_s": 30}
    return config


class TestAttempts:
    def test_an_attempt_ends_once_whatever_reports_its_end(self, harness: Harness) -> None:
        health = harness.router.health
        one, two = harness.call(headers=PRIMARY), harness.call(headers=PRIMARY)
        for call in (one, two):
            call._send(first_upstream(call, harness.clock()), harness.clock())
        assert health.in_flight("main") == 2
        one.on_error(ConnectionError(), timeout=False)
        one._end_attempt()
        one.abandon(ConnectionError())
        assert health.in_flight("main") == 1, "the other call's attempt is still in flight"

    def test_a_5xx_is_a_failure_counted_among_the_arms_endpoints(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(one_failure_ejects())
        call = h.call(headers=PRIMARY)
        call._send(first_upstream(call, h.clock()), h.clock())
        assert call.on_response(503, {}) is None
        [event] = h.events.named("holyroute.endpoint_ejected")
        assert event["reason"] == "1 consecutive 503 >= consecutive_failures (1); ejected for 30s"
        assert call._failure is not None
        assert call._failure["reason"] == "503 from upstream"

    def test_a_429_cools_the_pair_and_is_no_failure(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(one_failure_ejects())
        call = h.call(headers=PRIMARY)
        call._send(first_upstream(call, h.clock()), h.clock())
        assert call.on_response(429, {"retry-after": "2"}) is None
        cooldown = h.router.health.cooldown("main", "gpt-4.1", h.clock())
        assert cooldown is not None
        assert (cooldown.until, cooldown.reason) == (h.clock() + 2.0, "429 retry-after 2s")
        assert h.events.named("holyroute.endpoint_ejected") == []
        call.on_rejected_body(b'{"error": {"code": "insufficient_quota"}}')
        assert h.router.health.out_of_quota("main", h.clock())
        assert "main" in call._excluded, "never again in this call"
        assert h.router.health.in_flight("main") == 0

    def test_a_2xx_body_that_is_not_json_fails_over(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(one_failure_ejects())
        call = h.call(headers=PRIMARY)
        call._send(first_upstream(call, h.clock()), h.clock())
        accepted = call.on_response(200, {"content-type": "application/json"})
        assert accepted is not None
        assert not accepted.event_stream
        assert call.on_body(b"<html>oops</html>") is False
        [event] = h.events.named("holyroute.endpoint_ejected")
        assert event["reason"].startswith("1 consecutive malformed body")
        assert not call.done

    def test_a_cancellation_ends_the_call_without_blaming_the_endpoint(
        self, make_harness: Callable[..., Harness]
    ) -> None:
        h = make_harness(one_failure_ejects())
        call = h.call(headers=PRIMARY)
        call._send(first_upstream(call, h.clock()), h.clock())
        with pytest.raises(KeyboardInterrupt), call.owned():
            raise KeyboardInterrupt
        [event] = h.events.named("holyroute.request")
        assert (event["outcome"], event["error"]) == ("cancelled", "cancelled: KeyboardInterrupt")
        assert h.events.named("holyroute.endpoint_ejected") == []
        assert h.router.health.in_flight("main") == 0
        call.abandon(OSError())
        assert len(h.events.named("holyroute.request")) == 1, "safe to call more than once"

    def test_a_socket_error_that_ends_the_call_counts_against_the_endpoint(
        self, make_harness: Callable[..., Harness]
    ) -> None:
        h = make_harness(one_failure_ejects())
        call = h.call(headers=PRIMARY)
        call._send(first_upstream(call, h.clock()), h.clock())
        call.abandon(ConnectionResetError())
        assert [e["endpoint"] for e in h.events.named("holyroute.endpoint_ejected")] == ["main"]
        [event] = h.events.named("holyroute.request")
        assert event["outcome"] == "error"


class TestSending:
    def test_only_the_model_changes_in_the_body_sent(self, harness: Harness) -> None:
        call = harness.call(headers=PRIMARY)
        send = call._send(first_upstream(call, harness.clock()), harness.clock())
        assert isinstance(send, Send)
        assert send.url == "https://main.example/v1/chat/completions"
        assert send.body == call._raw_body.replace(b'"chat-default"', b'"gpt-4.1"')
        assert ("accept-encoding", "gzip, deflate") in send.headers
        assert "authorization" in send.drop, "the caller's key never reaches the upstream"

    def test_a_stream_asks_for_its_usage_and_the_tap_hides_it(self, harness: Harness) -> None:
        call = harness.call({"stream": True}, headers=PRIMARY)
        send = call._send(first_upstream(call, harness.clock()), harness.clock())
        sent = json.loads(send.body)
        assert (sent["model"], sent["stream_options"]) == ("gpt-4.1", {"include_usage": True})
        assert call._hide_usage
        assert ("accept-encoding", "identity") in send.headers

    def test_the_callers_credentials_leave_the_query(self, harness: Harness) -> None:
        body = json.dumps({"model": "chat-default", "messages": []}).encode()
        call = harness.router.begin("POST", "/v1/chat/completions", "api-key=secret&user=7", PRIMARY, body)
        assert call is not None
        send = call._send(first_upstream(call, harness.clock()), harness.clock())
        assert send.url == "https://main.example/v1/chat/completions?user=7"

    def test_beyond_the_floor_an_attempt_gets_what_is_left_of_the_timeout(
        self, make_harness: Callable[..., Harness]
    ) -> None:
        h = make_harness(base_config(retry={"max_attempts": 3, "min_attempts": 0, "headers_timeout_s": 5}))
        call = h.call(headers=PRIMARY, timeout=10.0)
        h.clock.advance(7.0)
        send = call._send(first_upstream(call, h.clock()), h.clock())
        assert (send.timeout, send.headers_timeout) == (3.0, 3.0)
