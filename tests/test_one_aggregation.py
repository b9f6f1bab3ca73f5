"""``holyroute report``, ``holyroute dashboard`` and the rollout analysis show the same numbers for the same events.

The report and the dashboard render one aggregation (:mod:`holyroute.readers.aggregate`): one log is fed to both,
through the command and through the dashboard's live tail, and every number they both show is compared. The rollout
analysis measures the live calls the same way: a router's own measurements are compared with the aggregation of the
events it emitted. Last, the guard that keeps it so: the renderers take the aggregation and never read an event.
"""

from __future__ import annotations

import ast
import inspect
import json
import random
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import holyroute
from holyroute import Router, cli
from holyroute.config import Rollout
from holyroute.readers import dashboard as dashboard_module
from holyroute.readers import report as report_module
from holyroute.readers.aggregate import Aggregate, aggregate_events, read_log
from holyroute.readers.dashboard import Board, Dashboard, page_state
from holyroute.readers.report import Settings, build_report, render_report, summarise
from holyroute.rollout.engine import MemoryStore, RolloutEngine
from holyroute.rollout.stats import SequentialNonInferiority
from holyroute.testing import FakeUpstream, Reply

from .conftest import Events, FakeClock

T0 = 1_800_000_000.0


def request(n: int, arm: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "holyroute.request",
        "timestamp": T0 + n,
        "route": "chat",
        "arm": arm,
        "split_arm": arm,
        "endpoint": f"ep-{arm}",
        "upstream_model": arm,
        "outcome": "ok",
        "fallback": None,
        "latency_ms": 100.0 + 7 * (n % 13),
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "priced": True,
    }
    event.update(fields)
    return event


def mixed_log() -> list[str]:
    """Two arms, a call a fallback rescued (charged to the split's arm), a rescue from an older log without
    ``split_arm``, a cancelled call, a shadow copy, a failover, and bad lines of every kind."""
    events = [request(n, "old") for n in range(30)]
    events += [request(30 + n, "new", outcome="error" if n % 4 == 0 else "ok") for n in range(12)]
    events.append(  # the split chose "new", which failed; the fallback's "cheap" answered
        request(50, "cheap", split_arm="new", fallback="chat-cheap", endpoint="ep-old", cost_usd=0.0002)
    )
    events.append(request(51, "cheap", split_arm=None, fallback="chat-cheap", endpoint="ep-old"))  # older log
    events.append(request(52, "old", outcome="cancelled", latency_ms=9999.0, cost_usd=0.003))
    events.append(request(53, "shadow-4.1", shadow=True, endpoint="ep-new", cost_usd=0.002))
    events.append(
        {"event": "holyroute.failover", "timestamp": T0 + 54, "route": "chat", "arm": "new", "endpoint": "ep-new"}
    )
    events.append({"event": "holyroute.request", "timestamp": T0 + 55, "arm": "old", "outcome": "ok"})  # no route
    lines = [json.dumps(event) for event in events]
    lines[10:10] = [
        "{not json",  # not JSON
        '{"event": "other.thing"}',  # not a holyroute event
        '{"event": "holyroute.request", "route": "chat", "arm": "old", "latency_ms": 1e999}',  # malformed
    ]
    return lines


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(mixed_log()) + "\n", encoding="utf-8")
    return path


