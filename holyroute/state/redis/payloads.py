"""Key names, and the total parsers of everything the Redis backend reads back: health entries, messages,
measurements and spend. Each never raises past the boundary and clamps to its bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from holyroute.boundary.redis_url import SCHEMES, parse_redis_url
from holyroute.config.schema import Health
from holyroute.config.schema import Retry as RetrySettings
from holyroute.rollout.engine import (
    MAX_COUNT,
    Measurements,
    Undecodable,
    decode_json,
    validation_problem,
)
from holyroute.rollout.stats import LatencySketch
from holyroute.state.base import HealthChange, Period

__all__ = [
    "FIELD_KINDS",
    "MAX_USD",
    "Horizons",
    "Keys",
    "Message",
    "health_entry",
    "measurement_fields",
    "parse_health_entry",
    "parse_measurements",
    "parse_message",
    "parse_spend",
    "redacted",
    "text_of",
]

FIELD_KINDS = {"cooldown": "c", "ejected": "e", "restored": "e", "quota": "q", "headroom": "h"}


def redacted(url: str) -> str:
    """The URL without user, password or query, for messages. Total: what cannot be read is ``?``.

    >>> redacted("redis://:pa/ss@cache:6380/2?password=x")
    'redis://cache:6380/2'
    >>> redacted("redis+sentinel://:pw@s1,s2:26380/mymaster")
    'redis+sentinel://s1:26379,s2:26380/mymaster/0'
    """
    found = parse_redis_url(url)
    if not isinstance(found, str):
        return found.where
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        return "?"
    try:  # after the last '@': a password may hold '/', '?', '#' or '@'
        parts = urlsplit(f"{scheme}://{rest.rpartition('@')[2]}")
        port = parts.port
    except ValueError:
        return f"{scheme}://?"
    host = parts.hostname or parts.path or "?"
    return f"{scheme}://{host}{f':{port}' if port else ''}{parts.path if parts.hostname else ''}"


class Keys:
    """Every key holyroute writes, under one prefix, each with a hash tag (Redis Cluster: one slot per script)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.health = f"{prefix}:{{health}}"
        self.members = f"{prefix}:{{members}}"
        self.spend_seq = f"{prefix}:batches:{{spend}}"  # each process's last spend batch counted (see sync.SpendBatch)
        self.channel = f"{prefix}:events"

    def limits(self, endpoint: str) -> str:
        return f"{self.prefix}:{{limits:{endpoint}}}"

    def rollout(self, route: str) -> str:
        return f"{self.prefix}:{{rollout:{route}}}:state"

    def measurements(self, route: str, window: int, arm: str) -> str:
        return f"{self.prefix}:{{rollout:{route}}}:m:{window}:{arm}"

    def spend(self, period: Period, bucket: str) -> str:
        return f"{self.prefix}:{{spend}}:{period}:{bucket}"


def measurement_fields(measured: Measurements) -> dict[str, int | float]:
    """A measurement delta as hash increments: counters, cost, and one field per sketch bucket."""
    fields: dict[str, int | float] = {}
    for name in ("calls", "errors", "judged", "poor"):
        value = getattr(measured, name)
        if value:
            fields[name] = value
    for tag, sketch in (("l", measured.latency), ("t", measured.ttft)):
        data = sketch.to_dict()
        if data["zero_count"]:
            fields[f"{tag}z"] = data["zero_count"]
        for key, count in data["bins"]:
            fields[f"{tag}{key}"] = count
    return fields


#: Bounds for what is read back from Redis: far beyond real use, small enough for all later arithmetic.
MAX_USD = 1e12
MAX_TOKENS = 10**12
MAX_SKETCH_KEY = 100_000  # a latency sketch's bucket index (|key|); real ones stay within a few thousand
MAX_FIELDS = 20_000  # of one measurements hash


