"""Each part of a call on its own, on the fake clock: planning, eligibility, waiting and accounting.

:class:`~holyroute.core.call.Call` is a chain of small classes (``core/call_state.py`` says which); these tests ask
each part its one question directly, without driving a whole call through the step machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from holyroute.core.steps import Respond

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
