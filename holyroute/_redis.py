"""The Redis state backend: many processes and hosts act as one router.

What is shared, and how each piece keeps the request path fast:

- **Health** (cooldowns, ejections, quota, headroom) lives in one hash, ``<prefix>:{health}``. A change made here is
  written by a Lua script (keep the longer cooldown, drop expired fields, expire the hash after the last one) that
  also publishes it on ``<prefix>:events``; every process's listener thread applies it to its local
  :class:`~holyroute._health.HealthBook` within milliseconds, and the sync thread re-reads the whole hash every
  ``sync_interval_s`` in case a message was missed. The request path reads only the local book.
- **rpm / tpm limits** are token buckets in ``<prefix>:{limits:<endpoint>}``, taken by one Lua script against Redis's
  own clock: the one round trip a request may make, and only for an endpoint with such a limit. A busy process takes
  a small lease with its grant (its next 100 ms of demand, at most ``lease_fraction`` of the limit, only from what
  the bucket holds beyond the request: :class:`~holyroute._state.Leases`), so most requests make none.
- **Rollouts**: state in ``<prefix>:{rollout:<route>}:state`` (read-modify-write under ``WATCH``, so two processes
  never both advance a step), measurements in ``<prefix>:{rollout:<route>}:m:<window>:<arm>`` as counters and
  latency-sketch buckets that every process adds to (``HINCRBY``), so the analysis sees every process's calls.
- **Spend** per hour, day and month in ``<prefix>:{spend}:<period>:<bucket>``.

Measurements and spend are sent in one pipeline per ``sync_interval_s`` by a background thread, which reads the
snapshots back in the same round trip. Every key carries a hash tag, so one script's keys share a Redis Cluster
slot, and every key but a rollout's state (one per route) expires.

When Redis is down or slower than ``timeout_ms``, nothing fails: the process routes on what it knows, emits
``holyroute.state_degraded`` once, keeps its measurements and spend, limits itself to its share of each rpm/tpm limit
(the limit divided by the processes last seen alive), and when Redis answers again pushes what it learnt, re-reads
everything and emits ``holyroute.state_restored``. The URL may hold a password: it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._rollout import Measurements, RolloutEngine, RolloutState
from ._state import PERIODS, HealthChange, Leases, Period, period_key
from ._stats import LatencySketch

if TYPE_CHECKING:
    from ._core import Router
    from .config import State

__all__ = ["RedisBackend", "RedisStore"]

EventSink = Callable[[str, dict[str, Any]], None]

#: Seconds the keys that are rewritten all the time live after their last write.
MEASUREMENTS_TTL_S = 7 * 86400
SPEND_TTL_S = {"hour": 2 * 86400, "day": 40 * 86400, "month": 400 * 86400}
LIMITS_TTL_MS = 120_000  # an idle bucket refills completely within 60 s, so a missing key means a full one
MEMBER_TTL_S = 10.0  # a process not heard of for this long no longer counts for the local share of a limit

# Token buckets for rpm and tpm in one hash, refilled continuously, against Redis's clock. Either all limits have
# room for this request and all are charged, or nothing is charged: the reply is {milliseconds until there is room,
# 0, 0}. Charged, the reply is {0, requests, tokens} granted: this request's, plus up to ARGV[5] requests and ARGV[6]
# tokens in all for the process's lease, taken only from what the bucket holds (see _state.Leases).
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

_FIELD_KINDS = {"cooldown": "c", "ejected": "e", "restored": "e", "quota": "q", "headroom": "h"}


def redacted(url: str) -> str:
    """``redis://host:port/db`` without user or password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"


