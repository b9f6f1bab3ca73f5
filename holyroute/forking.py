"""What a forked child must not inherit from the threads of its parent.

A child of ``os.fork()`` (gunicorn ``--preload``, ``multiprocessing``'s fork start method) runs one thread, the one
that forked; it gets a copy of everything else as it was at that instant. A lock another thread of the parent held is
held for good in the child, so the child's first call that takes it waits forever. An attempt another thread had in
flight never ends there, and no background thread runs there.

Everything that begins with the router answers for it here, once:

- :func:`new_lock` / :func:`new_rlock` are ``threading.Lock()`` / ``threading.RLock()``, remembered (weakly) so that
  the child re-creates each in place, unlocked, as :mod:`logging` and :mod:`threading` do for their own. They are the
  plain C locks: nothing is added to taking or releasing them. An RLock the forking thread itself holds is left as
  it is, since that thread releases it in the child; a plain lock cannot say who holds it, so no code of holyroute
  calls out (to an event sink, say) while holding one.
- :func:`after_fork_in_child` registers what an owner must do to the copy it finds in the child (forget the
  parent's attempts in flight, start its threads again on the next request); it runs once the locks are new.

The work in the child runs inside ``os.fork()``: it must not start a thread, do I/O or take a lock another thread
could hold. What needs a thread is done on the child's next request instead (``Router.on_next_call``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["after_fork_in_child", "new_lock", "new_rlock"]

_Owner = TypeVar("_Owner")

#: Every lock made by new_lock / new_rlock that still exists.
_LOCKS: weakref.WeakSet[Any] = weakref.WeakSet()
#: Owner -> what it does to its copy in a forked child (called with the owner: it holds no reference to it).
_IN_CHILD: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def new_lock() -> threading.Lock:
    """A ``threading.Lock()`` that a forked child finds unlocked."""
    lock = threading.Lock()
    _LOCKS.add(lock)
    return lock


def new_rlock() -> threading.RLock:
    """A ``threading.RLock()`` that a forked child finds unlocked and owned by no thread."""
    lock = threading.RLock()
    _LOCKS.add(lock)
    return lock


def after_fork_in_child(owner: _Owner, work: Callable[[_Owner], None]) -> None:
    """Run ``work(owner)`` in every child forked while ``owner`` exists, after the locks are new. ``work`` is kept
    apart from ``owner`` (pass a function of it, not a bound method, which would keep it alive). It must be quick,
    start no thread and do no I/O; one that raises is dropped (the child goes on with what it inherited)."""
    _IN_CHILD[owner] = work


def _in_child() -> None:
    for lock in list(_LOCKS):
        owned = getattr(lock, "_is_owned", None)  # an RLock's: held by this thread, the one that forked
        if owned is not None and owned():
            continue  # it goes on to release it itself (a fork from code that holds one: a sink, a signal handler)
        reinit = getattr(lock, "_at_fork_reinit", None)  # what logging and threading call on theirs
        if reinit is not None:
            reinit()
    for owner, work in list(_IN_CHILD.items()):
        with contextlib.suppress(Exception):  # nothing may escape a fork hook: the child keeps what it inherited
            work(owner)


os.register_at_fork(after_in_child=_in_child)
