"""The Redis backend's parts on their own: the grant round trip (``grants``), the sync pipeline (``sync``) and the
subscription (``listener``), each driven through the small protocol it declares for its owner, against the real Redis
at 127.0.0.1:6379 under a key prefix of each test's own (deleted afterwards), with fakes for the router and clock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import pytest
import redis

from holyroute.boundary.redis_url import RedisUrl, parse_redis_url
from holyroute.rollout.engine import RolloutEngine
from holyroute.state.base import HealthChange, Leases
from holyroute.state.redis.grants import Grants
from holyroute.state.redis.listener import Listener
from holyroute.state.redis.payloads import Horizons, Keys
from holyroute.state.redis.reports import Reports
from holyroute.state.redis.store import RedisStore
from holyroute.state.redis.sync import HOLD_S, SpendBatch, Sync, once_call

REDIS_URL = "redis://127.0.0.1:6379/0"
NOWHERE = "redis://127.0.0.1:9/0"  # nothing listens on port 9: connection refused at once


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        pytest.skip("no Redis at 127.0.0.1:6379 (redis-server --daemonize yes --port 6379 --save '')")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def keys(store: redis.Redis) -> Iterator[Keys]:
    prefix = f"hrparts-{uuid.uuid4().hex[:8]}"
    try:
        yield Keys(prefix)
    finally:
        found = list(store.scan_iter(match=f"{prefix}:*", count=1000))
        if found:
            store.delete(*found)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        self.seen.append((name, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.seen if event == name]


class Link:
    """The grant path's owner: counts failures."""

    def __init__(self) -> None:
        self.failures = 0
        self.errors: list[BaseException] = []

    def failed(self, error: BaseException) -> None:
        self.errors.append(error)


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=0.5)


def grants(client: redis.Redis, keys: Keys, clock: Clock, events: Events, link: Link) -> Grants:
    lock = threading.Lock()
    parsed = parse_redis_url(REDIS_URL)
    assert isinstance(parsed, RedisUrl)
    return Grants(
        client,
        url=parsed,
        timeout=1.0,
        keys=keys,
        leases=Leases(clock, fraction=0.1),
        reports=Reports(events, "redis://127.0.0.1:6379/0", lock),
        link=link,
        lock=lock,
        clock=clock,
    )


# ---- grants -------------------------------------------------------------------------------------------------------