def report_document(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli.main(["report", str(path), "--format", "json", "--min-calls", "10"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def dashboard_state(path: Path) -> dict[str, Any]:
    dashboard = Dashboard(path, clock=lambda: T0 + 100)
    try:
        return dashboard.state()
    finally:
        dashboard.close()


def ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class TestSameNumbers:
    """One log, two renderers: every number both show is the same."""

    def test_arms(self, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Per arm: calls, errors, p95 and cost, with the rescued call an error of the arm the split chose."""
        [route] = report_document(log, capsys)["routes"]
        [chat] = dashboard_state(log)["routes"]
        in_report = {a["arm"]: (a["calls"], a["errors"], ms(a["latency_p95_ms"]), a["cost_usd"]) for a in route["arms"]}
        shown = {a["arm"]: (a["calls"], a["errors"], a["p95_ms"], a["cost_usd"]) for a in chat["arms"]}
        assert shown == in_report
        assert (in_report["new"][0], in_report["new"][1]) == (13, 4), "3 failed calls and the rescued one"
        assert (in_report["old"][0], in_report["old"][1]) == (30, 0)
        assert in_report["old"][3] == pytest.approx(0.033), "the cancelled call's cost counts"

    def test_route_shadow_and_rescues(self, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The route's served calls as the application saw them, its shadow copies, and the calls fallbacks served."""
        [route] = report_document(log, capsys)["routes"]
        [chat] = dashboard_state(log)["routes"]
        served = route["shadow"]["served"]
        assert (chat["calls"], chat["errors"], chat["cancelled"]) == (served["calls"], served["errors"], 1)
        assert (chat["p95_ms"], chat["cost_usd"]) == (ms(served["latency_p95_ms"]), served["cost_usd"])
        [shadow] = route["shadow"]["shadow"]
        assert (
            (chat["shadow"]["calls"], chat["shadow"]["cost_usd"]) == (shadow["calls"], shadow["cost_usd"]) == (1, 0.002)
        )
        [older] = route["fallbacks"]
        assert (older["arm"], older["fallback"], older["calls"]) == ("cheap", "chat-cheap", 1)
        assert chat["fallback_calls"] == 2, "both rescued calls were served by a fallback"

    def test_skipped_lines_and_events(self, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Bad lines are skipped and counted alike; a request without a route is left out of both."""
        counts = report_document(log, capsys)["events"]
        state = dashboard_state(log)
        assert (
            (state["log"]["not_json"], state["log"]["not_holyroute"], state["log"]["malformed"])
            == (
                counts["skipped_not_json"],
                counts["skipped_not_holyroute"],
                counts["skipped_malformed"],
            )
            == (1, 1, 1)
        )
        assert state["log"]["malformed_requests"] == counts["malformed_request"] == 1
        assert state["totals"]["shadow_calls"] == counts["shadow"] == 1
        totals = state["totals"]
        assert totals["calls"] + totals["cancelled"] == counts["served"] == 45
        assert totals["outcomes"] == counts["outcomes"] == {"ok": 42, "error": 3, "cancelled": 1}

    def test_text_report_shows_the_same_numbers(self, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The table the command prints carries the numbers the dashboard shows."""
        state = dashboard_state(log)
        new = next(a for a in state["routes"][0]["arms"] if a["arm"] == "new")
        text = render_report(build_report(read_log(log), settings=Settings(min_calls=10)))
        [line] = [line for line in text.splitlines() if line.startswith("  new ")]
        assert line.split()[1:4] == [str(new["calls"]), str(new["errors"]), f"{new['errors'] / new['calls']:.2%}"]
        assert f"{new['p95_ms']:.1f}" in line.split()

    def test_demo_table_and_endpoints(self, log: Path) -> None:
        """The demo's per-endpoint rows add up to the dashboard's endpoints: calls, and attempts with failovers."""
        rows = summarise(read_log(log))
        endpoints = {e["name"]: e for e in dashboard_state(log)["endpoints"]}
        for name, shown in endpoints.items():
            mine = [row for row in rows if row.endpoint == name]
            assert sum(row.calls for row in mine) == shown["calls"]
            assert sum(row.calls + row.failovers for row in mine) == shown["attempts"]
        assert endpoints["ep-new"]["failed"] == 4, "3 failed calls and the failover"

    def test_live_tail_equals_one_pass(self, tmp_path: Path) -> None:
        """The dashboard's tail, fed the log in pieces as it grows, ends with the aggregation of the whole log."""
        lines = mixed_log()
        path = tmp_path / "events.jsonl"
        path.write_text("")
        dashboard = Dashboard(path, clock=lambda: T0 + 100)
        try:
            for start in range(0, len(lines), 7):
                with path.open("a", encoding="utf-8") as out:
                    out.write("".join(line + "\n" for line in lines[start : start + 7]))
                state = dashboard.state()
        finally:
            dashboard.close()
        whole = page_state(read_log(path), dashboard.board.config, T0 + 100)
        state.pop("source")
        assert state == whole


class TestRolloutAnalysisAgrees:
    """The rollout analysis charges a rescued call to the arm the split chose; so does the aggregation."""

    def config(self, stable: FakeUpstream, candidate: FakeUpstream) -> dict[str, Any]:
        return {
            "endpoints": {"stable": {"base_url": stable.base_url}, "candidate": {"base_url": candidate.base_url}},
            "routes": {
                "chat": {
                    "rollout": {
                        "stable": {"model": "gpt-4o", "endpoints": ["stable"]},
                        "candidate": {"model": "gpt-4.1", "endpoints": ["candidate"]},
                        "steps": [{"set_weight": 50}, {"pause": {}}],  # one window: nothing resets the counts
                    },
                    "fallbacks": ["rescue"],
                },
                "rescue": {"targets": [{"model": "gpt-4o-mini", "endpoints": ["stable"]}]},
            },
            "state": {"backend": "memory"},
        }

    def test_failing_candidate(self) -> None:
        """Every failure of the candidate is rescued, so the application sees none; the analysis, the report and
        the dashboard all count them as the candidate's errors, and the report rolls it back."""
        events = Events()
        with FakeUpstream("stable") as stable, FakeUpstream("candidate") as candidate:
            candidate.push(*[Reply.error(500) if n % 2 else Reply() for n in range(200)])
            config = holyroute.load_config(self.config(stable, candidate))
            # A seeded split: an unseeded one gave the candidate too few of the 120 calls now and then (p = 0.056).
            router = Router(config, sinks=[events], log=False, rng=random.Random(11))
            transport = holyroute.Transport(router=router)
            sdk = openai.OpenAI(api_key="x", max_retries=0, http_client=httpx2.Client(transport=transport))
            try:
                with sdk:
                    for n in range(120):
                        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"{n}"}])
                engine = router.rollouts["chat"]  # type: ignore[index]
                measured = engine.window_measurements()
            finally:
                router.close()  # passed in, so the transport leaves it to its owner
        aggregate = aggregate_events({"event": name, **fields} for name, fields in events.items)
        route = aggregate.routes["chat"]
        assert route.served.errors == 0, "the application saw no error"
        counts = {arm: (m.calls, m.errors) for arm, m in measured.items()}
        assert {arm: (t.calls, t.errors) for arm, t in route.arms.items()} == counts
        assert counts["gpt-4.1"][1] > 10

        [chat] = build_report(aggregate, config, settings=Settings(min_calls=10)).routes
        verdicts = {arm.arm: arm.verdict for arm in chat.arms}
        test = SequentialNonInferiority(margin=0.01, alpha=0.05)
        expected = test.update(*counts["gpt-4o"], *counts["gpt-4.1"])
        assert expected.rejected
        candidate_verdict = verdicts["gpt-4.1"]
        assert candidate_verdict is not None
        assert (candidate_verdict.verdict, candidate_verdict.reason) == ("ROLLBACK", expected.reason)
        board = Board()
        board.aggregate = aggregate
        shown = {a["arm"]: (a["calls"], a["errors"]) for a in board.snapshot(T0)["routes"][0]["arms"]}
        assert shown == counts


def test_the_demos_failing_candidate_fails_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After ``holyroute demo``, the report and the dashboard show the failing canary's rescued failures as its errors
    and roll it back (issue 15, finding 7: it showed 0.00% errors and WAIT); the log says the rollout aborted it."""
    path = tmp_path / "events.jsonl"
    assert cli.main(["demo", "--events", str(path)]) == 0
    capsys.readouterr()
    route = next(r for r in report_document(path, capsys)["routes"] if r["route"] == "canary-bad")
    candidate = next(a for a in route["arms"] if a["arm"] == "gpt-4.1")
    assert candidate["errors"] > 0
    assert candidate["verdict"]["verdict"] == "ROLLBACK"
    chat = next(r for r in dashboard_state(path)["routes"] if r["route"] == "canary-bad")
    shown = {a["arm"]: (a["calls"], a["errors"]) for a in chat["arms"]}
    assert shown == {a["arm"]: (a["calls"], a["errors"]) for a in route["arms"]}
    assert chat["errors"] == 0, "the application saw none: fallbacks rescued them all"
    assert (chat["rollout"]["last"]["status"], chat["rollout"]["last"]["candidate"]) == ("aborted", "gpt-4.1")


class TestReportFollowsTheRolloutsAbort:
    """A candidate the rollout aborted on its own is a ROLLBACK in the report, even when the final counts of the
    whole log no longer reject it; an abort by hand, or a retry after the abort, leaves the report's own verdict."""

    def rollout_events(self, how: str) -> list[dict[str, Any]]:
        """The events the real rollout engine emits when it aborts the candidate ``how``."""
        settings: dict[str, Any] = {
            "stable": {"model": "gpt-4o", "endpoints": ["main"]},
            "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
            "steps": [{"set_weight": 50}, {"analysis": {}}],
            "analysis": {"min_calls": 20, "min_duration": 0, "interval": 0},
        }
        if how == "consecutive":
            settings["rollback_on_consecutive_errors"] = 3
        emitted = Events()
        clock = FakeClock(T0)
        engine = RolloutEngine("chat", Rollout.model_validate(settings), MemoryStore(), emit=emitted, clock=clock)
        if how == "by hand":
            engine.abort()
        for n in range(60):
            clock.advance(1.0)
            engine.observe("gpt-4o", ok=True, latency_ms=100.0, ttft_ms=None, cost_usd=None)
            ok = how != "consecutive" and n % 2 == 0
            engine.observe("gpt-4.1", ok=ok, latency_ms=100.0, ttft_ms=None, cost_usd=None)
        assert engine.state.status == "aborted"
        return [{"event": name, "timestamp": T0 + 500, **fields} for name, fields in emitted.items]

    def verdict(self, *extra: dict[str, Any]) -> tuple[str, str]:
        # 1,000 stable calls after the abort and a candidate that failed 2 of 6: no longer rejected on these counts.
        events = [request(n, "gpt-4o") for n in range(1000)]
        events += [request(n, "gpt-4.1", outcome="error" if n < 2 else "ok") for n in range(6)]
        [chat] = build_report(aggregate_events([*events, *extra]), settings=Settings(min_calls=5)).routes
        [verdict] = [arm.verdict for arm in chat.arms if arm.arm == "gpt-4.1"]
        assert verdict is not None
        return verdict.verdict, verdict.reason

    @pytest.mark.parametrize("how", ["analysis", "consecutive"])
    def test_an_abort_by_the_rollout_is_a_rollback(self, how: str) -> None:
        own, _ = self.verdict()
        assert own == "CONTINUE"
        events = self.rollout_events(how)
        assert events[-1]["reason"].startswith({"analysis": "analysis failed: ", "consecutive": "3 consecutive"}[how])
        verdict, reason = self.verdict(*events)
        assert verdict == "ROLLBACK"
        assert reason.startswith(f"the rollout aborted gpt-4.1: {events[-1]['reason']}; ")
        retried = {**events[-1], "action": "retry", "status": "progressing", "reason": "retried by hand"}
        assert self.verdict(*events, retried)[0] == own

    def test_an_abort_by_hand_is_not_evidence(self) -> None:
        assert self.verdict(*self.rollout_events("by hand"))[0] == "CONTINUE"


# ---- the guard: renderers take the aggregation, never an event ---------------------------------------------------

#: Fields of holyroute events: a renderer that looks one up is aggregating on its own.
EVENT_FIELDS = {
    "event",
    "timestamp",
    "route",
    "arm",
    "split_arm",
    "fallback",
    "endpoint",
    "outcome",
    "shadow",
    "sticky",
    "latency_ms",
    "ttft_ms",
    "cost_usd",
    "priced",
    "prompt_tokens",
    "completion_tokens",
    "upstream_model",
    "finish_reason",
    "quality",
}


@pytest.mark.parametrize("module", [report_module, dashboard_module], ids=["report", "dashboard"])
def test_renderers_never_look_up_an_event_field(module: Any) -> None:
    """Neither ``event.get("outcome")`` nor ``event["cost_usd"]`` appears in a renderer: the aggregation decides."""
    tree = ast.parse(inspect.getsource(module))
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            key = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript):
            key = node.slice
        if isinstance(key, ast.Constant) and key.value in EVENT_FIELDS:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_renderers_take_the_aggregation() -> None:
    """The report, the demo table and the page are built from an :class:`Aggregate` and the configuration only."""
    for render in (build_report, summarise, page_state):
        first = next(iter(inspect.signature(render).parameters.values()))
        assert (first.name, first.annotation) == ("source", "Aggregate"), render.__name__
    assert isinstance(Board().aggregate, Aggregate)


@pytest.mark.parametrize("module", [report_module, dashboard_module], ids=["report", "dashboard"])
def test_renderers_do_not_import_the_reader(module: Any) -> None:
    """They cannot parse a line or charge a call themselves (``lint-imports`` checks the same contract in CI)."""
    tree = ast.parse(inspect.getsource(module))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "holyroute.readers.log" not in imported
    assert "holyroute.readers.aggregate" in imported
