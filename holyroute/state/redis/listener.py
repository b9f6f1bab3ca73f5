"""The listener thread: a ``SUBSCRIBE`` to ``<prefix>:events`` that applies every other process's health change to
the local book within milliseconds, and follows a rollout another process moved. Anything it misses, the sync
thread's next snapshot brings (a fresh subscription wakes it at once)."""

from __future__ import annotations

import contextlib
import threading
from typing import Protocol

from holyroute.rollout.engine import RolloutEngine
from holyroute.state.base import AttachedRouter
from holyroute.state.redis.connect import FAILURES, Client
from holyroute.state.redis.payloads import Horizons, Keys, parse_message
from holyroute.state.redis.reports import Reports
from holyroute.state.redis.store import RedisStore

__all__ = ["Listener", "ListenerOwner"]


class ListenerOwner(Protocol):
    """What the listener uses of its backend (:class:`~holyroute.state.redis.backend.RedisBackend`)."""

    live: bool
    failures: int
    origin: str
    redis: Client
    keys: Keys
    store: RedisStore
    reports: Reports
    router: AttachedRouter | None
    engines: list[RolloutEngine]
    horizons: Horizons
    wake: threading.Event
    stop: threading.Event

    def failed(self, error: BaseException) -> None: ...

    def client(self, timeout: float | None) -> Client: ...

    def clock(self) -> float: ...

    def wall(self) -> float: ...


class Listener:
    """Runs the subscription loop and applies each message."""

    def __init__(self, owner: ListenerOwner) -> None:
        self._owner = owner

    def loop(self) -> None:
        owner = self._owner
        listener: Client | None = None
        while not owner.stop.is_set():
            if not owner.live:
                owner.stop.wait(0.1)
                continue
            if listener is None:
                # A fresh client after every failure: a cluster's slot map or Sentinel's master may have moved.
                listener = owner.client(None)
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(owner.keys.channel)
                owner.wake.set()  # a fresh subscription: re-read the snapshot for what was missed
                while not owner.stop.is_set() and owner.live:
                    message = pubsub.get_message(timeout=0.5)
                    router = owner.router
                    if isinstance(message, dict) and router is not None:
                        try:
                            self.apply(message.get("data"), router, owner.clock(), owner.wall())
                        except Exception as error:  # one bad message never ends the loop
                            owner.reports.background_error("listen", error)
            except FAILURES as error:
                owner.failures = 3
                owner.failed(error)
                with contextlib.suppress(Exception):
                    listener.close()
                listener = None
                owner.stop.wait(0.1)
            except Exception as error:  # anything else: report once, subscribe afresh, go on
                owner.reports.background_error("listen", error)
                owner.stop.wait(0.1)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    def apply(self, payload: object, router: AttachedRouter, now: float, wall: float) -> None:
        owner = self._owner
        found = parse_message(payload, wall=wall, horizons=owner.horizons)
        if isinstance(found, str):
            owner.reports.invalid(owner.keys.channel, found)
            return
        if found.origin == owner.origin:
            return  # our own change, already applied
        if found.change is not None:
            router.health.apply(found.change, now, wall)
        elif found.kind == "rollout":
            for engine in owner.engines:
                if engine.route == found.route:
                    self._follow(engine, found.route)

    def _follow(self, engine: RolloutEngine, route: str) -> None:
        """Another process moved this rollout: read its state and follow it."""
        owner = self._owner
        try:
            raw = owner.redis.get(owner.keys.rollout(route))
        except FAILURES as error:
            owner.failed(error)
            return
        state = owner.store.parsed(route, raw)
        if state is not None and route not in owner.store.invalid:
            engine.follow(state)
