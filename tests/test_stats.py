"""Rollout statistics: the sequential error-rate gate, latency sketches, Wilson intervals and sample ratio mismatch.

Simulations are seeded and bounded. Canary traffic is simulated as runs: a geometric number of stable successes, then
one candidate call or one stable error, which is the same law as drawing every call on its own. The simulated gate
looks after every call, but the simulations skip the looks that cannot move its p-value: those where the candidate's
observed error rate is within the margin (no evidence, by definition of the one-sided test), and those inside a run
of stable successes, which only strengthen the evidence until the run's last call (the observed difference grows and
its variance shrinks). ``TestLookingAfterEveryCall`` checks on call-by-call traffic that this skips no abort."""

from __future__ import annotations

import doctest
import json
import math
import random
import statistics
import time
from collections.abc import Iterable, Iterator

import pytest

from holyroute.rollout import stats as _stats
from holyroute.rollout.stats import (
    ErrorRateVerdict,
    LatencySketch,
    SequentialNonInferiority,
    chi2_sf,
    latency_regressed,
    mixture_p_value,
    sample_ratio_mismatch,
    wilson_interval,
)

Counts = tuple[int, int, int, int]  # n_stable, errors_stable, n_candidate, errors_candidate
Run = tuple[int, bool, bool]  # stable successes, then: is the event a candidate call, was it an error


def traffic(
    rng: random.Random, *, stable_rate: float, candidate_rate: float, share: float, candidate_calls: int
) -> Iterator[Run]:
    """Canary traffic until ``candidate_calls`` candidate calls, as runs of stable successes ending in an event."""
    event = share + (1.0 - share) * stable_rate  # the chance that a call is a candidate call or a stable error
    log_quiet = math.log1p(-event)
    candidate_given_event = share / event
    made = 0
    while made < candidate_calls:
        quiet = int(math.log(1.0 - rng.random()) / log_quiet)
        if rng.random() < candidate_given_event:
            made += 1
            yield quiet, True, rng.random() < candidate_rate
        else:
            yield quiet, False, True


def looks(runs: Iterable[Run], *, every_call: bool = False, margin: float = 0.01) -> Iterator[Counts]:
    """Cumulative counts after every call, or only at the looks that can move the p-value (see module doc)."""
    n_s = x_s = n_c = x_c = 0
    for quiet, candidate, error in runs:
        if every_call:
            for _ in range(quiet):
                n_s += 1
                yield n_s, x_s, n_c, x_c
        elif quiet:
            n_s += quiet
            if n_c and x_c / n_c - x_s / n_s > margin:  # n_s > 0 here
                yield n_s, x_s, n_c, x_c
        if candidate:
            n_c += 1
            x_c += error
        else:
            n_s += 1
            x_s += 1
        if every_call or (n_c and n_s and x_c / n_c - x_s / n_s > margin):
            yield n_s, x_s, n_c, x_c


def first_abort(gate: SequentialNonInferiority, counts: Iterable[Counts]) -> int | None:
    """The number of candidate calls at the first look that rejects non-inferiority, or None."""
    for n_s, x_s, n_c, x_c in counts:
        if gate.update(n_s, x_s, n_c, x_c).rejected:
            return n_c
    return None


def abort_rate(
    seed: int,
    rollouts: int,
    *,
    stable_rate: float,
    candidate_rate: float,
    share: float,
    candidate_calls: int,
    tau: float | None = None,
) -> tuple[float, list[int]]:
    """The share of rollouts that abort, and the candidate calls each abort took."""
    rng = random.Random(seed)
    aborts = []
    for _ in range(rollouts):
        runs = traffic(
            rng, stable_rate=stable_rate, candidate_rate=candidate_rate, share=share, candidate_calls=candidate_calls
        )
        calls = first_abort(SequentialNonInferiority(margin=0.01, tau=tau), looks(runs))
        if calls is not None:
            aborts.append(calls)
    return len(aborts) / rollouts, aborts


