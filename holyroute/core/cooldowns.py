"""What an upstream said about its limits, per endpoint and model: a cooldown after a 429, and the headroom its
``x-ratelimit-*`` headers report.

Both are keyed by (endpoint, upstream model), because providers rate-limit per model: a 429 for ``gpt-4.1`` says
nothing about ``gpt-4.1-mini`` on the same key. Durations come from the answer's own headers, in the order a server
means them: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), then OpenAI's ``x-ratelimit-reset-requests``
/ ``-tokens`` for the limit that ran out; the boundary's total parsers read them (``boundary/parse.py``), so every
duration is within ``[0, max_cooldown_s]``. Time is read only from the ``now`` each method is given; no I/O, no sleep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from holyroute.boundary.parse import MAX_TOKENS, HeaderLookup, header_count, header_seconds, header_text
from holyroute.config.schema import Retry
from holyroute.core.ports import HealthChange
from holyroute.forking import new_lock

__all__ = ["DEFAULT_MAX_COOLDOWN_S", "Cooldown", "Cooldowns", "server_delay"]

#: The cap on a server-given duration when none is configured: ``retry.max_cooldown_s``'s default.
DEFAULT_MAX_COOLDOWN_S: Final[float] = Retry().max_cooldown_s


def server_delay(
    headers: HeaderLookup, now_wall: float, max_s: float = DEFAULT_MAX_COOLDOWN_S
) -> tuple[float, str] | None:
    """How long the server asked us to stay away (seconds within ``[0, max_s]``) and which header said so; ``None``
    when no header says so in a form the boundary reads. Never raises."""
    value = headers.get("retry-after-ms")
    seconds = header_seconds(value, max_s=max_s, scale=0.001)
    if value is not None and seconds is not None:
        return seconds, f"retry-after-ms {header_text(value)}"
    value = headers.get("retry-after")
    seconds = header_seconds(value, max_s=max_s, now_wall=now_wall)
    if value is not None and seconds is not None:
        numeric = header_seconds(value, max_s=max_s) is not None
        return seconds, f"retry-after {header_text(value)}" + ("s" if numeric and value.strip()[-1:].isdigit() else "")
    resets = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if reset is None:
            continue
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        seconds = header_seconds(reset, max_s=max_s, now_wall=now_wall)
        # Only the limit that ran out explains the 429; when remaining is absent we cannot tell, so count it.
        if seconds is not None and (remaining is None or header_count(remaining) == 0):
            resets.append((seconds, f"x-ratelimit-reset-{kind} {header_text(reset)}"))
    if resets:
        return max(resets)
    return None


@dataclass(frozen=True, slots=True)
class Cooldown:
    """An endpoint/model pair that takes no traffic until ``until`` (monotonic seconds)."""

    endpoint: str
    model: str
    until: float
    reason: str


@dataclass(slots=True)
class _Headroom:
    """What an endpoint's rate-limit headers last said for one model."""

    requests_until: float = 0.0
    tokens_left: int | None = None
    tokens_until: float = 0.0  # when the token count resets


