"""The Redis backend itself: shared rpm/tpm limits, health, spend, and the sync and listener threads (see
:mod:`holyroute.state.redis`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from holyroute.rollout.engine import (
    Measurements,
    RolloutEngine,
    StateStore,
)
from holyroute.state.base import PERIODS, AttachedRouter, HealthChange, Leases, Period, ReadOnlyStore, period_key

if TYPE_CHECKING:
    from holyroute.config.schema import State


from holyroute.state.redis.payloads import (
    FIELD_KINDS,
    MAX_USD,
    Horizons,
    Keys,
    health_entry,
    measurement_fields,
    parse_health_entry,
    parse_measurements,
    parse_message,
    parse_spend,
    redacted,
    text_of,
)
from holyroute.state.redis.store import RedisStore

__all__ = ["RedisBackend"]

EventSink = Callable[[str, dict[str, Any]], None]

#: Seconds the keys that are rewritten all the time live after their last write.
MEASUREMENTS_TTL_S = 7 * 86400
SPEND_TTL_S = {"hour": 2 * 86400, "day": 40 * 86400, "month": 400 * 86400}
LIMITS_TTL_MS = 120_000  # an idle bucket refills completely within 60 s, so a missing key means a full one
MEMBER_TTL_S = 10.0  # a process not heard of for this long no longer counts for the local share of a limit

# Token buckets for rpm and tpm in one hash, refilled continuously, against Redis's clock. First ARGV[7] tokens this
# process owes the tpm bucket from settled calls are given back (negative: taken), the bucket kept within [-tpm, tpm].
# Then either all limits have room for this request and all are charged, or nothing is charged: the reply is
# {milliseconds until there is room, 0, 0}. Charged, the reply is {0, requests, tokens} granted: this request's, plus
# up to ARGV[5] requests and ARGV[6] tokens in all for the process's lease, taken only from what the bucket holds (see
# _state.Leases).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'r', 'rt', 't', 'tt')
local function level(cap, value, stamp)
  if cap <= 0 then return 0 end
  local l, at = tonumber(value), tonumber(stamp)
  if l == nil or at == nil then return cap end
  return math.min(cap, l + math.max(0, now - at) * cap / 60)
end
local r, k = level(rpm, s[1], s[2]), level(tpm, s[3], s[4])
local owed = tonumber(ARGV[7]) or 0
if tpm > 0 and owed ~= 0 then
  k = math.max(-tpm, math.min(tpm, k + owed))
  redis.call('HSET', KEYS[1], 't', tostring(k), 'tt', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local wait = 0
if rpm > 0 and r < 1 then wait = (1 - r) * 60 / rpm end
if tpm > 0 then
  local need = math.min(tokens, tpm)
  if k < need then wait = math.max(wait, (need - k) * 60 / tpm) end
end
if wait > 0 then return {math.max(1, math.ceil(wait * 1000)), 0, 0} end
local want_r, want_t = tonumber(ARGV[5]), tonumber(ARGV[6])
local gr, gt = want_r, want_t
if rpm > 0 then
  gr = math.max(1, math.min(want_r, math.floor(r)))
  redis.call('HSET', KEYS[1], 'r', tostring(r - gr), 'rt', tostring(now))
end
if tpm > 0 then
  gt = math.max(tokens, math.min(want_t, math.floor(k)))
  redis.call('HSET', KEYS[1], 't', tostring(k - gt), 'tt', tostring(now))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {0, gr, gt}
"""

# Settle finished calls' tpm grants: give ARGV[2] tokens back to the bucket (negative: take them), refilled up to now
# first as _ACQUIRE refills it, kept within [-tpm, tpm]. A missing bucket is a full one: a credit changes nothing.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, owed = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm == nil or owed == nil or tpm <= 0 then return 0 end
local s = redis.call('HMGET', KEYS[1], 't', 'tt')
local l, at = tonumber(s[1]), tonumber(s[2])
if l == nil or at == nil then
  if owed >= 0 then return 0 end
  l = tpm
else
  l = math.min(tpm, l + math.max(0, now - at) * tpm / 60)