class TestFalseAborts:
    """A candidate as good as the stable arm is aborted in at most alpha of rollouts, however often one looks."""

    @pytest.mark.parametrize("share", [0.1, 0.5])
    def test_equal_error_rates(self, share: float) -> None:
        """A/A at 2 %: 1,000 rollouts analysed after every call up to 2,000 candidate calls each."""
        rate, _ = abort_rate(11, 1000, stable_rate=0.02, candidate_rate=0.02, share=share, candidate_calls=2000)
        print(f"A/A 2% vs 2%, candidate share {share:.0%}: false abort rate {rate:.1%}")
        assert rate <= 0.05

    @pytest.mark.parametrize("share", [0.1, 0.5])
    def test_at_the_margin(self, share: float) -> None:
        """The worst case inside H0, 2 % vs 3 % with a 1 pp margin, still aborts in at most alpha of rollouts."""
        rate, _ = abort_rate(12, 200, stable_rate=0.02, candidate_rate=0.03, share=share, candidate_calls=2000)
        print(f"boundary 2% vs 3%, candidate share {share:.0%}: false abort rate {rate:.1%}")
        assert rate <= 0.05


class TestRegressions:
    """A candidate clearly worse than the margin is aborted, and soon."""

    def test_five_point_regression(self) -> None:
        """2 % -> 7 % at a 10 % canary aborts in nearly every rollout, after a few hundred candidate calls."""
        rate, aborts = abort_rate(21, 200, stable_rate=0.02, candidate_rate=0.07, share=0.1, candidate_calls=2000)
        median = statistics.median(aborts)
        print(f"2% -> 7%: aborted {rate:.1%} of rollouts, median {median:.0f} candidate calls")
        assert rate >= 0.98
        assert median <= 600

    def test_default_tau_power(self) -> None:
        """The default mixing scale (3 margins) catches a 3-point excess and beats tau = margin on larger ones."""
        lines, medians = [], {}
        for candidate_rate, taus in ((0.05, (None,)), (0.07, (None, 0.01)), (0.20, (None, 0.01))):
            for tau in taus:
                rate, aborts = abort_rate(
                    22, 100, stable_rate=0.02, candidate_rate=candidate_rate, share=0.1, candidate_calls=3000, tau=tau
                )
                medians[candidate_rate, tau] = statistics.median(aborts)
                label = "default" if tau is None else f"tau={tau}"
                lines.append(
                    f"2% -> {candidate_rate:.0%} {label:>8}: power {rate:.0%} within 3,000 candidate calls, "
                    f"median {medians[candidate_rate, tau]:.0f}"
                )
                assert rate >= 0.95
        print("\n".join(lines))
        assert medians[0.07, None] < medians[0.07, 0.01]
        assert medians[0.20, None] < medians[0.20, 0.01]


class TestLookingAfterEveryCall:
    """The run shortcut of these simulations finds exactly the p-values of looking after every single call."""

    def test_same_running_minimum(self) -> None:
        """On the same traffic, every-call looks and run-end looks end with the same always-valid p-value."""
        rng = random.Random(31)
        with_evidence = 0
        for _ in range(30):
            runs = list(traffic(rng, stable_rate=0.02, candidate_rate=0.05, share=0.2, candidate_calls=400))
            every, shortcut = SequentialNonInferiority(), SequentialNonInferiority()
            for counts in looks(runs, every_call=True):
                every.update(*counts)
            for counts in looks(runs):
                shortcut.update(*counts)
            assert every.p_value == shortcut.p_value
            with_evidence += every.p_value < 0.5
        assert with_evidence >= 10


