"""The numbers of one group of served calls (an arm, a route, an endpoint, a time bucket), as every reader counts them.

A ``holyroute.request`` event is read once into a :class:`Call`; a :class:`Tally` adds calls up: calls, errors,
cancelled calls, latency and time-to-first-token quantiles, tokens, cost, unpriced calls, models, finish reasons,
empty answers, quality verdicts, and the response cache's hits, lookups and savings. A cancelled call (the caller
closed a stream early) is counted apart and left out of ``calls``, error rates and quantiles; its tokens and cost
count. Quantiles are exact nearest-rank values up to :data:`EXACT_VALUES` values per group, then within 1 %
(:class:`~holyroute.rollout.stats.LatencySketch`), so that a dashboard following a log for days stays bounded.
Nothing here decides which group a call belongs to: that is :mod:`holyroute.readers.aggregate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from holyroute.readers.log import number
from holyroute.rollout.stats import LatencySketch

__all__ = ["EXACT_VALUES", "MAX_MODELS", "Call", "Quantiles", "Tally", "nearest_rank"]

#: Values a group keeps exactly; beyond them its quantiles come from a sketch (1 % relative error).
EXACT_VALUES: Final = 50_000
#: The values of a request event's ``cache`` field.
_CACHE_RESULTS: Final = frozenset({"hit", "miss", "stored", "bypass"})

#: Upstream models and finish reasons remembered per group; more are not listed.
MAX_MODELS: Final = 64


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank quantile ``q`` (0 < q <= 1) of ``values``: the smallest value with at least ``q`` of them at
    or below it. ``None`` without values.

    >>> nearest_rank([10.0, 30.0, 20.0, 40.0], 0.5)
    20.0
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Quantiles:
    """Values in milliseconds: exact nearest-rank quantiles up to ``limit`` values, then a mergeable sketch.

    >>> latencies = Quantiles()
    >>> for ms in (120.0, 130.0, 900.0):
    ...     latencies.add(ms)
    >>> latencies.quantile(0.5), latencies.count
    (130.0, 3)
    """

    __slots__ = ("_in_order", "_sketch", "_values", "limit")

    def __init__(self, limit: int = EXACT_VALUES) -> None:
        self.limit = limit
        self._values: list[float] = []
        self._in_order = True
        self._sketch: LatencySketch | None = None

    @property
    def count(self) -> int:
        return self._sketch.count if self._sketch is not None else len(self._values)

    @property
    def exact(self) -> bool:
        """Whether the quantiles are exact (no more than ``limit`` values so far)."""
        return self._sketch is None

    def add(self, value: float) -> None:
        if self._sketch is not None:
            self._sketch.add(value)
            return
        values = self._values
        if self._in_order and values and value < values[-1]:
            self._in_order = False
        values.append(value)
        if len(values) > self.limit:
            self._to_sketch()

    def merge(self, other: Quantiles) -> None:
        """Add every value of ``other`` (a sketch on either side makes the result a sketch)."""
        if other._sketch is not None:
            if self._sketch is None:
                self._to_sketch()
            assert self._sketch is not None
            self._sketch.merge(other._sketch)
            return
        for value in other._values:
            self.add(value)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile ``q`` (0 < q <= 1) while exact, else the sketch's; None without values."""
        if self._sketch is not None:
            return self._sketch.quantile(q)
        values = self._values
        if not values:
            return None
        if not self._in_order:
            values.sort()  # timsort: cheap when only the values added since the last look are out of order
            self._in_order = True
        return values[max(0, math.ceil(q * len(values)) - 1)]

    def _to_sketch(self) -> None:
        sketch = LatencySketch()
        for value in self._values:
            sketch.add(value)
        self._sketch, self._values = sketch, []


def _number(value: object) -> float | None:
    """:func:`holyroute.readers.log.number`, with the common cases first (this runs six times per call read)."""
    if value is None:
        return None
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return None
    return number(value)


