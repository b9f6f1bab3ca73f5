"""Progressive delivery: where a route's rollout stands, what its measurements say, and the next step.

A :class:`RolloutEngine` walks a route's ``steps`` (``set_weight``, ``pause``, ``analysis``) against an injected wall
clock. Weights change only at step boundaries. An analysis compares the candidate with the stable arm over the same
window (both arms' calls since the last weight change, never history) with an always-valid sequential test for the
error rate and quantile checks for latency and cost; its measurements count as Successful, Failed or Inconclusive
with Argo Rollouts' ``failure_limit`` / ``inconclusive_limit`` semantics. Failed aborts (candidate to 0% at once,
and it stays aborted until ``retry``); Inconclusive pauses for a person. The state (step, weight, status) lives in a
:class:`StateStore` so it survives restarts and is shared by every process reading the same file; measurements are
this process's own. Every change emits ``holyroute.rollout`` with a reason. No I/O here except through the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from holyroute.config.schema import Analysis, Rollout
from holyroute.forking import new_lock, new_rlock
from holyroute.rollout.split import SplitPicker
from holyroute.rollout.stats import LatencySketch, SequentialNonInferiority, latency_regressed

__all__ = [
    "Measurements",
    "MemoryStore",
    "RolloutEngine",
    "RolloutState",
    "StateStore",
    "Undecodable",
    "decode_json",
    "held_state",
    "parse_state",
    "parse_state_file",
    "parse_stored_state",
    "validation_problem",
]

Status = Literal["progressing", "paused", "aborted", "completed"]
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class RolloutState:
    """What every process agrees on; persisted as JSON. ``version`` increases with every change."""

    route: str
    step: int = 0
    weight: float = 0.0
    status: Status = "progressing"
    reason: str = "started"
    step_started: float = 0.0
    window: int = 0  # bumped whenever measurements must start afresh (weight change, retry)
    failed: int = 0  # failed / inconclusive measurements in the current analysis step
    inconclusive: int = 0
    version: int = 0


#: Bounds of a stored state's counters: far beyond any real rollout, small enough for every later arithmetic.
MAX_COUNT = 10**9


class _StatePayload(BaseModel):
    """The stored form of a :class:`RolloutState` (file store and Redis alike): the one schema both are read with.

    Strict types (no ``"3"`` for 3, no ``true`` for 1), finite numbers, counters within ``[0, MAX_COUNT]``, a weight
    within ``[0, 100]``; unknown keys are ignored, so a newer writer's extra fields do not make the state unreadable.
    """

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    route: Annotated[str, Field(max_length=1000)]
    step: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    weight: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] = 0.0
    status: Status = "progressing"
    reason: Annotated[str, Field(max_length=10_000)] = ""
    step_started: Annotated[float, Field(ge=0.0, le=1e12, allow_inf_nan=False)] = 0.0
    window: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    failed: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    inconclusive: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    version: Annotated[int, Field(ge=0, le=2**62)] = 0


def validation_problem(error: ValidationError) -> str:
    """A validation error as one short line naming the fields, never their values."""
    parts = []
    for found in error.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in found["loc"]) or "value"
        parts.append(f"{where}: {found['msg']}")
    return "; ".join(parts)


def parse_state(route: str, value: object) -> RolloutState | str:
    """One route's stored state (a decoded JSON value), validated; or the problem, as text without the value.

    Total: whatever ``value`` is, this returns; it never raises. The stored ``route`` must be ``route``.
    """
    if not isinstance(value, Mapping):
        return f"expected an object, got {type(value).__name__}"
    try:
        payload = _StatePayload.model_validate(value)
    except ValidationError as error:
        return validation_problem(error)
    except (ValueError, TypeError, RecursionError) as error:  # pragma: no cover - pydantic wraps these
        return type(error).__name__
    if payload.route != route:
        return "its route field names another route"
    return RolloutState(**payload.model_dump())


def decode_json(raw: bytes | str) -> object | str:
    """JSON text as a value, or the problem (``Undecodable``) why it is not."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value: object = json.loads(text)
    except UnicodeDecodeError:
        return Undecodable("not UTF-8")
    except RecursionError:
        return Undecodable("not JSON (nested too deeply)")
    except ValueError as error:  # JSONDecodeError, and ints too long to convert
        message = getattr(error, "msg", None) or "not JSON"
        return Undecodable(f"not JSON ({message})")
    return value


