"""Summaries of holyroute's event log: per route, arm and endpoint, what was served, what failed, what it cost.

Reads the ``holyroute.request`` and ``holyroute.failover`` events as the JSON-lines log holds them (or as dicts) and
computes the table; it never needs the process that emitted them. Pure functions, no I/O beyond reading the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Row", "read_events", "render_table", "summarise"]


@dataclass(slots=True)
class Row:
    """One route / arm / endpoint line of the summary."""

    route: str
    arm: str
    endpoint: str
    calls: int = 0
    errors: int = 0
    failovers: int = 0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of latency in ms; ``None`` without data."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events from a JSON-lines file; lines that are not holyroute JSON events are skipped."""
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and str(event.get("event", "")).startswith("holyroute."):
                yield event


def summarise(events: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Rows for every (route, arm, endpoint) that served or failed a call, sorted."""
    rows: dict[tuple[str, str, str], Row] = {}

    def row(event: Mapping[str, Any]) -> Row:
        key = (str(event.get("route")), str(event.get("arm")), str(event.get("endpoint")))
        found = rows.get(key)
        if found is None:
            found = rows[key] = Row(*key)
        return found

    for event in events:
        name = event.get("event")
        if name == "holyroute.failover":
            row(event).failovers += 1
        elif name == "holyroute.request":
            target = row(event)
            target.calls += 1
            if event.get("outcome") == "error":
                target.errors += 1
            latency = event.get("latency_ms")
            if isinstance(latency, int | float):
                target.latencies.append(float(latency))
            target.tokens += int(event.get("prompt_tokens") or 0) + int(event.get("completion_tokens") or 0)
            cost = event.get("cost_usd")
            if isinstance(cost, int | float):
                target.cost_usd += cost
            elif event.get("outcome") == "ok":
                target.unpriced += 1
    return sorted(rows.values(), key=lambda r: (r.route, r.arm, r.endpoint))


def render_table(rows: list[Row]) -> str:
    """A fixed-width text table of the rows, with a total line."""
    header = ("route", "arm", "endpoint", "calls", "errors", "failovers", "p50 ms", "p95 ms", "tokens", "cost USD")
    total = Row("total", "", "")
    for r in rows:
        total.calls += r.calls
        total.errors += r.errors
        total.failovers += r.failovers
        total.latencies.extend(r.latencies)
        total.tokens += r.tokens
        total.cost_usd += r.cost_usd
        total.unpriced += r.unpriced
    lines = [_cells(r) for r in [*rows, total]]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    numeric = range(3, len(header))

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    out = [fmt(header), rule, *(fmt(line) for line in lines[:-1]), rule, fmt(lines[-1])]
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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
