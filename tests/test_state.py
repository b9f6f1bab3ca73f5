"""The state-backend interface, decided by the core: no Redis here (see ``test_state_redis.py`` for the real one).

A recording backend stands in for a shared store: it answers the core's :class:`Acquire` steps as scripted and
keeps what the core publishes, so each test shows one decision the core makes with shared state.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from holyroute import Transport, load_config
from holyroute.boundary.redis_url import parse_redis_url
from holyroute.core.call import Router
from holyroute.core.health import HealthBook
from holyroute.core.steps import Acquire, Respond, Send, Wait
from holyroute.exceptions import ConfigError
from holyroute.rollout.engine import MemoryStore, StateStore
from holyroute.state.base import HealthChange, Leases, period_key
from holyroute.state.factory import open_backend
from holyroute.state.memory import MemoryBackend
from holyroute.state.redis.payloads import redacted

from .conftest import FakeClock, Harness, base_config, drive, ok, status

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}
WALL0 = 1_700_000_000.0  # the harness's wall clock is WALL0 + the fake monotonic clock
SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=12).map(lambda s: "Zq" + s)


class RecordingBackend:
    """A shared store as the core sees it: scripted grants, recorded publishes, in-memory spend."""

    name = "recording"

    def __init__(self, *, shares_limits: bool = True) -> None:
        self.shares_limits = shares_limits
        self.published: list[HealthChange] = []
        self.asked: list[Acquire] = []
        self.answers: list[float | None] = []
        self.settled: list[tuple[str, int, int]] = []
        self.spend = MemoryBackend(wall_clock=lambda: WALL0)
        self.closed = False

    def attach(self, router: Router) -> None:
        router.health.share_limits(self.shares_limits, 1, router.clock())

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        raise AssertionError("the harness answers Acquire steps itself")

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        raise AssertionError("the harness answers Acquire steps itself")

    def grant(self, step: Acquire) -> float | None:
        self.asked.append(step)
        return self.answers.pop(0) if self.answers else 0.0

    def publish(self, change: HealthChange) -> None:
        self.published.append(change)

    def settle(self, endpoint: str, tpm: int, tokens: int) -> None:
        self.settled.append((endpoint, tpm, tokens))

    def add_spend(self, name: str, usd: float) -> None:
        self.spend.add_spend(name, usd)

    def spent(self, name: str, period: Any) -> float:
        return self.spend.spent(name, period)

    def rollout_store(self) -> StateStore:
        return MemoryStore()


def limited_config(*, rpm: int | None = 2, tpm: int | None = None, **retry: Any) -> dict[str, Any]:
    config = base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0, "budget_min_per_s": 100, **retry})
    if rpm:
        config["endpoints"]["main"]["rpm"] = rpm
    if tpm:
        config["endpoints"]["main"]["tpm"] = tpm
    return config


@pytest.fixture
def shared(make_harness: Callable[..., Harness]) -> Callable[..., tuple[Harness, RecordingBackend]]:
    def make(config: dict[str, Any] | None = None, **backend: Any) -> tuple[Harness, RecordingBackend]:
        state = RecordingBackend(**backend)
        return make_harness(config or limited_config(), state=state), state

    return make


class TestSharedLimits:
    """With a shared store, rpm/tpm grants come from it (one Acquire per attempt on a limited endpoint)."""

    def test_granted(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared(limited_config(rpm=600, tpm=90_000))
        outcome = drive(h.call({"max_tokens": 50}, headers=PRIMARY), [ok()], grants=state.grant)
        assert outcome.endpoints == ["main"]
        assert len(state.asked) == 1
        step = state.asked[0]
        assert (step.endpoint, step.rpm, step.tpm) == ("main", 600, 90_000)
        assert step.tokens >= 50, "the estimate covers the completion budget"

    def test_no_acquire_for_unlimited_endpoints(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared(limited_config(rpm=None))
        assert drive(h.call(headers=PRIMARY), [ok()], grants=state.grant).endpoints == ["main"]
        assert state.asked == [], "no round trip when the endpoint has no rpm/tpm"

    def test_denied_fails_over_and_is_remembered(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared()
        state.answers = [2.5]
        outcome = drive(h.call(headers=PRIMARY), [ok()], grants=state.grant)
        assert outcome.endpoints == ["backup"]
        # Until the shared bucket has room again, this process does not ask for main at all.
        assert drive(h.call(headers=PRIMARY), [ok()], grants=state.grant).endpoints == ["backup"]
        assert len(state.asked) == 1
        h.clock.advance(2.6)
        assert drive(h.call(headers=PRIMARY), [ok()], grants=state.grant).endpoints == ["main"]
        assert len(state.asked) == 2

    def test_no_answer_falls_back_to_the_local_share(
        self, shared: Callable[..., tuple[Harness, RecordingBackend]]
    ) -> None:
        h, state = shared(limited_config(rpm=2))
        state.answers = [None, None, None]
        firsts = [drive(h.call(headers=PRIMARY), [ok()], grants=state.grant).endpoints[0] for _ in range(3)]
        assert firsts == ["main", "main", "backup"], "the local bucket (rpm 2) decides while the store is silent"
        assert h.events.named("holyroute.request")[-1]["endpoint"] == "backup"

    def test_wait_for_a_shared_limit_spends_no_attempt(
        self, shared: Callable[..., tuple[Harness, RecordingBackend]]
    ) -> None:
        # Losing the race for the shared token several times in a row is not a failure: the call waits (bounded by
        # max_wait_s) and never turns into a local 429 because max_attempts ran out.
        config = limited_config(when_limited="wait", max_wait_s=10, max_attempts=2)
        config["routes"]["chat-default"]["targets"][0]["endpoints"] = ["main"]
        h, state = shared(config)
        state.answers = [0.4, 0.4, 0.4, 0.4, 0.0]
        outcome = drive(h.call(headers=PRIMARY), [ok()], h.clock, grants=state.grant)
        assert outcome.waits == [pytest.approx(0.4)] * 4
        assert outcome.endpoints == ["main"]
        assert len(state.asked) == 5

    def test_wait_for_limits_is_bounded_by_max_wait(
        self, shared: Callable[..., tuple[Harness, RecordingBackend]]
    ) -> None:
        config = limited_config(when_limited="wait", max_wait_s=1.0, max_attempts=2)
        config["routes"]["chat-default"]["targets"][0]["endpoints"] = ["main"]
        config["routes"]["chat-default"]["fallbacks"] = []
        h, state = shared(config)
        state.answers = [0.4] * 10
        outcome = drive(h.call(headers=PRIMARY), [], h.clock, grants=state.grant)
        # Two waits for the limit (0.8 s of the 1.0 s allowed), then the one further pass max_attempts 2 allows.
        assert outcome.waits == [pytest.approx(0.4)] * 3
        assert len(state.asked) == 4
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 429
        assert outcome.sent == []

    def test_wait_then_fallbacks_when_the_wait_is_too_long(
        self, shared: Callable[..., tuple[Harness, RecordingBackend]]
    ) -> None:
        config = limited_config(when_limited="wait", max_wait_s=1.0)
        config["routes"]["chat-default"]["targets"][0]["endpoints"] = ["main"]
        h, state = shared(config)
        state.answers = [30.0]
        outcome = drive(h.call(headers=PRIMARY), [ok()], h.clock, grants=state.grant)
        assert outcome.waits == []
        assert outcome.endpoints == ["cheap"], "the fallback route, not a 30 s wait"

    def test_shared_tpm_debits_are_settled(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        """A call's shared tpm grant is settled with the store when it ends: all of it back after a 400 (one whose
        max_tokens is past the limit took the whole bucket), the difference after an answer with usage, more taken
        when it used more than estimated; a grant refused took nothing and settles nothing."""
        h, state = shared(limited_config(rpm=None, tpm=10_000))
        drive(h.call({"max_tokens": 30_000}, headers=PRIMARY), [status(400)], grants=state.grant)
        assert state.asked[-1].tokens == 10_000
        assert state.settled == [("main", 10_000, 10_000)]

        def used(prompt: int, completion: int) -> Any:
            usage = {"prompt_tokens": prompt, "completion_tokens": completion}
            return (200, {"content-type": "application/json"}, json.dumps({"usage": usage}).encode())

        drive(h.call({"max_tokens": 500}, headers=PRIMARY), [used(10, 20)], grants=state.grant)
        assert state.settled[-1] == ("main", 10_000, state.asked[-1].tokens - 30)
        drive(h.call({"max_tokens": 5}, headers=PRIMARY), [used(3000, 1000)], grants=state.grant)
        assert state.settled[-1] == ("main", 10_000, state.asked[-1].tokens - 4000)
        state.answers = [2.5]
        assert drive(h.call(headers=PRIMARY), [ok()], grants=state.grant).endpoints == ["backup"]
        assert len(state.settled) == 3, "a refused grant took nothing"


class TestLocalLimitWait:
    """The same rule without a shared store: a wait for a local rpm reset is not a failed pass."""

    def test_token_taken_by_another_call_during_the_wait(self, make_harness: Callable[..., Harness]) -> None:
        config = limited_config(rpm=1, when_limited="wait", max_wait_s=200, max_attempts=1)
        config["routes"]["chat-default"]["targets"][0]["endpoints"] = ["main"]
        h = make_harness(config)
        drive(h.call(headers=PRIMARY), [ok()])
        waiting = h.call(headers=PRIMARY)
        first = waiting.next_step()
        assert isinstance(first, Wait)
        assert first.seconds == pytest.approx(60.0)
        h.clock.advance(first.seconds)
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["main"], "another call took the token"
        second = waiting.next_step()
        assert isinstance(second, Wait), "still waiting (max_attempts 1 is about sends, not waits)"
        h.clock.advance(second.seconds)
        assert drive(waiting, [ok()]).endpoints == ["main"]


class TestPublish:
    """Health changes made here are published with wall-clock deadlines, for processes with other clocks."""

    def test_cooldown(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared(limited_config(rpm=None))
        h.clock.advance(10)
        drive(h.call(headers=PRIMARY), [status(429, {"retry-after": "5"}), ok()])
        [change] = [c for c in state.published if c.kind == "cooldown"]
        assert (change.endpoint, change.model) == ("main", "gpt-4.1")
        assert change.until == pytest.approx(WALL0 + 10 + 5)

    def test_ejection_and_restore(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        config = limited_config(rpm=None)
        config["health"] = {"consecutive_failures": 2, "base_ejection_s": 30}
        h, state = shared(config)
        for _ in range(2):
            drive(h.call(headers=PRIMARY), [status(500), ok()])
        [ejected] = [c for c in state.published if c.kind == "ejected"]
        assert ejected.endpoint == "main"
        assert ejected.until == pytest.approx(WALL0 + h.clock.now + 30)
        h.clock.advance(30.1)
        drive(h.call(headers=PRIMARY), [ok()])  # the half-open trial succeeds
        assert [c.kind for c in state.published][-1] == "restored"

    def test_headroom_exhausted(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared(limited_config(rpm=None))
        drive(
            h.call(headers=PRIMARY),
            [ok({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})],
        )
        [change] = [c for c in state.published if c.kind == "headroom"]
        assert change.reason == "requests"
        assert change.until == pytest.approx(WALL0 + h.clock.now + 2)

    def test_plentiful_headroom_is_not_published(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared(limited_config(rpm=None))
        drive(
            h.call(headers=PRIMARY),
            [ok({"x-ratelimit-remaining-requests": "900", "x-ratelimit-limit-requests": "1000"})],
        )
        assert state.published == []

    def test_close_reaches_the_backend(self, shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
        h, state = shared()
        h.router.close()
        assert state.closed


class TestApply:
    """Changes from other processes, applied to this process's HealthBook."""

    def book(self) -> tuple[HealthBook, FakeClock]:
        clock = FakeClock(500.0)
        return HealthBook(clock, limits={"main": (60, None)}), clock

    def test_cooldown_from_elsewhere(self) -> None:
        book, clock = self.book()
        # Another process's wall clock said 5 s from now; this process's monotonic clock is unrelated.
        book.apply(HealthChange("cooldown", "main", "gpt-4.1", until=WALL0 + 5, reason="429"), clock(), WALL0)
        blocked = book.blocked("main", "gpt-4.1", clock(), 1)
        assert blocked is not None
        assert blocked[1] == pytest.approx(505.0)
        assert book.blocked("main", "other-model", clock(), 1) is None, "cooldowns are per endpoint and model"

    def test_expired_changes_are_ignored(self) -> None:
        book, clock = self.book()
        book.apply(HealthChange("cooldown", "main", "gpt-4.1", until=WALL0 - 1), clock(), WALL0)
        book.apply(HealthChange("ejected", "main", until=WALL0 - 1), clock(), WALL0)
        assert book.blocked("main", "gpt-4.1", clock(), 1) is None
        assert book.live_changes(clock(), WALL0) == []

    def test_ejected_then_restored(self) -> None:
        book, clock = self.book()
        book.apply(HealthChange("ejected", "main", until=WALL0 + 30), clock(), WALL0)
        assert book.ejected("main", clock()) is not None
        [live] = book.live_changes(clock(), WALL0)
        assert live.kind == "ejected"
        assert live.until == pytest.approx(WALL0 + 30)
        book.apply(HealthChange("restored", "main"), clock(), WALL0)
        assert book.ejected("main", clock()) is None
        assert book.live_changes(clock(), WALL0) == []

    def test_live_changes_round_trip(self) -> None:
        book, clock = self.book()
        book.cool("main", "gpt-4.1", 7.0, "429", clock())
        book.apply(HealthChange("quota", "main", until=WALL0 + 60, reason="quota"), clock(), WALL0)
        book.apply(HealthChange("headroom", "main", "gpt-4.1", WALL0 + 3, "tokens", tokens_left=10), clock(), WALL0)
        changes = {c.kind: c for c in book.live_changes(clock(), WALL0)}
        assert set(changes) == {"cooldown", "quota", "headroom"}
        assert changes["cooldown"].until == pytest.approx(WALL0 + 7)
        other, other_clock = self.book()
        other_clock.advance(1000)  # another process, another monotonic clock
        for change in changes.values():
            other.apply(change, other_clock(), WALL0)
        assert {c.kind for c in other.live_changes(other_clock(), WALL0)} == {"cooldown", "quota", "headroom"}
        blocked = other.blocked("main", "gpt-4.1", other_clock(), 100)
        assert blocked is not None
        assert blocked[1] == pytest.approx(other_clock() + 7)

    def test_local_share_starts_full(self) -> None:
        """The store went away: each process's bucket starts full at its share, so a degraded process serves at
        once (the fleet may exceed the limit by at most one limit's worth right after the switch)."""
        book, clock = self.book()
        book.share_limits(True, 1, clock())
        assert book.blocked("main", "m", clock(), 1) is None, "shared: the store decides, not the local bucket"
        book.share_limits(False, 4, clock())  # the store went away; four processes are alive
        assert [book.local_limit("main", 1, clock()) for _ in range(15)] == [None] * 15, "60 rpm / 4, at once"
        first = book.local_limit("main", 1, clock())
        assert first is not None
        assert "local share" in first[0]
        clock.advance(4.01)  # 60 rpm / 4 processes = one request every 4 s
        assert book.local_limit("main", 1, clock()) is None
        assert book.local_limit("main", 1, clock()) is not None


