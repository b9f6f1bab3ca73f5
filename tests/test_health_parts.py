"""Each part of the health book on its own, on the fake clock: ejections, cooldowns and headroom, rate limits.

:class:`~holyroute.core.health.HealthBook` answers from three parts (``core/health.py`` says which); these tests ask
each part its one question directly, then check that the book still hands changes between processes intact.
"""

from __future__ import annotations

import math

from holyroute.config.schema import Health
from holyroute.core.cooldowns import Cooldowns
from holyroute.core.ejection import Ejections
from holyroute.core.health import HealthBook
from holyroute.core.ports import HealthChange
from holyroute.core.rate_limits import Debit, RateLimits

from .conftest import FakeClock

WALL = 1_800_000_000.0
PEERS = ("a", "b", "c", "d")


class TestEjections:
    def policy(self) -> Health:
        return Health(consecutive_failures=2, base_ejection_s=10, max_ejection_s=25)

    def test_consecutive_failures_eject_for_the_base_time_then_a_trial_decides(self) -> None:
        clock = FakeClock()
        ejections = Ejections(self.policy())
        assert ejections.failure("a", "503", clock(), PEERS) is None
        change = ejections.failure("a", "502", clock(), PEERS)
        assert change is not None
        assert change.event == "holyroute.endpoint_ejected"
        assert change.reason == "2 consecutive failures (502, 503) >= consecutive_failures (2); ejected for 10s"
        assert change.ejection_s == 10
        assert ejections.ejected("a", clock()) == "ejected for 10.0s more"
        clock.advance(10)
        assert ejections.ejected("a", clock()) is None
        assert ejections.begin("a", clock()) is True, "the first attempt after the ejection is the trial"
        assert ejections.ejected("a", clock()) == "half-open: its trial request is in flight"
        assert ejections.begin("a", clock()) is False, "one trial at a time"
        restored = ejections.success("a", clock(), trial=True)
        assert restored is not None
        assert restored.event == "holyroute.endpoint_restored"
        assert restored.reason == "trial request succeeded after a 10s ejection"
        assert ejections.ejected("a", clock()) is None

    def test_a_failed_trial_ejects_again_for_longer_up_to_the_cap(self) -> None:
        clock = FakeClock()
        ejections = Ejections(self.policy())
        ejections.failure("a", "503", clock(), PEERS)
        ejections.failure("a", "503", clock(), PEERS)
        lengths = []
        for _ in range(3):
            clock.advance(30)
            trial = ejections.begin("a", clock())
            change = ejections.failure("a", "TimeoutError", clock(), PEERS, trial=trial)
            ejections.end("a", trial=trial)
            assert change is not None
            lengths.append(change.ejection_s)
        assert lengths == [20, 25, 25]

    def test_max_ejected_percent_keeps_the_last_endpoints_in(self) -> None:
        ejections = Ejections(Health(consecutive_failures=1, max_ejected_percent=50))
        assert ejections.failure("a", "503", 0.0, PEERS) is not None
        assert ejections.failure("b", "503", 0.0, PEERS) is not None
        assert ejections.failure("c", "503", 0.0, PEERS) is None
        assert ejections.ejected("c", 0.0) is None

    def test_in_flight_and_latency_are_counted(self) -> None:
        ejections = Ejections()
        assert (ejections.in_flight("a"), ejections.latency("a")) == (0, None)
        ejections.begin("a", 0.0)
        ejections.begin("a", 0.0)
        assert ejections.in_flight("a") == 2
        ejections.success("a", 0.0, 1.0)
        ejections.success("a", 0.0, 2.0)
        assert ejections.latency("a") == 0.8 * 1.0 + 0.2 * 2.0
        ejections.end("a", trial=False)
        ejections.end("a", trial=False)
        ejections.end("a", trial=False)
        assert ejections.in_flight("a") == 0, "never below zero"

    def test_insufficient_quota_is_out_for_quota_ejection_s(self) -> None:
        ejections = Ejections(Health(quota_ejection_s=600))
        change = ejections.quota_exhausted("a", 0.0)
        assert (change.quota, change.ejection_s) == (True, 600)
        assert ejections.out_of_quota("a", 599.0)
        assert not ejections.out_of_quota("a", 600.0)

    def test_changes_from_another_process_eject_and_restore(self) -> None:
        ejections = Ejections()
        ejections.apply(HealthChange("ejected", "a"), 5.0, 0.0)
        assert ejections.ejected("a", 4.9) is not None
        assert [(c.kind, c.until) for c in ejections.live(1.0, WALL)] == [("ejected", WALL + 4.0)]
        ejections.apply(HealthChange("restored", "a"), math.nan, 1.0)
        assert ejections.ejected("a", 1.0) is None
        assert ejections.live(1.0, WALL) == []
        ejections.apply(HealthChange("ejected", "b"), math.nan, 1.0)
        assert ejections.ejected("b", 1.0) is None, "nan is no duration"


