"""Rollout statistics: whether a candidate arm errs or lags more than the stable arm, and whether the split holds.

The error-rate gate is an always-valid sequential test (a mixture SPRT), so the rollout analysis may look after
every call without inflating false aborts; latency is compared on mergeable relative-error quantile sketches; the
traffic split is checked for sample ratio mismatch with a chi-square test. Every input is a count or a sketch that
adds up across processes, so state can be summed through a shared backend. This module only computes: it performs
no I/O, never reads a clock, keeps no raw samples and imports nothing outside the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ErrorRateVerdict",
    "LatencySketch",
    "LatencyVerdict",
    "SequentialNonInferiority",
    "chi2_sf",
    "latency_regressed",
    "mixture_p_value",
    "sample_ratio_mismatch",
    "wilson_interval",
]


# --------------------------------------------------------------------------------------------------------------------
# Error rate: mixture sequential probability ratio test (Johari, Pekelis, Walsh, "Always valid inference", 2017).
# --------------------------------------------------------------------------------------------------------------------


def _variance(n_stable: int, errors_stable: int, n_candidate: int, errors_candidate: int) -> float:
    """The variance of the difference of error rates, from smoothed rates (both arms non-empty)."""
    # Smoothed rates only here: x/n stays unbiased for the difference itself, while (x+1)/(n+2) keeps the variance
    # away from zero when an arm has seen no errors (or only errors) yet.
    smooth_s = (errors_stable + 1) / (n_stable + 2)
    smooth_c = (errors_candidate + 1) / (n_candidate + 2)
    return smooth_s * (1.0 - smooth_s) / n_stable + smooth_c * (1.0 - smooth_c) / n_candidate


def _log_lambda(excess: float, var: float, tau2: float) -> float:
    """log(Lambda) for an observed difference ``excess`` above the margin, of variance ``var``."""
    spread = var + tau2
    return 0.5 * math.log(var / spread) + tau2 * excess * excess / (2.0 * var * spread)


def _bad_counts(n_stable: int, errors_stable: int, n_candidate: int, errors_candidate: int) -> ValueError:
    return ValueError(
        f"counts must satisfy 0 <= errors <= n, got stable {errors_stable}/{n_stable}, "
        f"candidate {errors_candidate}/{n_candidate}"
    )


def _default_tau(margin: float) -> float:
    # The mixture is most powerful against an excess (d - margin) of about tau, and erring either way costs unequally.
    # Too small a tau is expensive for large excesses: the evidence needed grows like (1 + V / tau^2), so a badly
    # broken candidate would take two to three times the calls to abort. Too large a tau costs small excesses only
    # through the log(1 + tau^2 / V) term. A rollout must above all catch excesses of a few margins quickly, hence
    # three margins, with a 1 pp floor so that margin=0 still aborts gross regressions fast. Simulated with a 1 pp
    # margin, 2 % stable errors and a 10 % canary (harness in tests/test_stats.py), median candidate calls to abort:
    # 2 -> 5 %: ~1150 (tau = margin: ~1310), 2 -> 7 %: ~370 (~625), 2 -> 20 %: ~105 (~260); only an excess right
    # next to the margin (2 -> 4 %) is detected slightly less often (73 % vs 79 % within 5,000 candidate calls).
    return max(3.0 * margin, 0.01)


def mixture_p_value(
    n_stable: int,
    errors_stable: int,
    n_candidate: int,
    errors_candidate: int,
    *,
    margin: float = 0.01,
    tau: float | None = None,
) -> float:
    """The p-value ``min(1, 1/Lambda)`` of a single look; :class:`SequentialNonInferiority` keeps the running minimum.

    ``Lambda`` is the normal-mixture likelihood ratio for the difference of error rates (candidate minus stable)
    against the boundary ``margin``, counted only when the observed difference exceeds the margin.

    >>> round(mixture_p_value(9000, 180, 1000, 50), 3)
    0.102
    >>> mixture_p_value(9000, 180, 1000, 25)
    1.0
    """
    if not (0 <= errors_stable <= n_stable and 0 <= errors_candidate <= n_candidate):
        raise _bad_counts(n_stable, errors_stable, n_candidate, errors_candidate)
    if n_stable == 0 or n_candidate == 0:
        return 1.0
    excess = errors_candidate / n_candidate - errors_stable / n_stable - margin
    if excess <= 0.0:
        return 1.0
    if tau is not None and not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive number or None, got {tau!r}")
    scale = _default_tau(margin) if tau is None else tau
    log_lambda = _log_lambda(excess, _variance(n_stable, errors_stable, n_candidate, errors_candidate), scale * scale)
    return math.exp(-log_lambda) if log_lambda > 0.0 else 1.0


@dataclass(frozen=True, slots=True)
class ErrorRateVerdict:
    """What the error-rate gate concluded at one look.

    ``p_value`` is always valid: the running minimum over every look so far, so it never rises. ``rejected`` means
    the candidate's error rate exceeds the stable arm's by more than ``margin``, and the rollout must abort.
    """

    p_value: float
    rejected: bool
    stable_rate: float
    candidate_rate: float
    margin: float

    @property
    def reason(self) -> str:
        """A human-readable account, e.g. ``"error rate 7.9% vs 1.2%: non-inferiority rejected (p=0.003)"``."""
        rates = f"error rate {self.candidate_rate:.1%} vs {self.stable_rate:.1%}"
        if self.rejected:
            return f"{rates}: non-inferiority rejected (p={self.p_value:.2g})"
        if self.candidate_rate - self.stable_rate > self.margin:
            return f"{rates}: above margin {self.margin * 100:.1f} pp, not yet significant (p={self.p_value:.2g})"
        return f"{rates}: within margin {self.margin * 100:.1f} pp (p={self.p_value:.2g})"


class SequentialNonInferiority:
    """Always-valid test that the candidate's error rate is no worse than the stable arm's plus ``margin``.

    H0: ``p_candidate - p_stable <= margin``. Feed the cumulative counts of one analysis window (both arms over the
    same period) as often as you like, after every call if need be: the chance that H0 is ever rejected while it
    holds stays at most ``alpha``. Looking less often, or resuming with fresh state after a restart, only makes
    rejection rarer. Use a new instance for each window, e.g. each rollout step.

    The test is the mixture SPRT of Johari, Pekelis and Walsh on the two-sample normal approximation. With
    ``d = x_c/n_c - x_s/n_s``, ``V`` the variance of ``d`` from smoothed rates and a ``N(margin, tau^2)`` mixture over
    the true difference, ``Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (d - margin)^2 / (2 V (V + tau^2)))``. When the
    true difference equals the margin, ``Lambda`` is (asymptotically) a nonnegative martingale with mean 1, so by
    Ville's inequality it ever reaches ``1/alpha`` with probability at most ``alpha``; the p-value is the running
    minimum of ``min(1, 1/Lambda)`` and is below ``alpha`` exactly when that has happened.

    Evidence counts only when ``d > margin``. That is necessary, since the two-sided mixture would otherwise also
    "reject" a candidate much *better* than the stable arm, and it makes the test conservative: the rejections left
    are the upper-tail crossings of the two-sided test, roughly half of its ``alpha`` at the boundary of H0. Inside H0
    (true difference below the margin) ``d`` runs pathwise below its boundary-case path, so those upper crossings
    only get rarer, and the type I error stays at most ``alpha`` over all of H0. The normal approximation, the plug-in
    variance and any change of the split ratio within a window make this approximate; the simulations in
    tests/test_stats.py check it at a 10 % canary and at an equal split (false-abort rates of 0-1 % at alpha = 5 %).

    >>> gate = SequentialNonInferiority(margin=0.01)
    >>> gate.update(9000, 180, 1000, 60).reason
    'error rate 6.0% vs 2.0%: non-inferiority rejected (p=0.0033)'
    """

    __slots__ = ("_log_p_floor", "_p_value", "_tau2", "alpha", "margin", "tau")

    def __init__(self, *, margin: float = 0.01, alpha: float = 0.05, tau: float | None = None) -> None:
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin!r}: it is an absolute difference of error rates")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if tau is not None and not (tau > 0.0 and math.isfinite(tau)):
            raise ValueError(f"tau must be a positive number or None (for a default tied to the margin), got {tau!r}")
        self.margin = margin
        self.alpha = alpha
        self.tau = _default_tau(margin) if tau is None else tau
        self._tau2 = self.tau * self.tau
        self._p_value = 1.0
        self._log_p_floor = 0.0  # -log(p_value): a look moves the p-value only if its log(Lambda) beats this

    @property
    def p_value(self) -> float:
        """The always-valid p-value so far (1.0 before any evidence)."""
        return self._p_value

    def update(self, n_stable: int, errors_stable: int, n_candidate: int, errors_candidate: int) -> ErrorRateVerdict:
        """Look at the cumulative counts of the window so far and say whether non-inferiority is rejected."""
        # This runs on the request path: one pass, and no object but the verdict.
        if not (0 <= errors_stable <= n_stable and 0 <= errors_candidate <= n_candidate):
            raise _bad_counts(n_stable, errors_stable, n_candidate, errors_candidate)
        stable_rate = errors_stable / n_stable if n_stable else 0.0
        candidate_rate = errors_candidate / n_candidate if n_candidate else 0.0
        excess = candidate_rate - stable_rate - self.margin
        if excess > 0.0 and n_stable:  # one-sided: a difference at or below the margin is no evidence at all
            var = _variance(n_stable, errors_stable, n_candidate, errors_candidate)
            log_lambda = _log_lambda(excess, var, self._tau2)
            if log_lambda > self._log_p_floor:
                self._p_value = math.exp(-log_lambda)
                self._log_p_floor = log_lambda
        p_value = self._p_value
        return ErrorRateVerdict(p_value, p_value <= self.alpha, stable_rate, candidate_rate, self.margin)


# --------------------------------------------------------------------------------------------------------------------
# Proportions and sample ratio mismatch.
# --------------------------------------------------------------------------------------------------------------------


def wilson_interval(errors: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``errors / n`` (95 % by default); ``(0.0, 1.0)`` when ``n == 0``.

    >>> tuple(round(x, 4) for x in wilson_interval(10, 100))
    (0.0552, 0.1744)
    """
    if not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n, got {errors}/{n}")
    if n == 0:
        return (0.0, 1.0)
    rate = errors / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (rate + z2 / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1.0 - rate) / n + z2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