class Keys:
    """Every key holyroute writes, under one prefix, each with a hash tag (Redis Cluster: one slot per script)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.health = f"{prefix}:{{health}}"
        self.members = f"{prefix}:{{members}}"
        self.channel = f"{prefix}:events"

    def limits(self, endpoint: str) -> str:
        return f"{self.prefix}:{{limits:{endpoint}}}"

    def rollout(self, route: str) -> str:
        return f"{self.prefix}:{{rollout:{route}}}:state"

    def measurements(self, route: str, window: int, arm: str) -> str:
        return f"{self.prefix}:{{rollout:{route}}}:m:{window}:{arm}"

    def spend(self, period: Period, bucket: str) -> str:
        return f"{self.prefix}:{{spend}}:{period}:{bucket}"


def _fields(measured: Measurements) -> dict[str, int | float]:
    """A measurement delta as hash increments: counters, cost, and one field per sketch bucket."""
    fields: dict[str, int | float] = {}
    for name in ("calls", "errors", "judged", "poor"):
        value = getattr(measured, name)
        if value:
            fields[name] = value
    for tag, sketch in (("l", measured.latency), ("t", measured.ttft)):
        data = sketch.to_dict()
        if data["zero_count"]:
            fields[f"{tag}z"] = data["zero_count"]
        for key, count in data["bins"]:
            fields[f"{tag}{key}"] = count
    return fields


def _measurements(raw: dict[bytes, bytes]) -> Measurements:
    """The totals :func:`_fields` increments add up to."""
    measured = Measurements()
    bins: dict[str, list[list[int]]] = {"l": [], "t": []}
    zero = {"l": 0, "t": 0}
    for key_bytes, value_bytes in raw.items():
        key, value = key_bytes.decode(), value_bytes.decode()
        if key == "cost":
            measured.cost_usd = float(value)
        elif key in ("calls", "errors", "judged", "poor"):
            setattr(measured, key, int(value))
        elif key[:1] in bins:
            if key[1:] == "z":
                zero[key[:1]] = int(value)
            else:
                bins[key[:1]].append([int(key[1:]), int(value)])
    for tag, attribute in (("l", "latency"), ("t", "ttft")):
        template = getattr(measured, attribute)
        data = {
            "relative_accuracy": template.relative_accuracy,
            "max_buckets": template.max_buckets,
            "zero_count": zero[tag],
            "bins": bins[tag],
        }
        setattr(measured, attribute, LatencySketch.from_dict(data))
    return measured


class RedisStore:
    """Rollout state in Redis. While its backend syncs, reads come from the backend's cache (no round trip);
    writes are a ``WATCH``/``MULTI`` read-modify-write, so two processes never both advance a step."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self.cache: dict[str, RolloutState] = {}
        self.cached = False  # True once the backend's sync thread keeps `cache` fresh
        self._unsynced: dict[str, tuple[RolloutState, int]] = {}  # changed while Redis was away: (state, base)

    def load(self, route: str) -> RolloutState | None:
        if self.cached or not self._backend.live:
            return self.cache.get(route)
        try:
            raw = self._backend.redis.get(self._backend.keys.rollout(route))
        except redis.RedisError as error:
            self._backend.failed(error)
            return self.cache.get(route)
        state = _state(raw)
        if state is not None:
            self.cache[route] = state
        return state

    def update(self, route: str, change: Callable[[RolloutState | None], RolloutState | None]) -> RolloutState | None:
        backend = self._backend
        key = backend.keys.rollout(route)
        if backend.live:
            try:
                for _ in range(16):  # bounded: another process would have to win 16 races in a row
                    with backend.redis.pipeline() as pipe:
                        try:
                            pipe.watch(key)  # type: ignore[no-untyped-call]
                            current = _state(pipe.get(key))
                            new = change(current)
                            if new is None:
                                pipe.unwatch()
                                if current is not None:
                                    self.cache[route] = current
                                return None
                            pipe.multi()
                            pipe.set(key, json.dumps(asdict(new)))
                            pipe.publish(backend.keys.channel, backend.message("rollout", route=route))
                            pipe.execute()
                        except redis.WatchError:
                            continue
                    self.cache[route] = new
                    return new
            except redis.RedisError as error:
                backend.failed(error)
        # Redis is away: the change holds here (an abort must take effect at once) and is pushed when it returns.
        current = self.cache.get(route)
        new = change(current)
        if new is not None:
            base = self._unsynced[route][1] if route in self._unsynced else (current.version if current else 0)
            self._unsynced[route] = (new, base)
            self.cache[route] = new
        return new

    def push_unsynced(self) -> int:
        """After an outage: write what changed here, unless another process moved on meanwhile (then its state
        wins, except that an abort made here is applied on top of it). Returns how many routes were written."""
        written = 0
        for route, (mine, base) in list(self._unsynced.items()):

            def reconcile(found: RolloutState | None, mine: RolloutState = mine, base: int = base) -> RolloutState:
                if found is None or found.version <= base:
                    return mine
                if mine.status == "aborted" and found.status != "aborted":
                    fields = asdict(found)
                    fields.update(status="aborted", weight=0.0, reason=mine.reason, version=found.version + 1)
                    return RolloutState(**fields)
                return found

            live_before = self._backend.live
            self._unsynced.pop(route)
            self.update(route, reconcile)
            if not self._backend.live and live_before:
                return written
            written += 1
        return written


