"""The sync thread: one pipeline per ``sync_interval_s`` sends what this process learnt (health changes, spend,
measurements, tpm owed, that it is alive) and reads the shared snapshots back (processes alive, health, spend,
rollout state and measurements). A failed flush loses nothing: all of it goes out with the next one."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis.exceptions

from holyroute.boundary.redis_url import RedisUrl
from holyroute.rollout.engine import Measurements, RolloutEngine, RolloutState
from holyroute.state.base import PERIODS, AttachedRouter, HealthChange, Period, period_key
from holyroute.state.redis.connect import FAILURES, Client, unreachable
from holyroute.state.redis.grants import Grants
from holyroute.state.redis.payloads import (
    FIELD_KINDS,
    Horizons,
    Keys,
    health_entry,
    measurement_fields,
    parse_measurements,
    parse_spend,
    text_of,
)
from holyroute.state.redis.reports import Reports
from holyroute.state.redis.scripts import DEBT, HEALTH, LIMITS_TTL_MS, ONCE, SETTLE
from holyroute.state.redis.store import RedisStore

__all__ = ["MEMBER_TTL_S", "Sync", "SyncOwner"]

#: Seconds the keys that are rewritten all the time live after their last write.
MEASUREMENTS_TTL_S = 7 * 86400
SPEND_TTL_S = {"hour": 2 * 86400, "day": 40 * 86400, "month": 400 * 86400}
HOLD_S = 10.0  # a spend batch is sent again if the master that took it is replaced within this (see SpendBatch)
RECOVER_EVERY_S = 0.1  # the longest wait between two tries to reach Redis again (a ping: cheap)
MEMBER_TTL_S = 10.0  # a process not heard of for this long no longer counts for the local share of a limit

SpendKey = tuple[Period, str, str]
SEQ_TTL_S = 2 * 86400  # a process's last spend sequence number is kept this long after its last spend


def once_call(keys: Keys, origin: str, batch: SpendBatch) -> tuple[list[str], list[str | int | float]]:
    """The ``ONCE`` script's keys and arguments for ``batch`` (every key in the ``{spend}`` slot)."""
    by_key: dict[str, list[tuple[str, float, int]]] = {}
    for (period, bucket, name), usd in batch.spend.items():
        by_key.setdefault(keys.spend(period, bucket), []).append((name, usd, SPEND_TTL_S[period]))
    args: list[str | int | float] = [origin, batch.seq, SEQ_TTL_S]
    for fields in by_key.values():
        args += [fields[0][2], len(fields)]
        for name, usd, _ttl in fields:
            args += ["f", name, repr(usd)]
    return [keys.spend_seq, *by_key], args


class SyncOwner(Protocol):
    """What the sync thread uses of its backend (:class:`~holyroute.state.redis.backend.RedisBackend`)."""

    read_only: bool
    live: bool
    failures: int
    origin: str
    interval: float
    redis: Client
    keys: Keys
    store: RedisStore
    grants: Grants
    reports: Reports
    router: AttachedRouter | None
    engines: list[RolloutEngine]
    horizons: Horizons
    threads: list[threading.Thread]
    wake: threading.Event
    stop: threading.Event

    def failed(self, error: BaseException) -> None: ...

    def recover(self) -> bool: ...

    def master(self) -> str: ...

    @property
    def deployment(self) -> RedisUrl: ...

    def message(self, kind: str, **fields: Any) -> str: ...

    def clock(self) -> float: ...

    def wall(self) -> float: ...


@dataclass(slots=True)
class SpendBatch:
    """Spend added here since the last flush, under its own sequence number. Sent until a master takes it (the
    ``ONCE`` script counts a number at most once, so sending it again after a failure whose first sending had landed
    adds nothing), then kept :data:`HOLD_S` in case a failover replaces that master (see :meth:`Sync._drop_held`)."""

    seq: int
    spend: dict[SpendKey, float]
    landed: str | None = None  # the master that took it (``Owner.master``), until that is known to hold
    landed_at: float = 0.0  # when (monotonic)


@dataclass(slots=True)
class _Pending:
    """What one flush sends: taken from the queues at its start, put back if Redis fails (spend batches stay queued
    until confirmed instead)."""

    outbox: list[HealthChange]
    batches: list[SpendBatch]
    owed: dict[str, tuple[int, int]]
    spared: dict[str, tuple[int, int]]  # endpoint -> (rpm, requests to charge to its bucket: Grants.spare)
    drained: list[tuple[RolloutEngine, int, dict[str, Measurements]]]