class TestGrants:
    """One round trip to the shared buckets; the lease, the levels and what is owed are booked here."""

    def test_a_grant_books_a_lease_and_the_bucket_level(self, store: redis.Redis, keys: Keys) -> None:
        clock, events, link = Clock(), Events(), Link()
        made = grants(store, keys, clock, events, link)
        assert made._leases.take("a", 600, None, 10) == (1, 10), "no lease yet: ask"
        assert made.ask("a", 600, None, 10, (5, 50)) == 0.0
        assert made.levels["a"][0] == 600 - 5, "what the bucket holds after granting five requests"
        assert made._leases.take("a", 600, None, 10) is None, "the next request comes out of the lease"
        assert float(store.hget(keys.limits("a"), "r") or -1) == pytest.approx(595, abs=1)

    def test_an_empty_bucket_says_how_long_to_wait(self, store: redis.Redis, keys: Keys) -> None:
        made = grants(store, keys, Clock(), Events(), Link())
        assert made.ask("a", 2, None, 1, (1, 1)) == 0.0
        assert made.ask("a", 2, None, 1, (1, 1)) == 0.0
        wait = made.ask("a", 2, None, 1, (1, 1))
        assert wait is not None
        assert 0 < wait <= 30.0, "one request refills in 30 s at 2 rpm"

    def test_what_is_owed_rides_with_the_next_request_or_comes_back_on_failure(
        self, store: redis.Redis, keys: Keys
    ) -> None:
        clock, events, link = Clock(), Events(), Link()
        down = client_for(NOWHERE)
        try:
            made = grants(down, keys, clock, events, link)
            made.owe("a", 1000, 300)
            assert made.ask("a", None, 1000, 10, (1, 10)) is None, "Redis away: decide locally"
            assert made.owed == {"a": (1000, 300)}, "put back for the next try"
            assert len(link.errors) == 1
        finally:
            down.close()
        made = grants(store, keys, clock, events, link)
        made.owe("a", 1000, -400)  # 400 tokens more were used than granted
        assert made.ask("a", None, 1000, 10, (1, 10)) == 0.0
        assert made.owed == {}
        assert float(store.hget(keys.limits("a"), "t") or 0) == pytest.approx(1000 - 400 - 10, abs=2)

    def test_owed_stays_within_twice_the_limit(self, store: redis.Redis, keys: Keys) -> None:
        made = grants(store, keys, Clock(), Events(), Link())
        for _ in range(5):
            made.owe("a", 100, 150)
        assert made.owed["a"] == (100, 200)
        assert made.owe("a", 100, 0) == 0, "nothing owed: nothing booked"

    def test_a_reply_that_is_not_five_integers_is_reported_once(self, store: redis.Redis, keys: Keys) -> None:
        events = Events()
        made = grants(store, keys, Clock(), events, Link())
        assert made._granted("a", 1, [0, 1]) is None
        assert made._granted("a", 1, "junk") is None
        [invalid] = events.named("holyroute.state_invalid")
        assert invalid["key"] == keys.limits("a")

    def test_levels_refill_at_the_limits_rate(self, store: redis.Redis, keys: Keys) -> None:
        clock = Clock()
        made = grants(store, keys, clock, Events(), Link())
        made.levels["a"] = (0, 100, clock.now)
        clock.now += 3.0
        assert made.levels_at(clock.now, lambda endpoint: (600, 6000)) == {"a": (30.0, 400.0)}
        clock.now += 600
        assert made.levels_at(clock.now, lambda endpoint: (600, None)) == {"a": (600.0, None)}

    def test_a_new_master_takes_the_requests_its_old_one_granted_and_never_passed_on(
        self, store: redis.Redis, keys: Keys
    ) -> None:
        made = grants(store, keys, Clock(), Events(), Link())
        made.origin = "me"
        for _ in range(3):
            made._leases.take("a", 600, None, 1)
            assert made.ask("a", 600, None, 1, (2, 2)) == 0.0
        assert made.granted == {"a": (600, 6)}
        assert store.hget(keys.limits("a"), "g:me") == b"6", "the bucket counts what it granted each process"
        assert made.reconcile() == 0, "this master knows of every one"
        store.hset(keys.limits("a"), mapping={"g:me": "2", "r": "100"})  # a new master that saw only two of them
        assert made.reconcile() == 4
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(96, abs=1)
        assert made.reconcile() == 0, "told once"
        store.delete(keys.limits("a"))  # a master that started afresh: a full bucket, nothing to make up
        assert made.reconcile() == 0
        assert not store.exists(keys.limits("a"))

    @staticmethod
    def _granted_six(store: redis.Redis, keys: Keys, origin: str, times: int = 3) -> Grants:
        """A process granted ``2 * times`` requests from bucket ``a`` at 600 rpm, two at a time."""
        made = grants(store, keys, Clock(), Events(), Link())
        made.origin = origin
        for _ in range(times):
            made._leases.take("a", 600, None, 1)
            assert made.ask("a", 600, None, 1, (2, 2)) == 0.0
        return made

    @staticmethod
    def _promoted(store: redis.Redis, keys: Keys, level: float, **fields: str) -> None:
        """Bucket ``a`` as a new master has it: holding ``level`` now (refilled from now on), with ``fields``."""
        seconds, micros = store.time()
        store.hset(keys.limits("a"), mapping={"r": str(level), "rt": str(seconds + micros / 1e6), **fields})

    def test_the_first_process_to_find_grants_lost_in_a_promotion_holds_the_others_share(
        self, store: redis.Redis, keys: Keys
    ) -> None:
        """The old master lost the last grants of every process, and each tells the new master only when its own sync
        sees it. The first to find some missing also holds a like share for each other process, which each one
        after it takes its own missing grants from first: the bucket does not grant them again meanwhile."""
        me, you = self._granted_six(store, keys, "me"), self._granted_six(store, keys, "you", times=2)
        assert (me.granted, you.granted) == ({"a": (600, 6)}, {"a": (600, 4)})
        # A new master that saw two of mine and one of yours, and whose bucket refilled meanwhile.
        self._promoted(store, keys, 100, **{"g:me": "2", "g:you": "1"})
        assert me.reconcile(2) == 4
        bucket = store.hgetall(keys.limits("a"))
        assert float(bucket[b"r"]) == pytest.approx(100 - 4 - 4, abs=1), "mine taken, and a like share held for you"
        assert float(bucket[b"p"]) == pytest.approx(4)
        assert bucket[b"pm"] == store.info("server")["run_id"].encode(), "held on this master"
        made = you.ask("a", 600, None, 1, (1, 1))  # a grant meanwhile leaves the hold alone
        assert made == 0.0
        assert float(store.hget(keys.limits("a"), "p") or 0) == pytest.approx(4)
        assert you.reconcile(2) == 3
        bucket = store.hgetall(keys.limits("a"))
        assert float(bucket[b"r"]) == pytest.approx(92 - 1, abs=1), "yours came out of the hold, not the bucket again"
        assert float(bucket[b"p"]) == pytest.approx(1)
        assert you.reconcile(2) == 0, "told once"

    def test_a_promotion_hold_nobody_claims_goes_back_and_is_made_once_per_master(
        self, store: redis.Redis, keys: Keys
    ) -> None:
        made = self._granted_six(store, keys, "me")
        self._promoted(store, keys, 100, **{"g:me": "2"})
        assert made.reconcile(3) == 4
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(100 - 4 - 8, abs=1)
        store.hset(keys.limits("a"), "pt", "0")  # held long ago: longer than the others had to claim it
        made._leases.take("a", 600, None, 1)
        assert made.ask("a", 600, None, 1, (1, 1)) == 0.0
        bucket = store.hgetall(keys.limits("a"))
        assert float(bucket[b"r"]) == pytest.approx(100 - 4 - 1, abs=1), "the hold went back before the grant"
        assert float(bucket[b"p"]) == 0
        # Grants found missing later on the same master (a process back from a long outage): its own, nothing held.
        self._promoted(store, keys, 50, **{"g:me": "5"})
        assert made.reconcile(3) == 2
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(48, abs=1)
        assert float(store.hget(keys.limits("a"), "p") or 0) == 0
        # Another master (another run_id): its first reconcile holds again, an older hold's rest going back first.
        self._promoted(store, keys, 50, **{"g:me": "5", "p": "3", "pt": "0", "pm": "an-older-master"})
        assert made.reconcile(2) == 2
        bucket = store.hgetall(keys.limits("a"))
        assert float(bucket[b"r"]) == pytest.approx(50 + 3 - 2 - 2, abs=1)
        assert float(bucket[b"p"]) == pytest.approx(2)

    def test_a_promotion_hold_is_only_what_the_bucket_had_for_the_others(self, store: redis.Redis, keys: Keys) -> None:
        """Held from a bucket kept within [-rpm, rpm]: when the others' presumed share is more than the bucket has
        (many processes, a low level), the hold is what left the bucket, never more (else it would go back as more)."""
        made = self._granted_six(store, keys, "me")
        self._promoted(store, keys, -590, **{"g:me": "2"})
        assert made.reconcile(20) == 4
        bucket = store.hgetall(keys.limits("a"))
        assert float(bucket[b"r"]) == pytest.approx(-600, abs=1), "at most one limit owed"
        assert float(bucket[b"p"]) == pytest.approx(6, abs=1), "10 left the bucket: 4 mine, 6 held of the 76 wanted"

    def test_alone_a_reconcile_holds_nothing(self, store: redis.Redis, keys: Keys) -> None:
        made = self._granted_six(store, keys, "me")
        self._promoted(store, keys, 100, **{"g:me": "2"})
        assert made.reconcile(1) == 4
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(96, abs=1)
        assert float(store.hget(keys.limits("a"), "p") or 0) == 0

    def test_charge_takes_requests_given_out_alone_from_the_shared_bucket(self, store: redis.Redis, keys: Keys) -> None:
        made = grants(store, keys, Clock(), Events(), Link())
        made.charge("a", 600, 6000, requests=100, tokens=2000)
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(500, abs=1), "a full bucket, less 100"
        assert made.owed == {"a": (6000, -2000)}, "the tokens go with the next request or sync"
        made.charge("a", 600, None, requests=10_000, tokens=0)
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(-600, abs=1), "at most one limit owed"

    def test_the_first_process_back_does_not_take_again_what_the_others_gave_out_while_away(
        self, store: redis.Redis, keys: Keys
    ) -> None:
        """Two processes lose Redis for 2 s with the rpm 600 bucket empty; each gives out its share of the refill on
        its own (10 requests). The bucket refilled 20 for the whole fleet meanwhile: the first back (A) charging only
        its own 10 would find 10 more to take while B, still away, has given them out already (the failover test's
        "11 above the line"). A holds B's presumed 10 instead; B claims them as it comes back."""
        clock = Clock()
        a, b = (grants(store, keys, clock, Events(), Link()) for _ in range(2))
        seconds, micros = store.time()
        emptied = seconds + micros / 1e6 - 2.0  # Redis's clock, 2 s ago: the outage began with an empty bucket
        store.hset(keys.limits("a"), mapping={"r": "0", "rt": f"{emptied:.6f}"})
        for made in (a, b):
            made.levels["a"] = (0, 0, clock.now - 2.0)  # what each saw last: empty, 2 s ago
        away = a.presumed_away(clock.now, 600, "a", 2)
        assert away == 10, "B's share of the 20 the bucket refilled"
        a.charge("a", 600, None, requests=10, tokens=0, away=away, away_s=2.0)
        taken_again = 0
        while a.ask("a", 600, None, 1, (1, 1)) == 0.0 and taken_again < 30:
            taken_again += 1
        assert taken_again <= 1, f"A took {taken_again} more from the refill B had already given out"
        b.charge("a", 600, None, requests=10, tokens=0, away=b.presumed_away(clock.now, 600, "a", 2), away_s=2.0)
        level = float(store.hget(keys.limits("a"), "r") or 0)
        assert level == pytest.approx(-taken_again, abs=1.5), "B's own 10 claimed the hold: charged once, not twice"
        assert float(store.hget(keys.limits("a"), "h") or 0) == 0
        c = grants(store, keys, clock, Events(), Link())  # a third process back: the hold is used up, not made anew
        c.charge("a", 600, None, requests=3, tokens=0, away=10, away_s=2.0)
        assert float(store.hget(keys.limits("a"), "h") or 0) == 0
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(level - 3, abs=0.5)

    def test_spare_gives_out_this_process_share_of_the_last_level_and_no_more(
        self, store: redis.Redis, keys: Keys
    ) -> None:
        """A failed grant request before degrading: of a bucket last seen holding 12 (rpm 600), one of two
        processes gives out 6; then it waits for its share's refill (5 a second). What it gave out lowers the level
        its degraded share would start from, and is handed to the sync to charge."""
        clock = Clock()
        made = grants(store, keys, clock, Events(), Link())
        made.levels["a"] = (12, 0, clock.now)
        assert [made.spare("a", 600, 2, clock.now) for _ in range(6)] == [None] * 6
        wait = made.spare("a", 600, 2, clock.now)
        assert wait == pytest.approx(0.2)
        assert made.spared_levels({"a": (12.0, None)}, 2) == {"a": (0.0, None)}
        clock.now += 0.2
        assert made.spare("a", 600, 2, clock.now) is None
        assert made.spare("a", None, 2, clock.now) is None, "no rpm: the local buckets decide"
        assert made.take_spared() == {"a": (600, 7)}
        made.put_spared({"a": (600, 7)})
        assert made.spared == {"a": (600, 7)}, "a failed flush charges them with the next"

    def test_a_hold_made_before_this_process_went_away_is_another_outage(self, store: redis.Redis, keys: Keys) -> None:
        """Two outages close together: what is left of the first one's hold is not this outage's (it was made
        before this process went away), so the first process back holds anew rather than claiming it."""
        made = grants(store, keys, Clock(), Events(), Link())
        made.charge("a", 600, None, requests=0, tokens=0, away=100, away_s=1.0)
        made.charge("a", 600, None, requests=40, tokens=0, away=100, away_s=1.0)  # back after it: claims 40
        assert float(store.hget(keys.limits("a"), "h") or 0) == 60
        seconds, micros = store.time()
        ago = f"{seconds + micros / 1e6 - 2.0:.6f}"
        store.hset(keys.limits("a"), mapping={"ht": ago, "rt": ago})  # that was 2 s ago, untouched since
        made.charge("a", 600, None, requests=10, tokens=0, away=30, away_s=0.5)  # away for the last 0.5 s
        assert float(store.hget(keys.limits("a"), "h") or 0) == 30, "a hold of its own for the others"
        level = float(store.hget(keys.limits("a"), "r") or 0)
        assert level == pytest.approx(500 + 20 + 60 - 10 - 30, abs=1.5), "refilled 2 s; the old hold's 60 went back"

    def test_no_hold_when_some_process_used_the_bucket_meanwhile(self, store: redis.Redis, keys: Keys) -> None:
        """A bucket granted from while this process was away: some process was not away (its grants are in the
        bucket already), so holding for it would only starve it; this process charges its own requests."""
        made = grants(store, keys, Clock(), Events(), Link())
        assert made.ask("a", 600, None, 1, (1, 1)) == 0.0  # another process, granted just now
        made.charge("a", 600, None, requests=10, tokens=0, away=300, away_s=1.0)
        assert store.hget(keys.limits("a"), "h") is None
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(600 - 1 - 10, abs=1)

    def test_a_charge_just_before_coming_back_is_no_grant(self, store: redis.Redis, keys: Keys) -> None:
        """What decides that some process never left is a grant from the bucket in the latter half of the outage, not
        any write: the first process back may charge its spared requests, or reconcile with a new master, just
        before the charge that holds the others' share. Judged by the last write, it held nothing, and took again
        what the others had given out (the Sentinel failover test's excursions)."""
        made = grants(store, keys, Clock(), Events(), Link())
        seconds, micros = store.time()
        ago = f"{seconds + micros / 1e6 - 2.0:.6f}"  # granted from 2 s ago, as the outage began; empty since
        store.hset(keys.limits("a"), mapping={"r": "0", "rt": ago, "gs": ago})
        made.charge("a", 600, None, requests=1, tokens=0)  # its spared request, charged just now
        made.charge("a", 600, None, requests=10, tokens=0, away=10, away_s=2.0)
        assert float(store.hget(keys.limits("a"), "h") or 0) == 10, "the other's share is held all the same"
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(20 - 1 - 10 - 10, abs=1)

    def test_a_hold_nobody_claims_goes_back_to_the_bucket(self, store: redis.Redis, keys: Keys) -> None:
        """A process that was never away never claims what the first back held for it: after ``AWAY_HOLD_S`` the
        hold goes back to the bucket (the fleet gets it later, never twice)."""
        made = grants(store, keys, Clock(), Events(), Link())
        made.charge("a", 600, None, requests=0, tokens=0, away=100)
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(500, abs=1)
        assert float(store.hget(keys.limits("a"), "h") or 0) == 100
        store.hset(keys.limits("a"), "ht", "0")  # held long ago
        assert made.ask("a", 600, None, 1, (1, 1)) == 0.0
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(599, abs=1), "released, less one"
        assert float(store.hget(keys.limits("a"), "h") or 0) == 0
        made.charge("a", 600, None, requests=5, tokens=0)  # a plain charge (not back from an outage) holds nothing
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(594, abs=1)
        assert float(store.hget(keys.limits("a"), "h") or 0) == 0


