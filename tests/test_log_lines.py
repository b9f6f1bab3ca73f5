"""The dashboard and the report read logs they do not control: a line with an absurd number, a wrong type or no
object at all is skipped and counted; it never breaks a poll or a report, and the good lines after it all count."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holyroute import cli
from holyroute.readers.aggregate import aggregate_log
from holyroute.readers.dashboard import Board, Dashboard
from holyroute.readers.log import load_log
from holyroute.readers.report import build_report, render_markdown, render_report, report_json, summarise

T0 = 1_800_000_000.0


def good(n: int) -> dict[str, Any]:
    return {
        "event": "holyroute.request",
        "timestamp": T0 + n,
        "route": "chat",
        "arm": "gpt-4o",
        "endpoint": "main",
        "outcome": "ok",
        "latency_ms": 100.0 + n,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
    }


BAD_LINES = [
    '{"event": "holyroute.request", "route": "chat", "arm": "a", "endpoint": "main", "latency_ms": 1e999}',
    '{"event": "holyroute.request", "route": "chat", "arm": "a", "endpoint": "main", "latency_ms": ' + "9" * 400 + "}",
    '{"event": "holyroute.request", "route": "chat", "arm": "a", "prompt_tokens": "ten"}',
    '{"event": "holyroute.request", "route": "chat", "arm": "a", "completion_tokens": {"n": 1}}',
    '{"event": "holyroute.request", "route": "chat", "arm": "a", "timestamp": 1e300}',
    '{"event": "holyroute.request", "route": "chat", "arm": "a", "cost_usd": -1}',
    '{"event": "holyroute.failover", "endpoint": "main", "attempt": ' + "1" * 400 + "}",
    '{"event": "holyroute.rollout", "route": "chat", "weight": "NaN", "step": 1}',
]
NOT_OBJECTS = ["[1, 2, 3]", "42", '"holyroute.request"', "null", '{"event": 7}']


class TestBadLines:
    """Each bad line is skipped and counted; the valid lines around it are all counted."""

    def test_dashboard_poll(self, tmp_path: Path) -> None:
        path = tmp_path / "events.jsonl"
        rows = [json.dumps(good(0)), *BAD_LINES, *NOT_OBJECTS, json.dumps(good(1)), json.dumps(good(2))]
        path.write_text("\n".join(rows) + "\n")
        dashboard = Dashboard(path, clock=lambda: T0 + 10)
        try:
            state = dashboard.state()
        finally:
            dashboard.close()
        assert state["totals"]["calls"] == 3, "the valid lines after the bad ones all count"
        log = state["log"]
        assert log["malformed"] == len(BAD_LINES)
        assert log["not_holyroute"] == len(NOT_OBJECTS)

    def test_report(self, tmp_path: Path) -> None:
        path = tmp_path / "events.jsonl"
        path.write_text("\n".join([json.dumps(good(0)), *BAD_LINES, *NOT_OBJECTS, json.dumps(good(1))]) + "\n")
        log = load_log(path)
        assert (len(log.events), log.malformed, log.not_holyroute) == (2, len(BAD_LINES), len(NOT_OBJECTS))
        report = build_report(aggregate_log(log))
        assert report_json(report)["events"]["skipped_malformed"] == len(BAD_LINES)
        text = render_report(report)
        assert f"{len(BAD_LINES)} malformed" in text
        render_markdown(report)
        assert sum(row.calls for row in summarise(aggregate_log(log))) == 2

    def test_report_command(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "events.jsonl"
        path.write_text("\n".join([*BAD_LINES, json.dumps(good(0))]) + "\n")
        assert cli.main(["report", str(path)]) == 0
        assert f"{len(BAD_LINES)} malformed" in capsys.readouterr().out


# ---- property: any line content mixed with good lines: every good line counts -----------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(
    [
        "timestamp",
        "route",
        "arm",
        "split_arm",
        "endpoint",
        "outcome",
        "latency_ms",
        "ttft_ms",
        "cost_usd",
        "prompt_tokens",
        "completion_tokens",
        "shadow",
        "fallback",
        "weight",
        "step",
        "steps",
        "status",
        "attempt",
        "wait_s",
        "cooldown_s",
        "ejection_s",
        "remaining_tokens",
        "quality",
        "priced",
        "finish_reason",
        "upstream_model",
        "sticky",
    ]
)
_names = st.sampled_from(
    [
        "holyroute.request",
        "holyroute.failover",
        "holyroute.alert",
        "holyroute.rollout",
        "holyroute.endpoint_ejected",
        "holyroute.cooldown",
        "holyroute.headroom",
        "holyroute.something",
    ]
)


def _dumped(value: Any) -> str:
    return json.dumps(value)


_events = st.builds(lambda name, fields: {**fields, "event": name}, _names, st.dictionaries(_fields, _values))
_junk = _events.map(_dumped) | _values.map(_dumped) | st.text(max_size=60).map(lambda t: t.replace("\n", " "))


GOOD_ROUTE = "good-route-of-the-test"  # longer than any generated text: only the good lines name it


class TestAnyLine:
    @given(st.lists(st.tuples(st.booleans(), _junk), max_size=8))
    def test_good_lines_always_count(self, mixed: list[tuple[bool, str]]) -> None:
        """Whatever the other lines hold, each good request line counts once in the dashboard and the report."""
        lines: list[str] = []
        goods = 0
        for n, (good_first, junk) in enumerate(mixed):
            if good_first:
                lines.append(json.dumps({**good(n), "route": GOOD_ROUTE}))
                goods += 1
            lines.append(junk)
        board = Board()
        for line in lines:
            board.add_line(line, T0)
        json.dumps(board.snapshot(T0 + 100))
        found = board.routes.get(GOOD_ROUTE)
        assert (found.served.calls if found is not None else 0) == goods

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "events.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
            log = load_log(path)
            report = build_report(aggregate_log(log))
            render_report(report)
            render_markdown(report)
            json.dumps(report_json(report))
            summarise(aggregate_log(log))
            calls = sum(arm.calls for route in report.routes if route.route == GOOD_ROUTE for arm in route.arms)
            assert calls == goods