class Undecodable(str):
    """A problem found while decoding (a ``str`` subclass, so it never passes for a decoded JSON string)."""


def parse_stored_state(route: str, raw: bytes | str | None) -> RolloutState | str | None:
    """A route's state as stored in Redis (JSON text): the state, ``None`` when absent, or the problem."""
    if raw is None:
        return None
    value = decode_json(raw)
    if isinstance(value, Undecodable):
        return str(value)
    return parse_state(route, value)


def parse_state_file(raw: bytes | str) -> tuple[dict[str, RolloutState], dict[str, str], str | None]:
    """A whole state file: the routes whose state is valid, the routes whose entry is not (with the problem), and
    a problem with the file as a whole (then nothing in it is trusted). Total: never raises."""
    value = decode_json(raw)
    if isinstance(value, Undecodable):
        return {}, {}, str(value)
    if not isinstance(value, dict):
        return {}, {}, f"expected a JSON object of routes, got {type(value).__name__}"
    states: dict[str, RolloutState] = {}
    problems: dict[str, str] = {}
    for route, entry in value.items():
        parsed = parse_state(route, entry)
        if isinstance(parsed, str):
            problems[route] = parsed
        else:
            states[route] = parsed
    return states, problems, None


def held_state(route: str, problem: str) -> RolloutState:
    """What a process follows when it knows nothing good about a rollout: the stable arm takes all traffic and
    nothing advances (``paused``, version 0, so any state read later wins)."""
    return RolloutState(
        route,
        weight=0.0,
        status="paused",
        reason=f"rollout state unreadable ({problem}): the stable arm takes all traffic until it can be read",
        version=0,
    )


@dataclass(slots=True)
class Measurements:
    """One arm's results in the current window. Mergeable: counts and sketches, no raw lists."""

    calls: int = 0
    errors: int = 0
    judged: int = 0  # answers the quality callback looked at
    poor: int = 0  # ... and found wanting (empty, refused, invalid JSON: the callback decides)
    cost_usd: float = 0.0
    latency: LatencySketch = field(default_factory=LatencySketch)
    ttft: LatencySketch = field(default_factory=LatencySketch)

    def add(
        self, *, ok: bool, latency_ms: float, ttft_ms: float | None, cost_usd: float | None, quality: bool | None
    ) -> None:
        self.calls += 1
        if not ok:
            self.errors += 1
        self.latency.add(latency_ms)
        if ttft_ms is not None:
            self.ttft.add(ttft_ms)
        if cost_usd is not None:
            self.cost_usd += cost_usd
        if quality is not None:
            self.judged += 1
            self.poor += not quality

    def merge(self, other: Measurements) -> None:
        """Add ``other``'s results to these (counts add, sketches merge)."""
        self.calls += other.calls
        self.errors += other.errors
        self.judged += other.judged
        self.poor += other.poor
        self.cost_usd += other.cost_usd
        self.latency.merge(other.latency)
        self.ttft.merge(other.ttft)

    def copy(self) -> Measurements:
        merged = Measurements()
        merged.merge(self)
        return merged


class StateStore(Protocol):
    """Where rollout state lives. ``update`` is an atomic read-modify-write across processes."""

    def load(self, route: str) -> RolloutState | None: ...

    def update(
        self, route: str, change: Callable[[RolloutState | None], RolloutState | None]
    ) -> RolloutState | None: ...


class MemoryStore:
    """State in this process only (tests, single-process apps that do not need restarts)."""

    def __init__(self) -> None:
        self._states: dict[str, dict[str, Any]] = {}
        self._lock = new_lock()

    def load(self, route: str) -> RolloutState | None:
        found = self._states.get(route)
        return RolloutState(**found) if found is not None else None

    def update(self, route: str, change: Callable[[RolloutState | None], RolloutState | None]) -> RolloutState | None:
        with self._lock:
            new = change(self.load(route))
            if new is not None:
                self._states[route] = asdict(new)
            return new


@dataclass(frozen=True, slots=True)
class Verdict:
    """One analysis measurement."""

    result: Literal["running", "successful", "failed", "inconclusive"]
    reason: str


