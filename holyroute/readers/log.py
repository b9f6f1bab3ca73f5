"""The one reader of holyroute's event log, and the one rule for which arm a served call is charged to.

``holyroute report`` (:mod:`holyroute.readers.report`) and ``holyroute dashboard`` (:mod:`holyroute.readers.dashboard`)
read the JSON-lines log through :func:`parse_line` (total: a line is a well-formed ``holyroute.*`` event or the
reason it is skipped) and charge each served call with :func:`charged_arm`, as the rollout analysis does
(:mod:`holyroute.core.accounting`): to the arm the split chose (``split_arm``), which failed the call when a fallback
served it. Nothing here decides routing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["ChargedArm", "EventLog", "charged_arm", "epoch", "load_log", "number", "parse_line", "read_events"]


@dataclass(frozen=True, slots=True)
class EventLog:
    """Every ``holyroute.*`` event of a log in file order, and how many lines were skipped and why."""

    path: str
    events: tuple[dict[str, Any], ...]
    not_json: int = 0
    not_holyroute: int = 0
    malformed: int = 0  # holyroute events with a field no reader can use (a number out of range, a wrong type)


#: The numeric fields readers of the log compute with, and the largest value each may hold: a line whose field is
#: not a finite number in ``[0, bound]`` (``1e999``, a 400-digit int, a string) is malformed and skipped whole.
_NUMERIC_FIELDS: dict[str, float] = {
    "latency_ms": 1e10,
    "ttft_ms": 1e10,
    "attempt_ms": 1e10,
    "cost_usd": 1e9,
    "saved_usd": 1e9,
    "prompt_tokens": 1e13,
    "completion_tokens": 1e13,
    "cached_tokens": 1e13,
    "reasoning_tokens": 1e13,
    "attempts": 1e6,
    "attempt": 1e6,
    "wait_s": 1e10,
    "cooldown_s": 1e10,
    "ejection_s": 1e10,
    "remaining_requests": 1e13,
    "remaining_tokens": 1e13,
    "step": 1e9,
    "steps": 1e9,
    "weight": 100.0,
}
_TIMESTAMP_MAX = 1e11  # Unix seconds (year 5138): beyond it a numeric timestamp is junk


def _in_bounds(value: object, bound: float) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and 0 <= value <= bound
    except OverflowError:  # an int too large for a float
        return False


def _well_formed(event: dict[str, Any]) -> bool:
    """Every field a reader computes with holds what it should (absent or null is fine)."""
    for name, bound in _NUMERIC_FIELDS.items():
        value = event.get(name)
        if value is not None and not _in_bounds(value, bound):
            return False
    stamp = event.get("timestamp")
    return stamp is None or isinstance(stamp, str) or _in_bounds(stamp, _TIMESTAMP_MAX)


def parse_line(line: str) -> dict[str, Any] | Literal["blank", "not_json", "not_holyroute", "malformed"]:
    """One log line: a well-formed ``holyroute.*`` event, or why it is skipped. Total: never raises."""
    if not line.strip():
        return "blank"
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # also ints too long to convert, and nesting too deep
        return "not_json"
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return "not_holyroute"
    if not event["event"].startswith("holyroute."):
        return "not_holyroute"
    return event if _well_formed(event) else "malformed"


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events from a JSON-lines file; lines that are not holyroute JSON events are skipped."""
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            event = parse_line(line)
            if isinstance(event, dict):
                yield event


def load_log(path: str | Path) -> EventLog:
    """The whole log, with counts of skipped lines. Raises ``OSError`` when the file cannot be read."""
    events: list[dict[str, Any]] = []
    skipped = {"blank": 0, "not_json": 0, "not_holyroute": 0, "malformed": 0}
    # Undecodable bytes become U+FFFD: such a line fails to parse and is counted, rather than ending the report.
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            event = parse_line(line)
            if isinstance(event, dict):
                events.append(event)
            else:
                skipped[event] += 1
    return EventLog(str(path), tuple(events), skipped["not_json"], skipped["not_holyroute"], skipped["malformed"])


def number(value: object) -> float | None:
    """A finite number, or None (also for ints too large for a float): total."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def epoch(value: object) -> float | None:
    found = number(value)
    if found is not None:
        return found
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    return None


@dataclass(frozen=True, slots=True)
class ChargedArm:
    """The arm a served call counts for, and whether that arm failed it."""

    arm: str
    failed: bool


def charged_arm(event: Mapping[str, Any]) -> ChargedArm | None:
    """The arm a served (not shadow) ``holyroute.request`` is charged to: the split's arm (``split_arm``), failed
    when a fallback served the call, whatever the fallback answered (the rollout analysis judges it so); else the
    serving ``arm``, failed when the call failed. None for a call a fallback served whose event does not name the
    split's arm (a log from before ``split_arm``): it cannot be charged to an arm.

    >>> charged_arm({"arm": "cheap", "split_arm": "new", "fallback": "chat-cheap", "outcome": "ok"})
    ChargedArm(arm='new', failed=True)
    >>> charged_arm({"arm": "new", "split_arm": "new", "fallback": None, "outcome": "ok"})
    ChargedArm(arm='new', failed=False)
    """
    fallback = event.get("fallback")
    rescued = isinstance(fallback, str) and bool(fallback)
    split = event.get("split_arm")
    if rescued:
        return ChargedArm(split, True) if isinstance(split, str) and split else None
    arm = event.get("arm")
    return ChargedArm(arm if isinstance(arm, str) and arm else "(none)", event.get("outcome") == "error")
