"""The Redis backend itself: the protocol the core calls, the threads' lifecycle, and degrading and recovering when
Redis goes away and comes back (see :mod:`holyroute.state.redis`). The grant round trip is in ``grants``, the sync
pipeline in ``sync``, the subscription in ``listener``, the problem reports in ``reports``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.cluster

from holyroute.boundary.redis_url import RedisUrl, parse_redis_url
from holyroute.rollout.engine import RolloutEngine, StateStore
from holyroute.state.base import PERIODS, AttachedRouter, HealthChange, Leases, Period, ReadOnlyStore, period_key
from holyroute.state.redis.connect import FAILURES, Client, open_client, unreachable
from holyroute.state.redis.grants import Grants
from holyroute.state.redis.listener import Listener
from holyroute.state.redis.payloads import MAX_USD, Horizons, Keys, parse_health_entry, text_of
from holyroute.state.redis.reports import EventSink, Reports
from holyroute.state.redis.store import RedisStore
from holyroute.state.redis.sync import MEMBER_TTL_S, Sync

if TYPE_CHECKING:
    from holyroute.config.schema import State

__all__ = ["RedisBackend"]


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
        found = parse_redis_url(self._url)
        if isinstance(found, str):  # the schema read it already: only a State built around its validator
            raise ValueError(f"state.url {found}")
        self.deployment: RedisUrl = found
        self.where = found.where
        self.keys = Keys(state.prefix)
        self.timeout = state.timeout_ms / 1000.0
        self.interval = state.sync_interval_s
        self._emit = emit
        self.clock = clock
        self.wall = wall_clock
        self.redis = self.client(self.timeout)
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = RedisStore(self)
        self.leases = Leases(clock, fraction=state.lease_fraction)
        self.live = True  # optimistic until the first failure: the hot path does not wait to find out
        self.failures = 0
        # One switch at a time between Redis and this process's own state (see "failure and recovery" below).
        self._recovering = False  # recover() is switching back; a failure meanwhile is kept in _lost
        self._lost: BaseException | None = None
        self._degrading: BaseException | None = None  # the failure whose switch to local state is under way
        self._down_since: float | None = None
        self._spared_down: dict[str, int] = {}  # endpoint -> requests Grants.spare gave out before degrading
        # Not holyroute.forking's new_lock: the before-fork hook below holds it across the fork, and the after-fork
        # hooks release it; re-created in the child first (holyroute.forking's hook runs before these), the release
        # would raise.
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.reports = Reports(emit, self.where, self._lock)
        self.grants = Grants(
            self.redis,
            url=found,
            timeout=self.timeout,
            keys=self.keys,
            leases=self.leases,
            reports=self.reports,
            link=self,
            lock=self._lock,
            clock=clock,
        )
        self.grants.origin = self.origin
        self.sync = Sync(self, self._lock)
        self.listener = Listener(self)
        self.router: AttachedRouter | None = None
        self.engines: list[RolloutEngine] = []
        self.threads: list[threading.Thread] = []
        self._pid = os.getpid()  # the process this backend's state is for (a forked child adopts it: _adopt)
        self._running_in = 0  # ... and the one its threads run in (0: not started)
        self.horizons = Horizons()  # the configured maxima, once attached to a router
        self._master_seen: str | None = None  # Sentinel's master, as last named

    def client(self, timeout: float | None) -> Client:
        """A client that never retries (a slow Redis is a down Redis on the request path); ``timeout`` None for
        the subscriber, which blocks."""
        connect = max(self.timeout, 0.05) if timeout is not None else 1.0
        return open_client(self.deployment, timeout=timeout, connect_timeout=connect)

    def master(self) -> str:
        """Where writes go now: Sentinel's master as the Sentinels say (a round trip to one per sync; a new one makes
        the client drop its idle connections to the old), the cluster node serving the spend slot as the client last
        learnt, or the one server. Raises what the Sentinels' client raises when none answers and none ever did."""
        pool = getattr(self.redis, "connection_pool", None)
        if self.deployment.kind == "sentinel" and pool is not None:
            try:
                host, port = pool.get_master_address()
            except FAILURES:
                if self._master_seen is None:
                    raise
                return self._master_seen  # the Sentinels are slow or away, not the master: go on with the last
            self._master_seen = f"{host}:{port}"
            return self._master_seen
        if self.deployment.kind == "cluster" and isinstance(self.redis, redis.cluster.RedisCluster):
            node = self.redis.get_node_from_key(self.keys.spend_seq)  # type: ignore[no-untyped-call]
            return str(node.name) if node is not None else "?"
        return self.where

    def scrub(self, text: str) -> str:
        """``text`` (an error message) with the URL and every credential in it replaced."""
        text = text.replace(self._url, self.where)
        for secret in self.deployment.secrets:
            text = text.replace(secret, "***")
        return text

    # ---- the protocol the core calls ----------------------------------------------------------------------------

    @property
    def shares_limits(self) -> bool:
        return self.live

    def attach(self, router: AttachedRouter) -> None:
        self.router = router
        self.horizons = Horizons.of(router.config.retry, router.config.health)
        if router.rollouts is not None:
            self.engines = [router.rollouts[alias] for alias in router.rollouts]
            for engine in self.engines:
                engine.shares_measurements = True
                engine.sync_interval = 0.0  # the store's cache is kept fresh by the sync thread
        if self.read_only:
            self.live = False  # no grants, no writes: the local buckets decide
            self.reports.guarded("attach", self.sync.flush)  # a snapshot of what is shared, no writes
            self.store.cached = True
            return
        router.health.share_limits(self.live, self.sync.members, self.clock())
        # One synchronous sync before the first call: a new process must not send to endpoints every other process
        # knows are cooling down or ejected (bounded by timeout_ms; a failure degrades as any other would). Bad
        # entries are skipped by the parsers; anything else is reported and the client is still built.
        self.reports.guarded("attach", self.sync.flush)
        self._start()

    def _start(self) -> None:
        # ``stop`` is left as it is: a child's close() between _forked's check and here ends these threads at once.
        self._pid = self._running_in = os.getpid()
        with _FORK_LOCK:
            _RUNNING.add(self)
        self.threads = [
            threading.Thread(target=self.sync.loop, name="holyroute-state-sync", daemon=True),
            threading.Thread(target=self.listener.loop, name="holyroute-state-listen", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _forked(self) -> None:
        """A forked child's first request (gunicorn --preload): the parent's threads did not come along; start our
        own, once (the child was adopted as it was forked, or is now: :meth:`_adopt`)."""
        pid = os.getpid()
        router = self.router
        with self._lock:  # two of the child's first calls at once: one adopts and starts, the other waits for it
            if self._running_in == pid or router is None or self.stop.is_set():
                return
            if self._pid != pid:  # forked without the fork hooks (a fork from C): adopted now
                self._adopt(pid)
            # Taken here, not in the fork (a lock a parent's thread held would hang the child there): neither lock
            # is ever held while asking for this one.
            self.leases.clear()
            router.health.forget_taken_local()
            self._running_in = pid
        for engine in self.engines:  # the measurements the parent had not sent: it sends them (its lock: outside)
            engine.drain()
        self._start()

    def _adopt(self, pid: int) -> None:
        """Make this copy of a parent's backend the child's own (under ``_lock``, no I/O, no thread, no other lock:
        it runs inside the fork): a new origin, none of the parent's grants, queues or rollout changes made while
        Redis was away (the parent sends them: sent from here too, spend would count twice and owed tokens be given
        back twice), and no switch left under way. Its leases, local takes and unsent measurements are dropped on
        the child's first request (:meth:`_forked`)."""
        self._pid = pid
        self.threads = []
        # New events with the same flags: the parent's sync thread takes wake's inner lock at every wait, and a copy
        # of it held there is held for good (read through the backend by every thread, so replacing them is enough).
        self.wake, self.stop = _renewed(self.wake), _renewed(self.stop)
        self.origin = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"
        grants = self.grants
        grants.origin, grants.granted, grants.owed, grants.spared = self.origin, {}, {}, {}
        grants.sending.clear()
        sync = self.sync
        sync.outbox, sync.spend_pending, sync.spend_batches = [], {}, []
        self.store.forget_unsynced()
        self._spared_down = {}
        # Forked while a parent's thread was switching: that thread is not here to end it. Switching back, the child
        # may be live without its limits handed back: down, so its sync thread recovers (once they were handed back
        # it is as consistent as a recovered one). Switching to local state, its limits may still be granted by
        # Redis: recover() ends that switch first (_end_stranded).
        if self._recovering and not self._limits_shared():
            self.live = False
        self._recovering, self._lost, self._degrading = False, None, None

    def _child_of_fork(self) -> None:
        """In a child, as it is forked: adopted at once, threads started on its first request (never inside the
        fork, where a child that never routes, a multiprocessing worker or a ``preexec_fn``, would join the fleet).
        Takes no lock but ``_lock``, which the forking thread held: any other may have been held by a parent's
        thread, and nothing in the child would release it."""
        with self._lock:
            self._adopt(os.getpid())
        router = self.router
        if router is not None:
            router.on_next_call(functools.partial(self.reports.guarded, "fork", self._forked))

    def close(self) -> None:
        if self.read_only:
            self.stop.set()
            self.redis.close()
            return
        if self.stop.is_set():
            return
        self.stop.set()
        with _FORK_LOCK:
            _RUNNING.discard(self)
        self.wake.set()
        if self.threads and self.live:
            # Wake our listener out of its blocking read at once (other processes ignore a "bye").
            with contextlib.suppress(*FAILURES):
                self.redis.publish(self.keys.channel, self.message("bye"))
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        if self.router is not None and self.live:
            self.sync.flush()  # what is pending goes out once more (bounded by the command timeout)
            with contextlib.suppress(*FAILURES):  # gone: no longer counted for the local share of limits
                self.redis.zrem(self.keys.members, self.origin)
                for endpoint in list(self.grants.granted):  # nor in the buckets' counts of what each was granted
                    self.redis.hdel(self.keys.limits(endpoint), f"g:{self.origin}")
        self.redis.close()

    async def aclose(self) -> None:
        import anyio.to_thread

        await self.grants.aclose()
        await anyio.to_thread.run_sync(self.close)

    def _lease_or_ask(
        self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int
    ) -> float | tuple[int, int] | None:
        """What acquire decides before any round trip: None (decide locally), 0.0 (a lease covers it), or what to
        ask the shared buckets for."""
        if self.read_only:
            return None
        if os.getpid() != self._running_in:
            self._forked()
        if not self.live:
            return None
        ask = self.leases.take(endpoint, rpm, tpm, tokens)
        return 0.0 if ask is None else ask

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        ask = self._lease_or_ask(endpoint, rpm, tpm, tokens)
        if not isinstance(ask, tuple):
            return ask
        return self._spare(endpoint, rpm, self.grants.ask(endpoint, rpm, tpm, tokens, ask))

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        ask = self._lease_or_ask(endpoint, rpm, tpm, tokens)
        while isinstance(ask, tuple):
            pending = self.grants.in_flight(endpoint)
            if pending is None:
                return self._spare(endpoint, rpm, await self.grants.aask_alone(endpoint, rpm, tpm, tokens, ask))
            # One grant request per endpoint and event loop: the one in flight asked for the demand seen until then
            # (a lease covers the next 100 ms of it), so wait for its answer and take from its lease. Otherwise 64
            # calls in flight send 64 requests when a lease runs out, over as many new connections.
            await asyncio.shield(pending)
            ask = self._lease_or_ask(endpoint, rpm, tpm, tokens)
        return ask

    def _spare(self, endpoint: str, rpm: int | None, found: float | None) -> float | None:
        """The grant path's answer; when it had none (Redis failed, or its reply was unreadable) and this process
        is not degraded yet, the answer from its share of what the shared bucket last held (:meth:`Grants.spare`):
        the local buckets, idle while shared, are full-size and would let it take a whole limit on its own."""
        if found is not None or not self.live:
            return found
        return self.grants.spare(endpoint, rpm, self.sync.members, self.clock())

    def publish(self, change: HealthChange) -> None:
        if self.read_only:
            return
        with self._lock:
            self.sync.outbox.append(change)
        self.wake.set()

    def settle(self, endpoint: str, tpm: int, tokens: int) -> None:
        if self.read_only:
            return
        owed = self.grants.owe(endpoint, tpm, tokens)
        if abs(owed) * 10 >= tpm > 0:  # a tenth of the limit or more: the other processes should have it now
            self.wake.set()

    def add_spend(self, name: str, usd: float) -> None:
        if self.read_only or not math.isfinite(usd) or usd <= 0:
            return
        usd = min(usd, MAX_USD)
        now = self.wall()
        with self._lock:
            pending = self.sync.spend_pending  # under the lock: the sync thread swaps it for a new one
            for period in PERIODS:
                key = (period, period_key(period, now), name)
                pending[key] = pending.get(key, 0.0) + usd

    def spent(self, name: str, period: Period) -> float:
        key = (period, period_key(period, self.wall()), name)
        return self.sync.spend_seen.get(key, 0.0) + self.sync.spend_pending.get(key, 0.0) + self.sync.unconfirmed(key)

    def rollout_store(self) -> StateStore:
        return ReadOnlyStore(self.store) if self.read_only else self.store

    def message(self, kind: str, **fields: Any) -> str:
        return json.dumps({"o": self.origin, "kind": kind, **fields}, separators=(",", ":"))

    def invalid(self, key: str, problem: str) -> None:
        """A Redis entry or message could not be used: reported once (see :class:`Reports`)."""
        self.reports.invalid(key, problem)

    # ---- reads for the CLI, which does not sync -----------------------------------------------------------------

    def read_measurements(self, engine: RolloutEngine) -> None:
        """Read every process's measurements for ``engine``'s current window (for the CLI, which does not sync)."""
        window = engine.state.window
        pipe = self.redis.pipeline(transaction=False)
        for arm in (engine.stable_arm, engine.candidate_arm):
            pipe.hgetall(self.keys.measurements(engine.route, window, arm))
        try:
            stable_raw, candidate_raw = pipe.execute(raise_on_error=False)
        except FAILURES as error:
            self.failed(error)
            return
        read = self.sync.read_measurements
        stable = read(self.keys.measurements(engine.route, window, engine.stable_arm), stable_raw)
        candidate = read(self.keys.measurements(engine.route, window, engine.candidate_arm), candidate_raw)
        engine.adopt_totals(window, {engine.stable_arm: stable, engine.candidate_arm: candidate})

    def snapshot(self) -> tuple[int, list[HealthChange]]:
        """Processes alive and the health entries in force, read now (``holyroute check``). Raises RedisError."""
        now = self.wall()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.keys.members, now - MEMBER_TTL_S, "+inf")
        pipe.hgetall(self.keys.health)
        alive, raw = pipe.execute()
        changes = []
        for field, value in raw.items():
            change = parse_health_entry(value, wall=now, horizons=self.horizons)
            if isinstance(change, str):
                self.invalid(f"{self.keys.health} {text_of(field) or '?'}", change)
            elif change.until > now:
                changes.append(change)
        return int(alive), sorted(changes, key=lambda c: (c.endpoint, c.model, c.kind))

    # ---- failure and recovery -----------------------------------------------------------------------------------

    def failed(self, error: BaseException) -> None:
        """A command failed. A refused connection means down at once; timeouts after three in a row."""
        self.failures += 1
        refused = unreachable(error) and not isinstance(error, redis.TimeoutError | TimeoutError)
        if not self.live or (self.failures < 3 and not refused):
            return
        with self._lock:
            if not self.live:
                return
            self.live = False
            if self._recovering:  # recover() decides, once its switch back is over: see there
                self._lost = error
                return
            self._down_since = self.clock()
            self._degrading = error
        self._degrade(error)

    def _limits_shared(self) -> bool:
        router = self.router
        return router is not None and router.health.limits_shared

    def _degrade(self, error: BaseException) -> None:
        """Onto this process's own state: each limit's share on local buckets, leases dropped, one event. Run by
        the one thread that marked the switch (``_degrading``, under ``_lock``: :meth:`failed`, :meth:`recover`,
        :meth:`_end_stranded`); the mark ends here, however the switch ends."""
        try:
            self._switch_to_local(error)
        finally:
            with self._lock:
                self._degrading = None

    def _switch_to_local(self, error: BaseException) -> None:
        router = self.router
        if router is not None:
            now = self.clock()
            levels = self.grants.spared_levels(self.grants.levels_at(now, router.health.limits), self.sync.members)
            router.health.share_limits(False, self.sync.members, now, levels)
        self.leases.clear()
        spared = self.grants.take_spared()  # given out on the share of the last level: charged on the way back
        with self._lock:
            for endpoint, (_rpm, requests) in spared.items():
                self._spared_down[endpoint] = self._spared_down.get(endpoint, 0) + requests
        reason = self.scrub(f"{type(error).__name__}: {error}")[:300]
        self._emit(
            "holyroute.state_degraded",
            {
                "backend": "redis",
                "redis": self.where,
                "processes": self.sync.members,
                "reason": f"{reason}; routing on this process's own state, each rpm/tpm limit / {self.sync.members}",
            },
        )
        self.wake.set()

    def recover(self) -> bool:
        """Redis answers again: push what was learnt here, re-read everything, then trust the store again.

        Only the sync thread calls it, while the backend is down. Each switch ends here whatever happens during
        it: a failure before the first flush back keeps the backend down (already said); a failure after it (a
        call's grant, the listener, a charge) comes after the limits were handed back, so they come back to the
        local buckets at once, with a second ``state_degraded`` after the ``state_restored``; a switch that ends
        any other way before the hand-back (an error, an interrupt) leaves the backend down, to try again."""
        self._end_stranded()
        try:
            self.redis.ping()
        except FAILURES:
            return False
        with self._lock:
            if self._degrading is not None:  # a switch to local state is under way: switching back would be undone
                return False
            self._recovering, self._lost = True, None
        back = False
        lost: BaseException | None = None
        try:
            back = self._resync()
        finally:
            with self._lock:
                self._recovering, lost, self._lost = False, self._lost, None
                if self.router is not None and not self._limits_shared():
                    self.live = back = False  # never handed back: still down (as said), whatever ended the switch
                    lost = None
                elif not self.live and lost is not None:
                    self._down_since = self.clock()
                    self._degrading = lost
                    back = False
                else:
                    lost = None
            if lost is not None:  # lost again after the hand-back (also when the switch then raised)
                self._degrade(lost)
        return back

    def _end_stranded(self) -> None:
        """Down with the limits still granted here: a switch to local state that did not end (interrupted, or
        under way in the parent this process was forked from). Ended now: idle local buckets would limit nothing."""
        with self._lock:
            if self.live or not self._limits_shared() or self._degrading is not None or self._recovering:
                return
            self._degrading = error = _Stranded("the switch to this process's own state was not finished")
        self._degrade(error)

    def _charge(self, router: AttachedRouter, taken: dict[str, tuple[int, int]], *, back: bool = False) -> None:
        """Charge the shared buckets with what ``taken`` says this process gave out on its own. ``back`` (from an
        outage): every rpm bucket it knows also holds, or claims from, what the other processes are presumed to have
        given out on their own meanwhile (:meth:`Grants.charge`), so that the first process back does not take again
        from the refilled bucket what the others still away have already given out."""
        endpoints = set(taken)
        if back:
            endpoints |= {endpoint for endpoint in self.grants.levels if router.health.limits(endpoint)[0]}
        now = self.clock()
        away_s = now - (self._down_since if self._down_since is not None else now)
        for endpoint in sorted(endpoints):
            requests, tokens = taken.get(endpoint, (0, 0))
            rpm, tpm = router.health.limits(endpoint)
            away = self.grants.presumed_away(now, rpm, endpoint, self.sync.members) if back and rpm else None
            try:
                self.grants.charge(endpoint, rpm, tpm, max(0, requests), max(0, tokens), away=away, away_s=away_s)
            except FAILURES as error:
                self.reports.background_error("sync", error)

    def _resync(self) -> bool:
        router = self.router
        pushed = 0
        if router is not None:
            changes = router.health.live_changes(self.clock(), self.wall())
            with self._lock:
                self.sync.outbox[:0] = changes
            pushed = len(changes)
        self.live = True  # tentatively: the pushes below must be allowed to run
        self.failures = 0
        rollouts = self.store.push_unsynced()
        if not self.live or not self.sync.flush():
            self.live = False
            return False
        if router is not None:
            # What this process gave out on its own meanwhile is charged to the shared buckets before they decide
            # again (else they would grant, refilled, what was already used); what it gives out while switching, after.
            charged = router.health.taken_local()
            with self._lock:
                spared, self._spared_down = self._spared_down, {}
            before = {e: (r + spared.get(e, 0), t) for e, (r, t) in charged.items()}
            before.update({e: (n, 0) for e, n in spared.items() if e not in charged})
            self._charge(router, before, back=True)
            try:  # and what a replaced master granted it and never passed on
                self.grants.reconcile(self.sync.members)
            except FAILURES as error:
                self.reports.background_error("sync", error)
            taken = router.health.share_limits(True, self.sync.members, self.clock())
            rest = {e: (r - charged.get(e, (0, 0))[0], t - charged.get(e, (0, 0))[1]) for e, (r, t) in taken.items()}
            self._charge(router, rest)
            self.wake.set()
        self.leases.clear()
        down = self.clock() - (self._down_since or self.clock())
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


class _Stranded(Exception):
    """Why a backend found down with its limits still granted by Redis switches them now (its event's reason)."""


# ---- fork: what a child inherits ---------------------------------------------------------------------------------
#
# A child has none of its parent's threads, and a copy of everything else. Each running backend's lock is held by
# the forking thread across the fork, so no thread of the parent holds it in the child (where nothing would release
# it). The child adopts its copy at once (a new origin, none of the parent's queues: _adopt) and starts its threads
# on its first request (Router.on_next_call): a child that never routes never joins the fleet.

#: The backends whose threads run in this process (changed and read under _FORK_LOCK).
_RUNNING: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _renewed(event: threading.Event) -> threading.Event:
    """A new event, set if ``event`` is."""
    fresh = threading.Event()
    if event.is_set():
        fresh.set()
    return fresh


#: One fork at a time through the hooks below: two threads forking at once would release each other's holds.
_FORK_LOCK = threading.Lock()
#: The backends whose locks the forking thread holds, between the hooks before and after a fork.
_HELD: list[RedisBackend] = []


def _before_fork() -> None:
    _FORK_LOCK.acquire()
    for backend in list(_RUNNING):
        backend._lock.acquire()
        _HELD.append(backend)


def _release_held() -> list[RedisBackend]:
    held = _HELD[:]
    _HELD.clear()
    for backend in held:
        backend._lock.release()
    _FORK_LOCK.release()
    return held


def _after_fork_in_parent() -> None:
    _release_held()


def _after_fork_in_child() -> None:
    for backend in _release_held():
        if backend.router is not None and not backend.stop.is_set():
            backend.reports.guarded("fork", backend._child_of_fork)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
