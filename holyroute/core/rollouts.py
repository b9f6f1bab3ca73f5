"""The rollouts of a configuration, for people, scripts and the router: status, promote, abort, retry.

It opens the state backend through :func:`holyroute.core.ports.open_state` when no store is given, and otherwise
only gathers one :class:`~holyroute.rollout.engine.RolloutEngine` per route that has a rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from holyroute.config.schema import load_config
from holyroute.core.events import EventSink, structlog_sink
from holyroute.core.ports import StateBackend, open_state
from holyroute.rollout.engine import RolloutEngine, RolloutState, StateStore

__all__ = ["Rollouts"]


class Rollouts:
    """The rollouts of a configuration, for people and scripts: status, promote, abort, retry.

    >>> rollouts = Rollouts("holyroute.yaml")          # doctest: +SKIP
    >>> rollouts.promote("chat-default")                # doctest: +SKIP

    A running client has its own, following the same state store: ``transport.router.rollouts``. Changes made here
    reach every process reading the store within about a second.
    """

    def __init__(
        self,
        config: Any,
        *,
        emit: EventSink | None = None,
        clock: Callable[[], float] | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.config = load_config(config)
        if emit is None:
            emit = structlog_sink()
        self.backend: StateBackend | None = None  # opened here (not a running router's): closed by close()
        if store is None:
            self.backend = open_state(self.config.state, emit=emit, clock=time.monotonic, wall_clock=time.time)
            store = self.backend.rollout_store()
        self.store = store
        self._engines = {
            alias: RolloutEngine(alias, route.rollout, store, emit=emit, clock=clock or time.time)
            for alias, route in self.config.routes.items()
            if route.rollout is not None
        }

    def __contains__(self, alias: object) -> bool:
        return alias in self._engines

    def __iter__(self) -> Iterator[str]:
        return iter(self._engines)

    def __getitem__(self, alias: str) -> RolloutEngine:
        try:
            return self._engines[alias]
        except KeyError:
            known = ", ".join(sorted(self._engines)) or "(no route has a rollout)"
            raise KeyError(f"route {alias!r} has no rollout; rollouts: {known}") from None

    def get(self, alias: str) -> RolloutEngine | None:
        return self._engines.get(alias)

    def status(self) -> list[dict[str, Any]]:
        """Each rollout's state and its arms' measurements (every process's, with a shared backend)."""
        read = getattr(self.backend, "read_measurements", None)
        if read is not None:
            for engine in self._engines.values():
                read(engine)
        return [engine.status() for engine in self._engines.values()]

    def close(self) -> None:
        """Close the state backend this object opened (a running router's is closed with its client)."""
        if self.backend is not None:
            self.backend.close()

    def promote(self, alias: str, *, full: bool = False) -> RolloutState:
        return self[alias].promote(full=full)

    def abort(self, alias: str, reason: str = "aborted by hand") -> RolloutState:
        return self[alias].abort(reason)

    def retry(self, alias: str) -> RolloutState:
        return self[alias].retry()
