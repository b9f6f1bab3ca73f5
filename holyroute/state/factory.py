"""Chooses the state backend a configuration asks for; the interface (:mod:`holyroute.state.base`) never does.

Importing this module registers :func:`open_backend` with the core (:func:`holyroute.core.ports.open_state`);
``import holyroute`` does so. Every backend is imported only when a configuration asks for it,
so registering costs ``import holyroute`` next to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from holyroute.core.ports import StateBackend, register_state_opener

if TYPE_CHECKING:
    from holyroute.config.schema import State
    from holyroute.rollout.engine import StateStore

__all__ = ["open_backend", "require_backend"]

EventSink = Callable[[str, dict[str, Any]], None]


def open_backend(
    state: State,
    *,
    emit: EventSink,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
    read_only: bool = False,
) -> StateBackend:
    """The backend ``state`` configures. Redis is imported only when it is configured.

    ``read_only`` (``holyroute explain``): the backend reads what is shared and writes nothing, anywhere; rollout
    steps the router would take stay in memory.
    """
    require_backend(state)
    if state.backend == "redis":
        from holyroute.state.redis.backend import RedisBackend

        return RedisBackend(state, emit=emit, clock=clock, wall_clock=wall_clock, read_only=read_only)
    from holyroute.rollout.engine import MemoryStore
    from holyroute.state.base import ReadOnlyStore
    from holyroute.state.memory import MemoryBackend

    store: StateStore
    if state.backend == "file":
        from holyroute.state.file import FileStore

        store = FileStore(state.path, emit=emit)
    else:
        store = MemoryStore()
    if read_only:
        store = ReadOnlyStore(store)
    return MemoryBackend(store, wall_clock=wall_clock)


def require_backend(state: State) -> None:
    """Raise :class:`~holyroute.exceptions.ConfigError` naming the extra to install when the backend ``state``
    configures needs a package that is not installed (``backend: redis`` without redis-py)."""
    if state.backend != "redis":
        return
    try:
        import redis  # noqa: F401 (only whether it imports)
    except ImportError:
        from holyroute.exceptions import ConfigError

        raise ConfigError(
            "invalid holyroute configuration: 1 problem\n  - state.backend: 'redis' needs redis-py, which is not "
            "installed: pip install 'holyroute[redis]' (or use backend: memory or file)"
        ) from None


register_state_opener(open_backend)