class TestSequentialNonInferiority:
    """The gate keeps a running minimum p-value and explains itself."""

    def test_rejects_with_reason(self) -> None:
        """A large excess is rejected and the reason names both rates and the p-value."""
        verdict = SequentialNonInferiority().update(9000, 108, 1000, 79)
        assert verdict.rejected
        assert verdict.reason == f"error rate 7.9% vs 1.2%: non-inferiority rejected (p={verdict.p_value:.2g})"

    def test_within_margin(self) -> None:
        """A difference below the margin is no evidence: p stays 1."""
        verdict = SequentialNonInferiority().update(9000, 90, 1000, 11)
        assert verdict == ErrorRateVerdict(1.0, False, 0.01, 0.011, 0.01)
        assert verdict.reason == "error rate 1.1% vs 1.0%: within margin 1.0 pp (p=1)"

    def test_above_margin_not_yet_significant(self) -> None:
        """An excess without enough data says so instead of claiming the candidate is within the margin."""
        verdict = SequentialNonInferiority().update(90, 1, 10, 1)
        assert not verdict.rejected
        assert "above margin 1.0 pp, not yet significant" in verdict.reason

    def test_p_value_never_rises(self) -> None:
        """Once evidence was seen, better-looking later counts do not raise the p-value."""
        gate = SequentialNonInferiority()
        first = gate.update(9000, 180, 1000, 45).p_value
        later = gate.update(18000, 360, 2000, 40)
        assert first < 1.0
        assert later.p_value == first

    def test_matches_single_look(self) -> None:
        """One update equals the one-look p-value."""
        counts = (9000, 180, 1000, 45)
        assert SequentialNonInferiority().update(*counts).p_value == mixture_p_value(*counts)

    def test_empty_arms(self) -> None:
        """No calls yet: no evidence and zero rates."""
        assert SequentialNonInferiority().update(0, 0, 0, 0) == ErrorRateVerdict(1.0, False, 0.0, 0.0, 0.01)
        assert SequentialNonInferiority().update(0, 0, 50, 50).p_value == 1.0

    @pytest.mark.parametrize("counts", [(10, 11, 5, 0), (10, 0, 5, 6), (10, -1, 5, 0)])
    def test_rejects_impossible_counts(self, counts: Counts) -> None:
        """More errors than calls is a bug upstream, not evidence."""
        with pytest.raises(ValueError, match="errors <= n"):
            SequentialNonInferiority().update(*counts)

    @pytest.mark.parametrize(("kwargs", "message"), [({"margin": -0.1}, "margin"), ({"alpha": 0}, "alpha")])
    def test_rejects_bad_settings(self, kwargs: dict[str, float], message: str) -> None:
        """Bad settings fail at construction."""
        with pytest.raises(ValueError, match=message):
            SequentialNonInferiority(**kwargs)

    def test_update_timing(self) -> None:
        """Print the cost of one look (not asserted: it depends on the machine)."""
        gate = SequentialNonInferiority()
        started = time.perf_counter()
        for i in range(20_000):
            gate.update(9000 + i, 180, 1000, 30)
        print(f"SequentialNonInferiority.update: {(time.perf_counter() - started) / 20_000 * 1e6:.2f} us per look")


def lognormal_sketch(rng: random.Random, n: int, scale: float = 1.0) -> tuple[LatencySketch, list[float]]:
    sketch, values = LatencySketch(), []
    for _ in range(n):
        value = scale * rng.lognormvariate(math.log(300.0), 0.6)
        sketch.add(value)
        values.append(value)
    return sketch, values


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


