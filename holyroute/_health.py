"""Endpoint health: which endpoint may take traffic now, and for how long a rate-limited one cools down.

Cooldowns are keyed by (endpoint, upstream model), because providers rate-limit per model: a 429 for ``gpt-4.1``
says nothing about ``gpt-4.1-mini`` on the same key. Durations come from the answer's own headers, in the order a
server means them: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), then OpenAI's
``x-ratelimit-reset-requests`` / ``-tokens`` for the limit that ran out. Time is read only from the clock passed in;
this module performs no I/O and never sleeps.
"""

from __future__ import annotations

import email.utils
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Cooldown", "HeaderLookup", "HealthBook", "ProbeStatus", "parse_duration", "server_delay"]

#: What an active health check concluded about an endpoint.
ProbeStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class HeaderLookup(Protocol):
    """The part of a header mapping the core reads (``httpx2.Headers`` and ``dict`` both fit)."""

    def get(self, key: str, /) -> str | None: ...


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI reset duration such as ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` or ``"0.5"``.

    >>> parse_duration("1m30s"), parse_duration("250ms"), parse_duration("2")
    (90.0, 0.25, 2.0)
    """
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * scale[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def server_delay(headers: HeaderLookup, now_wall: float) -> tuple[float, str] | None:
    """How long the server asked us to stay away, and which header said so; ``None`` when nothing did."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0), f"retry-after-ms {value}"
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value)), f"retry-after {value}s"
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - now_wall), f"retry-after {value}"
    resets = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if reset is None:
            continue
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        seconds = parse_duration(reset)
        # Only the limit that ran out explains the 429; when remaining is absent we cannot tell, so count it.
        if seconds is not None and (remaining is None or remaining.strip() in ("0", "0.0")):
            resets.append((seconds, f"x-ratelimit-reset-{kind} {reset}"))
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


class HealthBook:
    """Cooldowns of endpoint/model pairs, read against an injected monotonic clock. Thread-safe."""

    __slots__ = ("_clock", "_cooldowns", "_lock", "_probes")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._cooldowns: dict[tuple[str, str], Cooldown] = {}
        self._probes: dict[str, tuple[ProbeStatus, float, float | None, str | None]] = {}
        self._lock = threading.Lock()

    def record_probe(
        self,
        endpoint: str,
        status: ProbeStatus,
        now: float,
        *,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> ProbeStatus | None:
        """Store an active health check's verdict; returns the previous status when it changed, else None."""
        with self._lock:
            previous = self._probes.get(endpoint)
            self._probes[endpoint] = (status, now, latency_ms, error)
        old: ProbeStatus = previous[0] if previous is not None else "unknown"
        return old if old != status else None

    def probe_status(self, endpoint: str) -> ProbeStatus:
        """The last active health check verdict for ``endpoint`` ("unknown" when never probed)."""
        found = self._probes.get(endpoint)
        return found[0] if found is not None else "unknown"

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
        """Keep the pair out of rotation for ``seconds``; returns the new cooldown, or None if one as long exists."""
        until = now + seconds
        with self._lock:
            current = self._cooldowns.get((endpoint, model))
            if current is not None and current.until >= until:
                return None
            cooldown = Cooldown(endpoint, model, until, reason)
            self._cooldowns[(endpoint, model)] = cooldown
            return cooldown

    def active(self) -> list[Cooldown]:
        """Every cooldown still in force, soonest end first."""
        now = self._clock()
        return sorted((c for c in list(self._cooldowns.values()) if c.until > now), key=lambda c: c.until)