class RolloutEngine:
    """One route's rollout: its steps, its state (shared through ``store``) and this process's measurements."""

    _test: SequentialNonInferiority  # the error-rate test of the current window and step
    _quality: SequentialNonInferiority  # the same for the quality callback

    def __init__(
        self,
        route: str,
        rollout: Rollout,
        store: StateStore,
        *,
        emit: EventSink,
        clock: Callable[[], float],
        sync_interval_s: float = 1.0,
    ) -> None:
        self.route = route
        self.rollout = rollout
        self.steps = rollout.plan()
        self._consecutive_errors = 0
        self.stable_arm = rollout.stable.arm
        self.candidate_arm = rollout.candidate.arm
        self._store = store
        self._emit = emit
        self._clock = clock
        self.sync_interval = sync_interval_s  # how often tick() re-reads the store
        self._lock = new_rlock()
        #: Set by a shared state backend: measurements not yet sent (``_pending``), and every process's totals for
        #: a window as last read (``_totals``); the analysis then judges totals + pending.
        self.shares_measurements = False
        self._pending: dict[str, Measurements] = {}
        self._totals: tuple[int, dict[str, Measurements]] | None = None
        now = clock()
        state = store.load(route)
        if state is None:
            state = store.update(route, lambda found: found or RolloutState(route, step_started=now, version=1))
        if state is None:  # the store could neither be read nor written: hold (stable takes all traffic)
            state = store.load(route) or held_state(route, "the state store could not be read")
        self.state = state
        self._synced = now
        self._pickers: dict[float, SplitPicker] = {}
        self._measured = now
        self._new_window()
        self.tick(now)

    # ---- what routing asks -------------------------------------------------------------------------------------

    def picker(self) -> SplitPicker:
        """The split for the current weight (stable, candidate), stable for sticky users as the weight grows."""
        weight = self.state.weight
        found = self._pickers.get(weight)
        if found is None:
            found = self._pickers[weight] = SplitPicker(
                self.route, [self.stable_arm, self.candidate_arm], [100.0 - weight, weight]
            )
        return found

    def observe(
        self,
        arm: str,
        *,
        ok: bool,
        latency_ms: float,
        ttft_ms: float | None,
        cost_usd: float | None,
        quality: bool | None = None,
    ) -> None:
        """One call's result on ``arm`` (the arm the split chose, whatever served it in the end)."""
        with self._lock:
            if self.state.window != self._window:
                self._new_window()
            measured = self._arms.get(arm)
            if measured is None:
                return
            measured.add(ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, cost_usd=cost_usd, quality=quality)
            if self.shares_measurements:
                pending = self._pending.get(arm)
                if pending is None:
                    pending = self._pending[arm] = Measurements()
                pending.add(ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, cost_usd=cost_usd, quality=quality)
            if arm == self.candidate_arm:
                self._consecutive_errors = 0 if ok else self._consecutive_errors + 1
        limit = self.rollout.consecutive_error_limit
        if limit is not None and self._consecutive_errors >= limit and self.state.weight > 0:
            self._consecutive_errors = 0
            self.abort(f"{limit} consecutive candidate errors >= rollback_on_consecutive_errors ({limit})")
            return
        self.tick(self._clock())

    # ---- the step machine --------------------------------------------------------------------------------------

    def tick(self, now: float) -> RolloutState:
        """Follow other processes' changes, then advance as far as the steps allow at ``now``."""
        if now - self._synced >= self.sync_interval:
            self._synced = now
            found = self._store.load(self.route)
            if found is not None and _newer(found, self.state):
                self.state = found
            elif found is None and self.state.version == 0:
                # Held while the state could not be read, and now there is none (the file was removed): start.
                made = self._store.update(
                    self.route, lambda old: old or RolloutState(self.route, step_started=now, version=1)
                )
                if made is not None and made.version > 0:
                    self.state = made
        if self.state.status != "progressing":
            return self.state
        with self._lock:
            for _ in range(len(self.steps) + 1):  # bounded: at most one pass over the steps
                moved = self._advance(now)
                if not moved:
                    break
        return self.state

    def _advance(self, now: float) -> bool:
        state = self.state
        steps = self.steps
        if state.status != "progressing":
            return False
        if state.step >= len(steps):
            self._commit(now, "completed", reason="all steps done: candidate at 100%", weight=100.0, status="completed")
            return False
        step = steps[state.step]
        if step.set_weight is not None:
            self._commit(
                now,
                "set_weight",
                reason=f"step {state.step + 1}: set_weight {step.set_weight:g}",
                weight=step.set_weight,
                step=state.step + 1,
                new_window=True,
            )
            return True
        if step.pause is not None:
            return self._pause_step(now, step.pause.duration)
        return self._analysis_step(now)

    def _pause_step(self, now: float, duration: float | None) -> bool:
        """A pause step: held until promoted (no duration), or moved on once ``duration`` seconds have passed."""
        state = self.state
        if duration is None:
            self._commit(now, "pause", reason=f"step {state.step + 1}: paused until promoted", status="paused")
            return False
        if now - state.step_started >= duration:
            self._commit(
                now,
                "pause_done",
                reason=f"step {state.step + 1}: paused {duration:g}s",
                step=state.step + 1,
            )
            return True
        return False

    def _analysis_step(self, now: float) -> bool:
        """An analysis step: count a failed or inconclusive measurement (abort or pause past its limit), or pass."""
        state = self.state
        verdict = self._measure(now, self._analysis(state.step))
        if verdict is None or verdict.result == "running":
            return False
        analysis = self._analysis(state.step)
        if verdict.result == "failed":
            failed = state.failed + 1
            if failed > analysis.failure_limit:
                self._commit(
                    now,
                    "abort",
                    reason=f"analysis failed: {verdict.reason}",
                    weight=0.0,
                    status="aborted",
                    failed=failed,
                )
                return False
            self._commit(now, "measurement", reason=f"failed measurement {failed}: {verdict.reason}", failed=failed)
            return False
        if verdict.result == "inconclusive":
            inconclusive = state.inconclusive + 1
            if inconclusive > analysis.inconclusive_limit:
                self._commit(
                    now,
                    "pause",
                    reason=f"analysis inconclusive: {verdict.reason}",
                    status="paused",
                    inconclusive=inconclusive,
                )
                return False
            self._commit(
                now,
                "measurement",
                reason=f"inconclusive measurement {inconclusive}: {verdict.reason}",
                inconclusive=inconclusive,
            )
            return False
        self._commit(
            now,
            "analysis_passed",
            reason=f"step {state.step + 1}: analysis passed: {verdict.reason}",
            step=state.step + 1,
        )
        return True

    def _analysis(self, step: int) -> Analysis:
        overrides = self.steps[step].analysis or {}
        return self.rollout.analysis.model_copy(update=overrides) if overrides else self.rollout.analysis

    def _measure(self, now: float, analysis: Analysis) -> Verdict | None:
        """One measurement, at most once per ``interval``; None between measurements."""
        if now - self._measured < analysis.interval and analysis.interval > 0:
            return None
        self._measured = now
        # A step may override the margins: the tests must use this step's settings, not the rollout's defaults.
        if (self._test.margin, self._test.alpha) != (analysis.max_error_rate_increase, analysis.alpha):
            self._test = SequentialNonInferiority(margin=analysis.max_error_rate_increase, alpha=analysis.alpha)
        if (self._quality.margin, self._quality.alpha) != (analysis.max_quality_failure_increase, analysis.alpha):
            self._quality = SequentialNonInferiority(margin=analysis.max_quality_failure_increase, alpha=analysis.alpha)
        arms = self.window_measurements()
        return judge(
            arms[self.stable_arm],
            arms[self.candidate_arm],
            self._test,
            analysis,
            elapsed=now - self.state.step_started,
            quality=self._quality,
        )

    # ---- what people do ----------------------------------------------------------------------------------------

    def promote(self, *, full: bool = False) -> RolloutState:
        """Go on to the next step (out of a pause or a running analysis), or straight to 100% with ``full``."""
        now = self._clock()
        state = self.state
        if state.status in ("aborted", "completed"):
            return state
        if full:
            self._commit(
                now,
                "promote_full",
                reason="promoted to 100% by hand",
                step=len(self.steps),
                weight=100.0,
                status="completed",
            )
        else:
            self._commit(
                now,
                "promote",
                reason=f"step {state.step + 1} promoted by hand",
                step=state.step + 1,
                status="progressing",
            )
        return self.tick(now)

    def abort(self, reason: str = "aborted by hand") -> RolloutState:
        """Candidate to 0% at once (blue-green: back to blue); the rollout stays aborted until :meth:`retry`."""
        now = self._clock()
        self._commit(now, "abort", reason=reason, weight=0.0, status="aborted")
        return self.state

    def retry(self) -> RolloutState:
        """Start an aborted (or finished) rollout again from its first step, with fresh measurements."""
        now = self._clock()
        self._commit(now, "retry", reason="retried by hand", step=0, weight=0.0, status="progressing", new_window=True)
        return self.tick(now)

    def position(self, state: RolloutState) -> int:
        """The step ``state`` is on, counted from 1 in the configured ``steps`` (the last one once completed).

        This is the ``step`` people see everywhere (``holyroute rollout status``, the ``holyroute.rollout`` event,
        the dashboard) and the number in reasons such as ``"step 6: paused until promoted"``; ``state.step`` itself
        counts the steps done."""
        if state.status == "completed" or state.step >= len(self.steps):
            return len(self.steps)
        return state.step + 1

    def status(self) -> dict[str, Any]:
        """The state with ``step`` as :meth:`position` gives it, ``steps``, and both arms' window measurements."""
        state = self.tick(self._clock())
        arms = {
            name: {"calls": m.calls, "errors": m.errors, "p95_ms": m.latency.quantile(0.95)}
            for name, m in self.window_measurements().items()
        }
        return {**asdict(state), "step": self.position(state), "steps": len(self.steps), "arms": arms}

    # ---- what a shared state backend does ------------------------------------------------------------------------

    def window_measurements(self) -> dict[str, Measurements]:
        """Both arms' measurements in the current window: every process's, when a backend shares them."""
        with self._lock:
            totals = self._totals
            if totals is None or totals[0] != self._window:
                return self._arms
            merged = {arm: totals[1].get(arm, Measurements()).copy() for arm in self._arms}
            for arm, pending in self._pending.items():
                if arm in merged:
                    merged[arm].merge(pending)
            return merged

    def drain(self) -> tuple[int, dict[str, Measurements]]:
        """Take the measurements not yet shared (the backend sends them, or gives them back with :meth:`undrain`)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            return self._window, pending

    def undrain(self, window: int, pending: dict[str, Measurements]) -> None:
        """Sending failed: keep these for the next try (nothing is lost while the store is away)."""
        with self._lock:
            if window != self._window:
                return  # the window moved on: these no longer count
            for arm, measured in pending.items():
                mine = self._pending.get(arm)
                if mine is None:
                    self._pending[arm] = measured
                else:
                    mine.merge(measured)

    def adopt_totals(self, window: int, totals: dict[str, Measurements]) -> None:
        """Every process's measurements for ``window`` as just read from the store (including what was drained)."""
        with self._lock:
            self._totals = (window, totals)

    def follow(self, state: RolloutState) -> None:
        """Another process changed the rollout: take its state if it is newer."""
        with self._lock:
            if _newer(state, self.state):
                self.state = state

    # ---- internals ---------------------------------------------------------------------------------------------

    def _new_window(self) -> None:
        self._window = self.state.window
        self._arms = {self.stable_arm: Measurements(), self.candidate_arm: Measurements()}
        self._pending = {}
        analysis = self.rollout.analysis
        self._test = SequentialNonInferiority(margin=analysis.max_error_rate_increase, alpha=analysis.alpha)
        self._quality = SequentialNonInferiority(margin=analysis.max_quality_failure_increase, alpha=analysis.alpha)

    def _commit(self, now: float, action: str, *, reason: str, new_window: bool = False, **changes: Any) -> None:
        """Write a change through the store (compare-and-set on the version) and emit it."""
        base = self.state

        def change(found: RolloutState | None) -> RolloutState | None:
            current = found if found is not None else base
            if current.version != base.version:
                return None  # another process moved first: adopt its state instead
            fields = asdict(current)
            fields.update(changes)
            step_changed = changes.get("step", current.step) != current.step
            if step_changed or new_window:
                fields["step_started"] = now
                fields["failed"] = changes.get("failed", 0)
                fields["inconclusive"] = changes.get("inconclusive", 0)
            if new_window:
                fields["window"] = current.window + 1
            fields["reason"] = reason
            fields["version"] = current.version + 1
            return RolloutState(**fields)

        written = self._store.update(self.route, change)
        if written is None:
            adopted = self._store.load(self.route)
            if adopted is not None:
                self.state = adopted
            return
        self.state = written
        if new_window:
            self._new_window()
        self._emit(
            "holyroute.rollout",
            {
                "route": self.route,
                "action": action,
                "step": self.position(written),
                "steps": len(self.steps),
                "weight": written.weight,
                "stable": self.stable_arm,
                "candidate": self.candidate_arm,
                "status": written.status,
                "reason": reason,
            },
        )


