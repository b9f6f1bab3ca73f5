"""What the Redis backend tells the operator about problems it survives: an unusable entry, a refused write, a
failed background iteration. Each is reported once (per key and problem, or loop and exception type), never raised,
and never quotes the URL or a value."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["EventSink", "Reports"]

EventSink = Callable[[str, dict[str, Any]], None]


class Reports:
    """Emits each problem once; at most 1,000 distinct problems are remembered."""

    def __init__(self, emit: EventSink, where: str, lock: threading.Lock) -> None:
        self._emit = emit
        self._where = where
        self._lock = lock
        self._reported: set[tuple[str, ...]] = set()

    def invalid(self, key: str, problem: str) -> None:
        """A Redis entry or message could not be used: one ``holyroute.state_invalid`` per key and problem (the
        problem names fields, never values: a reason may quote an upstream)."""
        self.once(
            ("invalid", key, problem),
            "holyroute.state_invalid",
            {
                "backend": "redis",
                "redis": self._where,
                "key": key[:300],
                "problem": problem[:500],
                "reason": "skipped; keeping the last known good state",
            },
        )

    def refused(self, refused: Exception) -> None:
        """Redis refused one write of a pipeline (a reply error): that change is dropped."""
        self.once(
            ("refused", type(refused).__name__),
            "holyroute.state_write_failed",
            {
                "backend": "redis",
                "redis": self._where,
                "problem": f"Redis refused a write ({type(refused).__name__})",
                "reason": "that change is dropped, the rest went through",
            },
        )

    def once(self, seen: tuple[str, ...], event: str, fields: dict[str, Any]) -> None:
        with self._lock:
            if seen in self._reported:
                return
            if len(self._reported) < 1000:
                self._reported.add(seen)
        with contextlib.suppress(Exception):
            self._emit(event, fields)

    def background_error(self, loop: str, error: BaseException) -> None:
        """One iteration of a background loop failed: report it once per loop and exception type; the loop goes
        on. Only the type is named: a message may quote the URL or an entry."""
        kind = type(error).__name__
        self.once(
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

    def guarded(self, loop: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as error:
            self.background_error(loop, error)
