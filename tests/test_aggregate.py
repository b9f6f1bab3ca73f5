"""The one aggregation of the event log, on its own: quantiles, tallies that merge exactly, where a call counts, bounds.

Through the report and the dashboard it is tested in ``test_report.py``, ``test_dashboard.py`` and
``test_one_aggregation.py``; here each part is fed events directly.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from holyroute.readers.aggregate import MAX_NAMES, Aggregate, aggregate_events, time_series
from holyroute.readers.log import number
from holyroute.readers.report import build_report, render_report
from holyroute.readers.tally import Call, Quantiles, Tally, _number, nearest_rank


def request(route: str = "chat", arm: str = "a", **fields: Any) -> dict[str, Any]:
    return {"event": "holyroute.request", "route": route, "arm": arm, "split_arm": arm, "outcome": "ok", **fields}


class TestQuantiles:
    """Exact nearest-rank values while they fit, a sketch within 1 % beyond."""

    @given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200), st.sampled_from([0.5, 0.95]))
    def test_exact_is_nearest_rank(self, values: list[float], q: float) -> None:
        quantiles = Quantiles()
        for value in values:
            quantiles.add(value)
            quantiles.quantile(q)  # a look between adds must not change what later looks see
        assert (quantiles.quantile(q), quantiles.count, quantiles.exact) == (nearest_rank(values, q), len(values), True)

    def test_beyond_the_limit_a_sketch_within_one_percent(self) -> None:
        rng = random.Random(3)
        values = [rng.uniform(100.0, 1000.0) for _ in range(5000)]
        quantiles = Quantiles(limit=1000)
        for value in values:
            quantiles.add(value)
        assert (quantiles.exact, quantiles.count) == (False, 5000)
        for q in (0.5, 0.95):
            found, exact = quantiles.quantile(q), nearest_rank(values, q)
            assert found is not None
            assert exact is not None
            assert abs(found - exact) / exact < 0.02

    def test_merge_keeps_every_value(self) -> None:
        left, right = Quantiles(), Quantiles()
        for value in (3.0, 1.0):
            left.add(value)
        right.add(2.0)
        left.merge(right)
        assert (left.count, left.quantile(0.5), left.quantile(1.0)) == (3, 2.0, 3.0)

    def test_empty(self) -> None:
        assert Quantiles().quantile(0.95) is None


_calls = st.builds(
    Call,
    outcome=st.sampled_from(["ok", "error", "cancelled", None]),
    latency_ms=st.none() | st.floats(min_value=0, max_value=1e5),
    ttft_ms=st.none() | st.floats(min_value=0, max_value=1e5),
    prompt_tokens=st.integers(0, 1000),
    completion_tokens=st.none() | st.integers(0, 1000).map(float),
    cost_usd=st.none() | st.sampled_from([0.0, 0.25, 0.5]),
    unpriced=st.booleans(),
    model=st.none() | st.sampled_from(["m1", "m2"]),
    finish_reason=st.none() | st.sampled_from(["stop", "length"]),
    quality=st.none() | st.booleans(),
)


def numbers(tally: Tally) -> tuple[Any, ...]:
    return (
        tally.calls,
        tally.errors,
        tally.cancelled,
        tally.prompt_tokens,
        tally.completion_tokens,
        tally.mean_completion_tokens,
        tally.cost_usd,
        tally.unpriced,
        tally.empty,
        tally.judged,
        tally.poor,
        sorted(tally.models),
        tally.finish_reasons,
        tally.latency.quantile(0.5),
        tally.latency.quantile(0.95),
        tally.ttft.quantile(0.95),
    )


@given(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=3)
)
def test_fast_numbers_are_the_readers_numbers(value: object) -> None:
    """The hot loop's shortcut reads every value as :func:`holyroute.readers.log.number` does."""
    assert _number(value) == number(value) or (_number(value), number(value)) == (None, None)