class TestCooldowns:
    def test_a_cooldown_holds_the_pair_until_it_ends_and_only_that_model(self) -> None:
        clock = FakeClock()
        cooldowns = Cooldowns(max_cooldown_s=60.0)
        cooldown = cooldowns.cool("a", "gpt-4.1", 5.0, "429 retry-after 5s", clock())
        assert cooldown is not None
        assert cooldowns.blocked("a", "gpt-4.1", clock(), 1) == ("cooling down (429 retry-after 5s)", clock() + 5.0)
        assert cooldowns.blocked("a", "gpt-4.1-mini", clock(), 1) is None
        assert cooldowns.cool("a", "gpt-4.1", 1.0, "shorter", clock()) is None, "a shorter one never replaces it"
        clock.advance(5.0)
        assert cooldowns.cooldown("a", "gpt-4.1", clock()) is None

    def test_no_cooldown_outlasts_max_cooldown_s_and_nan_is_none(self) -> None:
        cooldowns = Cooldowns(max_cooldown_s=60.0)
        cooldown = cooldowns.cool("a", "m", 1e9, "x", 0.0)
        assert cooldown is not None
        assert cooldown.until == 60.0
        assert cooldowns.cool("b", "m", math.nan, "x", 0.0) is None

    def test_headroom_blocks_until_the_reset_and_is_low_near_the_end(self) -> None:
        clock = FakeClock()
        cooldowns = Cooldowns()
        low = cooldowns.record_headroom(
            "a",
            "m",
            {
                "x-ratelimit-remaining-tokens": "50",
                "x-ratelimit-reset-tokens": "2s",
                "x-ratelimit-limit-tokens": "1000",
            },
            clock(),
        )
        assert low, "5% left"
        assert cooldowns.blocked("a", "m", clock(), 40) is None
        assert cooldowns.blocked("a", "m", clock(), 60) == (
            "x-ratelimit-remaining-tokens 50 < estimate 60",
            clock() + 2,
        )
        change = cooldowns.headroom_change("a", "m", clock(), WALL)
        assert change == HealthChange("headroom", "a", "m", WALL + 2.0, "tokens", 50)
        clock.advance(2.0)
        assert cooldowns.blocked("a", "m", clock(), 60) is None
        assert cooldowns.live_headroom(clock(), WALL) == []

    def test_no_requests_left_blocks_every_request(self) -> None:
        cooldowns = Cooldowns()
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
        assert cooldowns.record_headroom("a", "m", headers, 0.0)
        assert cooldowns.blocked("a", "m", 0.0, 0) == ("x-ratelimit-remaining-requests 0", 1.5)

    def test_headroom_from_another_process_is_applied_and_bounded(self) -> None:
        cooldowns = Cooldowns()
        cooldowns.apply_headroom(HealthChange("headroom", "a", "m", 0.0, "tokens", -5), 3.0, 0.0)
        assert cooldowns.blocked("a", "m", 0.0, 1) == ("x-ratelimit-remaining-tokens 0 < estimate 1", 3.0)
        cooldowns.apply_headroom(HealthChange("headroom", "b", "m", 0.0, "requests"), -1.0, 0.0)
        assert cooldowns.blocked("b", "m", 0.0, 0) is None, "a past reset applies nothing"


