"""The event-log summary behind the demo's table."""

from __future__ import annotations

import json
from pathlib import Path

from holyroute._report import read_events, render_table, summarise


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


def test_summary_rows() -> None:
    events = [
        request("a", 10.0),
        request("a", 30.0, outcome="error", cost=None),
        request("b", 20.0, cost=None),
        {"event": "holyroute.failover", "route": "chat", "arm": "gpt-4.1", "endpoint": "a"},
    ]
    a, b = summarise(events)
    assert (a.endpoint, a.calls, a.errors, a.failovers, a.tokens, a.unpriced) == ("a", 2, 1, 1, 30, 0)
    assert (a.percentile(50), a.percentile(95)) == (10.0, 30.0)
    assert (b.calls, b.unpriced) == (1, 1)
    lines = render_table([a, b]).splitlines()
    row_a = next(line for line in lines if line.startswith("chat") and " a " in line)
    assert row_a.rstrip().endswith("0.001000")
    assert lines[-2].startswith("total")
    assert lines[-2].rstrip().endswith("0.001000*"), "the total includes an unpriced call"
    assert lines[-1] == "* some calls have no price for their model; add it under 'prices'"


def test_reads_only_holyroute_events(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join([json.dumps(request("a", 1.0)), "not json", json.dumps({"event": "other"})]))
    assert [e["endpoint"] for e in read_events(log)] == ["a"]