end
l = math.max(-tpm, math.min(tpm, l + owed))
redis.call('HSET', KEYS[1], 't', tostring(l), 'tt', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# One health change: set (keeping a longer entry) or delete a field, drop expired fields, expire the hash after the
# last entry, and publish the change. Values are "<until> <json>".
_HEALTH = """
local now = tonumber(redis.call('TIME')[1])
local field, value, untl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[4] == 'del' then
  redis.call('HDEL', KEYS[1], field)
else
  local current = redis.call('HGET', KEYS[1], field)
  if not current or (tonumber(string.match(current, '^%S+')) or 0) < untl then
    redis.call('HSET', KEYS[1], field, value)
  end
end
local all = redis.call('HGETALL', KEYS[1])
local latest = 0
for i = 1, #all, 2 do
  local u = tonumber(string.match(all[i + 1], '^%S+')) or 0
  if u < now then redis.call('HDEL', KEYS[1], all[i]) elseif u > latest then latest = u end
end
if latest > 0 then redis.call('EXPIREAT', KEYS[1], math.ceil(latest) + 60) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""


class RedisBackend:
    """Shares health, limits, rollouts and spend through Redis; see the module docstring."""

    name = "redis"

    def __init__(
        self,
        state: State,
        *,
        emit: EventSink,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        #: Read what is shared, write nothing (``holyroute explain``): no threads, no publishing, no grants.
        self.read_only = read_only
        self._url = state.url.get_secret_value()
        self.where = redacted(self._url)
        self.keys = Keys(state.prefix)
        self.timeout = state.timeout_ms / 1000.0
        self.interval = state.sync_interval_s
        self._emit = emit
        self._clock = clock
        self._wall = wall_clock
        self.redis = self._client(self.timeout)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._settle = self.redis.register_script(_SETTLE)
        self._health = self.redis.register_script(_HEALTH)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = RedisStore(self)
        self.leases = Leases(clock, fraction=state.lease_fraction)
        self.live = True  # optimistic until the first failure: the hot path does not wait to find out
        self._failures = 0
        self._recovering = False  # failures while recovering are expected: no second degraded event
        self._down_since: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._outbox: list[HealthChange] = []
        self._spend_pending: dict[tuple[Period, str, str], float] = {}
        self._spend_seen: dict[tuple[Period, str, str], float] = {}
        self._owed: dict[str, tuple[int, int]] = {}  # endpoint -> (tpm, tokens owed to its shared bucket)
        self._sending: set[str] = set()  # endpoints whose owed tokens a flush is sending now
        self._sent = threading.Condition(self._lock)  # notified when that flush is done
        self._members = 1
        self._router: AttachedRouter | None = None
        self._engines: list[RolloutEngine] = []
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()
        self._horizons = Horizons()  # the configured maxima, once attached to a router
        self._reported: set[tuple[str, ...]] = set()  # problems already reported (once each)

    def _client(self, timeout: float | None) -> redis.Redis:
        return redis.Redis.from_url(
            self._url,
            socket_timeout=timeout,
            socket_connect_timeout=max(self.timeout, 0.05) if timeout is not None else 1.0,
            retry=Retry(NoBackoff(), 0),  # a slow Redis is a down Redis: never retry on the request path
            health_check_interval=0,
            client_name="holyroute",
        )

    # ---- the protocol the core calls ----------------------------------------------------------------------------

    @property
    def shares_limits(self) -> bool:
        return self.live

    def attach(self, router: AttachedRouter) -> None:
        self._router = router
        self._horizons = Horizons.of(router.config.retry, router.config.health)
        if router.rollouts is not None:
            self._engines = [router.rollouts[alias] for alias in router.rollouts]
            for engine in self._engines:
                engine.shares_measurements = True
                engine.sync_interval = 0.0  # the store's cache is kept fresh by the sync thread
        if self.read_only:
            self.live = False  # no grants, no writes: the local buckets decide
            self._guarded("attach", self._flush)  # a snapshot of what is shared, no writes
            self.store.cached = True
            return
        router.health.share_limits(self.live, self._members, self._clock())
        # One synchronous sync before the first call: a new process must not send to endpoints every other process
        # knows are cooling down or ejected (bounded by timeout_ms; a failure degrades as any other would). Bad
        # entries are skipped by the parsers; anything else is reported and the client is still built.
        self._guarded("attach", self._flush)
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._sync_loop, name="holyroute-state-sync", daemon=True),
            threading.Thread(target=self._listen_loop, name="holyroute-state-listen", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _forked(self) -> None:
        """A forked child (gunicorn --preload): the parent's threads did not come along; start our own."""
        if os.getpid() != self._pid and self._router is not None:
            self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._start()

    def close(self) -> None:
        if self.read_only:
            self._stop.set()
            self.redis.close()
            return
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._threads and self.live:
            # Wake our listener out of its blocking read at once (other processes ignore a "bye").
            with contextlib.suppress(redis.RedisError):
                self.redis.publish(self.keys.channel, self.message("bye"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        if self._router is not None and self.live:
            self._flush()  # what is pending goes out once more (bounded by the command timeout)
            with contextlib.suppress(redis.RedisError):  # gone: no longer counted for the local share of limits
                self.redis.zrem(self.keys.members, self.origin)
        self.redis.close()

    async def aclose(self) -> None:
        import anyio.to_thread

        try:
            found = self._async.pop(asyncio.get_running_loop(), None)
        except RuntimeError:  # trio: no asyncio client was made
            found = None
        if found is not None:
            await found[0].aclose()
        await anyio.to_thread.run_sync(self.close)

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        if self.read_only:
            return None
        if os.getpid() != self._pid:
            self._forked()
        if not self.live:
            return None
        ask = self.leases.take(endpoint, rpm, tpm, tokens)
        if ask is None:
            return 0.0
        return self._ask(endpoint, rpm, tpm, tokens, ask)

    def _ask(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int]) -> float | None:
        if endpoint in self._sending:
            # A flush is sending what this process owes the bucket: let it land first, or this request could find
            # the bucket short of tokens this very process gave back (bounded by the command timeout; rare).
            with self._sent:
                self._sent.wait_for(lambda: endpoint not in self._sending, timeout=max(self.timeout, 0.05))
        owed = self._take_owed(endpoint, tpm)
        try:
            reply = self._acquire(
                keys=[self.keys.limits(endpoint)], args=self._acquire_args(rpm, tpm, tokens, ask, owed)
            )
        except redis.RedisError as error:
            self._owe(endpoint, tpm or 0, owed)  # sent again with the next request or sync (at least once, as spend)
            self.failed(error)
            return None
        except BaseException:
            self._owe(endpoint, tpm or 0, owed)
            raise
        return self._granted(endpoint, tokens, reply)

    @staticmethod
    def _acquire_args(rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int], owed: int) -> list[int]:
        return [rpm or 0, tpm or 0, tokens, LIMITS_TTL_MS, ask[0], ask[1], owed]

    def _owe(self, endpoint: str, tpm: int, tokens: int) -> int:
        """Add ``tokens`` to what the endpoint's shared bucket is owed; the total now owed. More than the bucket's
        span (``2 * tpm``) either way could never apply, so the total stays within it."""
        if tpm <= 0 or not tokens:
            return 0
        with self._lock:
            total = self._owed.get(endpoint, (tpm, 0))[1] + tokens
            total = min(max(total, -2 * tpm), 2 * tpm)
            self._owed[endpoint] = (tpm, total)
        return total

    def _take_owed(self, endpoint: str, tpm: int | None) -> int:
        """What the endpoint's shared bucket is owed, handed to the grant request about to be sent."""
        if not tpm or not self._owed:
            return 0
        with self._lock:
            found = self._owed.pop(endpoint, None)
        return found[1] if found is not None else 0

    def _granted(self, endpoint: str, tokens: int, reply: Any) -> float | None:
        self._failures = 0
        try:
            wait_ms, requests, granted_tokens = (int(value) for value in reply)
        except (TypeError, ValueError):
            self.invalid(self.keys.limits(endpoint), "the rate-limit script's reply is not three integers")
            return None  # decide locally, as when Redis cannot answer
        if wait_ms > 0:
            return min(wait_ms, 60_000) / 1000.0  # a bucket refills completely within 60 s
        self.leases.granted(endpoint, max(requests, 0), max(granted_tokens, 0), tokens)
        return 0.0

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        if self.read_only:
            return None
        if os.getpid() != self._pid:
            self._forked()
        if not self.live:
            return None
        ask = self.leases.take(endpoint, rpm, tpm, tokens)
        if ask is None:
            return 0.0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio (anyio's other backend): redis.asyncio needs asyncio, so ask from a worker thread
            loop = None
        if loop is None or endpoint in self._sending:  # (or wait there for a flush sending what is owed: see _ask)
            import anyio.to_thread

            return await anyio.to_thread.run_sync(self._ask, endpoint, rpm, tpm, tokens, ask)
        found = self._async.get(loop)
        if found is None:
            client = redis.asyncio.Redis.from_url(
                self._url,
                socket_timeout=self.timeout,
                socket_connect_timeout=max(self.timeout, 0.05),
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                health_check_interval=0,
                client_name="holyroute",
            )
            found = self._async[loop] = (client, client.register_script(_ACQUIRE))
        owed = self._take_owed(endpoint, tpm)
        try:
            reply = await found[1](
                keys=[self.keys.limits(endpoint)], args=self._acquire_args(rpm, tpm, tokens, ask, owed)
            )
        except (TimeoutError, redis.RedisError, OSError) as error:
            self._owe(endpoint, tpm or 0, owed)
            self.failed(error)
            return None
        except BaseException:  # cancelled: whether Redis applied what was owed is unknown; at least once
            self._owe(endpoint, tpm or 0, owed)
            raise
        return self._granted(endpoint, tokens, reply)

    def publish(self, change: HealthChange) -> None:
        if self.read_only:
            return
        with self._lock:
            self._outbox.append(change)
        self._wake.set()

    def settle(self, endpoint: str, tpm: int, tokens: int) -> None:
        if self.read_only:
            return
        owed = self._owe(endpoint, tpm, tokens)
        if abs(owed) * 10 >= tpm > 0:  # a tenth of the limit or more: the other processes should have it now
            self._wake.set()

    def add_spend(self, name: str, usd: float) -> None:
        if self.read_only or not math.isfinite(usd) or usd <= 0:
            return
        usd = min(usd, MAX_USD)
        now = self._wall()
        with self._lock:
            for period in PERIODS:
                key = (period, period_key(period, now), name)
                self._spend_pending[key] = self._spend_pending.get(key, 0.0) + usd

    def spent(self, name: str, period: Period) -> float:
        key = (period, period_key(period, self._wall()), name)
        return self._spend_seen.get(key, 0.0) + self._spend_pending.get(key, 0.0)

    def rollout_store(self) -> StateStore:
        return ReadOnlyStore(self.store) if self.read_only else self.store

    # ---- what is read back: total parsers, each bad entry skipped and reported once ------------------------------

    def invalid(self, key: str, problem: str) -> None:
        """A Redis entry or message could not be used: one ``holyroute.state_invalid`` per key and problem (the
        problem names fields, never values: a reason may quote an upstream)."""
        self._once(
            ("invalid", key, problem),
            "holyroute.state_invalid",
            {
                "backend": "redis",
                "redis": self.where,
                "key": key[:300],
                "problem": problem[:500],
                "reason": "skipped; keeping the last known good state",
            },
        )

    def _once(self, seen: tuple[str, ...], event: str, fields: dict[str, Any]) -> None:
        with self._lock:
            if seen in self._reported:
                return
            if len(self._reported) < 1000:
                self._reported.add(seen)
        with contextlib.suppress(Exception):
            self._emit(event, fields)

    def _background_error(self, loop: str, error: BaseException) -> None:
        """One iteration of a background loop failed: report it once per loop and exception type; the loop goes
        on. Only the type is named: a message may quote the URL or an entry."""
        kind = type(error).__name__
        self._once(
            ("loop", loop, kind),
            "holyroute.background_error",
            {
                "backend": "redis",
                "loop": loop,
                "error": kind,
                "reason": f"one iteration of the redis {loop} loop raised {kind}; it goes on "
                "(later failures of this kind are not reported)",
            },
        )

    def _guarded(self, loop: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as error:
            self._background_error(loop, error)

    def _read_measurements(self, key: str, raw: object) -> Measurements:
        measured, skipped = parse_measurements(raw if not isinstance(raw, Exception) else {})
        for problem in skipped[:3]:
            self.invalid(key, problem)
        return measured

    def read_measurements(self, engine: RolloutEngine) -> None:
        """Read every process's measurements for ``engine``'s current window (for the CLI, which does not sync)."""
        window = engine.state.window
        pipe = self.redis.pipeline(transaction=False)
        for arm in (engine.stable_arm, engine.candidate_arm):
            pipe.hgetall(self.keys.measurements(engine.route, window, arm))
        try:
            stable_raw, candidate_raw = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            self.failed(error)
            return
        stable = self._read_measurements(self.keys.measurements(engine.route, window, engine.stable_arm), stable_raw)
        candidate = self._read_measurements(
            self.keys.measurements(engine.route, window, engine.candidate_arm), candidate_raw
        )
        engine.adopt_totals(window, {engine.stable_arm: stable, engine.candidate_arm: candidate})

    def snapshot(self) -> tuple[int, list[HealthChange]]:
        """Processes alive and the health entries in force, read now (``holyroute check``). Raises RedisError."""
        now = self._wall()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.keys.members, now - MEMBER_TTL_S, "+inf")
        pipe.hgetall(self.keys.health)
        alive, raw = pipe.execute()
        changes = []
        for field, value in raw.items():
            change = parse_health_entry(value, wall=now, horizons=self._horizons)
            if isinstance(change, str):
                self.invalid(f"{self.keys.health} {text_of(field) or '?'}", change)
            elif change.until > now:
                changes.append(change)
        return int(alive), sorted(changes, key=lambda c: (c.endpoint, c.model, c.kind))

    # ---- failure and recovery -----------------------------------------------------------------------------------

    def failed(self, error: BaseException) -> None:
        """A command failed. A refused connection means down at once; timeouts after three in a row."""
        self._failures += 1
        refused = isinstance(error, redis.ConnectionError) and not isinstance(error, redis.TimeoutError)
        if not self.live or (self._failures < 3 and not refused):
            return
        with self._lock:
            if not self.live:
                return
            self.live = False
            if self._recovering:
                return
            self._down_since = self._clock()
        if self._router is not None:
            self._router.health.share_limits(False, self._members, self._clock())
        self.leases.clear()
        reason = f"{type(error).__name__}: {str(error)[:200]}".replace(self._url, self.where)
        self._emit(
            "holyroute.state_degraded",
            {
                "backend": "redis",
                "redis": self.where,
                "processes": self._members,
                "reason": f"{reason}; routing on this process's own state, each rpm/tpm limit / {self._members}",
            },
        )
        self._wake.set()

    def _recover(self) -> bool:
        """Redis answers again: push what was learnt here, re-read everything, then trust the store again."""
        try:
            self.redis.ping()
        except redis.RedisError:
            return False
        self._recovering = True
        try:
            return self._resync()
        finally:
            self._recovering = False

    def _resync(self) -> bool:
        router = self._router
        pushed = 0
        if router is not None:
            changes = router.health.live_changes(self._clock(), self._wall())
            with self._lock:
                self._outbox[:0] = changes
            pushed = len(changes)
        self.live = True  # tentatively: the pushes below must be allowed to run
        self._failures = 0
        rollouts = self.store.push_unsynced()
        if not self.live or not self._flush():
            self.live = False
            return False
        if router is not None:
            router.health.share_limits(True, self._members, self._clock())
        self.leases.clear()
        down = self._clock() - (self._down_since or self._clock())
        self._emit(
            "holyroute.state_restored",
            {
                "backend": "redis",
                "redis": self.where,
                "down_s": round(down, 3),
                "reason": f"redis answers again; pushed {pushed} health change(s) and {rollouts} rollout change(s)",
            },
        )
        return True

    # ---- the sync thread ------------------------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        retry = 0.05
        while not self._stop.is_set():
            try:
                if not self.live:
                    if self._recover():
                        retry = 0.05
                        continue
                    self._stop.wait(retry)
                    retry = min(retry * 2, 1.0)
                    continue
                self._wake.clear()  # before the flush: a change published during it wakes the next one at once
                self._flush()
            except Exception as error:  # one bad iteration never ends the loop
                self._background_error("sync", error)
            self._wake.wait(self.interval)

    def _flush(self) -> bool:
        """Send what is pending and read the snapshots back, in one pipeline. False when Redis failed.

        A command Redis refuses (a reply error, not a connection error) is reported once and dropped, never sent
        again: a change Redis cannot take must not keep the backend degraded.
        """
        try:
            return self._flush_pipeline()
        finally:
            with self._sent:
                self._sending.clear()
                self._sent.notify_all()

    def _flush_pipeline(self) -> bool:
        router = self._router
        writes = not self.read_only
        with self._lock:
            outbox, self._outbox = (self._outbox, []) if writes else ([], self._outbox)
            spend, self._spend_pending = (self._spend_pending, {}) if writes else ({}, self._spend_pending)
            owed, self._owed = (self._owed, {}) if writes else ({}, self._owed)
            self._sending.update(owed)
        drained = [(engine, *engine.drain()) for engine in self._engines] if writes else []
        now = self._wall()
        pipe = self.redis.pipeline(transaction=False)
        for change in outbox:
            try:
                self._health_command(pipe, change)
            except Exception as error:  # this change cannot be sent: drop it, never resend it, send the rest
                self._background_error("sync", error)
        for endpoint, (tpm, tokens) in owed.items():
            self._settle(keys=[self.keys.limits(endpoint)], args=[tpm, tokens, LIMITS_TTL_MS], client=pipe)
        for (period, bucket, name), usd in spend.items():
            key = self.keys.spend(period, bucket)
            pipe.hincrbyfloat(key, name, usd)
            pipe.expire(key, SPEND_TTL_S[period])
        for engine, window, pending in drained:
            for arm, measured in pending.items():
                key = self.keys.measurements(engine.route, window, arm)
                for name, amount in measurement_fields(measured).items():
                    pipe.hincrby(key, name, int(amount))
                if measured.cost_usd:
                    pipe.hincrbyfloat(key, "cost", measured.cost_usd)
                pipe.expire(key, MEASUREMENTS_TTL_S)
        if writes:
            pipe.zadd(self.keys.members, {self.origin: now})
            pipe.zremrangebyscore(self.keys.members, "-inf", now - MEMBER_TTL_S)
            pipe.expire(self.keys.members, int(MEMBER_TTL_S * 6))
        reads = len(pipe)
        pipe.zcard(self.keys.members)
        pipe.hgetall(self.keys.health)
        for period in PERIODS:
            pipe.hgetall(self.keys.spend(period, period_key(period, now)))
        for engine in self._engines:
            pipe.get(self.keys.rollout(engine.route))
        windows = []
        for engine in self._engines:
            window = engine.state.window
            windows.append(window)
            for arm in (engine.stable_arm, engine.candidate_arm):
                pipe.hgetall(self.keys.measurements(engine.route, window, arm))
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            with self._lock:  # nothing is lost: it all goes out with the next flush
                self._outbox[:0] = outbox
                for counted, usd in spend.items():
                    self._spend_pending[counted] = self._spend_pending.get(counted, 0.0) + usd
            for endpoint, (tpm, tokens) in owed.items():
                self._owe(endpoint, tpm, tokens)
            for engine, window, pending in drained:
                engine.undrain(window, pending)
            self._failures = 3  # a failed flush is reason enough
            self.failed(error)
            return False
        self._failures = 0
        for refused in results[:reads]:
            if isinstance(refused, Exception):
                self._once(
                    ("refused", type(refused).__name__),
                    "holyroute.state_write_failed",
                    {
                        "backend": "redis",
                        "redis": self.where,
                        "problem": f"Redis refused a write ({type(refused).__name__})",
                        "reason": "that change is dropped, the rest went through",
                    },
                )
        answers = iter(results[reads:])
        members = next(answers)
        if isinstance(members, int) and not isinstance(members, bool):
            self._members = min(max(1, members), 1_000_000)
        health = next(answers)
        if router is not None:
            self._apply_health(health, router)
        for period in PERIODS:
            bucket = period_key(period, now)
            key = self.keys.spend(period, bucket)
            totals, skipped = parse_spend(next(answers))
            for problem in skipped[:3]:
                self.invalid(key, problem)
            seen = {(period, bucket, name): usd for name, usd in totals.items()}
            for old in [k for k in self._spend_seen if k[0] == period and k[1] != bucket]:
                del self._spend_seen[old]
            self._spend_seen.update(seen)
        raw_states = [next(answers) for _ in self._engines]
        lost: list[RolloutEngine] = []
        for engine, window, raw in zip(self._engines, windows, raw_states, strict=True):
            stable = self._read_measurements(
                self.keys.measurements(engine.route, window, engine.stable_arm), next(answers)
            )
            candidate = self._read_measurements(
                self.keys.measurements(engine.route, window, engine.candidate_arm), next(answers)
            )
            engine.adopt_totals(window, {engine.stable_arm: stable, engine.candidate_arm: candidate})
            found = self.store.parsed(engine.route, raw)
            if found is not None and engine.route not in self.store.invalid:
                engine.follow(found)
            elif found is None and engine.state.version > 0:
                lost.append(engine)  # missing (a Redis restarted empty): put back what this process follows
        if lost and writes:
            self._restore_rollouts(lost)
        self.store.cached = bool(self._threads) or self.read_only
        return True

    def _restore_rollouts(self, engines: list[RolloutEngine]) -> None:
        """A rollout's state key is missing (a Redis restarted empty, or a first start): put back what this process
        follows, unless another process got there first (``SET NX``), so no process starts the steps again."""
        pipe = self.redis.pipeline(transaction=False)
        for engine in engines:
            pipe.set(self.keys.rollout(engine.route), json.dumps(asdict(engine.state)), nx=True)
        with contextlib.suppress(redis.RedisError):  # the next flush reads whatever is there, and tries again
            pipe.execute()

    def _health_command(self, pipe: Any, change: HealthChange) -> None:
        # Clamped here, whatever made the change: an absurd deadline would make Redis refuse the EXPIREAT.
        change = self._horizons.clamp(change, self._wall())
        kind = FIELD_KINDS[change.kind]
        field = f"{kind}|{change.endpoint}|{change.model}" if kind in "ch" else f"{kind}|{change.endpoint}"
        message = self.message(
            "health",
            k=change.kind,
            e=change.endpoint,
            m=change.model,
            u=change.until,
            r=change.reason,
            t=change.tokens_left,
        )
        mode = "del" if change.kind == "restored" else "set"
        value = f"{change.until:.3f} {message}"
        self._health(
            keys=[self.keys.health], args=[field, value, change.until, mode, self.keys.channel, message], client=pipe
        )

    def message(self, kind: str, **fields: Any) -> str:
        return json.dumps({"o": self.origin, "kind": kind, **fields}, separators=(",", ":"))

    def _apply_health(self, raw: object, router: AttachedRouter) -> None:
        if not isinstance(raw, dict):
            return  # a refused read: the next flush reads again
        now, wall = self._clock(), self._wall()
        for field, value in raw.items():
            found = health_entry(value, wall=wall, horizons=self._horizons)
            if isinstance(found, str):
                self.invalid(f"{self.keys.health} {text_of(field) or '?'}", found)
            elif found.origin != self.origin and found.change is not None:  # our own is applied already
                router.health.apply(found.change, now, wall)

    def _apply_message(self, payload: object, router: AttachedRouter, now: float, wall: float) -> None:
        found = parse_message(payload, wall=wall, horizons=self._horizons)
        if isinstance(found, str):
            self.invalid(self.keys.channel, found)
            return
        if found.origin == self.origin:
            return  # our own change, already applied
        if found.change is not None:
            router.health.apply(found.change, now, wall)
        elif found.kind == "rollout":
            for engine in self._engines:
                if engine.route == found.route:
                    try:
                        raw = self.redis.get(self.keys.rollout(found.route))
                    except redis.RedisError as error:
                        self.failed(error)
                        return
                    state = self.store.parsed(found.route, raw)
                    if state is not None and found.route not in self.store.invalid:
                        engine.follow(state)

    # ---- the listener thread ------------------------------------------------------------------------------------

    def _listen_loop(self) -> None:
        listener = self._client(None)
        while not self._stop.is_set():
            if not self.live:
                self._stop.wait(0.1)
                continue
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.keys.channel)
                self._wake.set()  # a fresh subscription: re-read the snapshot for what was missed
                while not self._stop.is_set() and self.live:
                    message = pubsub.get_message(timeout=0.5)
                    router = self._router
                    if isinstance(message, dict) and router is not None:
                        try:
                            self._apply_message(message.get("data"), router, self._clock(), self._wall())
                        except Exception as error:  # one bad message never ends the loop
                            self._background_error("listen", error)
            except (redis.RedisError, OSError) as error:
                self._failures = 3
                self.failed(error)
                self._stop.wait(0.1)
            except Exception as error:  # anything else: report once, subscribe afresh, go on
                self._background_error("listen", error)
                self._stop.wait(0.1)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
        with contextlib.suppress(Exception):
            listener.close()