_GAMMA_EPS = 1e-15
_GAMMA_MAX_ITER = 10_000


def _upper_gamma_regularized(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a): a power series below ``a + 1``, Lentz's continued fraction above."""
    if x <= 0.0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(_GAMMA_MAX_ITER):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _GAMMA_EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    fraction = d
    for i in range(1, _GAMMA_MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        fraction *= delta
        if abs(delta - 1.0) < _GAMMA_EPS:
            break
    return min(1.0, math.exp(log_prefix) * fraction)


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X chi-square distributed with ``df`` degrees of freedom.

    >>> round(chi2_sf(3.841458820694124, 1), 6)
    0.05
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if statistic <= 0.0:
        return 1.0
    if df == 1:
        return math.erfc(math.sqrt(statistic / 2.0))
    return _upper_gamma_regularized(df / 2.0, statistic / 2.0)


def sample_ratio_mismatch(observed: Sequence[int], weights: Sequence[float]) -> float:
    """The p-value that arm counts ``observed`` were drawn with the configured ``weights`` (chi-square, df = arms - 1).

    A tiny p-value (say below 0.001) means the split itself is broken, and no comparison between the arms can be
    trusted. Arms with weight 0 are left out; 1.0 when fewer than two arms remain or nothing was observed.

    >>> round(sample_ratio_mismatch([5000, 5000], [50, 50]), 6)
    1.0
    >>> sample_ratio_mismatch([5300, 4700], [50, 50]) < 0.001
    True
    """
    if len(observed) != len(weights):
        raise ValueError(f"observed has {len(observed)} arms but weights has {len(weights)}")
    if any(count < 0 for count in observed):
        raise ValueError(f"observed counts must be non-negative, got {list(observed)}")
    if any(not (weight >= 0.0 and math.isfinite(weight)) for weight in weights):
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)}")
    pairs = [(count, weight) for count, weight in zip(observed, weights, strict=True) if weight > 0.0]
    total = sum(count for count, _ in pairs)
    if len(pairs) < 2 or total == 0:
        return 1.0
    weight_sum = sum(weight for _, weight in pairs)
    statistic = 0.0
    for count, weight in pairs:
        expected = total * weight / weight_sum
        statistic += (count - expected) ** 2 / expected
    return chi2_sf(statistic, len(pairs) - 1)