@dataclass(frozen=True, slots=True)
class Call:
    """What a ``holyroute.request`` event says about one call, read once (total: odd fields become None)."""

    outcome: str | None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: float | None = None
    cost_usd: float | None = None
    unpriced: bool = False
    model: str | None = None
    finish_reason: str | None = None
    quality: bool | None = None
    cache: str | None = None  # hit, miss, stored, bypass (null: the route has no cache)
    saved_usd: float | None = None  # a hit: what the original call cost

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> Call:
        outcome = event.get("outcome")
        cost = _number(event.get("cost_usd"))
        priced = event.get("priced")
        model, finish, quality = event.get("upstream_model"), event.get("finish_reason"), event.get("quality")
        cache = event.get("cache")
        return cls(
            outcome=outcome if isinstance(outcome, str) else None,
            latency_ms=_number(event.get("latency_ms")),
            ttft_ms=_number(event.get("ttft_ms")),
            prompt_tokens=int(_number(event.get("prompt_tokens")) or 0),
            completion_tokens=_number(event.get("completion_tokens")),
            cost_usd=cost,
            # Logs without `priced` (older versions): an answered call with no cost had no price.
            unpriced=priced is False or (priced is None and cost is None and outcome == "ok"),
            model=model if isinstance(model, str) else None,
            finish_reason=finish if isinstance(finish, str) else None,
            quality=quality if isinstance(quality, bool) else None,
            cache=cache if cache in _CACHE_RESULTS else None,
            saved_usd=_number(event.get("saved_usd")) if cache == "hit" else None,
        )

    def failed(self) -> Call:
        """This call as an error of the arm it is charged to (a fallback rescued it); a cancelled call stays so."""
        return replace(self, outcome="error") if self.outcome == "ok" else self


class Tally:
    """Running numbers of one group of calls; groups merge exactly (while their quantiles are exact)."""

    __slots__ = (
        "cache_hits",
        "cache_lookups",
        "calls",
        "cancelled",
        "completion_n",
        "completion_sum",
        "completion_tokens",
        "cost_usd",
        "empty",
        "errors",
        "finish_reasons",
        "judged",
        "latency",
        "models",
        "poor",
        "prompt_tokens",
        "saved_usd",
        "ttft",
        "unpriced",
    )

    def __init__(self) -> None:
        self.calls = self.errors = self.cancelled = self.unpriced = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.completion_n = 0  # answered or failed calls whose completion tokens are known ...
        self.completion_sum = 0.0  # ... and their sum, for the mean
        self.empty = self.judged = self.poor = 0
        self.cost_usd = 0.0
        self.cache_hits = self.cache_lookups = 0  # lookups: hits, misses and stored answers (not bypasses)
        self.saved_usd = 0.0
        self.latency = Quantiles()
        self.ttft = Quantiles()
        self.models: dict[str, None] = {}  # insertion-ordered set
        self.finish_reasons: dict[str, int] = {}

    def add(self, call: Call) -> None:
        # One flat body: every served call passes through about six tallies, so this is the readers' hot loop.
        outcome, completion = call.outcome, call.completion_tokens
        if outcome == "cancelled":
            self.cancelled += 1
        else:
            self.calls += 1
            if outcome == "error":
                self.errors += 1
            if call.latency_ms is not None:
                self.latency.add(call.latency_ms)
            if call.ttft_ms is not None:
                self.ttft.add(call.ttft_ms)
            if completion is not None:
                self.completion_n += 1
                self.completion_sum += completion
            if outcome == "ok":
                if completion == 0:
                    self.empty += 1
                reason = call.finish_reason
                if reason is not None and (reason in self.finish_reasons or len(self.finish_reasons) < MAX_MODELS):
                    self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + 1
            if call.quality is not None:
                self.judged += 1
                if not call.quality:
                    self.poor += 1
        self.prompt_tokens += call.prompt_tokens
        if completion:
            self.completion_tokens += int(completion)
        if call.cost_usd is not None:
            self.cost_usd += call.cost_usd
        cache = call.cache
        if cache is not None and cache != "bypass":
            self.cache_lookups += 1
            if cache == "hit":
                self.cache_hits += 1
                self.saved_usd += call.saved_usd or 0.0
        if call.unpriced:
            self.unpriced += 1
        model = call.model
        if model is not None and model not in self.models and len(self.models) < MAX_MODELS:
            self.models[model] = None

    def merge(self, other: Tally) -> None:
        """Add ``other``'s calls to these."""
        for name in ("calls", "errors", "cancelled", "unpriced", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("completion_n", "completion_sum", "empty", "judged", "poor", "cost_usd", "cache_hits",
                     "cache_lookups", "saved_usd"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency.merge(other.latency)
        self.ttft.merge(other.ttft)
        for model in other.models:
            if len(self.models) < MAX_MODELS:
                self.models[model] = None
        for reason, count in other.finish_reasons.items():
            self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + count

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None

    @property
    def mean_completion_tokens(self) -> float | None:
        return self.completion_sum / self.completion_n if self.completion_n else None

    @property
    def cache_hit_ratio(self) -> float | None:
        """Hits over the calls the response cache looked up (bypassed calls left out); None without any."""
        return self.cache_hits / self.cache_lookups if self.cache_lookups else None

    @property
    def cost_per_call_usd(self) -> float | None:
        """Cost over the calls that have a price (cancelled ones included: they were billed)."""
        billed = self.calls + self.cancelled - self.unpriced
        return self.cost_usd / billed if billed > 0 else None
