"""Reports from holyroute's event log: what each route and arm served, what failed, how fast, what it cost, and a
verdict for every arm against the route's control arm.

A renderer of :class:`holyroute.readers.aggregate.Aggregate`, the one aggregation that the dashboard renders too: it
never reads the log or an event itself (an import-linter contract says so), so every number here is the number the
dashboard shows. The only I/O is writing one image for ``--plot``. It never decides routing: a verdict is advice for
a person or a script, not a rollout step.

``summarise`` / ``render_table`` are the demo's per-endpoint table. ``build_report`` is ``holyroute report``:

- **Which calls count** (decided by the aggregation). Served calls are ``holyroute.request`` events without
  ``"shadow": true``, each charged to an arm by :func:`holyroute.readers.log.charged_arm`, as the rollout analysis
  does: a call rescued by a fallback counts as an error of the arm the split chose (``split_arm``). A log from
  before ``split_arm`` does not say that arm, so its fallback calls are shown on their own lines and count for no
  arm. A cancelled call (the caller closed a stream early) is counted as ``cancelled`` and left out of ``calls``,
  error rates, latency and verdicts, as the rollout analysis does; its tokens and cost count.
- **Numbers.** Error rate = errors / calls with a 95 % Wilson interval; p50/p95 of ``latency_ms`` and ``ttft_ms`` are
  exact nearest-rank quantiles of the values (beyond 50,000 values in one arm, within 1 %); cost per call = total
  cost / (calls + cancelled - unpriced), where a call is unpriced when its event says ``priced: false``.
- **Verdicts** against the control arm (the rollout's stable arm or the first configured target with a configuration,
  else the arm with the most calls): ROLLBACK when the sequential non-inferiority test of the error rate, fed the
  final counts, rejects (valid at any sample size, like the rollout analysis); else WAIT while either arm has fewer
  than ``min_calls``; else ROLLBACK when p95 latency > ``max_latency_ratio`` x the control's; else PROMOTE when the
  observed error rate is within ``margin`` of the control's (and would stay so were every fallback call the arm's
  failure); else CONTINUE. The control arm itself gets CONTROL. A rollout candidate whose latest ``holyroute.rollout``
  event says the rollout aborted it (not by hand) gets ROLLBACK, as the rollout analysis decided.
- **Sample ratio mismatch** compares per-arm counts (cancelled calls included: the split assigned them) with the
  configured weights. It needs a configuration, and is skipped for rollout routes, whose weight changes by step at
  times the log does not record.

``report_json`` gives one document with these keys (stable; new keys may be added, none renamed)::

    {"source": str, "config": str | null, "settings": {"margin", "alpha", "max_latency_ratio", "min_calls"},
     "events": {"request": int, "served": int, "shadow": int, "other_holyroute": int,
                "skipped_not_json": int, "skipped_not_holyroute": int, "skipped_malformed": int,
                "malformed_request": int, "dropped_names": int, "outcomes": {outcome: int}},
     "notes": [str], "routes_without_calls": [str],
     "routes": [{"route": str, "configured": bool, "control": str | null, "control_basis": str,
                 "arms": [ARM + {"verdict": {"verdict": "CONTROL|WAIT|ROLLBACK|PROMOTE|CONTINUE",
                                            "reason": str, "p_value": float | null, "latency_ratio": float | null}}],
                 "fallbacks": [ARM + {"fallback": str}],
                 "srm": {"checked": bool, "p_value": float | null, "warning": bool, "message": str,
                         "observed": {arm: int}, "weights": {arm: float}},
                 "shadow": null | {"served": ARM, "shadow": [ARM]},
                 "cache": null | {"hits": int, "lookups": int, "hit_ratio": float | null, "saved_usd": float}}]}
    ARM = {"arm", "calls", "errors", "cancelled", "error_rate", "error_rate_ci_low", "error_rate_ci_high",
           "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms", "prompt_tokens", "completion_tokens",
           "mean_completion_tokens", "cost_usd", "cost_per_call_usd", "unpriced", "upstream_models"}

``events.request`` counts the well-formed request events reported on (of ``--route`` only, when given); request
events without a route name are ``malformed_request``. A line whose numeric field is not a finite number in range
(``latency_ms: 1e999``, a 400-digit int, a string) is skipped whole and counted in ``skipped_malformed``. A rate,
quantile or mean with no data is ``null``. ``dropped_names`` counts calls and events of routes, arms or endpoints
beyond the aggregation's bounds (256 of each), which no number includes. The demo's per-endpoint table counts every
call that ended on an endpoint (shadow copies too, cancelled calls apart) and every failover away from it.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from holyroute.readers.aggregate import Aggregate, RouteRecord, Series, time_series
from holyroute.readers.tally import Tally, nearest_rank
from holyroute.rollout.stats import SequentialNonInferiority, sample_ratio_mismatch, wilson_interval

if TYPE_CHECKING:
    from holyroute.config.schema import Config

__all__ = [
    "ArmStats",
    "PlotUnavailableError",
    "Report",
    "RouteReport",
    "Row",
    "Series",
    "Settings",
    "ShadowComparison",
    "SrmCheck",
    "Verdict",
    "build_report",
    "judge",
    "load_report_config",
    "nearest_rank",
    "render_markdown",
    "render_report",
    "render_table",
    "report_json",
    "require_matplotlib",
    "summarise",
    "time_series",
    "write_plot",
]

SRM_THRESHOLD = 0.001
_Z95 = NormalDist().inv_cdf(0.975)  # exact, so the interval matches other tools to the last digit


_MISSING_VAR = re.compile(r"^\s*- (\S+): environment variable ([A-Za-z_][A-Za-z0-9_]*) is not set", re.MULTILINE)


def load_report_config(path: str | Path) -> tuple[Config, list[str]]:
    """The configuration, loadable without its secrets: a report needs routes and weights, not keys.

    Variables the configuration names but the environment lacks (typically API keys on a laptop) are filled with
    placeholders, and the names are returned. Raises :class:`ConfigError` for any other problem.
    """
    import os

    from holyroute.config.schema import load_config
    from holyroute.exceptions import ConfigError

    try:
        return load_config(path), []
    except ConfigError as exc:
        missing = {name: where for where, name in _MISSING_VAR.findall(str(exc))}
        if not missing:
            raise
        stand_ins = {
            name: "http://unset.invalid" if where.endswith("base_url") else "unset" for name, where in missing.items()
        }
        # Any error now is a real one (the unset variables are left out of it): raise that.
        return load_config(path, environ={**os.environ, **stand_ins}), sorted(missing)


# ---- the demo's per-endpoint table -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One route / arm / endpoint line of the summary: the calls that ended there, and failovers away from it."""

    route: str
    arm: str
    endpoint: str
    tally: Tally = field(default_factory=Tally)
    failovers: int = 0

    @property
    def calls(self) -> int:
        return self.tally.calls

    @property
    def errors(self) -> int:
        return self.tally.errors

    @property
    def tokens(self) -> int:
        return self.tally.prompt_tokens + self.tally.completion_tokens

    @property
    def cost_usd(self) -> float:
        return self.tally.cost_usd

    @property
    def unpriced(self) -> int:
        return self.tally.unpriced

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of latency in ms; ``None`` without data."""
        return self.tally.latency.quantile(q / 100)


def summarise(source: Aggregate) -> list[Row]:
    """Rows for every (route, arm, endpoint) that served or failed a call, sorted."""
    rows = [Row(*key, record.tally, record.failovers) for key, record in source.rows.items()]
    return sorted(rows, key=lambda r: (r.route, r.arm, r.endpoint))


def render_table(rows: list[Row]) -> str:
    """A fixed-width text table of the rows, with a total line."""
    header = ("route", "arm", "endpoint", "calls", "errors", "failovers", "p50 ms", "p95 ms", "tokens", "cost USD")
    total = Row("total", "", "", Tally(), sum(r.failovers for r in rows))
    for r in rows:
        total.tally.merge(r.tally)
    lines = [_cells(r) for r in [*rows, total]]
    out = _fixed_width(header, lines[:-1], frozenset(range(3, len(header))), total=lines[-1])
    if total.unpriced:
        out.append("* some calls have no price for their model; add it under 'prices'")
    return "\n".join(out)


def _cells(r: Row) -> tuple[str, ...]:
    return (
        r.route,
        r.arm,
        r.endpoint,
        str(r.calls),
        str(r.errors),
        str(r.failovers),
        _ms(r.percentile(50)),
        _ms(r.percentile(95)),
        str(r.tokens),
        f"{r.cost_usd:.6f}" + ("*" if r.unpriced else ""),
    )


def _fixed_width(
    header: Sequence[str],
    lines: Sequence[Sequence[str]],
    numeric: frozenset[int],
    *,
    total: Sequence[str] | None = None,
    indent: str = "",
) -> list[str]:
    everything = [*lines, *([total] if total is not None else [])]
    widths = [max(len(header[i]), *(len(line[i]) for line in everything)) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        text = "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return indent + text.rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    out = [fmt(header), rule, *(fmt(line) for line in lines)]
    if total is not None:
        out += [rule, fmt(total)]
    return out


# ---- the report's model ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """How arms are judged: the error-rate margin and test level, the latency ratio, the calls needed per arm."""

    margin: float = 0.01
    alpha: float = 0.05
    max_latency_ratio: float = 1.5
    min_calls: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"--margin must be in [0, 1), got {self.margin:g}: it is an absolute difference (0.01)")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"--alpha must be in (0, 1), got {self.alpha:g}")
        if not (self.max_latency_ratio > 0.0 and math.isfinite(self.max_latency_ratio)):
            raise ValueError(f"--max-latency-ratio must be a positive number, got {self.max_latency_ratio:g}")
        if self.min_calls < 1:
            raise ValueError(f"--min-calls must be at least 1, got {self.min_calls}")


VerdictName = Literal["CONTROL", "WAIT", "ROLLBACK", "PROMOTE", "CONTINUE"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """An arm's verdict against the control arm, with the reason; ``p_value`` is the error-rate test's."""

    verdict: VerdictName
    reason: str
    p_value: float | None = None
    latency_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class ArmStats:
    """The numbers of one arm (or of a fallback, a shadow target, or a whole route's served calls)."""

    arm: str
    calls: int
    errors: int
    cancelled: int
    error_rate: float | None
    error_rate_ci: tuple[float, float] | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    mean_completion_tokens: float | None
    cost_usd: float
    cost_per_call_usd: float | None
    unpriced: int
    upstream_models: tuple[str, ...]
    fallback: str | None = None
    verdict: Verdict | None = None
    finish_reasons: Mapping[str, int] = field(default_factory=dict)  # answered calls by finish_reason
    empty: int = 0  # answered calls with no completion tokens
    judged: int = 0  # answers the application's quality callback looked at ...
    poor: int = 0  # ... and found wanting


@dataclass(frozen=True, slots=True)
class SrmCheck:
    """Whether the observed split matches the configured weights (sample ratio mismatch)."""

    checked: bool
    message: str
    p_value: float | None = None
    warning: bool = False
    observed: Mapping[str, int] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """A route's served calls (all arms) next to its shadow copies (per shadow target)."""

    served: ArmStats
    shadows: tuple[ArmStats, ...]


@dataclass(frozen=True, slots=True)
class RouteReport:
    """One route: its arms with verdicts, its fallback calls, the split check and the shadow comparison."""

    route: str
    configured: bool
    control: str | None
    control_basis: str
    arms: tuple[ArmStats, ...]
    fallbacks: tuple[ArmStats, ...]
    srm: SrmCheck
    shadow: ShadowComparison | None
    cache: CacheSummary | None = None  # the route's calls that the response cache looked up, when any


@dataclass(frozen=True, slots=True)
class CacheSummary:
    """What the response cache did for a route's served calls: hits among lookups (calls it did not bypass), and what
    the hits saved (what their original calls cost). Hits are in no arm's numbers: they measure no arm."""

    hits: int
    lookups: int
    hit_ratio: float | None
    saved_usd: float

    @classmethod
    def of(cls, tally: Tally) -> CacheSummary | None:
        if not tally.cache_lookups:
            return None
        return cls(tally.cache_hits, tally.cache_lookups, tally.cache_hit_ratio, tally.saved_usd)

    def line(self) -> str:
        return (
            f"response cache: {self.hits} hits of {self.lookups} lookups ({_pct(self.hit_ratio)}), "
            f"saved {self.saved_usd:.6f} USD (hits are in no arm's numbers)"
        )


@dataclass(frozen=True, slots=True)
class Report:
    """The whole report: where it came from, how it judged, and one entry per route."""

    source: str
    config: str | None
    settings: Settings
    request_events: int
    served_events: int
    shadow_events: int
    other_events: int
    skipped_not_json: int
    skipped_not_holyroute: int
    malformed: int
    routes: tuple[RouteReport, ...]
    skipped_malformed: int = 0  # lines with an unusable field (a number out of range, a wrong type)
    routes_without_calls: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    dropped_names: int = 0  # calls and events of routes, arms or endpoints beyond the aggregation's bounds
    outcomes: Mapping[str, int] = field(default_factory=dict)  # request events by outcome, every route


# ---- computing it: verdicts and the split check over the aggregation -------------------------------------------


def _stats(tally: Tally, arm: str, fallback: str | None = None) -> ArmStats:
    return ArmStats(
        arm=arm,
        calls=tally.calls,
        errors=tally.errors,
        cancelled=tally.cancelled,
        error_rate=tally.error_rate,
        error_rate_ci=wilson_interval(tally.errors, tally.calls, _Z95) if tally.calls else None,
        latency_p50_ms=tally.latency.quantile(0.50),
        latency_p95_ms=tally.latency.quantile(0.95),
        ttft_p50_ms=tally.ttft.quantile(0.50),
        ttft_p95_ms=tally.ttft.quantile(0.95),
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        mean_completion_tokens=tally.mean_completion_tokens,
        cost_usd=tally.cost_usd,
        cost_per_call_usd=tally.cost_per_call_usd,
        unpriced=tally.unpriced,
        upstream_models=tuple(sorted(tally.models)),
        fallback=fallback,
        finish_reasons=dict(sorted(tally.finish_reasons.items())),
        empty=tally.empty,
        judged=tally.judged,
        poor=tally.poor,
    )


def judge(control: ArmStats, arm: ArmStats, settings: Settings, *, unattributed: int = 0) -> Verdict:
    """The verdict for ``arm`` against ``control``.

    ``unattributed`` calls were rescued by a fallback after an arm of the route failed them, and the log does not say
    which arm. They cannot convict ``arm``, but they hold back a promotion that would not survive them all being its
    failures: a broken candidate whose every failure is rescued must not look clean.

    >>> def arm(name, calls, errors, p95):
    ...     return ArmStats(name, calls, errors, 0, errors / calls, None, p95, p95, None, None, 0, 0, None,
    ...                     0.0, None, 0, ())
    >>> judge(arm("old", 1000, 20, 400.0), arm("new", 1000, 80, 400.0), Settings()).verdict
    'ROLLBACK'
    >>> judge(arm("old", 1000, 20, 400.0), arm("new", 1000, 22, 420.0), Settings()).reason
    'error rate 2.2% vs 2.0%: within margin 1.0 pp (p=1); p95 latency 420 ms vs 400 ms: 1.05x <= 1.5x'
    """
    gate = SequentialNonInferiority(margin=settings.margin, alpha=settings.alpha)
    errors = gate.update(control.calls, control.errors, arm.calls, arm.errors)
    if errors.rejected:
        return Verdict("ROLLBACK", errors.reason, errors.p_value)
    needed = settings.min_calls
    if arm.calls < needed or control.calls < needed:
        counts = f"{arm.calls} calls on {arm.arm} and {control.calls} on control {control.arm}, need {needed} each"
        return Verdict("WAIT", f"{counts}; {errors.reason}", errors.p_value)
    ratio, latency_reason = _latency_ratio(control.latency_p95_ms, arm.latency_p95_ms, settings.max_latency_ratio)
    if ratio is not None and ratio > settings.max_latency_ratio:
        return Verdict("ROLLBACK", f"{latency_reason}; {errors.reason}", errors.p_value, ratio)
    reason = f"{errors.reason}; {latency_reason}"
    within = errors.candidate_rate - errors.stable_rate <= settings.margin
    if within and ratio is not None and unattributed:
        worst = (arm.errors + unattributed) / (arm.calls + unattributed)
        if worst - errors.stable_rate > settings.margin:
            held = (
                f"not promoted: {unattributed} fallback calls may be {arm.arm}'s failures, "
                f"which would make its error rate {worst:.1%}"
            )
            return Verdict("CONTINUE", f"{reason}; {held}", errors.p_value, ratio)
    if within and ratio is not None:
        return Verdict("PROMOTE", reason, errors.p_value, ratio)
    return Verdict("CONTINUE", reason, errors.p_value, ratio)


def _latency_ratio(control_ms: float | None, arm_ms: float | None, limit: float) -> tuple[float | None, str]:
    if control_ms is None or arm_ms is None:
        return None, "p95 latency not judged: no latency values"
    # Against a 0 ms control, only an arm at 0 ms too is no slower.
    ratio = arm_ms / control_ms if control_ms > 0.0 else (1.0 if arm_ms <= 0.0 else math.inf)
    relation = ">" if ratio > limit else "<="
    values = f"{_ms_short(arm_ms)} ms vs {_ms_short(control_ms)} ms"
    return ratio, f"p95 latency {values}: {ratio:.2f}x {relation} {limit:g}x"


def _ms_short(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def build_report(
    source: Aggregate,
    config: Config | None = None,
    *,
    settings: Settings | None = None,
    route: str | None = None,
    config_path: str | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """The report over every route of the aggregated log (or only ``route``), judged with ``settings``."""
    settings = settings or Settings()
    routes = {
        name: record
        for name, record in source.routes.items()
        if route in (None, name) and (record.served_events or record.shadow_events)
    }
    served = sum(record.served_events for record in routes.values())
    shadows = sum(record.shadow_events for record in routes.values())
    reports = tuple(_route_report(name, routes[name], config, settings) for name in sorted(routes))
    quiet: tuple[str, ...] = ()
    if config is not None:
        quiet = tuple(name for name in config.routes if name not in routes and route in (None, name))
    return Report(
        source=source.source,
        config=config_path,
        settings=settings,
        request_events=served + shadows,
        served_events=served,
        shadow_events=shadows,
        other_events=source.events - source.request_events,
        skipped_not_json=source.not_json,
        skipped_not_holyroute=source.not_holyroute,
        skipped_malformed=source.malformed,
        malformed=source.malformed_requests,
        routes=reports,
        routes_without_calls=quiet,
        notes=tuple(notes),
        dropped_names=source.dropped_names,
        outcomes=dict(sorted(source.outcomes.items())),
    )


def _route_report(name: str, record: RouteRecord, config: Config | None, settings: Settings) -> RouteReport:
    configured = config.routes.get(name) if config is not None else None
    arm_names = [target.arm for target in configured.arms] if configured is not None else []
    arm_names += sorted(arm for arm in record.arms if arm not in arm_names)
    stats = {arm: _stats(record.arms.get(arm) or Tally(), arm) for arm in arm_names}
    if configured is not None:
        control: str | None = arm_names[0]
        basis = "the rollout's stable arm" if configured.rollout is not None else "the first configured target"
    elif stats:
        control = min(stats.values(), key=lambda s: (-s.calls, s.arm)).arm
        basis = "the arm with the most calls" + ("" if config is None else "; the route is not in the configuration")
        arm_names = [control, *sorted(arm for arm in arm_names if arm != control)]
    else:
        control, basis = None, "no served calls"
    rescued = sum(t.calls + t.cancelled for t in record.unattributed.values())
    arms: list[ArmStats] = []
    for arm in arm_names:
        if arm == control:
            verdict = Verdict("CONTROL", f"control arm: {basis}")
        else:
            assert control is not None
            verdict = _as_rolled_back(judge(stats[control], stats[arm], settings, unattributed=rescued), arm, record)
        arms.append(replace(stats[arm], verdict=verdict))
    fallbacks = tuple(_stats(record.unattributed[key], key[1], key[0]) for key in sorted(record.unattributed))
    shadow = None
    if record.shadows:
        shadow = ShadowComparison(
            _stats(record.served, "all arms"), tuple(_stats(record.shadows[arm], arm) for arm in sorted(record.shadows))
        )
    return RouteReport(
        route=name,
        configured=configured is not None,
        control=control,
        control_basis=basis,
        arms=tuple(arms),
        fallbacks=fallbacks,
        srm=_srm(name, record, config, arms),
        shadow=shadow,
        cache=CacheSummary.of(record.served),
    )


#: The reasons the rollout engine gives when it aborts a candidate by itself (``rollout/engine.py``).
_ANALYSIS_ABORT = re.compile(r"analysis failed: |\d+ consecutive candidate errors >= ")


def _as_rolled_back(verdict: Verdict, arm: str, record: RouteRecord) -> Verdict:
    """ROLLBACK when the route's rollout analysis aborted this candidate and no retry followed, whatever the final
    counts say: its always-valid test rejected at some moment, which the counts of the whole log may no longer show
    (stable calls went on after the abort). An abort by hand is a person's decision, not evidence: not counted."""
    last = record.rollout
    if verdict.verdict == "ROLLBACK" or last is None or (last.status, last.candidate) != ("aborted", arm):
        return verdict
    if last.reason is None or not _ANALYSIS_ABORT.match(last.reason):
        return verdict
    return Verdict("ROLLBACK", f"the rollout aborted {arm}: {last.reason}; {verdict.reason}", verdict.p_value)


def _srm(name: str, record: RouteRecord, config: Config | None, arms: Sequence[ArmStats]) -> SrmCheck:
    if config is None:
        return SrmCheck(False, "SRM not checked: no --config, so the configured weights are unknown")
    route = config.routes.get(name)
    if route is None:
        return SrmCheck(False, "SRM not checked: the route is not in the configuration")
    if route.rollout is not None:
        return SrmCheck(
            False,
            "SRM not checked: a rollout route's weights change step by step and the log does not record when; "
            "compare the arms within one step instead",
        )
    weights = {target.arm: target.weight for target in route.arms}
    if sum(1 for weight in weights.values() if weight > 0) < 2:
        return SrmCheck(False, "SRM not checked: fewer than two arms with a positive weight", weights=weights)
    # Cancelled calls were assigned by the split too, so they count here.
    counts = {arm.arm: arm.calls + arm.cancelled for arm in arms}
    observed = {arm: counts.get(arm, 0) for arm in weights}
    p_value = sample_ratio_mismatch(list(observed.values()), list(weights.values()))
    warning = p_value < SRM_THRESHOLD
    split = "/".join(str(count) for count in observed.values())
    shares = "/".join(f"{weight:g}" for weight in weights.values())
    verdict = "the split is broken, do not trust the comparison" if warning else "consistent with the configured split"
    message = f"SRM: observed {split} vs configured {shares}, p={p_value:.2g}: {verdict}"
    caveats = []
    unconfigured = {arm: count for arm, count in counts.items() if arm not in weights and count}
    if unconfigured:
        caveats.append(
            "left out, not configured: " + ", ".join(f"{arm} ({count})" for arm, count in unconfigured.items())
        )
    rescued = sum(t.calls + t.cancelled for t in record.unattributed.values())
    if rescued:
        caveats.append(f"{rescued} fallback calls could not be given to the arm the split chose")
    assigned = sum(observed.values())
    if record.sticky and assigned:
        caveats.append(
            f"{record.sticky / assigned:.0%} of calls were sticky (assigned per key, not per call), "
            "which makes this test overstate the evidence"
        )
    if caveats:
        message += f" ({'; '.join(caveats)})"
    return SrmCheck(True, message, p_value, warning, observed, weights)


# ---- rendering ---------------------------------------------------------------------------------------------------


def _arm_json(stats: ArmStats) -> dict[str, Any]:
    low, high = stats.error_rate_ci if stats.error_rate_ci is not None else (None, None)
    return {
        "arm": stats.arm,
        "calls": stats.calls,
        "errors": stats.errors,
        "cancelled": stats.cancelled,
        "error_rate": stats.error_rate,
        "error_rate_ci_low": low,
        "error_rate_ci_high": high,
        "latency_p50_ms": stats.latency_p50_ms,
        "latency_p95_ms": stats.latency_p95_ms,
        "ttft_p50_ms": stats.ttft_p50_ms,
        "ttft_p95_ms": stats.ttft_p95_ms,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "mean_completion_tokens": stats.mean_completion_tokens,
        "cost_usd": stats.cost_usd,
        "cost_per_call_usd": stats.cost_per_call_usd,
        "unpriced": stats.unpriced,
        "upstream_models": list(stats.upstream_models),
        "finish_reasons": dict(stats.finish_reasons),
        "empty": stats.empty,
        "judged": stats.judged,
        "poor": stats.poor,
    }


def _finite(value: float | None) -> float | None:
    # JSON has no Infinity: a ratio against a 0 ms control is reported as null (the reason says "inf").
    return value if value is None or math.isfinite(value) else None


def report_json(report: Report) -> dict[str, Any]:
    """The report as one JSON-safe document; the keys are listed in this module's docstring."""
    routes = [_route_json(route) for route in report.routes]
    settings = report.settings
    return {
        "source": report.source,
        "config": report.config,
        "settings": {
            "margin": settings.margin,
            "alpha": settings.alpha,
            "max_latency_ratio": settings.max_latency_ratio,
            "min_calls": settings.min_calls,
        },
        "events": {
            "request": report.request_events,
            "served": report.served_events,
            "shadow": report.shadow_events,
            "other_holyroute": report.other_events,
            "skipped_not_json": report.skipped_not_json,
            "skipped_not_holyroute": report.skipped_not_holyroute,
            "skipped_malformed": report.skipped_malformed,
            "malformed_request": report.malformed,
            "dropped_names": report.dropped_names,
            "outcomes": dict(report.outcomes),
        },
        "notes": list(_notes(report)),
        "routes_without_calls": list(report.routes_without_calls),
        "routes": routes,
    }


def _route_json(route: RouteReport) -> dict[str, Any]:
    arms = []
    for arm in route.arms:
        verdict = arm.verdict
        assert verdict is not None
        arms.append(
            {
                **_arm_json(arm),
                "verdict": {
                    "verdict": verdict.verdict,
                    "reason": verdict.reason,
                    "p_value": verdict.p_value,
                    "latency_ratio": _finite(verdict.latency_ratio),
                },
            }
        )
    srm = route.srm
    return {
        "route": route.route,
        "configured": route.configured,
        "control": route.control,
        "control_basis": route.control_basis,
        "arms": arms,
        "fallbacks": [{**_arm_json(f), "fallback": f.fallback} for f in route.fallbacks],
        "srm": {
            "checked": srm.checked,
            "p_value": srm.p_value,
            "warning": srm.warning,
            "message": srm.message,
            "observed": dict(srm.observed),
            "weights": dict(srm.weights),
        },
        "shadow": None
        if route.shadow is None
        else {"served": _arm_json(route.shadow.served), "shadow": [_arm_json(s) for s in route.shadow.shadows]},
        "cache": None
        if route.cache is None
        else {
            "hits": route.cache.hits,
            "lookups": route.cache.lookups,
            "hit_ratio": route.cache.hit_ratio,
            "saved_usd": route.cache.saved_usd,
        },
    }


def _notes(report: Report) -> list[str]:
    """What a reader must know about the input before trusting the numbers."""
    skipped = report.skipped_not_json + report.skipped_not_holyroute + report.skipped_malformed
    notes = [
        f"{report.request_events} request events ({report.served_events} served, {report.shadow_events} shadow), "
        f"{report.other_events} other holyroute events; {skipped} lines skipped "
        f"({report.skipped_not_json} not JSON, {report.skipped_not_holyroute} not holyroute events"
        + (f", {report.skipped_malformed} malformed" if report.skipped_malformed else "")
        + ")"
    ]
    if report.malformed:
        notes.append(f"{report.malformed} request events without a route name (or with a non-text arm) left out")
    if report.dropped_names:
        notes.append(
            f"{report.dropped_names} calls or events of names beyond 256 routes, endpoints or arms per route "
            "are in no number"
        )
    if report.config is None:
        notes.append("no --config: the control is the arm with the most calls, and the split is not checked (SRM)")
    if any(route.fallbacks for route in report.routes):
        notes.append(
            "fallback calls are listed apart: their event names the fallback's arm, not the arm the split chose"
        )
    notes.extend(report.notes)
    return notes


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ci(stats: ArmStats) -> str:
    if stats.error_rate_ci is None:
        return "-"
    low, high = stats.error_rate_ci
    return f"{low * 100:.2f}-{high * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mean(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _usd(value: float | None, flagged: bool = False) -> str:
    return ("-" if value is None else f"{value:.6f}") + ("*" if flagged else "")


_ARM_HEADER = (
    "arm",
    "calls",
    "errors",
    "error rate",
    "95% CI",
    "p50 ms",
    "p95 ms",
    "ttft p50",
    "ttft p95",
    "prompt tok",
    "compl tok",
    "USD/call",
    "USD total",
    "verdict",
)
_FALLBACK_NOTE = "fallback calls (counted for no arm, so the arms' error rates above leave out the failures they hide)"
_SHADOW_HEADER = (
    "",
    "arm",
    "calls",
    "error rate",
    "p50 ms",
    "p95 ms",
    "mean compl tok",
    "empty",
    "poor",
    "finish reasons",
    "USD/call",
    "USD total",
)


def _arm_cells(stats: ArmStats, label: str | None = None) -> tuple[str, ...]:
    calls = str(stats.calls) + (f" (+{stats.cancelled} cancelled)" if stats.cancelled else "")
    return (
        label or stats.arm,
        calls,
        str(stats.errors),
        _pct(stats.error_rate),
        _ci(stats),
        _ms(stats.latency_p50_ms),
        _ms(stats.latency_p95_ms),
        _ms(stats.ttft_p50_ms),
        _ms(stats.ttft_p95_ms),
        str(stats.prompt_tokens),
        str(stats.completion_tokens),
        _usd(stats.cost_per_call_usd, bool(stats.unpriced)),
        _usd(stats.cost_usd, bool(stats.unpriced)),
        stats.verdict.verdict if stats.verdict is not None else "",
    )


def _shadow_cells(kind: str, stats: ArmStats) -> tuple[str, ...]:
    return (
        kind,
        stats.arm,
        str(stats.calls),
        _pct(stats.error_rate),
        _ms(stats.latency_p50_ms),
        _ms(stats.latency_p95_ms),
        _mean(stats.mean_completion_tokens),
        str(stats.empty),
        f"{stats.poor}/{stats.judged}" if stats.judged else "-",
        ", ".join(f"{reason} {count}" for reason, count in stats.finish_reasons.items()) or "-",
        _usd(stats.cost_per_call_usd, bool(stats.unpriced)),
        _usd(stats.cost_usd, bool(stats.unpriced)),
    )


def _unpriced_note(report: Report) -> str | None:
    groups = [*(r.arms for r in report.routes), *(r.fallbacks for r in report.routes)]
    shadows = [(r.shadow.served, *r.shadow.shadows) for r in report.routes if r.shadow is not None]
    count = sum(s.unpriced for group in [*groups, *shadows] for s in group)
    if not count:
        return None
    return f"* includes {count} unpriced calls (no price for their model, cost_usd null): add it under 'prices'"


def _route_title(route: RouteReport) -> str:
    control = f"control {route.control} ({route.control_basis})" if route.control else route.control_basis
    return f"route {route.route}: {control}"


def render_report(report: Report) -> str:
    """The report as fixed-width text tables, one block per route."""
    out = [f"holyroute report: {report.source}" + (f" (config {report.config})" if report.config else "")]
    out += [f"  {note}" for note in _notes(report)]
    numeric = frozenset(range(1, len(_ARM_HEADER) - 1))
    for route in report.routes:
        out += ["", _route_title(route)]
        if route.arms:
            out += _fixed_width(_ARM_HEADER, [_arm_cells(arm) for arm in route.arms], numeric, indent="  ")
        for arm in route.arms:
            if arm.verdict is not None and arm.verdict.verdict != "CONTROL":
                out.append(f"  {arm.arm}: {arm.verdict.verdict}: {arm.verdict.reason}")
        out.append(("  WARNING " if route.srm.warning else "  ") + route.srm.message)
        if route.fallbacks:
            out.append(f"  {_FALLBACK_NOTE}:")
            lines = [_arm_cells(f, f"{f.arm} via {f.fallback}")[:-1] for f in route.fallbacks]
            out += _fixed_width(_ARM_HEADER[:-1], lines, numeric, indent="    ")
        if route.shadow is not None:
            out.append("  shadow vs served:")
            lines = [_shadow_cells("served", route.shadow.served)]
            lines += [_shadow_cells("shadow", s) for s in route.shadow.shadows]
            out += _fixed_width(_SHADOW_HEADER, lines, frozenset(range(2, len(_SHADOW_HEADER))), indent="    ")
        if route.cache is not None:
            out.append("  " + route.cache.line())
    if report.routes_without_calls:
        out += ["", "configured routes with no calls in the log: " + ", ".join(report.routes_without_calls)]
    note = _unpriced_note(report)
    if note:
        out += ["", note]
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]], numeric: frozenset[int]) -> list[str]:
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    rows = [header, align, *lines]
    return ["| " + " | ".join(_md(cell) if row is not align else cell for cell in row) + " |" for row in rows]


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown: a table per route, verdict reasons as a list."""
    source = f"`{report.source}`" + (f" (config `{report.config}`)" if report.config else "")
    out = [f"## holyroute report: {source}", "", *(f"- {_md(note)}" for note in _notes(report))]
    numeric = frozenset(range(1, len(_ARM_HEADER) - 1))
    for route in report.routes:
        out += ["", f"### {_md(_route_title(route))}", ""]
        if route.arms:
            out += _md_table(_ARM_HEADER, [_arm_cells(arm) for arm in route.arms], numeric)
            out.append("")
        for arm in route.arms:
            if arm.verdict is not None and arm.verdict.verdict != "CONTROL":
                out.append(f"- **{_md(arm.arm)}: {arm.verdict.verdict}**: {_md(arm.verdict.reason)}")
        out.append(f"- {'**WARNING** ' if route.srm.warning else ''}{_md(route.srm.message)}")
        if route.fallbacks:
            out += ["", f"{_FALLBACK_NOTE[0].upper()}{_FALLBACK_NOTE[1:]}:", ""]
            lines = [_arm_cells(f, f"{f.arm} via {f.fallback}")[:-1] for f in route.fallbacks]
            out += _md_table(_ARM_HEADER[:-1], lines, numeric)
        if route.shadow is not None:
            out += ["", "Shadow vs served:", ""]
            lines = [_shadow_cells("served", route.shadow.served)]
            lines += [_shadow_cells("shadow", s) for s in route.shadow.shadows]
            out += _md_table(_SHADOW_HEADER, lines, frozenset(range(2, len(_SHADOW_HEADER))))
        if route.cache is not None:
            out += ["", f"- {_md(route.cache.line())}"]
    if report.routes_without_calls:
        out += ["", "Configured routes with no calls in the log: " + ", ".join(report.routes_without_calls)]
    note = _unpriced_note(report)
    if note:
        out += ["", "\\" + _md(note)]  # a leading * would start a list
    return "\n".join(out)


# ---- the plot ----------------------------------------------------------------------------------------------------


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed: ``pip install 'holyroute[plot]'``."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailableError` unless matplotlib can be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailableError(
            "--plot needs matplotlib, which is not installed: pip install 'holyroute[plot]'"
        ) from None


def write_plot(series: Sequence[Series], path: str | Path) -> None:
    """Draw p50/p95 latency and error rate per arm over time, one row of two charts per route, into a PNG."""
    require_matplotlib()
    # Imported as untyped modules: matplotlib is an optional extra, absent wherever mypy may run.
    agg: Any = importlib.import_module("matplotlib.backends.backend_agg")
    dates: Any = importlib.import_module("matplotlib.dates")
    Figure: Any = importlib.import_module("matplotlib.figure").Figure

    routes = sorted({s.route for s in series})
    # Figure + Agg canvas, not pyplot: no global backend switch, no window, safe inside someone else's process.
    figure = Figure(figsize=(10.0, 2.6 * max(1, len(routes))), dpi=80, layout="constrained")
    agg.FigureCanvasAgg(figure)
    axes = figure.subplots(max(1, len(routes)), 2, squeeze=False)
    for row, name in enumerate(routes):
        latency_axis, error_axis = axes[row][0], axes[row][1]
        for one in (s for s in series if s.route == name):
            xs: list[Any] = (
                [datetime.fromtimestamp(start, UTC) for start in one.starts] if one.by_time else list(one.starts)
            )
            # Markers, so that a window between two empty ones still shows.
            style: dict[str, Any] = {"marker": "o", "markersize": 2.5}
            line = latency_axis.plot(xs, _gaps(one.p95_ms), label=f"{one.arm} p95", **style)[0]
            latency_axis.plot(
                xs, _gaps(one.p50_ms), linestyle="--", color=line.get_color(), label=f"{one.arm} p50", **style
            )
            rates = [math.nan if r is None else r * 100 for r in one.error_rate]
            error_axis.plot(xs, rates, label=one.arm, **style)
        latency_axis.set_title(f"{name}: latency (ms)", fontsize=9)
        error_axis.set_title(f"{name}: error rate (%)", fontsize=9)
        by_time = any(s.by_time for s in series if s.route == name)
        for axis in (latency_axis, error_axis):
            axis.tick_params(labelsize=7)
            axis.legend(fontsize=6)
            if by_time:
                locator = dates.AutoDateLocator()
                axis.xaxis.set_major_locator(locator)
                axis.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
            else:
                axis.set_xlabel("event number", fontsize=7)
    figure.savefig(path, format="png")


def _gaps(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]