class Cooldowns:
    """Cooldowns and rate-limit headroom per (endpoint, model), against the ``now`` passed in. Thread-safe.

    ``max_cooldown_s`` (``retry.max_cooldown_s``) is the longest any server-given duration keeps a pair out, whoever
    asks: this process's answers or another process's (:meth:`cool`, :meth:`apply_headroom`).
    """

    __slots__ = ("_cooldowns", "_headroom", "_lock", "max_cooldown_s")

    def __init__(self, max_cooldown_s: float = DEFAULT_MAX_COOLDOWN_S) -> None:
        self.max_cooldown_s = max_cooldown_s
        self._cooldowns: dict[tuple[str, str], Cooldown] = {}
        self._headroom: dict[tuple[str, str], _Headroom] = {}
        self._lock = new_lock()

    def blocked(self, endpoint: str, model: str, now: float, tokens: int) -> tuple[str, float] | None:
        """Why the upstream would refuse the pair a request of ``tokens`` estimated tokens now, and until when: a
        cooldown, no requests left, or fewer tokens left than the estimate; or None."""
        cooldown = self.cooldown(endpoint, model, now) if self._cooldowns else None
        if cooldown is not None:
            return f"cooling down ({cooldown.reason})", cooldown.until
        room = self._headroom.get((endpoint, model)) if self._headroom else None
        if room is not None:
            if room.requests_until > now:
                return "x-ratelimit-remaining-requests 0", room.requests_until
            if room.tokens_left is not None and tokens > room.tokens_left and room.tokens_until > now:
                return f"x-ratelimit-remaining-tokens {room.tokens_left} < estimate {tokens}", room.tokens_until
        return None

    # ---- cooldowns (429s) ---------------------------------------------------------------------------------------

    def cooldown(self, endpoint: str, model: str, now: float) -> Cooldown | None:
        """The cooldown in force for this pair at ``now``, if any."""
        found = self._cooldowns.get((endpoint, model))
        if found is None:
            return None
        if found.until <= now:
            with self._lock:
                if self._cooldowns.get((endpoint, model)) is found:
                    del self._cooldowns[(endpoint, model)]
            return None
        return found

    def cool(self, endpoint: str, model: str, seconds: float, reason: str, now: float) -> Cooldown | None:
        """Keep the pair out of rotation for ``seconds`` (at most ``max_cooldown_s``, whoever asks); returns the new
        cooldown, or None if one as long exists (or ``seconds`` is no duration: nan, negative)."""
        if not seconds >= 0:
            return None
        until = now + min(seconds, self.max_cooldown_s)
        with self._lock:
            current = self._cooldowns.get((endpoint, model))
            if current is not None and current.until >= until:
                return None
            cooldown = Cooldown(endpoint, model, until, reason)
            self._cooldowns[(endpoint, model)] = cooldown
            return cooldown

    # ---- headroom (x-ratelimit-*) -------------------------------------------------------------------------------

    def record_headroom(self, endpoint: str, model: str, headers: HeaderLookup, now: float) -> bool:
        """Remember OpenAI's ``x-ratelimit-remaining-*`` / ``-reset-*`` for this endpoint and model. True when a
        limit is (nearly) used up: the moment other processes should hear of it (:meth:`headroom_change`). Counts
        and durations come from the boundary's parsers: a reset never reaches past ``max_cooldown_s``."""
        said = headers.get("x-ratelimit-remaining-requests")
        requests = header_count(said) if said is not None else None  # most answers carry none: no parse asked
        tokens = headers.get("x-ratelimit-remaining-tokens")
        if requests is None and tokens is None:  # nothing to keep (also: a remaining-requests that is no number)
            return False
        max_s = self.max_cooldown_s
        room = self._headroom.get((endpoint, model))
        if room is None:
            room = self._headroom.setdefault((endpoint, model), _Headroom())
        low = False
        if requests == 0:
            reset = header_seconds(headers.get("x-ratelimit-reset-requests"), max_s=max_s)
            room.requests_until = now + (reset if reset is not None else min(1.0, max_s))
            low = True
        if tokens is not None:
            room.tokens_left = header_count(tokens)
            room.tokens_until = now + (header_seconds(headers.get("x-ratelimit-reset-tokens"), max_s=max_s) or 0.0)
            limit = header_count(headers.get("x-ratelimit-limit-tokens"))
            if room.tokens_left is not None and limit is not None:
                low = low or room.tokens_left * 10 <= limit  # 10% or less left
        return low

    def headroom_change(self, endpoint: str, model: str, now: float, wall: float) -> HealthChange | None:
        """The pair's headroom as a change for other processes (wall-clock times), if any is known."""
        room = self._headroom.get((endpoint, model))
        if room is None:
            return None
        until = max(room.requests_until, room.tokens_until)
        if until <= now:
            return None
        reason = "requests" if room.requests_until > now else "tokens"
        return HealthChange(
            "headroom", endpoint, model, wall + until - now, reason, room.tokens_left if reason == "tokens" else None
        )

    def apply_headroom(self, change: HealthChange, left: float, now: float) -> None:
        """Another process's headroom for the pair, lasting ``left`` more seconds (already bounded by the caller;
        nan or not positive: nothing to apply)."""
        if not left > 0:
            return
        with self._lock:
            room = self._room(change.endpoint, change.model)
            if change.reason == "requests":
                room.requests_until = max(room.requests_until, now + left)
            else:
                tokens = change.tokens_left
                room.tokens_left = min(max(tokens, 0), MAX_TOKENS) if isinstance(tokens, int) else None
                room.tokens_until = now + left

    def _room(self, endpoint: str, model: str) -> _Headroom:
        room = self._headroom.get((endpoint, model))
        if room is None:
            room = self._headroom.setdefault((endpoint, model), _Headroom())
        return room

    # ---- what other processes should know -----------------------------------------------------------------------

    def live_cooldowns(self, now: float, wall: float) -> list[HealthChange]:
        """Every cooldown in force, as changes for other processes (wall-clock times)."""
        return [
            HealthChange("cooldown", c.endpoint, c.model, wall + c.until - now, c.reason)
            for c in list(self._cooldowns.values())
            if c.until > now
        ]

    def live_headroom(self, now: float, wall: float) -> list[HealthChange]:
        """Every headroom still in force, as changes for other processes (wall-clock times)."""
        changes = []
        for endpoint, model in list(self._headroom):
            found = self.headroom_change(endpoint, model, now, wall)
            if found is not None:
                changes.append(found)
        return changes