class Sync:
    """Queues what goes out, keeps what was read back, and runs the sync loop."""

    def __init__(self, owner: SyncOwner, lock: threading.Lock) -> None:
        self._owner = owner
        self._lock = lock
        self._health = owner.redis.register_script(HEALTH)
        self.settle_script = owner.redis.register_script(SETTLE)
        self.debt_script = owner.redis.register_script(DEBT)
        self._once = owner.redis.register_script(ONCE)
        self.outbox: list[HealthChange] = []
        self.spend_pending: dict[SpendKey, float] = {}
        self.spend_batches: list[SpendBatch] = []  # sent, not yet confirmed, in order
        self._seq = 0
        self._master: str | None = None  # the master the last flush wrote to
        self._scripted: list[tuple[int, Any, list[str], list[Any]]] = []  # this flush's scripts, by position
        self.spend_seen: dict[SpendKey, float] = {}
        self.members = 1

    def loop(self) -> None:
        owner = self._owner
        retry = 0.05
        while not owner.stop.is_set():
            try:
                if not owner.live:
                    if owner.recover():
                        retry = 0.05
                        continue
                    owner.stop.wait(retry)
                    retry = min(retry * 2, RECOVER_EVERY_S)
                    continue
                owner.wake.clear()  # before the flush: a change published during it wakes the next one at once
                self.flush()
            except Exception as error:  # one bad iteration never ends the loop
                owner.reports.background_error("sync", error)
            owner.wake.wait(owner.interval)

    def flush(self) -> bool:
        """Send what is pending and read the snapshots back, in one pipeline. False when Redis failed.

        A command Redis refuses (a reply error, not a connection error) is reported once and dropped, never sent
        again: a change Redis cannot take must not keep the backend degraded.
        """
        grants = self._owner.grants
        try:
            return self._flush_pipeline()
        finally:
            with grants.sent:
                grants.sending.clear()
                grants.sent.notify_all()

    def _flush_pipeline(self) -> bool:
        owner = self._owner
        try:
            master = owner.master()
        except FAILURES as error:
            owner.failures = 3
            owner.failed(error)
            return False
        if self._master is not None and master != self._master and owner.live:
            try:  # a new master: tell the shared rpm buckets what the old one granted here and never passed on
                owner.grants.reconcile(self.members)
            except FAILURES as error:
                owner.failures = 3
                owner.failed(error)
                return False
        self._master = master
        self._settle_batches(master)
        pending = self._take_pending()
        now = owner.wall()
        pipe = owner.redis.pipeline(transaction=False)
        batches = len(pending.batches)
        self._scripted = []
        self._write(pipe, pending, now)
        reads = len(pipe)
        windows = self._read(pipe, now)
        try:
            results = self._unloaded(pipe.execute(raise_on_error=False))
            down = next((r for r in results if isinstance(r, BaseException) and unreachable(r)), None)
            if down is not None:  # a cluster node holding some of the keys is away: the rest may have landed
                self._confirm(pending.batches, results[:batches], master)
                raise down
        except FAILURES as error:
            self._put_back(pending)  # nothing is lost: it all goes out with the next flush
            owner.failures = 3  # a failed flush is reason enough
            owner.failed(error)
            return False
        owner.failures = 0
        self._confirm(pending.batches, results[:batches], master)
        self._drop_held(master)
        for refused in results[batches:reads]:
            if isinstance(refused, Exception):
                owner.reports.refused(refused)
        self._apply(iter(results[reads:]), windows, now)
        owner.store.cached = bool(owner.threads) or owner.read_only
        return True

    def _queue(self, pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
        """Queue a script on the pipeline, noting where: a node that does not know it yet answers NOSCRIPT (a
        cluster pipeline cannot load it first), and the script is then run again on its own (see
        :meth:`_unloaded`)."""
        self._scripted.append((len(pipe), script, keys, args))
        script(keys=keys, args=args, client=pipe)

    def _unloaded(self, results: list[Any]) -> list[Any]:
        """The pipeline's results, each script a node did not know (it ran nothing) run again on its own: the
        client then loads it (on every master of a cluster) and runs it."""
        for position, script, keys, args in self._scripted:
            if isinstance(results[position], redis.exceptions.NoScriptError):
                try:
                    results[position] = script(keys=keys, args=args)
                except FAILURES as error:
                    results[position] = error
        return results

    def _take_pending(self) -> _Pending:
        """Everything queued, or nothing when read-only (a read-only backend only reads)."""
        owner, grants = self._owner, self._owner.grants
        writes = not owner.read_only
        with self._lock:
            outbox, self.outbox = (self.outbox, []) if writes else ([], self.outbox)
            if writes and self.spend_pending:
                self._seq += 1
                self.spend_batches.append(SpendBatch(self._seq, self.spend_pending))
                self.spend_pending = {}
            batches = [batch for batch in self.spend_batches if batch.landed is None] if writes else []
            owed, grants.owed = (grants.owed, {}) if writes else ({}, grants.owed)
            grants.sending.update(owed)
        spared = grants.take_spared() if writes else {}
        drained = [(engine, *engine.drain()) for engine in owner.engines] if writes else []
        return _Pending(outbox, batches, owed, spared, drained)

    def _settle_batches(self, master: str) -> None:
        """Before a flush: the batches another master took go out again, to ``master``."""
        with self._lock:
            for batch in self.spend_batches:
                if batch.landed is not None and batch.landed != master:
                    batch.landed = None

    def _drop_held(self, master: str) -> None:
        """After a flush ``master`` answered: forget the batches it took :data:`HOLD_S` ago or more (one server:
        at once). Had a failover replaced it before then, they would have gone out again to the new master, which
        counts only those its old master had not passed on (the ``ONCE`` script's sequence numbers came along): so
        a failover loses no spend taken in the last :data:`HOLD_S`, even what the old master took and never
        replicated, and Sentinel's old master dropping the writes it took after the promotion loses nothing."""
        now, single = self._owner.clock(), self._owner.deployment.kind == "single"
        with self._lock:
            self.spend_batches = [
                batch
                for batch in self.spend_batches
                if batch.landed != master or not (single or now - batch.landed_at >= HOLD_S)
            ]

    def _confirm(self, sent: list[SpendBatch], results: list[Any], master: str) -> None:
        """Note the batches ``master`` took (or refused: reported once, never sent again)."""
        now = self._owner.clock()
        for batch, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException) and unreachable(result):
                continue
            if isinstance(result, Exception):
                self._owner.reports.refused(result)
            with self._lock:
                if batch.landed != master:
                    batch.landed, batch.landed_at = master, now

    def unconfirmed(self, key: SpendKey) -> float:
        """Spend of ``key`` no master has taken yet (counted here, not in what was read back)."""
        with self._lock:
            return sum(batch.spend.get(key, 0.0) for batch in self.spend_batches if batch.landed is None)

    def _put_back(self, pending: _Pending) -> None:
        with self._lock:
            self.outbox[:0] = pending.outbox
        for endpoint, (tpm, tokens) in pending.owed.items():
            self._owner.grants.owe(endpoint, tpm, tokens)
        self._owner.grants.put_spared(pending.spared)
        for engine, window, measured in pending.drained:
            engine.undrain(window, measured)

    def _write(self, pipe: Any, pending: _Pending, now: float) -> None:
        owner, keys = self._owner, self._owner.keys
        for batch in pending.batches:  # first: their replies are the pipeline's first
            once_keys, once_args = once_call(keys, owner.origin, batch)
            self._queue(pipe, self._once, once_keys, once_args)
        for change in pending.outbox:
            try:
                self._health_command(pipe, change)
            except Exception as error:  # this change cannot be sent: drop it, never resend it, send the rest
                owner.reports.background_error("sync", error)
        for endpoint, (tpm, tokens) in pending.owed.items():
            self._queue(pipe, self.settle_script, [keys.limits(endpoint)], [tpm, tokens, LIMITS_TTL_MS])
        for endpoint, (rpm, requests) in pending.spared.items():
            self._queue(pipe, self.debt_script, [keys.limits(endpoint)], [rpm, requests, LIMITS_TTL_MS])
        for engine, window, measured_by_arm in pending.drained:
            for arm, measured in measured_by_arm.items():
                key = keys.measurements(engine.route, window, arm)
                for name, amount in measurement_fields(measured).items():
                    pipe.hincrby(key, name, int(amount))
                if measured.cost_usd:
                    pipe.hincrbyfloat(key, "cost", measured.cost_usd)
                pipe.expire(key, MEASUREMENTS_TTL_S)
        if not owner.read_only:
            pipe.zadd(keys.members, {owner.origin: now})
            pipe.zremrangebyscore(keys.members, "-inf", now - MEMBER_TTL_S)
            pipe.expire(keys.members, int(MEMBER_TTL_S * 6))

    def _read(self, pipe: Any, now: float) -> list[int]:
        """Queue the snapshot reads; the rollout window each engine's measurements are read for."""
        owner, keys = self._owner, self._owner.keys
        pipe.zcard(keys.members)
        pipe.hgetall(keys.health)
        for period in PERIODS:
            pipe.hgetall(keys.spend(period, period_key(period, now)))
        for engine in owner.engines:
            pipe.get(keys.rollout(engine.route))
        windows = []
        for engine in owner.engines:
            window = engine.state.window
            windows.append(window)
            for arm in (engine.stable_arm, engine.candidate_arm):
                pipe.hgetall(keys.measurements(engine.route, window, arm))
        return windows

    def _apply(self, answers: Iterator[Any], windows: list[int], now: float) -> None:
        """Take in the snapshots, in the order :meth:`_read` queued them."""
        members = next(answers)
        if isinstance(members, int) and not isinstance(members, bool):
            self.members = min(max(1, members), 1_000_000)
        health = next(answers)
        router = self._owner.router
        if router is not None:
            self.apply_health(health, router)
        for period in PERIODS:
            self._apply_spend(period, period_key(period, now), next(answers))
        self._apply_rollouts(answers, windows)

    def _apply_spend(self, period: Period, bucket: str, raw: object) -> None:
        key = self._owner.keys.spend(period, bucket)
        totals, skipped = parse_spend(raw)
        for problem in skipped[:3]:
            self._owner.reports.invalid(key, problem)
        seen = {(period, bucket, name): usd for name, usd in totals.items()}
        for old in [k for k in self.spend_seen if k[0] == period and k[1] != bucket]:
            del self.spend_seen[old]
        self.spend_seen.update(seen)

    def _apply_rollouts(self, answers: Iterator[Any], windows: list[int]) -> None:
        owner, keys = self._owner, self._owner.keys
        raw_states = [next(answers) for _ in owner.engines]
        lost: list[RolloutEngine] = []
        behind: list[RolloutEngine] = []
        for engine, window, raw in zip(owner.engines, windows, raw_states, strict=True):
            stable = self.read_measurements(keys.measurements(engine.route, window, engine.stable_arm), next(answers))
            candidate = self.read_measurements(
                keys.measurements(engine.route, window, engine.candidate_arm), next(answers)
            )
            engine.adopt_totals(window, {engine.stable_arm: stable, engine.candidate_arm: candidate})
            found = owner.store.parsed(engine.route, raw)
            if found is not None and engine.route not in owner.store.invalid:
                engine.follow(found)
                if found.version < engine.state.version:
                    behind.append(engine)
            elif found is None and engine.state.version > 0:
                lost.append(engine)  # missing (a Redis restarted empty): put back what this process follows
        if lost and not owner.read_only:
            self._restore_rollouts(lost)
        if behind and not owner.read_only:
            self._push_newer(behind)

    def _push_newer(self, engines: list[RolloutEngine]) -> None:
        """Redis holds an older state than this process follows: a write it took was lost (a master failed over
        before passing it on, or took it after it had been replaced). Write ours again, unless a newer one is there
        by then (read just before the write, compared-and-set)."""
        for engine in engines:

            def newer(found: RolloutState | None, mine: RolloutState = engine.state) -> RolloutState | None:
                return mine if found is None or found.version < mine.version else None

            self._owner.store.update(engine.route, newer)

    def _restore_rollouts(self, engines: list[RolloutEngine]) -> None:
        """A rollout's state key is missing (a Redis restarted empty, or a first start): put back what this process
        follows, unless another process got there first (``SET NX``), so no process starts the steps again."""
        pipe = self._owner.redis.pipeline(transaction=False)
        for engine in engines:
            pipe.set(self._owner.keys.rollout(engine.route), json.dumps(asdict(engine.state)), nx=True)
        with contextlib.suppress(*FAILURES):  # the next flush reads whatever is there, and tries again
            pipe.execute()

    def _health_command(self, pipe: Any, change: HealthChange) -> None:
        owner = self._owner
        # Clamped here, whatever made the change: an absurd deadline would make Redis refuse the EXPIREAT.
        change = owner.horizons.clamp(change, owner.wall())
        kind = FIELD_KINDS[change.kind]
        field = f"{kind}|{change.endpoint}|{change.model}" if kind in "ch" else f"{kind}|{change.endpoint}"
        message = owner.message(
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
        self._queue(
            pipe, self._health, [owner.keys.health], [field, value, change.until, mode, owner.keys.channel, message]
        )

    def apply_health(self, raw: object, router: AttachedRouter) -> None:
        if not isinstance(raw, dict):
            return  # a refused read: the next flush reads again
        owner = self._owner
        now, wall = owner.clock(), owner.wall()
        for field, value in raw.items():
            found = health_entry(value, wall=wall, horizons=owner.horizons)
            if isinstance(found, str):
                owner.reports.invalid(f"{owner.keys.health} {text_of(field) or '?'}", found)
            elif found.origin != owner.origin and found.change is not None:  # our own is applied already
                router.health.apply(found.change, now, wall)

    def read_measurements(self, key: str, raw: object) -> Measurements:
        measured, skipped = parse_measurements(raw if not isinstance(raw, Exception) else {})
        for problem in skipped[:3]:
            self._owner.reports.invalid(key, problem)
        return measured