class TestMemoryBackend:
    def test_spend_by_period(self) -> None:
        now = [dt.datetime(2026, 11, 30, 23, 59, 30, tzinfo=dt.UTC).timestamp()]
        backend = MemoryBackend(wall_clock=lambda: now[0])
        backend.add_spend("shadow:chat", 0.25)
        backend.add_spend("shadow:chat", 0.5)
        backend.add_spend("route:chat", 1.0)
        assert backend.spent("shadow:chat", "hour") == pytest.approx(0.75)
        assert backend.spent("shadow:chat", "day") == pytest.approx(0.75)
        now[0] += 60  # into December: a new hour, day and month
        assert [backend.spent("shadow:chat", p) for p in ("hour", "day", "month")] == [0.0, 0.0, 0.0]
        backend.add_spend("shadow:chat", 2.0)
        assert backend.spent("shadow:chat", "month") == pytest.approx(2.0)
        assert backend.acquire("main", 10, None, 1) is None
        assert not backend.shares_limits

    def test_period_keys(self) -> None:
        wall = dt.datetime(2026, 11, 30, 14, 5, tzinfo=dt.UTC).timestamp()
        assert [period_key(p, wall) for p in ("hour", "day", "month")] == ["2026113014", "20261130", "202611"]

    def test_default_backend_is_file(self, tmp_path: Any) -> None:
        config = load_config(base_config(state={"path": str(tmp_path / "s.json")}))
        backend = open_backend(config.state, emit=lambda e, f: None, clock=lambda: 0.0, wall_clock=lambda: 0.0)
        assert backend.name == "memory"
        assert not backend.shares_limits