def _health_change(data: dict[str, Any]) -> HealthChange:
    """A health message (published, or a value of the health hash after its deadline) as a change."""
    return HealthChange(
        data["k"], data["e"], data.get("m") or "", float(data.get("u") or 0.0), data.get("r") or "", data.get("t")
    )


def _state(raw: bytes | str | None) -> RolloutState | None:
    if raw is None:
        return None
    try:
        return RolloutState(**json.loads(raw))
    except (TypeError, ValueError):
        return None


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
    ) -> None:
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
        self._members = 1
        self._router: Router | None = None
        self._engines: list[RolloutEngine] = []
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()

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

    def attach(self, router: Router) -> None:
        self._router = router
        if router.rollouts is not None:
            self._engines = [router.rollouts[alias] for alias in router.rollouts]
            for engine in self._engines:
                engine.shares_measurements = True
                engine.sync_interval = 0.0  # the store's cache is kept fresh by the sync thread
        router.health.share_limits(self.live, self._members, self._clock())
        # One synchronous sync before the first call: a new process must not send to endpoints every other process
        # knows are cooling down or ejected (bounded by timeout_ms; a failure degrades as any other would).
        self._flush()
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
        found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose()
        await asyncio.to_thread(self.close)

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        if os.getpid() != self._pid:
            self._forked()
        if not self.live:
            return None
        ask = self.leases.take(endpoint, rpm, tpm, tokens)
        if ask is None:
            return 0.0
        try:
            reply = self._acquire(keys=[self.keys.limits(endpoint)], args=self._acquire_args(rpm, tpm, tokens, ask))
        except redis.RedisError as error:
            self.failed(error)
            return None
        return self._granted(endpoint, tokens, reply)

    @staticmethod
    def _acquire_args(rpm: int | None, tpm: int | None, tokens: int, ask: tuple[int, int]) -> list[int]:
        return [rpm or 0, tpm or 0, tokens, LIMITS_TTL_MS, ask[0], ask[1]]

    def _granted(self, endpoint: str, tokens: int, reply: Any) -> float:
        self._failures = 0
        wait_ms, requests, granted_tokens = (int(value) for value in reply)
        if wait_ms:
            return wait_ms / 1000.0
        self.leases.granted(endpoint, requests, granted_tokens, tokens)
        return 0.0

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        if os.getpid() != self._pid:
            self._forked()
        if not self.live:
            return None
        ask = self.leases.take(endpoint, rpm, tpm, tokens)
        if ask is None:
            return 0.0
        loop = asyncio.get_running_loop()
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
        try:
            reply = await found[1](keys=[self.keys.limits(endpoint)], args=self._acquire_args(rpm, tpm, tokens, ask))
        except (TimeoutError, redis.RedisError, OSError) as error:
            self.failed(error)
            return None
        return self._granted(endpoint, tokens, reply)

    def publish(self, change: HealthChange) -> None:
        with self._lock:
            self._outbox.append(change)
        self._wake.set()

    def add_spend(self, name: str, usd: float) -> None:
        now = self._wall()
        with self._lock:
            for period in PERIODS:
                key = (period, period_key(period, now), name)
                self._spend_pending[key] = self._spend_pending.get(key, 0.0) + usd

    def spent(self, name: str, period: Period) -> float:
        key = (period, period_key(period, self._wall()), name)
        return self._spend_seen.get(key, 0.0) + self._spend_pending.get(key, 0.0)

    def rollout_store(self) -> RedisStore:
        return self.store

    def read_measurements(self, engine: RolloutEngine) -> None:
        """Read every process's measurements for ``engine``'s current window (for the CLI, which does not sync)."""
        window = engine.state.window
        pipe = self.redis.pipeline(transaction=False)
        for arm in (engine.stable_arm, engine.candidate_arm):
            pipe.hgetall(self.keys.measurements(engine.route, window, arm))
        try:
            stable, candidate = (_measurements(raw) for raw in pipe.execute())
        except redis.RedisError as error:
            self.failed(error)
            return
        engine.adopt_totals(window, {engine.stable_arm: stable, engine.candidate_arm: candidate})

    def snapshot(self) -> tuple[int, list[HealthChange]]:
        """Processes alive and the health entries in force, read now (``holyroute check``). Raises RedisError."""
        now = self._wall()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.keys.members, now - MEMBER_TTL_S, "+inf")
        pipe.hgetall(self.keys.health)
        alive, raw = pipe.execute()
        changes = []
        for value in raw.values():
            change = _health_change(json.loads(value.decode().partition(" ")[2]))
            if change.until > now:
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
            if not self.live:
                if self._recover():
                    retry = 0.05
                    continue
                self._stop.wait(retry)
                retry = min(retry * 2, 1.0)
                continue
            self._wake.clear()  # before the flush: a change published during it wakes the next one at once
            self._flush()
            self._wake.wait(self.interval)

    def _flush(self) -> bool:
        """Send what is pending and read the snapshots back, in one pipeline. False when Redis failed."""
        router = self._router
        with self._lock:
            outbox, self._outbox = self._outbox, []
            spend, self._spend_pending = self._spend_pending, {}
        drained = [(engine, *engine.drain()) for engine in self._engines]
        now = self._wall()
        pipe = self.redis.pipeline(transaction=False)
        for change in outbox:
            self._health_command(pipe, change)
        for (period, bucket, name), usd in spend.items():
            key = self.keys.spend(period, bucket)
            pipe.hincrbyfloat(key, name, usd)
            pipe.expire(key, SPEND_TTL_S[period])
        for engine, window, pending in drained:
            for arm, measured in pending.items():
                key = self.keys.measurements(engine.route, window, arm)
                for name, amount in _fields(measured).items():
                    pipe.hincrby(key, name, int(amount))
                if measured.cost_usd:
                    pipe.hincrbyfloat(key, "cost", measured.cost_usd)
                pipe.expire(key, MEASUREMENTS_TTL_S)
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
            results = pipe.execute()
        except redis.RedisError as error:
            with self._lock:  # nothing is lost: it all goes out with the next flush
                self._outbox[:0] = outbox
                for counted, usd in spend.items():
                    self._spend_pending[counted] = self._spend_pending.get(counted, 0.0) + usd
            for engine, window, pending in drained:
                engine.undrain(window, pending)
            self._failures = 3  # a failed flush is reason enough
            self.failed(error)
            return False
        self._failures = 0
        answers = iter(results[reads:])
        self._members = max(1, int(next(answers)))
        if router is not None:
            self._apply_health(next(answers), router)
        else:
            next(answers)
        for period in PERIODS:
            bucket = period_key(period, now)
            seen = {(period, bucket, name.decode()): float(value) for name, value in dict(next(answers)).items()}
            for old in [k for k in self._spend_seen if k[0] == period and k[1] != bucket]:
                del self._spend_seen[old]
            self._spend_seen.update(seen)
        states = [_state(next(answers)) for _ in self._engines]
        lost = []
        for engine, window, found in zip(self._engines, windows, states, strict=True):
            stable, candidate = _measurements(next(answers)), _measurements(next(answers))
            engine.adopt_totals(window, {engine.stable_arm: stable, engine.candidate_arm: candidate})
            if found is not None:
                self.store.cache[engine.route] = found
                engine.follow(found)
            else:
                lost.append(engine)
        if lost:
            self._restore_rollouts(lost)
        self.store.cached = bool(self._threads)
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
        kind = _FIELD_KINDS[change.kind]
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

    def _apply_health(self, raw: dict[bytes, bytes], router: Router) -> None:
        now, wall = self._clock(), self._wall()
        for value in raw.values():
            text = value.decode()
            payload = text.partition(" ")[2]
            self._apply_message(payload, router, now, wall, snapshot=True)

    def _apply_message(self, payload: str, router: Router, now: float, wall: float, *, snapshot: bool) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if data.get("o") == self.origin and not snapshot:
            return  # our own change, already applied
        if data.get("kind") == "health":
            change = _health_change(data)
            if data.get("o") != self.origin:
                router.health.apply(change, now, wall)
        elif data.get("kind") == "rollout" and not snapshot:
            route = data.get("route")
            for engine in self._engines:
                if engine.route == route:
                    try:
                        found = _state(self.redis.get(self.keys.rollout(route)))
                    except redis.RedisError as error:
                        self.failed(error)
                        return
                    if found is not None:
                        self.store.cache[route] = found
                        engine.follow(found)

    # ---- the listener thread ------------------------------------------------------------------------------------

    def _listen_loop(self) -> None:
        listener = self._client(None)
        while not self._stop.is_set():
            if not self.live:
                self._stop.wait(0.1)
                continue
            pubsub = listener.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.keys.channel)
                self._wake.set()  # a fresh subscription: re-read the snapshot for what was missed
                while not self._stop.is_set() and self.live:
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and self._router is not None:
                        self._apply_message(
                            message["data"].decode(), self._router, self._clock(), self._wall(), snapshot=False
                        )
            except (redis.RedisError, OSError) as error:
                self._failures = 3
                self.failed(error)
                self._stop.wait(0.1)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
        listener.close()
