"""The file backend's rollout store (``backend: file``): one JSON file per host, read cheaply, written under flock.

:class:`FileStore` keeps the last good state when the file is unreadable or corrupt and says so once per problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from holyroute.forking import new_rlock
from holyroute.rollout.engine import RolloutState, held_state, parse_state_file

__all__ = ["FileStore"]

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class _FileView:
    """One read of the state file: its decoded object, the valid states, the invalid entries, a whole-file problem."""

    raw: dict[str, Any]
    states: dict[str, RolloutState]
    problems: dict[str, str]
    problem: str | None


_ABSENT = _FileView({}, {}, {}, None)


class FileStore:
    """State in a JSON file shared by every process on the host: reads are cheap, writes hold an flock.

    Fail safe: the file is read with :func:`parse_state_file`. A file or an entry that cannot be read (truncated,
    wrong types, unreadable) never makes a call raise: the last state known good here is kept (so an aborted
    rollout stays aborted), or, with nothing known, :func:`held_state` (the stable arm takes all traffic), and one
    ``holyroute.state_invalid`` event names the path and the problem. A file that cannot be read is never written
    over. A write that fails (disk full, permissions) keeps the change in this process, emits
    ``holyroute.state_write_failed`` and is tried again at the next read. Writes go to a symlink's target, through a
    temporary file in the target's directory and ``os.replace``, so readers see the old file or the new one.
    """

    def __init__(self, path: str | os.PathLike[str], *, emit: EventSink | None = None) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._emit = emit
        self._cache: tuple[tuple[int, int, int], _FileView] | None = None
        self._good: dict[str, RolloutState] = {}  # the last state known good per route (read, or written here)
        self._unwritten: dict[str, tuple[RolloutState, int]] = {}  # changed here, not on disk yet: (state, base)
        self._reported: set[tuple[str, str]] = set()
        self._mutex = new_rlock()

    # ---- reading ---------------------------------------------------------------------------------------------

    def _read(self) -> _FileView:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._cache = None
            return _ABSENT
        except OSError as error:
            return self._invalid(f"cannot read it: {error.strerror or type(error).__name__}")
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return _ABSENT
        except OSError as error:
            return self._invalid(f"cannot read it: {error.strerror or type(error).__name__}")
        states, problems, problem = parse_state_file(data)
        raw: dict[str, Any] = {}
        if problem is None:
            with contextlib.suppress(ValueError, RecursionError):
                decoded = json.loads(data)
                raw = decoded if isinstance(decoded, dict) else {}
        view = _FileView(raw, states, problems, problem)
        self._cache = (stamp, view)
        if problem is not None:
            self._report("holyroute.state_invalid", problem)
        for route, found in problems.items():
            self._report("holyroute.state_invalid", f"route {route!r}: {found}"[:500])
        if problem is None and not problems:
            self._reported = {seen for seen in self._reported if seen[0] != "holyroute.state_invalid"}
        for route, state in states.items():
            if route not in self._unwritten:
                self._good[route] = state
        return view

    def _invalid(self, problem: str) -> _FileView:
        self._report("holyroute.state_invalid", problem)
        return _FileView({}, {}, {}, problem)

    def _report(self, event: str, problem: str) -> None:
        """One event per distinct problem (not per call); the path, never the file's content."""
        if (event, problem) in self._reported or self._emit is None:
            return
        if len(self._reported) < 1000:
            self._reported.add((event, problem))
        if event == "holyroute.state_invalid":
            reason = "keeping the last known good rollout state (none known: the stable arm takes all traffic)"
        else:
            reason = "the change holds in this process and is written again at the next read"
        with contextlib.suppress(Exception):
            self._emit(event, {"backend": "file", "path": str(self.path), "problem": problem, "reason": reason})

    def _merged(self, view: _FileView) -> dict[str, RolloutState]:
        """What this process takes as each route's state: the file's valid entries, the last good for entries it
        cannot read, and the changes not written yet (unless another process moved on meanwhile: then its state
        wins, except that an abort made here is applied on top of it)."""
        merged = dict(view.states)
        unreadable = set(self._good) if view.problem is not None else set(view.problems)
        for route in unreadable:
            known = self._good.get(route)
            if known is not None:
                merged[route] = known
        for route, (mine, base) in list(self._unwritten.items()):
            found = view.states.get(route)
            if found is None or found.version <= base:
                merged[route] = mine
                continue
            # Another process moved on meanwhile. What this process ends up with is written with a version above
            # both, so that every process (this one included, which already holds ``mine``) adopts it.
            fields = asdict(found)
            if mine.status == "aborted" and found.status != "aborted":
                fields.update(status="aborted", weight=0.0, reason=mine.reason)
            elif found.version > mine.version:
                del self._unwritten[route]
                merged[route] = self._good[route] = found
                continue
            fields["version"] = max(found.version, mine.version) + 1
            merged[route] = self._good[route] = RolloutState(**fields)
            self._unwritten[route] = (merged[route], found.version)
        return merged

    def load(self, route: str) -> RolloutState | None:
        with self._mutex:
            if self._unwritten:
                self._retry_writes()
            view = self._read()
            found = self._merged(view).get(route)
            if found is None and (view.problem is not None or route in view.problems):
                return held_state(route, view.problem or view.problems[route])
            return found

    # ---- writing ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):  # closing the handle releases it anyway
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def update(self, route: str, change: Callable[[RolloutState | None], RolloutState | None]) -> RolloutState | None:
        with self._mutex, contextlib.ExitStack() as held:
            try:
                held.enter_context(self._locked())
            except OSError as error:  # cannot lock (a read-only directory): the change holds here, written later
                self._report("holyroute.state_write_failed", f"cannot lock {self._lock_path}: {_why(error)}")
                return self._update(route, change, locked=False)
            return self._update(route, change, locked=True)

    def _update(
        self, route: str, change: Callable[[RolloutState | None], RolloutState | None], *, locked: bool
    ) -> RolloutState | None:
        self._cache = None  # under the lock: read what the last writer wrote
        view = self._read()
        merged = self._merged(view)
        current = merged.get(route)
        if current is None and (view.problem is not None or route in view.problems):
            return None  # nothing known and nothing readable: never invent a state over one that cannot be read
        new = change(current)
        if new is None:
            return None
        pending = self._unwritten.get(route)
        base = pending[1] if pending is not None else (current.version if current is not None else 0)
        self._unwritten[route] = (new, base)
        self._good[route] = merged[route] = new
        if locked and view.problem is None:
            self._write(view, merged)
        elif view.problem is not None:
            problem = f"not written over a file that cannot be read ({view.problem})"
            self._report("holyroute.state_write_failed", problem)
        return new

    def _retry_writes(self) -> None:
        try:
            with self._locked():
                self._cache = None
                view = self._read()
                if view.problem is None:
                    self._write(view, self._merged(view))
        except OSError as error:
            self._report("holyroute.state_write_failed", f"cannot lock {self._lock_path}: {_why(error)}")

    def _write(self, view: _FileView, merged: dict[str, RolloutState]) -> None:
        """Write the changes made here (and the last good of entries that could not be read) over the file."""
        data = dict(view.raw)
        for route in (*self._unwritten, *view.problems):
            if route in merged:
                data[route] = asdict(merged[route])
        target = Path(os.path.realpath(self.path))  # a symlink stays a symlink: its target is replaced
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = 0o644
        temporary: str | None = None
        try:
            descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(data, indent=2, sort_keys=True))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, target)  # atomic: readers see the old file or the new one
            temporary = None
        except (OSError, ValueError, RecursionError) as error:
            why = _why(error) if isinstance(error, OSError) else type(error).__name__
            self._report("holyroute.state_write_failed", f"cannot write {target}: {why}")
            return
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        self._cache = None
        self._unwritten.clear()
        self._reported = {seen for seen in self._reported if seen[0] != "holyroute.state_write_failed"}


def _why(error: OSError) -> str:
    return error.strerror or type(error).__name__