class TestStateConfig:
    @pytest.mark.parametrize(
        "url", ["http://user:hunter2@cache:6379", "user:hunter2@cache:6379", "hunter2", "redis//:hunter2@cache"]
    )
    def test_bad_url_names_the_fix_and_hides_the_password(self, url: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_config(base_config(state={"backend": "redis", "url": url}))
        message = str(caught.value)
        assert "state.url must start with redis://, rediss:// or unix://" in message
        assert "hunter2" not in message

    def test_prefix_is_checked(self) -> None:
        with pytest.raises(ConfigError, match=r"state\.prefix"):
            load_config(base_config(state={"backend": "redis", "prefix": "has space"}))

    def test_url_is_secret(self) -> None:
        config = load_config(base_config(state={"backend": "redis", "url": "redis://:hunter2@cache:6379/0"}))
        assert "hunter2" not in repr(config.state)
        assert "hunter2" not in str(config.model_dump())

    @pytest.mark.parametrize(
        "url",
        [
            "redis://:Sup3rSecret/x@127.0.0.1:6391/0",  # "Port could not be cast to integer value as 'Sup3rSecret'"
            "redis://:Sup3rSecret#x@127.0.0.1:6391/0",
            "redis://:Sup3rSecret?x@127.0.0.1:6391/0",
            "redis://:123/Sup3rSecret@127.0.0.1:6391/0",  # port 123 of no host, the password in the path
            "redis://[::1/0",
            "redis://127.0.0.1:6391/0?socket_timeout=Sup3rSecret",
        ],
    )
    def test_a_url_redis_cannot_read_is_rejected_at_load_without_the_password(self, url: str) -> None:
        """A password holding '/', '#' or '?' ends the host early: the client could not even be built, and the
        error raised then quoted the password."""
        with pytest.raises(ConfigError) as caught:
            load_config(base_config(state={"backend": "redis", "url": url}))
        message = str(caught.value)
        assert "state.url:" in message
        assert "Sup3r" not in message
        assert "123" not in message

    def test_the_symptom_building_a_client(self) -> None:
        config = base_config(state={"backend": "redis", "url": "redis://:Sup3rSecret/x@127.0.0.1:6391/0"})
        with pytest.raises(ConfigError) as caught:
            Transport(config, transport=httpx2.MockTransport(lambda request: httpx2.Response(200)))
        assert "Sup3r" not in str(caught.value)

    def test_a_percent_encoded_password_loads_and_is_not_shown(self) -> None:
        url = "redis://:Sup3r%2FSecret%23@127.0.0.1:6391/0"
        config = load_config(base_config(state={"backend": "redis", "url": url}))
        read = parse_redis_url(config.state.url.get_secret_value())
        assert not isinstance(read, str)
        assert read.password == "Sup3r/Secret#"
        assert redacted(url) == "redis://127.0.0.1:6391/0"

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://:Sup3rSecret/x@127.0.0.1:6391/0", "redis://127.0.0.1:6391/0"),
            ("rediss://user:Sup3r@Secret?x@cache:6380/2?ssl_cert_reqs=none", "rediss://cache:6380/2"),
            ("unix://:Sup3rSecret@/run/redis.sock?db=1", "unix:///run/redis.sock"),
            ("redis://Sup3r:Secret@[::1/0", "redis://?"),
            ("Sup3rSecret", "?"),
            ("user:Sup3rSecret@host://x", "?"),
        ],
    )
    def test_redacted_is_total(self, url: str, shown: str) -> None:
        assert redacted(url) == shown

    @given(
        scheme=st.sampled_from(["redis://", "rediss://", "unix://", "http://", "", "redis:"]),
        user=st.text(max_size=4),
        secret=SECRET,
        junk=st.text(alphabet="/?#@:[]% ", max_size=3),
        rest=st.text(max_size=24),
    )
    @example(scheme="redis://", user="", secret="ZqSup3rSecret", junk="/x", rest="127.0.0.1:6391/0")
    def test_no_secret_in_any_message_for_any_url(
        self, *, scheme: str, user: str, secret: str, junk: str, rest: str
    ) -> None:
        """Any state.url is rejected at load with a message that does not quote its password, or redis can read
        it; either way ``redacted`` (what events and errors show) never raises and never shows the password."""
        url = f"{scheme}{user}:{secret}{junk}@{rest}"
        shown = redacted(url)
        assert secret[:4] not in shown
        try:
            config = load_config(base_config(state={"backend": "redis", "url": url}))
        except ConfigError as error:
            message = str(error)
        else:
            message = ""
        assert secret[:4] not in message
        if message:
            return
        read = parse_redis_url(config.state.url.get_secret_value())  # what the client is built from
        assert not isinstance(read, str)
        assert secret[:4] not in f"{read.where} {read!r}"