def _newer(found: RolloutState, mine: RolloutState) -> bool:
    """Whether the store's ``found`` replaces ``mine``: a later version, or the same version with other content (a
    change made here that could not be written, and lost to another process's change of the same version)."""
    return found.version > mine.version or (found.version == mine.version and found != mine)


def judge(
    stable: Measurements,
    candidate: Measurements,
    test: SequentialNonInferiority,
    analysis: Analysis,
    *,
    elapsed: float,
    quality: SequentialNonInferiority | None = None,
) -> Verdict:
    """One measurement of candidate against stable (same window). Pure apart from the sequential tests' memory."""
    error = test.update(stable.calls, stable.errors, candidate.calls, candidate.errors)
    if error.rejected:
        return Verdict("failed", error.reason)
    quality_above = False
    if quality is not None and candidate.judged:
        poor = quality.update(stable.judged, stable.poor, candidate.judged, candidate.poor)
        if poor.rejected:
            return Verdict("failed", "quality: " + poor.reason.replace("error rate", "poor answers", 1))
        quality_above = poor.candidate_rate - poor.stable_rate > analysis.max_quality_failure_increase
    enough = stable.calls >= analysis.min_calls and candidate.calls >= analysis.min_calls
    if enough:
        for name, sketch_s, sketch_c, ratio in (
            ("latency", stable.latency, candidate.latency, analysis.max_latency_ratio),
            ("time to first token", stable.ttft, candidate.ttft, analysis.max_ttft_ratio),
        ):
            if ratio is None or sketch_c.count < analysis.min_calls or sketch_s.count < analysis.min_calls:
                continue
            latency = latency_regressed(sketch_s, sketch_c, max_ratio=ratio, q=0.95, min_count=analysis.min_calls)
            if latency.failed:
                return Verdict("failed", latency.reason if name == "latency" else f"{name}: {latency.reason}")
        if analysis.max_cost_ratio is not None and stable.cost_usd > 0:
            per_call_s = stable.cost_usd / stable.calls
            per_call_c = candidate.cost_usd / candidate.calls
            if per_call_c > analysis.max_cost_ratio * per_call_s:
                return Verdict(
                    "failed",
                    f"cost per call ${per_call_c:.6f} vs ${per_call_s:.6f}: "
                    f"{per_call_c / per_call_s:.2f}x > {analysis.max_cost_ratio:g}x",
                )
        # Not rejected is not proven: a candidate observed above the margin is never promoted, it keeps being
        # measured (and is inconclusive at max_duration) until the evidence goes one way or the other.
        above_margin = quality_above or error.candidate_rate - error.stable_rate > analysis.max_error_rate_increase
        if elapsed >= analysis.min_duration and not above_margin:
            return Verdict("successful", f"{error.reason}; {candidate.calls} vs {stable.calls} calls")
        if analysis.max_duration is not None and elapsed >= analysis.max_duration:
            return Verdict("inconclusive", f"{error.reason} after {analysis.max_duration:g}s")
        return Verdict(
            "running", error.reason if above_margin else f"waiting for min_duration {analysis.min_duration:g}s"
        )
    if analysis.max_duration is not None and elapsed >= analysis.max_duration:
        if candidate.calls == 0:
            return Verdict("failed", f"no data for the candidate after {analysis.max_duration:g}s")
        return Verdict(
            "inconclusive",
            f"{candidate.calls} candidate / {stable.calls} stable calls < min_calls {analysis.min_calls} "
            f"after {analysis.max_duration:g}s",
        )
    return Verdict("running", "waiting for min_calls")
