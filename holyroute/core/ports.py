"""What the core needs from the layers that plug into it: the state backend interface and its value types.

The core states here what it asks of a state backend (:class:`StateBackend`) and what a backend may read of the
router it serves (:class:`AttachedRouter`); the backends in :mod:`holyroute.state` implement them and never import
the router. The backend for a configuration is chosen by the opener :mod:`holyroute.state.factory` registers with
:func:`register_state_opener` (importing ``holyroute`` registers it), so the core never imports a backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from holyroute.config.schema import Config, State
    from holyroute.rollout.engine import RolloutEngine, StateStore

__all__ = [
    "PERIODS",
    "AttachedRouter",
    "HealthChange",
    "Period",
    "SharedHealth",
    "StateBackend",
    "StateOpener",
    "open_state",
    "period_key",
    "register_state_opener",
]

Period = Literal["hour", "day", "month"]
PERIODS: tuple[Period, ...] = ("hour", "day", "month")
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A change to an endpoint's health made by this process, for other processes to apply.

    ``until`` is wall-clock (Unix) time, so processes with different monotonic clocks agree on it. ``model`` is set
    for cooldowns and headroom (they are per endpoint and model) and empty otherwise.
    """

    kind: Literal["cooldown", "ejected", "restored", "quota", "headroom"]
    endpoint: str
    model: str = ""
    until: float = 0.0
    reason: str = ""
    tokens_left: int | None = None  # headroom: x-ratelimit-remaining-tokens, as last seen


def period_key(period: Period, wall: float) -> str:
    """The bucket a spend at Unix time ``wall`` falls in: ``2026112214`` (hour), ``20261122`` (day), ``202611``."""
    stamp = time.gmtime(wall)
    if period == "hour":
        return time.strftime("%Y%m%d%H", stamp)
    if period == "day":
        return time.strftime("%Y%m%d", stamp)
    return time.strftime("%Y%m", stamp)


class RolloutIndex(Protocol):
    """The rollouts a router runs, by route alias (:class:`holyroute.core.rollouts.Rollouts`)."""

    def __iter__(self) -> Iterator[str]: ...

    def __getitem__(self, alias: str) -> RolloutEngine: ...


class SharedHealth(Protocol):
    """What a backend may do to the router's health book (:class:`holyroute.core.health.HealthBook`)."""

    def apply(self, change: HealthChange, now: float, wall: float) -> None: ...

    def live_changes(self, now: float, wall: float) -> list[HealthChange]: ...

    def limits(self, endpoint: str) -> tuple[int | None, int | None]: ...

    def taken_local(self) -> dict[str, tuple[int, int]]: ...

    def forget_taken_local(self) -> None: ...

    @property
    def limits_shared(self) -> bool: ...

    def share_limits(
        self, shared: bool, processes: int, now: float, levels: Mapping[str, tuple[float | None, float | None]] = ...
    ) -> dict[str, tuple[int, int]]: ...


class AttachedRouter(Protocol):
    """What a state backend may read of the router it serves: its configuration, health book and rollouts."""

    @property
    def config(self) -> Config: ...

    @property
    def health(self) -> SharedHealth: ...

    @property
    def rollouts(self) -> RolloutIndex | None: ...

    def on_next_call(self, work: Callable[[], None]) -> None:
        """Run idempotent ``work`` at the start of the router's next request (see :meth:`Router.on_next_call`)."""


class StateBackend(Protocol):
    """What the core asks of a state backend. Every method returns quickly and never raises for its store's sake."""

    name: str

    @property
    def shares_limits(self) -> bool:
        """True while rpm/tpm grants come from :meth:`acquire` (shared); False: the local buckets decide."""
        ...

    def attach(self, router: AttachedRouter) -> None:
        """Start following and sharing for ``router`` (background work, if any, starts here)."""

    def close(self) -> None:
        """Stop background work and flush what is pending (bounded in time)."""

    async def aclose(self) -> None:
        """:meth:`close` from an event loop (also closes what the loop's :meth:`aacquire` opened)."""

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        """Take one request and ``tokens`` tokens from the endpoint's shared limits: 0.0 granted, > 0 the seconds
        until there is room (nothing taken), None when the store could not answer (decide locally)."""
        ...

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        """:meth:`acquire` for the event loop."""
        ...

    def publish(self, change: HealthChange) -> None:
        """Tell the other processes about a health change made here (non-blocking)."""

    def settle(self, endpoint: str, tpm: int, tokens: int) -> None:
        """A finished call's shared ``tpm`` grant, settled with what it used: give ``tokens`` back to the endpoint's
        shared bucket (negative: take that many more), which never leaves ``[-tpm, tpm]``. Non-blocking: no round
        trip on the request path."""

    def add_spend(self, name: str, usd: float) -> None:
        """Count ``usd`` against ``name`` (``route:chat``, ``shadow:chat``, ...) in this hour, day and month."""

    def spent(self, name: str, period: Period) -> float:
        """USD counted against ``name`` in the current ``period``, by every process that shares this backend."""
        ...

    def rollout_store(self) -> StateStore:
        """Where rollout state lives."""
        ...


class StateOpener(Protocol):
    """Builds the backend a ``state:`` configuration asks for (:func:`holyroute.state.factory.open_backend`)."""

    def __call__(
        self,
        state: State,
        *,
        emit: EventSink,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        read_only: bool = False,
    ) -> StateBackend: ...


_openers: list[StateOpener] = []


def register_state_opener(opener: StateOpener) -> None:
    """Make ``opener`` the one :func:`open_state` calls (the last registered wins)."""
    _openers.append(opener)


def open_state(
    state: State,
    *,
    emit: EventSink,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
    read_only: bool = False,
) -> StateBackend:
    """The backend ``state`` configures, built by the registered opener."""
    if not _openers:  # importing holyroute registers holyroute.state.factory: only a partial import gets here
        raise RuntimeError("no state backend factory registered: import holyroute (or holyroute.state.factory)")
    return _openers[-1](state, emit=emit, clock=clock, wall_clock=wall_clock, read_only=read_only)
