"""The walk over a call's endpoints and its waiting policy: the next endpoint to try, and how long to wait first.

Below the persistence floor (``retry.min_attempts``) a call never gives up while an endpoint could take it were health
ignored; only the caller's deadline stops it. Waits come from tenacity's schedule or from the server's own reset.
"""

from __future__ import annotations

from typing import Final

from holyroute.core.eligibility import Eligibility
from holyroute.core.plan import Upstream

__all__ = ["Waiting"]


#: The shortest wait for an rpm/tpm reset (a reset that is due now still needs the bucket to be asked again).
_MIN_LIMIT_WAIT_S: Final = 0.001


class _WaitState:
    """The slice of tenacity's ``RetryCallState`` its wait strategies read."""

    __slots__ = ("attempt_number", "outcome", "seconds_since_start")

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number
        self.outcome = None
        self.seconds_since_start = 0.0


class Waiting(Eligibility):
    __slots__ = ()

    def _bound(self) -> float | None:
        """The caller's deadline as it binds the next step. Within the persistence floor each attempt gets the
        caller's whole timeout and waits only the backoff, as the SDK's own attempts do (``None``: no bound on the
        call); beyond the floor, the timeout bounds the whole call."""
        if self._deadline is None or self._attempts < self._floor:
            return None
        return self._deadline

    def _past_deadline(self, now: float) -> bool:
        deadline = self._bound()
        if deadline is not None and now >= deadline:
            self._stop_reason = "deadline reached"
            return True
        return False

    def _next_available(self, now: float) -> Upstream | None:
        router = self._router
        while True:
            while self._cursor < len(self._sequence):
                leg, upstream = self._sequence[self._cursor]
                self._cursor += 1
                why = self._unavailable(leg, upstream, now)
                if why is None:
                    self._current_leg = leg
                    return upstream
                self._skipped[(upstream.endpoint, upstream.model)] = why
                if leg.fallback is None and why[1] is not None and not why[0].startswith("cooling"):
                    self._limited = True
            if self._fallbacks_added:
                return None
            # An arm out of rpm/tpm/headroom with `when_limited: wait` waits for it (if acceptable) before falling back.
            if self._limited and router.retry.when_limited == "wait":
                wait = self._wait_for_limits(now)
                if wait is not None:
                    self._limit_wait = wait
                    return None
            self._add_fallbacks()

    def _wait_for_limits(self, now: float) -> float | None:
        untils = [until for _, until in self._skipped.values() if until is not None]
        if not untils:
            return None
        wait = max(min(untils) - now, _MIN_LIMIT_WAIT_S)
        if self._limit_waited + wait > self._router.retry.max_wait_s:
            return None
        return wait if self._acceptable_wait(wait, now) else None

    def _acceptable_wait(self, wait: float, now: float) -> bool:
        deadline = self._bound()
        return wait <= self._router.retry.max_wait_s and (deadline is None or now + wait < deadline)

    def _wait_before_next_pass(self, now: float) -> float | None:
        """Seconds to wait before walking the endpoints again, or None to give up.

        Below the persistence floor (a call that has made fewer attempts than ``retry.min_attempts``, the SDK's
        own ``max_retries + 1``), a call never gives up while an endpoint could take it were health ignored: when
        nothing comes back within ``max_wait_s``, it walks again after the backoff (at once for its first attempt)
        with health ignored for that walk. Only the caller's deadline stops it: the router's bookkeeping alone never
        fails a call."""
        router = self._router
        # Bounded in passes too: a shared rpm/tpm limit may keep saying no to a forced walk.
        floor = self._attempts < self._floor and self._passes < 2 * router.retry.max_attempts
        over = self._passes + 1 >= router.retry.max_attempts  # without the floor, the call would give up now
        if over and not floor:
            return None
        backoff = router.backoff(_WaitState(self._passes + 1)) if self._attempts else 0.0
        wait = backoff
        pool = [(leg, u) for leg, u in self._sequence if u.endpoint not in self._excluded]
        states = [self._unavailable(leg, u, now) for leg, u in pool]
        if all(state is not None for state in states):
            # Nothing is usable now: wait for the first to come back, if anything says when.
            known = [state[1] for state in states if state is not None and state[1] is not None]
            if known and not over:
                wait = max(wait, min(known) - now)
                if self._acceptable_wait(wait, now):
                    return wait
            if not floor or all(self._unavailable(leg, u, now, force=True) is not None for leg, u in pool):
                return None
            # Nothing comes back within max_wait_s: the backoff, then a walk with health ignored.
            self._forced = True
        elif self._acceptable_wait(wait, now):
            return wait
        elif not floor:
            return None
        deadline = self._bound()
        return backoff if deadline is None or now + backoff < deadline else None
