"""Rollout state in Redis: a read then a compare-and-set, so two processes never both advance a step."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from holyroute.rollout.engine import RolloutState, held_state, parse_stored_state
from holyroute.state.redis.connect import FAILURES, Client, unreachable
from holyroute.state.redis.payloads import Keys
from holyroute.state.redis.scripts import ROLLOUT

__all__ = ["RedisStore", "StoreBackend"]

EventSink = Callable[[str, dict[str, Any]], None]


class StoreBackend(Protocol):
    """What the rollout store uses of its backend (:class:`~holyroute.state.redis.backend.RedisBackend`)."""

    live: bool
    keys: Keys
    redis: Client

    def invalid(self, key: str, problem: str) -> None: ...

    def failed(self, error: BaseException) -> None: ...

    def message(self, kind: str, **fields: Any) -> str: ...


class RedisStore:
    """Rollout state in Redis. While its backend syncs, reads come from the backend's cache (no round trip);
    writes are a read then a compare-and-set (the ``ROLLOUT`` script, one key: fine on a cluster), so two processes
    never both advance a step."""

    def __init__(self, backend: StoreBackend) -> None:
        self._backend = backend
        self._write = backend.redis.register_script(ROLLOUT)
        self.cache: dict[str, RolloutState] = {}
        self.cached = False  # True once the backend's sync thread keeps `cache` fresh
        self._unsynced: dict[str, tuple[RolloutState, int]] = {}  # changed while Redis was away: (state, base)
        #: Routes whose stored state cannot be read, with the problem: the last good (``cache``) is kept, or with
        #: nothing known, :func:`~holyroute.rollout.engine.held_state`.
        self.invalid: dict[str, str] = {}

    def _known(self, route: str) -> RolloutState | None:
        found = self.cache.get(route)
        if found is None and route in self.invalid:
            return held_state(route, self.invalid[route])
        return found

    def parsed(self, route: str, raw: object) -> RolloutState | None:
        """A stored state read from Redis: valid, or the last good (reported once), or None when absent."""
        found = (
            parse_stored_state(route, raw)
            if isinstance(raw, bytes | str | None)
            else f"Redis answered {type(raw).__name__} (a key of another type?)"
        )
        if isinstance(found, str):
            self.invalid[route] = found
            self._backend.invalid(self._backend.keys.rollout(route), found)
            return self._known(route)
        self.invalid.pop(route, None)
        if found is not None:
            self.cache[route] = found
        return found

    def load(self, route: str) -> RolloutState | None:
        if self.cached or not self._backend.live:
            return self._known(route)
        try:
            raw: object = self._backend.redis.get(self._backend.keys.rollout(route))
        except FAILURES as error:
            if unreachable(error):
                self._backend.failed(error)
                return self._known(route)
            raw = error  # the key holds another type: a bad entry, Redis itself is fine
        return self.parsed(route, raw)

    def update(self, route: str, change: Callable[[RolloutState | None], RolloutState | None]) -> RolloutState | None:
        backend = self._backend
        key = backend.keys.rollout(route)
        if backend.live:
            try:
                for _ in range(16):  # bounded: another process would have to win 16 races in a row
                    try:
                        raw: object = backend.redis.get(key)
                    except FAILURES as error:
                        if unreachable(error):
                            raise
                        raw = error  # the key holds another type: the write below replaces it
                    current = self.parsed(route, raw)
                    if route in self.invalid and route not in self.cache:
                        return None  # unreadable, nothing known: never invent a state over it
                    new = change(current)
                    if new is None:
                        if current is not None:
                            self.cache[route] = current
                        return None
                    kind = "none" if raw is None else "string" if isinstance(raw, bytes | str) else "other"
                    seen = raw if isinstance(raw, bytes | str) else ""
                    message = backend.message("rollout", route=route)
                    written = self._write(
                        keys=[key], args=[kind, seen, json.dumps(asdict(new)), backend.keys.channel, message]
                    )
                    if written == 1:
                        self.cache[route] = new
                        return new
            except FAILURES as error:
                backend.failed(error)
        # Redis is away: the change holds here (an abort must take effect at once) and is pushed when it returns.
        current = self.cache.get(route)
        new = change(current)
        if new is not None:
            base = self._unsynced[route][1] if route in self._unsynced else (current.version if current else 0)
            self._unsynced[route] = (new, base)
            self.cache[route] = new
        return new

    def forget_unsynced(self) -> None:
        """A forked child's: the changes its parent made while Redis was away are the parent's to push."""
        self._unsynced = {}

    def push_unsynced(self) -> int:
        """After an outage: write what changed here, unless another process moved on meanwhile (then its state
        wins, except that an abort made here is applied on top of it). Returns how many routes were written."""
        written = 0
        for route, (mine, base) in list(self._unsynced.items()):

            def reconcile(found: RolloutState | None, mine: RolloutState = mine, base: int = base) -> RolloutState:
                if found is None or found.version <= base:
                    return mine
                # Another process moved on: the result gets a version above both, so every process adopts it.
                fields = asdict(found)
                if mine.status == "aborted" and found.status != "aborted":
                    fields.update(status="aborted", weight=0.0, reason=mine.reason)
                elif found.version > mine.version:
                    return found
                fields["version"] = max(found.version, mine.version) + 1
                return RolloutState(**fields)

            live_before = self._backend.live
            self._unsynced.pop(route)
            self.update(route, reconcile)
            if not self._backend.live and live_before:
                return written
            written += 1
        return written
