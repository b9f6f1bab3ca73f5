"""Event-log reports: the demo's summary table and ``holyroute report``.

Every number the report prints is recomputed here from the generated events, independently: Wilson bounds with
scipy's ``binomtest``, nearest-rank quantiles with numpy's ``inverted_cdf`` method, the sample ratio mismatch with
scipy's ``chisquare`` and the sequential test's single-look p-value from its closed form.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest, chisquare

from holyroute import cli
from holyroute.readers.aggregate import aggregate_events, aggregate_log
from holyroute.readers.log import EventLog, load_log, read_events
from holyroute.readers.report import (
    ArmStats,
    Settings,
    build_report,
    judge,
    render_markdown,
    render_report,
    render_table,
    report_json,
    summarise,
    time_series,
)

Event = dict[str, Any]


def request(endpoint: str, latency: float, *, outcome: str = "ok", cost: float | None = 0.001) -> dict[str, object]:
    return {
        "event": "holyroute.request",
        "route": "chat",
        "arm": "gpt-4.1",
        "endpoint": endpoint,
        "outcome": outcome,
        "latency_ms": latency,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": cost,
    }


class TestDemoSummary:
    """The per-endpoint table the demo prints."""

    def test_summary_rows(self) -> None:
        events = [
            request("a", 10.0),
            request("a", 30.0, outcome="error", cost=None),
            request("b", 20.0, cost=None),
            {"event": "holyroute.failover", "route": "chat", "arm": "gpt-4.1", "endpoint": "a"},
        ]
        a, b = summarise(aggregate_events(events))
        assert (a.endpoint, a.calls, a.errors, a.failovers, a.tokens, a.unpriced) == ("a", 2, 1, 1, 30, 0)
        assert (a.percentile(50), a.percentile(95)) == (10.0, 30.0)
        assert (b.calls, b.unpriced) == (1, 1)
        lines = render_table([a, b]).splitlines()
        row_a = next(line for line in lines if line.startswith("chat") and " a " in line)
        assert row_a.rstrip().endswith("0.001000")
        assert lines[-2].startswith("total")
        assert lines[-2].rstrip().endswith("0.001000*"), "the total includes an unpriced call"
        assert lines[-1] == "* some calls have no price for their model; add it under 'prices'"

    def test_reads_only_holyroute_events(self, tmp_path: Path) -> None:
        log = tmp_path / "events.jsonl"
        log.write_text("\n".join([json.dumps(request("a", 1.0)), "not json", json.dumps({"event": "other"})]))
        assert [e["endpoint"] for e in read_events(log)] == ["a"]


# ---- building logs -----------------------------------------------------------------------------------------------


def call(
    route: str,
    arm: str,
    *,
    outcome: str = "ok",
    latency: float = 100.0,
    ttft: float | None = None,
    prompt: int | None = 20,
    completion: int | None = 10,
    cost: float | None = 0.001,
    priced: bool = True,
    fallback: str | None = None,
    shadow: bool = False,
    sticky: bool = False,
    timestamp: str | None = None,
) -> Event:
    event: Event = {
        "event": "holyroute.request",
        "route": route,
        "arm": arm,
        "model": route,
        "upstream_model": arm,
        "endpoint": "main",
        "api": "chat",
        "status": 500 if outcome == "error" else 200,
        "outcome": outcome,
        "error": "upstream 500" if outcome == "error" else None,
        "attempts": 1,
        "fallback": fallback,
        "sticky": sticky,
        "stream": ttft is not None,
        "latency_ms": latency,
        "ttft_ms": ttft,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": cost,
        "priced": priced,
        "request_id": "req_x",
        "shadow": shadow,
    }
    if timestamp is not None:
        event["timestamp"] = timestamp
    return event


def arm_calls(route: str, arm: str, calls: int, errors: int, latency_ms: float = 100.0) -> list[Event]:
    """``calls`` calls of which the first ``errors`` failed, latencies spread evenly up to 1.2 x ``latency_ms``."""
    return [
        call(
            route,
            arm,
            outcome="error" if i < errors else "ok",
            latency=latency_ms * (0.8 + 0.4 * i / calls),
            cost=None if i < errors else 0.001,
        )
        for i in range(calls)
    ]


def write_log(path: Path, events: Iterable[Event], junk: Sequence[str] = ()) -> Path:
    lines = [json.dumps(e) for e in events]
    path.write_text("\n".join([*junk, *lines]) + "\n", encoding="utf-8")
    return path


def write_config(path: Path, routes: dict[str, Any]) -> Path:
    config = {
        "endpoints": {"main": {"base_url": "https://main.example/v1", "api_key": "${REPORT_TEST_KEY}"}},
        "routes": routes,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def split(*arms: tuple[str, float]) -> dict[str, Any]:
    return {"targets": [{"model": arm, "endpoints": ["main"], "weight": weight} for arm, weight in arms]}


def rollout(stable: str, candidate: str) -> dict[str, Any]:
    return {
        "rollout": {
            "stable": {"model": stable, "endpoints": ["main"]},
            "candidate": {"model": candidate, "endpoints": ["main"]},
            "steps": [{"set_weight": 50}],
        }
    }


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main(["report", *(str(a) for a in args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> dict[str, Any]:
    code, out, err = run(capsys, *args, "--format", "json")
    assert (code, err) == (0, "")
    document: dict[str, Any] = json.loads(out)
    return document


def by_arm(route: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {arm["arm"]: arm for arm in route["arms"]}


def route_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in document["routes"] if r["route"] == name)


# ---- independent arithmetic --------------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q * 100, method="inverted_cdf")) if values else None


def wilson(errors: int, n: int) -> tuple[float, float]:
    ci = binomtest(errors, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def single_look_p(n_s: int, x_s: int, n_c: int, x_c: int, margin: float) -> float:
    """min(1, 1/Lambda) of the normal-mixture SPRT, tau = max(3 margin, 1 pp), variance from (x+1)/(n+2)."""
    excess = x_c / n_c - x_s / n_s - margin
    if excess <= 0:
        return 1.0
    s, c = (x_s + 1) / (n_s + 2), (x_c + 1) / (n_c + 2)
    v = s * (1 - s) / n_s + c * (1 - c) / n_c
    tau2 = max(3 * margin, 0.01) ** 2
    log_lambda = 0.5 * math.log(v / (v + tau2)) + tau2 * excess**2 / (2 * v * (v + tau2))
    return min(1.0, math.exp(-log_lambda))


def expected_arm(events: Sequence[Event]) -> dict[str, Any]:
    """What the report must say about a group of request events, computed from scratch."""
    done = [e for e in events if e["outcome"] != "cancelled"]
    errors = sum(e["outcome"] == "error" for e in done)
    unpriced = sum(not e["priced"] for e in events)
    cost = sum(e["cost_usd"] for e in events if e["cost_usd"] is not None)
    ttfts = [e["ttft_ms"] for e in done if e["ttft_ms"] is not None]
    latencies = [e["latency_ms"] for e in done]
    usage = [e["completion_tokens"] for e in done if e["completion_tokens"] is not None]
    low, high = wilson(errors, len(done)) if done else (None, None)
    return {
        "calls": len(done),
        "errors": errors,
        "cancelled": len(events) - len(done),
        "error_rate": errors / len(done) if done else None,
        "error_rate_ci_low": low,
        "error_rate_ci_high": high,
        "latency_p50_ms": quantile(latencies, 0.5),
        "latency_p95_ms": quantile(latencies, 0.95),
        "ttft_p50_ms": quantile(ttfts, 0.5),
        "ttft_p95_ms": quantile(ttfts, 0.95),
        "prompt_tokens": sum(e["prompt_tokens"] or 0 for e in events),
        "completion_tokens": sum(e["completion_tokens"] or 0 for e in events),
        "mean_completion_tokens": sum(usage) / len(usage) if usage else None,
        "cost_usd": cost,
        "cost_per_call_usd": cost / (len(events) - unpriced) if len(events) > unpriced else None,
        "unpriced": unpriced,
    }


def assert_arm(reported: dict[str, Any], events: Sequence[Event]) -> None:
    expected = expected_arm(events)
    missing = {key for key, value in expected.items() if value is None}
    assert {key for key in expected if reported[key] is None} == missing
    actual = {key: reported[key] for key in expected if key not in missing}
    assert actual == pytest.approx({k: v for k, v in expected.items() if k not in missing}, rel=1e-9, abs=1e-12)


# ---- a realistic log ---------------------------------------------------------------------------------------------

PRICE = {"gpt-4o": (2.5, 10.0), "gpt-4.1": (2.0, 8.0), "gemini-2.5-flash": (0.3, 2.5), "text-embed": (0.02, 0.0)}


def realistic_log(seed: int = 7) -> tuple[list[Event], list[str]]:
    """About 4,000 events: a two-arm chat route with streams, errors, cancellations, an unpriced arm, fallbacks and
    shadow copies; a one-arm embeddings route; failover events; a few junk lines."""
    rng = random.Random(seed)
    start = datetime(2025, 11, 1, tzinfo=UTC)
    events: list[Event] = []
    made = 0

    def one(route: str, arm: str, error_rate: float, median_ms: float, **extra: Any) -> Event:
        outcome = "error" if rng.random() < error_rate else ("cancelled" if rng.random() < 0.01 else "ok")
        stream = route == "chat" and rng.random() < 0.5
        prompt, completion = rng.randint(5, 400), rng.randint(1, 300)
        if outcome == "error":
            prompt_tokens: int | None = None
            completion_tokens: int | None = None
        else:
            prompt_tokens, completion_tokens = prompt, (0 if arm == "text-embed" else completion)
        price = PRICE.get(arm)
        cost = None
        if price is not None and prompt_tokens is not None and completion_tokens is not None:
            cost = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
        latency = round(median_ms * math.exp(rng.gauss(0, 0.5)), 3)
        nonlocal made
        made += 1
        return call(
            route,
            arm,
            outcome=outcome,
            latency=latency,
            ttft=round(latency * rng.uniform(0.1, 0.4), 3) if stream else None,
            prompt=prompt_tokens,
            completion=completion_tokens,
            cost=cost,
            priced=price is not None,
            sticky=rng.random() < 0.3,
            timestamp=(start + timedelta(seconds=made * 0.9)).isoformat(),
            **extra,
        )

    for _ in range(3000):
        arm = "gpt-4o" if rng.random() < 0.6 else "gpt-4.1"
        if rng.random() < 0.02:
            events.append(one("chat", "gemini-2.5-flash", 0.0, 300, fallback="chat-cheap"))
        else:
            events.append(one("chat", arm, 0.02 if arm == "gpt-4o" else 0.03, 500 if arm == "gpt-4o" else 450))
        if rng.random() < 0.1:
            events.append(one("chat", "mystery-model", 0.05, 700, shadow=True))
        if rng.random() < 0.05:
            events.append({"event": "holyroute.failover", "route": "chat", "arm": arm, "reason": "429"})
    events += [one("embed", "text-embed", 0.01, 40) for _ in range(600)]
    events += [one("embed", "local-embed", 0.0, 10) for _ in range(30)]  # no price
    junk = ["plain text line", "{broken json", json.dumps({"event": "http.access", "path": "/"}), json.dumps([1, 2])]
    return events, junk


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    """The realistic log, written once for the module."""
    events, junk = realistic_log()
    return write_log(tmp_path_factory.mktemp("log") / "events.jsonl", events, junk), events


class TestNumbers:
    """Every number of the JSON report matches an independent computation over the same events."""

    def test_event_counts(self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]) -> None:
        path, events = log
        requests = [e for e in events if e["event"] == "holyroute.request"]
        shadow = sum(e["shadow"] for e in requests)
        assert run_json(capsys, path)["events"] == {
            "request": len(requests),
            "served": len(requests) - shadow,
            "shadow": shadow,
            "other_holyroute": len(events) - len(requests),
            "skipped_not_json": 2,
            "skipped_not_holyroute": 2,
            "skipped_malformed": 0,
            "malformed_request": 0,
            "dropped_names": 0,
            "outcomes": dict(sorted(Counter(e["outcome"] for e in requests).items())),
        }

    def test_every_arm(self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]) -> None:
        path, events = log
        document = run_json(capsys, path)
        assert [r["route"] for r in document["routes"]] == ["chat", "embed"]
        for route in document["routes"]:
            for arm in route["arms"]:
                served = [
                    e
                    for e in events
                    if e["event"] == "holyroute.request"
                    and (e["route"], e["arm"]) == (route["route"], arm["arm"])
                    and not e["shadow"]
                    and e["fallback"] is None
                ]
                assert_arm(arm, served)
                assert arm["upstream_models"] == [arm["arm"]]

    def test_unpriced_arm(self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]) -> None:
        path, _ = log
        local = by_arm(route_of(run_json(capsys, path), "embed"))["local-embed"]
        assert (local["unpriced"], local["cost_usd"], local["cost_per_call_usd"]) == (30, 0.0, None)

    def test_fallbacks_count_for_no_arm(
        self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        path, events = log
        chat = route_of(run_json(capsys, path), "chat")
        (fallback,) = chat["fallbacks"]
        assert (fallback["arm"], fallback["fallback"]) == ("gemini-2.5-flash", "chat-cheap")
        assert_arm(fallback, [e for e in events if e.get("fallback") == "chat-cheap"])
        assert "gemini-2.5-flash" not in by_arm(chat)

    def test_shadow_block(self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]) -> None:
        path, events = log
        document = run_json(capsys, path)
        chat = route_of(document, "chat")
        assert route_of(document, "embed")["shadow"] is None
        served = [e for e in events if e["event"] == "holyroute.request" and e["route"] == "chat" and not e["shadow"]]
        assert_arm(chat["shadow"]["served"], served)
        (shadow,) = chat["shadow"]["shadow"]
        assert shadow["arm"] == "mystery-model"
        assert_arm(shadow, [e for e in events if e.get("shadow")])

    def test_control_without_config_is_the_busiest_arm(
        self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        path, events = log
        chat = route_of(run_json(capsys, path), "chat")
        counts = Counter(e["arm"] for e in events if e["event"] == "holyroute.request" and not e["shadow"])
        assert counts["gpt-4o"] > counts["gpt-4.1"]
        assert (chat["control"], chat["control_basis"]) == ("gpt-4o", "the arm with the most calls")
        assert [a["arm"] for a in chat["arms"]] == ["gpt-4o", "gpt-4.1"]
        assert chat["srm"]["checked"] is False
        assert "no --config" in chat["srm"]["message"]

    def test_python_api_matches_the_command(
        self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        path, _ = log
        assert report_json(build_report(aggregate_log(load_log(path)))) == run_json(capsys, path)

    def test_table_shows_the_numbers(self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]) -> None:
        path, events = log
        code, out, _ = run(capsys, path)
        assert code == 0
        assert "4 lines skipped (2 not JSON, 2 not holyroute events)" in out
        requests = [e for e in events if e["event"] == "holyroute.request"]
        expected = expected_arm([e for e in requests if e["arm"] == "gpt-4.1" and not e["fallback"]])
        row = next(line for line in out.splitlines() if line.strip().startswith("gpt-4.1 "))
        cells = row.split()
        assert cells[1] == str(expected["calls"])
        assert f"{expected['error_rate']:.2%}" in cells
        assert f"{expected['error_rate_ci_low'] * 100:.2f}-{expected['error_rate_ci_high'] * 100:.2f}%" in cells
        assert f"{expected['latency_p95_ms']:.1f}" in cells
        assert f"{expected['cost_usd']:.6f}" in cells
        assert "shadow vs served:" in out
        assert "gemini-2.5-flash via chat-cheap" in out
        unpriced = sum(e["event"] == "holyroute.request" and not e["priced"] for e in events)
        assert f"* includes {unpriced} unpriced calls" in out

    def test_route_filter(self, log: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]) -> None:
        path, _ = log
        document = run_json(capsys, path, "--route", "embed")
        assert [r["route"] for r in document["routes"]] == ["embed"]


# ---- verdicts ----------------------------------------------------------------------------------------------------


def verdicts(capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> dict[str, dict[str, Any]]:
    """Each arm's verdict, with the configuration next to the log (control: old)."""
    document = run_json(capsys, path, "--config", path.with_name("config.yaml"), *options)
    return {arm: stats["verdict"] for arm, stats in by_arm(route_of(document, "chat")).items()}


