"""Property tests of the Redis backend's parsers (no Redis needed): whatever bytes, text or JSON another process, an
old version or an attacker left in Redis, each parser returns a valid value or names the problem, never raises, and
its bounds hold (deadlines within the configured maxima, counts and amounts within bounds)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from holyroute.rollout.engine import MAX_COUNT, parse_stored_state
from holyroute.state.base import HealthChange
from holyroute.state.redis.payloads import (
    MAX_USD,
    Horizons,
    Message,
    parse_health_entry,
    parse_measurements,
    parse_message,
    parse_spend,
)

WALL = 1_700_000_000.0
HORIZONS = Horizons(cooldown=600.0, ejected=300.0, quota=3600.0)
SECRET = "sk-live-secret-value"

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
_health_fields = st.fixed_dictionaries(
    {"kind": st.sampled_from(["health", "rollout", "bye", "other"]) | _scalars},
    optional={
        "o": _scalars,
        "k": st.sampled_from(["cooldown", "ejected", "restored", "quota", "headroom"]) | _scalars,
        "e": st.text(min_size=1, max_size=10) | _scalars,
        "m": st.text(max_size=10) | _scalars,
        "u": st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**400), max_value=10**400),
        "r": st.just(SECRET) | _scalars,
        "t": st.integers(min_value=-(10**400), max_value=10**400) | _scalars,
        "route": st.text(max_size=10) | _scalars,
    },
)


def _encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


_payloads = st.binary(max_size=200) | st.text(max_size=200) | _json.map(_encoded) | _health_fields.map(_encoded)


def _bounded(change: HealthChange) -> None:
    assert math.isfinite(change.until)
    horizon = {"ejected": 300.0, "quota": 3600.0, "restored": 0.0}.get(change.kind, 600.0)
    if change.kind == "restored":
        assert change.until == 0.0
    else:
        assert WALL <= change.until <= WALL + horizon
    assert change.tokens_left is None or 0 <= change.tokens_left <= 10**12
    assert change.endpoint


class TestMessages:
    """Channel messages and health hash entries."""

    @given(_payloads)
    def test_any_message(self, raw: bytes | str) -> None:
        found = parse_message(raw, wall=WALL, horizons=HORIZONS)
        if isinstance(found, str):
            assert SECRET not in found, "the problem never quotes the value"
            assert len(found) < 1000
            return
        assert isinstance(found, Message)
        if found.kind == "health":
            assert found.change is not None
            _bounded(found.change)
        elif found.kind == "rollout":
            assert isinstance(found.route, str)
            assert found.route

    @given(st.binary(max_size=20) | st.text(max_size=20), _payloads)
    def test_any_hash_entry(self, head: bytes | str, payload: bytes | str) -> None:
        if isinstance(head, bytes) != isinstance(payload, bytes):
            head = head.decode("latin-1") if isinstance(head, bytes) else head.encode()
        raw: Any = head + (b" " if isinstance(head, bytes) else " ") + payload  # type: ignore[operator]
        found = parse_health_entry(raw, wall=WALL, horizons=HORIZONS)
        if isinstance(found, str):
            assert SECRET not in found
        else:
            _bounded(found)

    @given(st.floats(allow_nan=False) | st.integers(min_value=-(10**300), max_value=10**300))
    def test_absurd_deadline_is_clamped(self, until: float) -> None:
        raw = json.dumps({"o": "x", "kind": "health", "k": "cooldown", "e": "main", "m": "gpt", "u": until})
        found = parse_message(raw, wall=WALL, horizons=HORIZONS)
        assert isinstance(found, Message)
        assert found.change is not None
        _bounded(found.change)

    def test_non_text(self) -> None:
        assert parse_message(None, wall=WALL) == "expected text, got NoneType"
        assert parse_health_entry(ValueError("x"), wall=WALL) == "expected text, got ValueError"


_fields_raw = st.dictionaries(
    st.sampled_from([b"calls", b"errors", b"judged", b"poor", b"cost", b"lz", b"tz", b"l12", b"t-3", b"l999999"])
    | st.binary(max_size=8),
    st.binary(max_size=12)
    | st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode())
    | st.floats().map(lambda f: repr(f).encode()),
    max_size=12,
)


class TestCounters:
    """Measurements and spend hashes."""

    @given(_fields_raw | _json)
    def test_any_measurements(self, raw: Any) -> None:
        measured, skipped = parse_measurements(raw)
        for count in (measured.calls, measured.errors, measured.judged, measured.poor):
            assert 0 <= count <= MAX_COUNT
        assert measured.errors <= measured.calls
        assert measured.poor <= measured.judged
        assert math.isfinite(measured.cost_usd)
        assert 0.0 <= measured.cost_usd <= MAX_USD
        assert measured.latency.count >= 0
        assert all(isinstance(problem, str) for problem in skipped)

    @given(_fields_raw | _json)
    def test_any_spend(self, raw: Any) -> None:
        spend, _ = parse_spend(raw)
        for name, usd in spend.items():
            assert isinstance(name, str)
            assert math.isfinite(usd)
            assert 0.0 <= usd <= MAX_USD

    def test_good_fields_are_kept_beside_bad_ones(self) -> None:
        measured, skipped = parse_measurements({b"calls": b"10", b"errors": b"x", b"cost": b"inf", b"l5": b"3"})
        assert (measured.calls, measured.errors, measured.cost_usd, measured.latency.count) == (10, 0, 0.0, 3)
        assert skipped == ["errors: not an integer", "cost: not a finite number"]


class TestStoredState:
    @given(st.none() | _payloads | _json.map(lambda v: json.dumps({"route": "chat", "weight": v})))
    def test_any_stored_state(self, raw: Any) -> None:
        found = parse_stored_state("chat", raw)
        if found is None or isinstance(found, str):
            return
        assert found.route == "chat"
        assert 0.0 <= found.weight <= 100.0
        assert found.version >= 0