class TestRateLimits:
    def test_rpm_and_tpm_say_which_ran_out_and_when_room_comes_back(self) -> None:
        clock = FakeClock()
        limits = RateLimits({"a": (2, 600)}, clock())
        assert limits.blocked("a", 100, clock()) is None
        limits.charge("a", 300, clock())
        limits.charge("a", 300, clock())
        assert limits.blocked("a", 100, clock()) == ("rpm 2 reached", clock() + 30.0)
        clock.advance(30.0)  # one request and 300 tokens back
        assert limits.blocked("a", 500, clock()) == ("tpm 600 reached", clock() + 20.0)
        assert limits.blocked("b", 10**9, clock()) is None, "no limit configured"

    def test_the_local_share_says_so_and_charges_only_a_grant(self) -> None:
        clock = FakeClock()
        limits = RateLimits({"a": (1, None)}, clock())
        debits: list[Debit] = []
        assert limits.local_limit("a", 10, clock(), debits) is None
        assert limits.local_limit("a", 10, clock(), debits) == ("rpm 1 reached (local share)", clock() + 60.0)
        assert debits == [], "no tpm bucket, no debit"

    def test_while_shared_the_buckets_are_idle_but_a_shared_no_holds(self) -> None:
        clock = FakeClock()
        limits = RateLimits({"a": (1, None)}, clock())
        limits.share(True, 3, clock())
        limits.charge("a", 1, clock())
        limits.charge("a", 1, clock())
        assert limits.blocked("a", 1, clock()) is None
        limits.limited("a", clock() + 2.0, "shared rpm 1 reached")
        assert limits.blocked("a", 1, clock()) == ("shared rpm 1 reached", clock() + 2.0)

    def test_back_on_local_buckets_each_process_takes_its_share(self) -> None:
        limits = RateLimits({"a": (None, 900)}, 0.0)
        limits.share(False, 3, 0.0)
        debits: list[Debit] = []
        limits.charge("a", 10**6, 0.0, debits)
        assert [debit.tokens for debit in debits] == [300.0], "at most the share's capacity"

    def test_settle_credits_back_what_the_answer_did_not_use(self) -> None:
        limits = RateLimits({"a": (None, 1000)}, 0.0)
        debits: list[Debit] = []
        limits.charge("a", 400, 0.0, debits)
        limits.charge("a", 400, 0.0, debits)
        shared = Debit("b", None, 100, 500)
        debits.append(shared)
        assert limits.blocked("a", 300, 0.0) is not None
        assert limits.settle(debits, 0.0, endpoint="a", used=50) == [("b", 500, 100)]
        assert debits == []
        assert limits.blocked("a", 950, 0.0) is None, "400 back from the failed attempt, 350 from the answer"


class TestHealthBookSharing:
    def test_what_one_book_has_in_force_another_applies_with_the_same_deadlines(self) -> None:
        clock = FakeClock()
        one = HealthBook(clock, Health(consecutive_failures=1))
        one.cool("a", "m", 5.0, "429", clock())
        one.failure("b", "503", clock(), ("b", "c", "d"))
        one.quota_exhausted("c", clock())
        one.record_headroom("d", "m", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, 1e3)
        changes = one.live_changes(clock(), WALL)
        assert [c.kind for c in changes] == ["cooldown", "ejected", "quota", "headroom"]
        other = HealthBook(FakeClock(50.0), Health(consecutive_failures=1))
        for change in changes:
            other.apply(change, 50.0, WALL)
        assert other.blocked("a", "m", 50.0, 1) == ("cooling down (429)", 55.0)
        assert other.ejected("b", 50.0) is not None
        assert other.out_of_quota("c", 50.0)
        assert other.blocked("d", "m", 50.0, 1) == ("x-ratelimit-remaining-requests 0", 52.0)
        assert [(c.kind, c.until) for c in other.live_changes(50.0, WALL)] == [(c.kind, c.until) for c in changes]

    def test_limits_only_ignores_what_the_upstream_said(self) -> None:
        book = HealthBook(lambda: 0.0, limits={"a": (1, None)})
        book.cool("a", "m", 5.0, "429", 0.0)
        assert book.blocked("a", "m", 0.0, 1, limits_only=True) is None
        book.begin_attempt("a", 0.0, 1)
        assert book.blocked("a", "m", 0.0, 1, limits_only=True) == ("rpm 1 reached", 60.0)
        book.shared_limits = True
        assert book.rate_limits.shared
        assert book.blocked("a", "m", 0.0, 1, limits_only=True) is None