# ---- sync ---------------------------------------------------------------------------------------------------------


class Health:
    def __init__(self) -> None:
        self.applied: list[HealthChange] = []

    def apply(self, change: HealthChange, now: float, wall: float) -> None:
        self.applied.append(change)


class Router:
    def __init__(self) -> None:
        self.health = Health()


class Owner:
    """A backend as the sync thread and the listener see it (their protocols), over a real client."""

    def __init__(self, client: redis.Redis, keys: Keys, *, kind: str = "single") -> None:
        self.read_only = False
        self.live = True
        self.failures = 0
        self.origin = "me"
        self.interval = 0.05
        self.redis = client
        self.keys = keys
        self.events = Events()
        self.clock = Clock()
        self.reports = Reports(self.events, "redis://test", threading.Lock())
        self.store = RedisStore(self)
        self.engines: list[RolloutEngine] = []
        self.horizons = Horizons()
        self.threads: list[threading.Thread] = []
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.router: Any = Router()
        parsed = parse_redis_url(REDIS_URL)
        assert isinstance(parsed, RedisUrl)
        self.deployment = RedisUrl(kind, parsed.tls, hosts=parsed.hosts)  # type: ignore[arg-type]
        self.where = "one"
        lock = threading.Lock()
        self.grants = Grants(
            client,
            url=parsed,
            timeout=1.0,
            keys=keys,
            leases=Leases(self.clock),
            reports=self.reports,
            link=self,
            lock=lock,
            clock=self.clock,
        )
        self.errors: list[BaseException] = []

    def failed(self, error: BaseException) -> None:
        self.errors.append(error)
        self.live = False

    def recover(self) -> bool:
        return False

    def master(self) -> str:
        return self.where

    def message(self, kind: str, **fields: Any) -> str:
        return json.dumps({"o": self.origin, "kind": kind, **fields})

    def invalid(self, key: str, problem: str) -> None:
        self.reports.invalid(key, problem)

    def wall(self) -> float:
        return time.time()

    def client(self, timeout: float | None) -> redis.Redis:
        return redis.Redis.from_url(REDIS_URL, socket_timeout=timeout, socket_connect_timeout=1)