# --------------------------------------------------------------------------------------------------------------------
# Latency: a DDSketch-style quantile sketch and the regression gate.
# --------------------------------------------------------------------------------------------------------------------


class LatencySketch:
    """A mergeable quantile sketch of latencies in milliseconds, with bounded relative error (DDSketch).

    A value ``x > 0`` lands in bucket ``ceil(log(x) / log(gamma))`` with ``gamma = (1 + a) / (1 - a)``, and every
    quantile is answered within relative error ``a`` (``relative_accuracy``) of a value of the right rank. Zero and
    negative values share one zero bucket. Sketches with the same accuracy merge exactly by adding bucket counts, so
    per-process sketches can be summed. Beyond ``max_buckets`` the lowest buckets are collapsed into one, which only
    degrades the accuracy of the lowest quantiles (2048 buckets at 1 % cover a dynamic range of about e^40).

    >>> sketch = LatencySketch()
    >>> for ms in (120.0, 130.0, 900.0):
    ...     sketch.add(ms)
    >>> round(sketch.quantile(0.5))
    130
    """

    __slots__ = ("_bins", "_count", "_inv_log_gamma", "_zero_count", "max_buckets", "relative_accuracy")

    def __init__(self, relative_accuracy: float = 0.01, max_buckets: int = 2048) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1, got {max_buckets!r}")
        self.relative_accuracy = relative_accuracy
        self.max_buckets = max_buckets
        gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(gamma)
        self._bins: dict[int, int] = {}
        self._zero_count = 0
        self._count = 0

    @property
    def count(self) -> int:
        """How many values were added (including merged ones)."""
        return self._count

    def add(self, value: float, count: int = 1) -> None:
        """Record ``value`` (milliseconds) ``count`` times."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if not math.isfinite(value):
            raise ValueError(f"latency must be a finite number, got {value!r}")
        if count == 0:
            return
        self._count += count
        if value <= 0.0:
            self._zero_count += count
            return
        key = math.ceil(math.log(value) * self._inv_log_gamma)
        bins = self._bins
        if key in bins:
            bins[key] += count
        else:
            bins[key] = count
            if len(bins) > self.max_buckets:
                self._collapse()

    def merge(self, other: LatencySketch) -> None:
        """Add every value recorded in ``other`` to this sketch."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge sketches of relative accuracy {other.relative_accuracy} into {self.relative_accuracy}"
            )
        bins = self._bins
        for key, count in other._bins.items():
            bins[key] = bins.get(key, 0) + count
        self._zero_count += other._zero_count
        self._count += other._count
        if len(bins) > self.max_buckets:
            self._collapse()

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0 <= q <= 1) within the relative accuracy, or None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        return self._value_at(q) if self._count else None

    def _value_at(self, q: float) -> float:
        rank = q * (self._count - 1)
        seen = self._zero_count
        if seen > rank:
            return 0.0
        key = 0
        for key in sorted(self._bins):
            seen += self._bins[key]
            if seen > rank:
                break
        # The midpoint (in relative terms) of bucket (gamma^(key-1), gamma^key].
        log_gamma = 1.0 / self._inv_log_gamma
        return 2.0 * math.exp(key * log_gamma) / (1.0 + math.exp(log_gamma))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe snapshot: accuracy, bucket limit, zero bucket and ``[index, count]`` pairs."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "max_buckets": self.max_buckets,
            "zero_count": self._zero_count,
            "bins": [[key, self._bins[key]] for key in sorted(self._bins)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencySketch:
        """The sketch that :meth:`to_dict` wrote."""
        sketch = cls(float(data["relative_accuracy"]), int(data["max_buckets"]))
        zero_count = int(data["zero_count"])
        if zero_count < 0:
            raise ValueError(f"zero_count must be >= 0, got {zero_count}")
        sketch._zero_count = zero_count
        total = zero_count
        for key, count in data["bins"]:
            if int(count) < 0:
                raise ValueError(f"bucket counts must be >= 0, got {count} in bucket {key}")
            sketch._bins[int(key)] = sketch._bins.get(int(key), 0) + int(count)
            total += int(count)
        sketch._count = total
        if len(sketch._bins) > sketch.max_buckets:
            sketch._collapse()
        return sketch

    def _collapse(self) -> None:
        keys = sorted(self._bins)
        excess = len(keys) - self.max_buckets
        floor = keys[excess]
        for key in keys[:excess]:
            self._bins[floor] += self._bins.pop(key)


@dataclass(frozen=True, slots=True)
class LatencyVerdict:
    """What the latency gate concluded: ``failed`` is None when there is not enough data to say."""

    failed: bool | None
    stable_ms: float | None
    candidate_ms: float | None
    ratio: float | None
    reason: str


def _quantile_label(q: float) -> str:
    return f"p{q * 100:.10g}"


def latency_regressed(
    stable: LatencySketch,
    candidate: LatencySketch,
    *,
    max_ratio: float = 1.5,
    q: float = 0.95,
    min_count: int = 1,
) -> LatencyVerdict:
    """Whether the candidate's latency quantile ``q`` exceeds ``max_ratio`` times the stable arm's.

    This is a threshold on point estimates, not a significance test: raise ``min_count`` (at least ``20 / (1 - q)``
    is a sensible floor) so that a handful of slow calls cannot decide a rollout.

    >>> stable, candidate = LatencySketch(), LatencySketch()
    >>> stable.add(400.0, 100)
    >>> candidate.add(800.0, 100)
    >>> latency_regressed(stable, candidate).reason
    'p95 latency 804 ms vs 399 ms: 2.01x > 1.5x'
    """
    if not (max_ratio > 0.0 and math.isfinite(max_ratio)):
        raise ValueError(f"max_ratio must be a positive number, got {max_ratio!r}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    label = _quantile_label(q)
    needed = max(min_count, 1)
    if stable.count < needed or candidate.count < needed:
        reason = (
            f"{label} latency not judged: {candidate.count} candidate and {stable.count} stable samples, "
            f"need {needed} each"
        )
        return LatencyVerdict(None, None, None, None, reason)
    stable_ms = stable._value_at(q)
    candidate_ms = candidate._value_at(q)
    if stable_ms > 0.0:
        ratio = candidate_ms / stable_ms
    elif candidate_ms > 0.0:
        ratio = math.inf
    else:
        ratio = 1.0  # both at 0 ms
    failed = ratio > max_ratio
    relation = ">" if failed else "<="
    reason = f"{label} latency {candidate_ms:.0f} ms vs {stable_ms:.0f} ms: {ratio:.2f}x {relation} {max_ratio:g}x"
    return LatencyVerdict(failed, stable_ms, candidate_ms, ratio, reason)