def text_of(raw: object, limit: int = 1000) -> str | None:
    """Bytes (or text) from Redis as bounded text, None when not UTF-8 or too long."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return raw if isinstance(raw, str) and len(raw) <= limit else None


def _count(raw: object) -> int | None:
    """A counter from Redis within ``[0, MAX_COUNT]`` (clamped), None when it is no integer."""
    text = text_of(raw, 40)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return min(max(value, 0), MAX_COUNT)


def _amount(raw: object, limit: float) -> float | None:
    """A finite non-negative number from Redis, clamped to ``limit``; None when it is none."""
    text = text_of(raw, 64)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), limit)


def parse_measurements(raw: object) -> tuple[Measurements, list[str]]:
    """A measurements hash (what :func:`measurement_fields` increments add up to), and the fields skipped with the
    problem.

    Total: a field that is not a known counter, a number in bounds or a sketch bucket is skipped; counts are clamped
    to ``[0, MAX_COUNT]`` and the cost to ``[0, MAX_USD]``.
    """
    measured = Measurements()
    skipped: list[str] = []
    bins: dict[str, list[list[int]]] = {"l": [], "t": []}
    zero = {"l": 0, "t": 0}
    items = list(raw.items())[:MAX_FIELDS] if isinstance(raw, dict) else []
    if not isinstance(raw, dict):
        skipped.append(f"expected a hash, got {type(raw).__name__}")
    for key_raw, value_raw in items:
        key = text_of(key_raw, 64)
        if key is None:
            skipped.append("a field name that is not short UTF-8 text")
            continue
        if key == "cost":
            cost = _amount(value_raw, MAX_USD)
            if cost is None:
                skipped.append("cost: not a finite number")
            else:
                measured.cost_usd = cost
            continue
        count = _count(value_raw)
        if count is None:
            skipped.append(f"{key[:40]}: not an integer")
        elif key in ("calls", "errors", "judged", "poor"):
            setattr(measured, key, count)
        elif key[:1] in bins and key[1:] == "z":
            zero[key[:1]] = count
        elif key[:1] in bins and key[1:].lstrip("-").isdigit() and abs(int(key[1:])) <= MAX_SKETCH_KEY:
            bins[key[:1]].append([int(key[1:]), count])
        else:
            skipped.append(f"{key[:40]}: not a measurement field")
    measured.errors = min(measured.errors, measured.calls)
    measured.poor = min(measured.poor, measured.judged)
    for tag, attribute in (("l", "latency"), ("t", "ttft")):
        template = getattr(measured, attribute)
        data = {
            "relative_accuracy": template.relative_accuracy,
            "max_buckets": template.max_buckets,
            "zero_count": zero[tag],
            "bins": bins[tag],
        }
        setattr(measured, attribute, LatencySketch.from_dict(data))
    return measured, skipped


def _measurements(raw: object) -> Measurements:
    return parse_measurements(raw)[0]


def parse_spend(raw: object) -> tuple[dict[str, float], list[str]]:
    """A spend hash (name -> USD): finite, non-negative, clamped to ``MAX_USD``; bad fields skipped, with why."""
    spend: dict[str, float] = {}
    skipped: list[str] = []
    if not isinstance(raw, dict):
        return spend, [f"expected a hash, got {type(raw).__name__}"]
    for name_raw, value_raw in raw.items():
        name = text_of(name_raw)
        usd = _amount(value_raw, MAX_USD)
        if name is None:
            skipped.append("a name that is not UTF-8 text of at most 1000 characters")
        elif usd is None:
            skipped.append(f"{name[:100]}: not a finite number")
        else:
            spend[name] = usd
    return spend, skipped


HealthKind = Literal["cooldown", "ejected", "restored", "quota", "headroom"]


class _HealthMessage(BaseModel):
    """A health change as published on the channel and stored in the health hash (after its deadline)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    o: Annotated[str, Field(max_length=1000)] = ""
    kind: Literal["health"]
    k: HealthKind
    e: Annotated[str, Field(min_length=1, max_length=1000)]
    m: Annotated[str, Field(max_length=1000)] | None = None
    u: float | None = None
    r: Annotated[str, Field(max_length=10_000)] | None = None
    t: int | None = None