def today(keys: Keys) -> str:
    return keys.spend("day", time.strftime("%Y%m%d", time.gmtime()))


class TestSync:
    """One pipeline sends what is pending and reads the snapshots back; spend is counted once, whatever fails."""

    def test_a_flush_sends_spend_health_and_presence(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        sync = Sync(owner, threading.Lock())
        sync.spend_pending[("day", time.strftime("%Y%m%d", time.gmtime()), "budget:route:chat")] = 0.25
        sync.outbox.append(HealthChange("cooldown", "a", "m", time.time() + 30, "429"))
        owner.grants.spared["a"] = (600, 4)  # given out on this process's share when a grant request failed
        assert sync.flush()
        assert float(store.hget(keys.limits("a"), "r") or 0) == pytest.approx(596, abs=1), "charged to the bucket"
        assert owner.grants.spared == {}
        assert float(store.hget(today(keys), "budget:route:chat") or 0) == 0.25
        assert store.hexists(keys.health, "c|a|m")
        assert store.zscore(keys.members, "me") is not None
        assert sync.members == 1
        assert sync.spend_batches == [], "one server: forgotten once it took them"

    def test_the_once_script_counts_a_batch_once(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        sync = Sync(owner, threading.Lock())
        batch = SpendBatch(7, {("day", "20260101", "x"): 0.5})
        names, args = once_call(keys, "me", batch)
        assert names == [keys.spend_seq, keys.spend("day", "20260101")]
        assert [sync._once(keys=names, args=args) for _ in range(3)] == [1, 0, 0]
        assert float(store.hget(keys.spend("day", "20260101"), "x") or 0) == 0.5
        older_keys, older_args = once_call(keys, "me", SpendBatch(6, {("day", "20260101", "x"): 1.0}))
        assert sync._once(keys=older_keys, args=older_args) == 0, "an older number was counted already"
        other = once_call(keys, "another", SpendBatch(1, {("day", "20260101", "x"): 1.0}))
        assert sync._once(keys=other[0], args=other[1]) == 1, "each process has its own numbers"
        assert float(store.hget(keys.spend("day", "20260101"), "x") or 0) == 1.5

    def test_a_failed_flush_loses_nothing(self, store: redis.Redis, keys: Keys) -> None:
        down = client_for(NOWHERE)
        try:
            owner = Owner(down, keys)
            sync = Sync(owner, threading.Lock())
            key = ("day", time.strftime("%Y%m%d", time.gmtime()), "n")
            sync.spend_pending[key] = 1.0
            sync.outbox.append(HealthChange("ejected", "a", until=time.time() + 30, reason="5xx"))
            assert not sync.flush()
            assert owner.errors, "Redis away: reported to the owner"
            assert len(sync.outbox) == 1, "the health change goes out with the next flush"
            assert [batch.landed for batch in sync.spend_batches] == [None]
            assert sync.unconfirmed(key) == 1.0, "still counted here"
        finally:
            down.close()

    def test_a_batch_is_sent_again_when_its_master_was_replaced(self, store: redis.Redis, keys: Keys) -> None:
        """On a deployment that fails over, a batch is kept HOLD_S; a new master gets it again (counted once)."""
        owner = Owner(store, keys, kind="sentinel")
        sync = Sync(owner, threading.Lock())
        key = ("day", time.strftime("%Y%m%d", time.gmtime()), "n")
        sync.spend_pending[key] = 1.0
        assert sync.flush()
        [batch] = sync.spend_batches
        assert batch.landed == "one"
        assert sync.unconfirmed(key) == 0.0, "taken: counted in what was read back"
        store.delete(today(keys), keys.spend_seq)  # the new master never got it
        owner.where = "two"
        assert sync.flush()
        assert batch.landed == "two"
        assert float(store.hget(today(keys), "n") or 0) == 1.0
        owner.clock.now += HOLD_S
        assert sync.flush()
        assert sync.spend_batches == [], "held long enough by the master in charge: forgotten"
        assert float(store.hget(today(keys), "n") or 0) == 1.0

    def test_a_script_the_server_does_not_know_is_run_again_on_its_own(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        sync = Sync(owner, threading.Lock())
        ran: list[tuple[list[str], list[Any]]] = []

        def script(keys: list[str], args: list[Any], client: Any = None) -> int:
            ran.append((keys, args))
            return 1

        sync._scripted = [(1, script, ["k"], [1])]
        results = sync._unloaded(["ok", redis.exceptions.NoScriptError("NOSCRIPT"), "other"])
        assert results == ["ok", 1, "other"]
        assert ran == [(["k"], [1])], "run once more, with the same keys and arguments"

    def test_a_rollout_state_redis_lost_is_written_again(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        engine = rollout_engine(owner)
        owner.engines = [engine]
        sync = Sync(owner, threading.Lock())
        engine.abort("by hand")
        mine = engine.state
        older = replace(mine, version=mine.version - 1, status="paused")
        store.set(keys.rollout("canary"), json.dumps(asdict(older)))
        assert sync.flush()
        stored = json.loads(store.get(keys.rollout("canary")) or b"{}")
        assert (stored["version"], stored["status"]) == (mine.version, "aborted")


def rollout_engine(owner: Owner) -> RolloutEngine:
    """Route ``canary`` at 50%, paused, on ``owner``'s rollout store."""
    from holyroute import load_config

    config = load_config(
        {
            "endpoints": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
            "routes": {
                "canary": {
                    "rollout": {
                        "stable": {"model": "s", "endpoints": ["main"]},
                        "candidate": {"model": "c", "endpoints": ["main"]},
                        "steps": [{"set_weight": 50}, {"pause": {}}],
                    }
                }
            },
        }
    )
    rollout = config.routes["canary"].rollout
    assert rollout is not None
    return RolloutEngine("canary", rollout, owner.store, emit=owner.events, clock=owner.clock)


# ---- listener -----------------------------------------------------------------------------------------------------


class TestListener:
    """Every other process's message is applied here; its own and unreadable ones are not."""

    def message(self, origin: str, **fields: Any) -> str:
        return json.dumps({"o": origin, **fields})

    def test_apply(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        listener = Listener(owner)
        router = owner.router
        until = time.time() + 30
        listener.apply(
            self.message("other", kind="health", k="cooldown", e="a", m="m", u=until), router, 0, time.time()
        )
        listener.apply(self.message("me", kind="health", k="cooldown", e="b", m="m", u=until), router, 0, time.time())
        listener.apply(b"\xff not json", router, 0, time.time())
        assert [(c.kind, c.endpoint) for c in router.health.applied] == [("cooldown", "a")]
        [invalid] = owner.events.named("holyroute.state_invalid")
        assert invalid["key"] == keys.channel

    def test_a_rollout_message_makes_the_engine_follow_the_stored_state(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        engine = rollout_engine(owner)
        owner.engines = [engine]
        newer = replace(engine.state, version=engine.state.version + 5, status="aborted", weight=0.0)
        store.set(keys.rollout("canary"), json.dumps(asdict(newer)))
        Listener(owner).apply(self.message("other", kind="rollout", route="canary"), owner.router, 0, time.time())
        assert (engine.state.version, engine.state.status) == (newer.version, "aborted")

    def test_the_loop_applies_what_is_published_and_ends_on_stop(self, store: redis.Redis, keys: Keys) -> None:
        owner = Owner(store, keys)
        listener = Listener(owner)
        thread = threading.Thread(target=listener.loop, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while not owner.wake.is_set():  # set once subscribed
                assert time.monotonic() < deadline, "never subscribed"
                time.sleep(0.005)
            change = self.message("other", kind="health", k="ejected", e="a", u=time.time() + 30)
            while not owner.router.health.applied:
                assert time.monotonic() < deadline, "the published change was never applied"
                store.publish(keys.channel, change)
                time.sleep(0.02)
        finally:
            owner.stop.set()
            thread.join(3)
        assert not thread.is_alive()
        assert owner.router.health.applied[0].endpoint == "a"

    def test_redis_away_is_reported_and_the_loop_waits(self, store: redis.Redis, keys: Keys) -> None:
        down = client_for(NOWHERE)
        owner = Owner(down, keys)
        owner.client = lambda timeout: client_for(NOWHERE)  # type: ignore[method-assign]
        listener = Listener(owner)
        thread = threading.Thread(target=listener.loop, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while not owner.errors:
                assert time.monotonic() < deadline, "the failure was never reported"
                time.sleep(0.005)
        finally:
            owner.stop.set()
            thread.join(3)
            down.close()
        assert not thread.is_alive()
        assert owner.failures == 3, "a lost subscription is reason enough to degrade"