class TestLatencySketch:
    """Quantiles within the relative accuracy, exact merges, JSON round-trips, bounded size."""

    def test_quantiles_within_two_percent(self) -> None:
        """On 10,000 lognormal latencies every reported quantile is within 2 % of the exact one."""
        sketch, values = lognormal_sketch(random.Random(41), 10_000)
        for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
            estimate = sketch.quantile(q)
            assert estimate is not None
            assert estimate == pytest.approx(exact_quantile(values, q), rel=0.02)

    def test_merge_equals_union(self) -> None:
        """Merging two sketches gives the sketch of all their values."""
        rng = random.Random(42)
        left, left_values = lognormal_sketch(rng, 3000)
        right, right_values = lognormal_sketch(rng, 2000, scale=3.0)
        union = LatencySketch()
        for value in left_values + right_values:
            union.add(value)
        left.add(0.0, 7)
        right.add(-1.0)
        union.add(0.0, 8)
        left.merge(right)
        assert left.to_dict() == union.to_dict()
        assert left.count == 5008

    def test_round_trip(self) -> None:
        """to_dict survives JSON and from_dict rebuilds the same sketch."""
        sketch, _ = lognormal_sketch(random.Random(43), 500)
        sketch.add(0.0, 3)
        data = json.loads(json.dumps(sketch.to_dict()))
        copy = LatencySketch.from_dict(data)
        assert copy.to_dict() == sketch.to_dict()
        assert copy.count == sketch.count == 503
        assert copy.quantile(0.95) == sketch.quantile(0.95)

    def test_empty_and_zero(self) -> None:
        """An empty sketch has no quantiles; zero and negative latencies count as 0 ms."""
        sketch = LatencySketch()
        assert sketch.quantile(0.5) is None
        sketch.add(-3.0)
        sketch.add(0.0)
        sketch.add(100.0)
        assert sketch.count == 3
        assert sketch.quantile(0.5) == 0.0
        assert sketch.quantile(1.0) == pytest.approx(100.0, rel=0.01)

    def test_bounded_buckets(self) -> None:
        """Beyond max_buckets the lowest buckets collapse; the high quantiles stay accurate."""
        sketch = LatencySketch(max_buckets=64)
        for exponent in range(-200, 200):
            sketch.add(1.1**exponent)
        assert len(sketch.to_dict()["bins"]) == 64
        assert sketch.count == 400
        assert sketch.quantile(1.0) == pytest.approx(1.1**199, rel=0.01)

    @pytest.mark.parametrize("value", [math.nan, math.inf])
    def test_rejects_non_finite(self, value: float) -> None:
        """NaN or infinite latencies are bugs upstream."""
        with pytest.raises(ValueError, match="finite"):
            LatencySketch().add(value)

    def test_rejects_merging_different_accuracy(self) -> None:
        """Buckets of different widths cannot be added."""
        with pytest.raises(ValueError, match="relative accuracy"):
            LatencySketch(0.01).merge(LatencySketch(0.02))


class TestLatencyRegressed:
    """The latency gate compares one quantile of the two arms."""

    def test_doubled_latency_fails(self) -> None:
        """A candidate twice as slow fails the p95 gate."""
        rng = random.Random(51)
        stable, stable_values = lognormal_sketch(rng, 2000)
        candidate, candidate_values = lognormal_sketch(rng, 2000, scale=2.0)
        verdict = latency_regressed(stable, candidate)
        assert verdict.failed is True
        assert verdict.ratio == pytest.approx(
            exact_quantile(candidate_values, 0.95) / exact_quantile(stable_values, 0.95), rel=0.03
        )
        assert verdict.candidate_ms is not None
        assert verdict.stable_ms is not None
        assert verdict.reason == (
            f"p95 latency {verdict.candidate_ms:.0f} ms vs {verdict.stable_ms:.0f} ms: {verdict.ratio:.2f}x > 1.5x"
        )

    def test_equal_latency_passes(self) -> None:
        """Arms with the same latency distribution pass."""
        rng = random.Random(52)
        verdict = latency_regressed(lognormal_sketch(rng, 2000)[0], lognormal_sketch(rng, 2000)[0], min_count=400)
        assert verdict.failed is False
        assert verdict.ratio is not None
        assert 0.8 < verdict.ratio < 1.25
        assert "x <= 1.5x" in verdict.reason

    def test_not_enough_data(self) -> None:
        """Below min_count there is no verdict."""
        stable, candidate = LatencySketch(), LatencySketch()
        stable.add(100.0, 500)
        candidate.add(900.0, 10)
        verdict = latency_regressed(stable, candidate, min_count=100, q=0.99)
        assert verdict.failed is None
        assert verdict.reason == "p99 latency not judged: 10 candidate and 500 stable samples, need 100 each"