class TestVerdicts:
    """WAIT, ROLLBACK, PROMOTE and CONTINUE, each against the control arm, through the command and `judge`."""

    def log(self, tmp_path: Path, *, candidate: tuple[int, int], control: tuple[int, int], slow: float = 1.0) -> Path:
        events = arm_calls("chat", "old", *control) + arm_calls("chat", "new", *candidate, latency_ms=100.0 * slow)
        random.Random(1).shuffle(events)
        write_config(tmp_path / "config.yaml", {"chat": split(("old", 50), ("new", 50))})
        return write_log(tmp_path / "events.jsonl", events)

    def test_wait_below_min_calls(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.log(tmp_path, control=(60, 1), candidate=(50, 1))
        found = {arm: stats["verdict"] for arm, stats in by_arm(route_of(run_json(capsys, path), "chat")).items()}
        assert found["old"] == {
            "verdict": "CONTROL",
            "reason": "control arm: the arm with the most calls",
            "p_value": None,
            "latency_ratio": None,
        }
        assert found["new"]["verdict"] == "WAIT"
        assert found["new"]["reason"].startswith("50 calls on new and 60 on control old, need 100 each; error rate")

    def test_promote(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.log(tmp_path, control=(1000, 20), candidate=(1000, 22))
        new = verdicts(capsys, path)["new"]
        assert new["verdict"] == "PROMOTE"
        assert new["reason"] == "error rate 2.2% vs 2.0%: within margin 1.0 pp (p=1); " + (
            "p95 latency 118 ms vs 118 ms: 1.00x <= 1.5x"
        )
        assert verdicts(capsys, path, "--min-calls", "1001")["new"]["verdict"] == "WAIT"

    def test_rollback_on_errors(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.log(tmp_path, control=(1000, 20), candidate=(1000, 80))
        new = verdicts(capsys, path)["new"]
        expected_p = single_look_p(1000, 20, 1000, 80, 0.01)
        assert expected_p < 0.05
        assert new["verdict"] == "ROLLBACK"
        assert new["p_value"] == pytest.approx(expected_p, rel=1e-9)
        assert new["reason"] == f"error rate 8.0% vs 2.0%: non-inferiority rejected (p={expected_p:.2g})"
        assert verdicts(capsys, path, "--margin", "0.07")["new"]["verdict"] == "PROMOTE"

    def test_rollback_on_errors_before_min_calls(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The sequential test is valid at any sample size, so a gross regression does not wait for min_calls."""
        path = self.log(tmp_path, control=(60, 0), candidate=(60, 30))
        assert single_look_p(60, 0, 60, 30, 0.01) < 0.05
        assert verdicts(capsys, path)["new"]["verdict"] == "ROLLBACK"

    def test_rollback_on_latency(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.log(tmp_path, control=(500, 10), candidate=(500, 10), slow=2.0)
        control_p95 = quantile([e["latency_ms"] for e in arm_calls("chat", "old", 500, 10)], 0.95)
        candidate_p95 = quantile([e["latency_ms"] for e in arm_calls("chat", "new", 500, 10, 200.0)], 0.95)
        assert control_p95 is not None
        assert candidate_p95 is not None
        new = verdicts(capsys, path)["new"]
        assert new["verdict"] == "ROLLBACK"
        assert new["latency_ratio"] == pytest.approx(candidate_p95 / control_p95)
        assert new["reason"].startswith(f"p95 latency {candidate_p95:.0f} ms vs {control_p95:.0f} ms: 2.00x > 1.5x")
        assert verdicts(capsys, path, "--max-latency-ratio", "2.5")["new"]["verdict"] == "PROMOTE"

    def test_continue_above_margin_not_significant(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.log(tmp_path, control=(400, 8), candidate=(400, 14))
        assert single_look_p(400, 8, 400, 14, 0.01) > 0.05
        new = verdicts(capsys, path)["new"]
        assert new["verdict"] == "CONTINUE"
        assert new["reason"].startswith("error rate 3.5% vs 2.0%: above margin 1.0 pp, not yet significant")

    def test_fallbacks_hold_back_a_promotion(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A candidate whose failures were all rescued by a fallback looks clean; unattributed rescues block PROMOTE."""
        path = self.log(tmp_path, control=(1000, 20), candidate=(1000, 20))
        rescued = [call("chat", "cheap", fallback="chat-cheap") for _ in range(15)]
        write_log(path, [*load_log(path).events, *rescued])
        new = verdicts(capsys, path)["new"]
        assert new["verdict"] == "CONTINUE"
        worst = (20 + 15) / (1000 + 15)
        assert new["reason"].endswith(
            f"not promoted: 15 fallback calls may be new's failures, which would make its error rate {worst:.1%}"
        )
        write_log(path, [*load_log(path).events[:-10]])  # 5 rescues left: 2.5% at worst, within the margin
        assert verdicts(capsys, path)["new"]["verdict"] == "PROMOTE"

    def test_configured_control(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """With a configuration the control is the first target (or the rollout's stable arm), not the busiest."""
        path = self.log(tmp_path, control=(300, 6), candidate=(900, 18))
        config = write_config(tmp_path / "split.yaml", {"chat": split(("old", 25), ("new", 75))})
        chat = route_of(run_json(capsys, path, "--config", config), "chat")
        assert (chat["control"], chat["control_basis"]) == ("old", "the first configured target")
        assert by_arm(chat)["new"]["verdict"]["verdict"] == "PROMOTE"
        config = write_config(tmp_path / "rollout.yaml", {"chat": rollout("old", "new")})
        chat = route_of(run_json(capsys, path, "--config", config), "chat")
        assert (chat["control"], chat["control_basis"]) == ("old", "the rollout's stable arm")

    def test_configured_arm_without_calls(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write_log(tmp_path / "events.jsonl", arm_calls("chat", "old", 200, 2))
        config = write_config(tmp_path / "c.yaml", {"chat": split(("old", 50), ("new", 50))})
        new = by_arm(route_of(run_json(capsys, path, "--config", config), "chat"))["new"]
        assert (new["calls"], new["error_rate"], new["verdict"]["verdict"]) == (0, None, "WAIT")

    def test_judge_directly(self) -> None:
        def arm(name: str, calls: int, errors: int, p95: float) -> ArmStats:
            return ArmStats(
                name, calls, errors, 0, errors / calls, None, p95, p95, None, None, 0, 0, None, 0, None, 0, ()
            )

        settings = Settings(min_calls=100)
        control = arm("old", 1000, 20, 400.0)
        assert judge(control, arm("new", 99, 2, 400.0), settings).verdict == "WAIT"
        assert judge(control, arm("new", 1000, 21, 400.0), settings).verdict == "PROMOTE"
        assert judge(control, arm("new", 1000, 90, 400.0), settings).verdict == "ROLLBACK"
        assert judge(control, arm("new", 1000, 21, 601.0), settings).verdict == "ROLLBACK"
        assert judge(control, arm("new", 1000, 34, 400.0), settings).verdict == "CONTINUE"


# ---- sample ratio mismatch ---------------------------------------------------------------------------------------


class TestSampleRatioMismatch:
    """The observed split against the configured weights, when the configuration can say what they were."""

    def log(self, tmp_path: Path, counts: dict[str, int], *, sticky: bool = False) -> Path:
        events = [call("chat", arm, sticky=sticky) for arm, n in counts.items() for _ in range(n)]
        return write_log(tmp_path / "events.jsonl", events)

    def config(self, tmp_path: Path) -> Path:
        return write_config(tmp_path / "c.yaml", {"chat": split(("a", 50), ("b", 50)), "spare": split(("a", 1))})

    def test_broken_split_warns(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path, config = self.log(tmp_path, {"a": 5300, "b": 4700}), self.config(tmp_path)
        srm = route_of(run_json(capsys, path, "--config", config), "chat")["srm"]
        expected = float(chisquare([5300, 4700], [5000, 5000]).pvalue)
        assert srm["p_value"] == pytest.approx(expected, rel=1e-6)
        assert (srm["checked"], srm["warning"]) == (True, True)
        assert (srm["observed"], srm["weights"]) == ({"a": 5300, "b": 4700}, {"a": 50, "b": 50})
        assert srm["message"] == (
            f"SRM: observed 5300/4700 vs configured 50/50, p={expected:.2g}: "
            "the split is broken, do not trust the comparison"
        )
        code, out, _ = run(capsys, path, "--config", config)
        assert code == 0
        assert f"  WARNING {srm['message']}" in out.splitlines()

    def test_healthy_split_is_quiet(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path, config = self.log(tmp_path, {"a": 5010, "b": 4990}), self.config(tmp_path)
        document = run_json(capsys, path, "--config", config)
        srm = route_of(document, "chat")["srm"]
        expected = float(chisquare([5010, 4990]).pvalue)
        assert srm["p_value"] == pytest.approx(expected, rel=1e-6)
        assert srm["warning"] is False
        assert (
            srm["message"]
            == f"SRM: observed 5010/4990 vs configured 50/50, p={expected:.2g}: consistent with the configured split"
        )
        assert document["routes_without_calls"] == ["spare"]

    def test_sticky_calls_carry_a_caveat(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path, config = self.log(tmp_path, {"a": 60, "b": 40}, sticky=True), self.config(tmp_path)
        srm = route_of(run_json(capsys, path, "--config", config), "chat")["srm"]
        assert "100% of calls were sticky" in srm["message"]

    def test_skipped_for_rollouts(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = self.log(tmp_path, {"a": 5300, "b": 4700})
        config = write_config(tmp_path / "r.yaml", {"chat": rollout("a", "b")})
        srm = route_of(run_json(capsys, path, "--config", config), "chat")["srm"]
        assert (srm["checked"], srm["p_value"], srm["warning"]) == (False, None, False)
        assert srm["message"].startswith("SRM not checked: a rollout route's weights change step by step")

    def test_unset_keys_are_not_needed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A report reads routes and weights; the configuration's API keys need not be in the environment."""
        monkeypatch.delenv("REPORT_TEST_KEY", raising=False)
        path, config = self.log(tmp_path, {"a": 10, "b": 10}), self.config(tmp_path)
        document = run_json(capsys, path, "--config", config)
        assert "environment variables not set, not needed for a report: REPORT_TEST_KEY" in document["notes"]


# ---- formats, plots, bad input -----------------------------------------------------------------------------------


class TestFormats:
    """Markdown and text render the same report; JSON parses (checked above)."""

    def test_markdown(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        events = [
            *arm_calls("chat", "old", 400, 8),
            *arm_calls("chat", "new|x", 399, 8),
            call("chat", "shadowy", shadow=True),
        ]
        path = write_log(tmp_path / "events.jsonl", events)
        code, out, _ = run(capsys, path, "--format", "markdown")
        assert code == 0
        lines = out.splitlines()
        header = lines.index(next(line for line in lines if line.startswith("| arm |")))
        assert lines[header + 1].startswith("| --- | ---: |")
        rows = [line for line in lines[header + 2 :] if line.startswith("| ")][:2]
        assert rows[0].startswith("| old | 400 | 8 | 2.00% |")
        assert rows[0].endswith("| CONTROL |")
        assert rows[1].startswith("| new\\|x | 399 |"), "a pipe in a name must not split the cell"
        assert all(row.count(" | ") == lines[header].count(" | ") for row in rows)
        assert "- **new\\|x: PROMOTE**: error rate 2.0% vs 2.0%" in out
        assert "Shadow vs served:" in out
        assert render_markdown(build_report(aggregate_log(load_log(path)))) + "\n" == out

    def test_text_from_python(self, tmp_path: Path) -> None:
        path = write_log(tmp_path / "events.jsonl", arm_calls("chat", "old", 10, 0))
        text = render_report(build_report(aggregate_log(load_log(path)), settings=Settings(min_calls=5)))
        assert "route chat: control old (the arm with the most calls)" in text

    def test_cancelled_and_malformed(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        events = [
            call("chat", "old", latency=10.0),
            call("chat", "old", outcome="cancelled", latency=9999.0, cost=0.5),
            {"event": "holyroute.request", "arm": "old"},
        ]
        document = run_json(capsys, write_log(tmp_path / "events.jsonl", events))
        old = by_arm(route_of(document, "chat"))["old"]
        assert (old["calls"], old["cancelled"], old["latency_p95_ms"]) == (1, 1, 10.0)
        assert (old["cost_usd"], old["cost_per_call_usd"]) == (pytest.approx(0.501), pytest.approx(0.2505))
        assert document["events"]["malformed_request"] == 1


class TestPlot:
    """``--plot`` draws a PNG with matplotlib, over time or over event order."""

    def test_png_by_time(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        pytest.importorskip("matplotlib")
        events, _ = realistic_log()
        path = write_log(tmp_path / "events.jsonl", events[:600])
        png = tmp_path / "report.png"
        code, out, err = run(capsys, path, "--plot", png)
        assert (code, err) == (0, "")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out.endswith(f"plot: {png}\n")

    def test_png_by_order(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        pytest.importorskip("matplotlib")
        path = write_log(tmp_path / "events.jsonl", arm_calls("chat", "old", 40, 4))
        png = tmp_path / "order.png"
        assert run(capsys, path, "--plot", png, "--format", "json")[0] == 0
        assert png.stat().st_size > 0

    def test_windows(self) -> None:
        """Without timestamps the events fall into 20 windows by their order; with them, by time."""
        events = arm_calls("chat", "old", 40, 4)
        (series,) = time_series(events)
        assert (series.by_time, series.calls) == (False, (2,) * 20)
        assert series.error_rate[:2] == (1.0, 1.0)
        assert series.error_rate[2:] == (0.0,) * 18
        start = datetime(2025, 1, 1, tzinfo=UTC)
        timed = [call("chat", "old", timestamp=(start + timedelta(seconds=s)).isoformat()) for s in (0, 1, 2, 100)]
        (series,) = time_series(timed)
        assert series.by_time
        assert (series.calls[0], series.calls[-1], sum(series.calls)) == (3, 1, 4)

    def test_without_matplotlib(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        path = write_log(tmp_path / "events.jsonl", arm_calls("chat", "old", 10, 0))
        code, out, err = run(capsys, path, "--plot", tmp_path / "x.png")
        assert (code, out) == (2, "")
        assert "pip install 'holyroute[plot]'" in err


class TestBadInput:
    """A bad file, configuration or option exits 2 with one clear line and no traceback."""

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["missing.jsonl"], "cannot read missing.jsonl: No such file or directory"),
            (["."], "cannot read .: Is a directory"),
            (["events.jsonl", "--alpha", "2"], "--alpha must be in (0, 1), got 2"),
            (["events.jsonl", "--min-calls", "0"], "--min-calls must be at least 1, got 0"),
            (["events.jsonl", "--route", "nope"], "has no holyroute.request events for route 'nope'"),
            (["junk.jsonl"], "has no holyroute.request events at all (0 holyroute events, 1 lines not JSON"),
            (["events.jsonl", "--config", "bad.yaml"], "routes.chat.targets[0].weight"),
            (["events.jsonl", "--config", "nothere.yaml"], "nothere.yaml: no such file"),
        ],
    )
    def test_exit_2(
        self,
        args: list[str],
        message: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        write_log(tmp_path / "events.jsonl", arm_calls("chat", "old", 5, 0))
        (tmp_path / "junk.jsonl").write_text("not json\n")
        bad = split(("old", -1))
        write_config(tmp_path / "bad.yaml", {"chat": bad})
        code, out, err = run(capsys, *args)
        assert (code, out) == (2, "")
        assert message in err
        assert "Traceback" not in err

    def test_empty_events_log_object(self) -> None:
        report = build_report(aggregate_log(EventLog("mem", ())))
        assert (report.routes, report.request_events) == ((), 0)