class TestTally:
    """A tally of two halves merged is the tally of the whole."""

    @given(st.lists(_calls, max_size=30), st.integers(0, 30))
    def test_merge_is_exact(self, calls: list[Call], cut: int) -> None:
        whole, left, right = Tally(), Tally(), Tally()
        for n, call in enumerate(calls):
            whole.add(call)
            (left if n < cut else right).add(call)
        left.merge(right)
        assert numbers(left) == numbers(whole)

    def test_cancelled_calls_cost_but_are_not_calls(self) -> None:
        tally = Tally()
        tally.add(Call("ok", latency_ms=10.0, cost_usd=0.5))
        tally.add(Call("cancelled", latency_ms=9999.0, cost_usd=0.25))
        assert (tally.calls, tally.cancelled, tally.latency.quantile(1.0), tally.cost_usd) == (1, 1, 10.0, 0.75)
        assert tally.cost_per_call_usd == 0.375

    def test_a_rescued_call_is_an_error_of_its_arm(self) -> None:
        assert Call("ok").failed() == Call("error")
        assert Call("cancelled").failed() == Call("cancelled")


class TestWhereACallCounts:
    """Per route as the application saw it, per arm as charged, apart when no arm can be charged."""

    def test_groups(self) -> None:
        aggregate = aggregate_events(
            [
                request(arm="new", endpoint="e1", latency_ms=10.0),
                request(arm="cheap", split_arm="new", fallback="cheap-route", endpoint="e2", latency_ms=20.0),
                request(arm="cheap", split_arm=None, fallback="cheap-route", endpoint="e2"),
                request(arm="shadow-arm", shadow=True, endpoint="e3"),
                request(route=""),  # no route name: malformed
                {"event": "holyroute.failover", "route": "chat", "arm": "new", "endpoint": "e1"},
            ]
        )
        route = aggregate.routes["chat"]
        assert (route.served.calls, route.served.errors, route.rescued) == (3, 0, 2)
        assert {arm: (t.calls, t.errors) for arm, t in route.arms.items()} == {"new": (2, 1)}
        assert {key: t.calls for key, t in route.unattributed.items()} == {("cheap-route", "cheap"): 1}
        assert {arm: t.calls for arm, t in route.shadows.items()} == {"shadow-arm": 1}
        assert (aggregate.malformed_requests, aggregate.request_events, aggregate.events) == (1, 5, 6)
        assert {name: (e.served.calls, e.health.attempts) for name, e in aggregate.endpoints.items()} == {
            "e1": (1, 2),
            "e2": (2, 2),
            "e3": (1, 1),
        }
        assert aggregate.rows[("chat", "new", "e1")].failovers == 1

    def test_the_plot_charges_as_the_table(self) -> None:
        events = [
            request(arm="new"),
            request(arm="cheap", split_arm="new", fallback="f"),
            request(arm="x", shadow=True),
        ]
        series = {s.arm: (sum(s.calls), s.error_rate[0]) for s in time_series(events, windows=1)}
        assert series == {"new": (2, 0.5), "x (shadow)": (1, 0.0)}


class TestBounds:
    """Names from the log are bounded; what goes beyond is counted and said, never silently lost."""

    def test_routes_beyond_the_limit(self) -> None:
        aggregate = aggregate_events(request(route=f"route-{n}") for n in range(MAX_NAMES + 10))
        assert (len(aggregate.routes), aggregate.dropped_names) == (MAX_NAMES, 10)
        assert "10 calls or events of names beyond 256" in render_report(build_report(aggregate))

    def test_lines(self) -> None:
        aggregate = Aggregate()
        for line in [
            "",
            "nope",
            json.dumps({"event": "x"}),
            json.dumps(request(latency_ms="slow")),
            json.dumps(request()),
        ]:
            aggregate.add_line(line)
        aggregate.skip_long_line()
        assert (aggregate.not_json, aggregate.not_holyroute, aggregate.malformed, aggregate.too_long) == (1, 1, 1, 1)
        assert (aggregate.skipped, aggregate.lines, aggregate.routes["chat"].served.calls) == (4, 6, 1)