class TestWilsonInterval:
    """Known values of the Wilson score interval."""

    @pytest.mark.parametrize(
        ("errors", "n", "expected"),
        [
            (10, 100, (0.0552, 0.1744)),
            (0, 10, (0.0, 0.2775)),
            (10, 10, (0.7225, 1.0)),
            (1, 2, (0.0945, 0.9055)),
            (81, 263, (0.2553, 0.3662)),
        ],
    )
    def test_known_values(self, errors: int, n: int, expected: tuple[float, float]) -> None:
        """Matches scipy's ``binomtest(errors, n).proportion_ci(method="wilson")`` to four decimals."""
        low, high = wilson_interval(errors, n)
        assert (round(low, 4), round(high, 4)) == expected

    def test_no_data(self) -> None:
        """No calls: the whole unit interval."""
        assert wilson_interval(0, 0) == (0.0, 1.0)

    def test_against_scipy(self) -> None:
        """Agrees with scipy's Wilson interval (skipped without scipy)."""
        stats = pytest.importorskip("scipy.stats")
        rng = random.Random(62)
        for _ in range(100):
            n = rng.randint(1, 5000)
            errors = rng.randint(0, n)
            reference = stats.binomtest(errors, n).proportion_ci(method="wilson")
            assert wilson_interval(errors, n) == pytest.approx((reference.low, reference.high), abs=1e-6)


class TestSampleRatioMismatch:
    """A chi-square goodness-of-fit test of arm counts against the configured weights."""

    def test_exact_split(self) -> None:
        """5000/5000 on 50/50 fits perfectly."""
        assert sample_ratio_mismatch([5000, 5000], [50, 50]) == pytest.approx(1.0)

    def test_skewed_split(self) -> None:
        """5300/4700 on 50/50 is a mismatch (chi-square 36, p ~ 2e-9)."""
        p = sample_ratio_mismatch([5300, 4700], [50, 50])
        assert p < 0.001
        assert p == pytest.approx(math.erfc(math.sqrt(36 / 2)), rel=1e-9)

    def test_zero_weight_arms_are_left_out(self) -> None:
        """A drained arm does not count."""
        assert sample_ratio_mismatch([900, 100, 3], [90, 10, 0]) == pytest.approx(1.0)
        assert sample_ratio_mismatch([900, 0], [90, 0]) == 1.0
        assert sample_ratio_mismatch([0, 0], [50, 50]) == 1.0

    @pytest.mark.parametrize(
        ("statistic", "df", "expected"),
        [(3.841458820694124, 1, 0.05), (5.991464547107979, 2, 0.05), (11.34486673014437, 3, 0.01), (0.5, 4, 0.9735)],
    )
    def test_chi2_sf_known_values(self, statistic: float, df: int, expected: float) -> None:
        """Critical values from the chi-square table."""
        assert chi2_sf(statistic, df) == pytest.approx(expected, abs=1e-4)

    def test_against_scipy(self) -> None:
        """Agrees with scipy.stats.chisquare on many splits (skipped without scipy)."""
        stats = pytest.importorskip("scipy.stats")
        rng = random.Random(61)
        for _ in range(200):
            arms = rng.randint(2, 5)
            weights = [rng.uniform(0.5, 10.0) for _ in range(arms)]
            total = rng.randint(10, 100_000)
            observed = [max(0, round(total * w / sum(weights) * rng.uniform(0.9, 1.1))) for w in weights]
            if sum(observed) == 0:
                continue
            expected = [sum(observed) * w / sum(weights) for w in weights]
            reference = float(stats.chisquare(observed, expected).pvalue)
            assert sample_ratio_mismatch(observed, weights) == pytest.approx(reference, rel=1e-8, abs=1e-300)

    def test_chi2_sf_against_scipy(self) -> None:
        """The survival function agrees with scipy.stats.chi2.sf across both algorithms' ranges."""
        stats = pytest.importorskip("scipy.stats")
        for df in (1, 2, 3, 5, 10, 40):
            for statistic in (0.01, 0.3, 1.0, 2.5, df - 0.5, df + 0.5, df + 3.0, 30.0, 120.0):
                reference = float(stats.chi2.sf(statistic, df))
                assert chi2_sf(statistic, df) == pytest.approx(reference, rel=1e-9, abs=1e-300)


class TestDocumentation:
    """The examples in the module's docstrings are true."""

    def test_doctests(self) -> None:
        """Every docstring example runs and prints what it shows."""
        failures, tried = doctest.testmod(_stats)
        assert tried > 0
        assert failures == 0