def test_acquire_is_a_step(shared: Callable[..., tuple[Harness, RecordingBackend]]) -> None:
    """A transport sees Acquire before Send, and the Send goes where the grant was for."""
    h, _state = shared()
    call = h.call(headers=PRIMARY)
    step = call.next_step()
    assert isinstance(step, Acquire)
    assert step.endpoint == "main"
    call.on_acquired(0.0)
    sent = call.next_step()
    assert isinstance(sent, Send)
    assert sent.endpoint == "main"


class TestLeases:
    """Grants taken ahead of demand: most calls spend no round trip, and a binding limit is never exceeded."""

    def test_first_ask_is_for_one(self) -> None:
        leases = Leases(FakeClock())
        assert leases.take("main", 600, None, 10) == (1, 10)

    def test_busy_process_leases_ahead_and_is_served_locally(self) -> None:
        clock = FakeClock()
        leases = Leases(clock, fraction=0.01, horizon_s=0.1)
        asks = []
        for _ in range(200):  # 200 requests a second for one second
            ask = leases.take("main", 60_000, None, 10)
            if ask is not None:
                asks.append(ask)
                leases.granted("main", ask[0], ask[1], 10)
            clock.advance(0.005)
        assert max(requests for requests, _ in asks) <= 600, "never more than 1% of the limit ahead"
        assert asks[-1][0] == pytest.approx(200 * 0.1, abs=3), "about 100 ms of this process's demand"
        assert len(asks) < 40, f"{len(asks)} round trips for 200 requests"

    def test_small_limit_is_never_leased(self) -> None:
        clock = FakeClock()
        leases = Leases(clock)
        for _ in range(50):
            assert leases.take("main", 60, None, 1) == (1, 1), "1% of rpm 60 is less than one request"
            leases.granted("main", 1, 1, 1)
            clock.advance(0.001)

    def test_partial_grant_and_expiry(self) -> None:
        clock = FakeClock()
        leases = Leases(clock, ttl_s=1.0)
        leases.take("main", 6000, None, 1)
        leases.granted("main", 3, 3, 1)  # asked for more; the bucket had three
        assert leases.take("main", 6000, None, 1) is None
        assert leases.take("main", 6000, None, 1) is None
        assert leases.take("main", 6000, None, 1) is not None, "the lease held two beyond the first request"
        leases.granted("main", 5, 5, 1)
        clock.advance(1.01)
        assert leases.take("main", 6000, None, 1) is not None, "what a lease holds after ttl_s is dropped"

    def test_tpm_lease_covers_tokens(self) -> None:
        clock = FakeClock()
        leases = Leases(clock, fraction=0.01)
        ask = leases.take("main", None, 100_000, 300)
        assert ask == (1, 300)
        leases.granted("main", 3, 900, 300)
        assert leases.take("main", None, 100_000, 500) is None
        assert leases.take("main", None, 100_000, 500) is not None, "100 tokens left cannot cover 500"

    def test_off_and_clear(self) -> None:
        clock = FakeClock()
        off = Leases(clock, fraction=0)
        for _ in range(100):
            assert off.take("main", 60_000, None, 1) == (1, 1)
            clock.advance(0.001)
        on = Leases(clock)
        on.take("main", 60_000, None, 1)
        on.granted("main", 10, 10, 1)
        on.clear()
        assert on.take("main", 60_000, None, 1) is not None