class _RolloutMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    o: Annotated[str, Field(max_length=1000)] = ""
    kind: Literal["rollout"]
    route: Annotated[str, Field(min_length=1, max_length=1000)]


class _OtherMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    o: Annotated[str, Field(max_length=1000)] = ""
    kind: Literal["bye"]


@dataclass(frozen=True, slots=True)
class Horizons:
    """How far ahead a shared health entry may reach, per kind (seconds): the configured maxima."""

    cooldown: float = RetrySettings().max_cooldown_s
    ejected: float = Health().max_ejection_s
    quota: float = Health().quota_ejection_s

    @classmethod
    def of(cls, retry: RetrySettings, health: Health) -> Horizons:
        return cls(retry.max_cooldown_s, health.max_ejection_s, health.quota_ejection_s)

    def clamp(self, change: HealthChange, wall: float) -> HealthChange:
        """``change`` with ``until`` within ``[wall, wall + horizon]`` (a restoration has none) and tokens bounded."""
        if change.kind == "restored":
            return change if change.until == 0.0 else replace(change, until=0.0)
        horizon = {"ejected": self.ejected, "quota": self.quota}.get(change.kind, self.cooldown)
        until = change.until if math.isfinite(change.until) else wall + horizon
        until = min(max(until, wall), wall + horizon)
        tokens = change.tokens_left
        if tokens is not None:
            tokens = min(max(tokens, 0), MAX_TOKENS)
        if until == change.until and tokens == change.tokens_left:
            return change
        return replace(change, until=until, tokens_left=tokens)


@dataclass(frozen=True, slots=True)
class Message:
    """One validated message: a health change (clamped), a rollout's state changed, or a goodbye."""

    origin: str
    kind: Literal["health", "rollout", "bye"]
    change: HealthChange | None = None
    route: str = ""


def parse_message(raw: object, *, wall: float, horizons: Horizons | None = None) -> Message | str:
    """A channel message or a health hash value's JSON part: validated, ``until`` clamped; or the problem (never the
    value: a reason may quote an upstream). Total: never raises."""
    if not isinstance(raw, bytes | str):
        return f"expected text, got {type(raw).__name__}"
    value = decode_json(raw)
    if isinstance(value, Undecodable):
        return str(value)
    if not isinstance(value, dict):
        return f"expected an object, got {type(value).__name__}"
    kind = value.get("kind")
    try:
        if kind == "health":
            health = _HealthMessage.model_validate(value)
            if health.u is not None and math.isnan(health.u):
                return "u: not a number"
            change = HealthChange(health.k, health.e, health.m or "", health.u or 0.0, (health.r or "")[:500], health.t)
            return Message(health.o, "health", (horizons or Horizons()).clamp(change, wall))
        if kind == "rollout":
            rollout = _RolloutMessage.model_validate(value)
            return Message(rollout.o, "rollout", route=rollout.route)
        other = _OtherMessage.model_validate(value)
        return Message(other.o, "bye")
    except ValidationError as error:
        return validation_problem(error)


def parse_health_entry(raw: object, *, wall: float, horizons: Horizons | None = None) -> HealthChange | str:
    """A value of the health hash, ``"<until> <message JSON>"``, as a clamped change; or the problem."""
    found = health_entry(raw, wall=wall, horizons=horizons)
    return found if isinstance(found, str) else found.change  # type: ignore[return-value]


def health_entry(raw: object, *, wall: float, horizons: Horizons | None) -> Message | str:
    if isinstance(raw, bytes):
        raw = raw.partition(b" ")[2]
    elif isinstance(raw, str):
        raw = raw.partition(" ")[2]
    found = parse_message(raw, wall=wall, horizons=horizons)
    if not isinstance(found, str) and found.change is None:
        return f"a {found.kind} message where a health change belongs"
    return found
