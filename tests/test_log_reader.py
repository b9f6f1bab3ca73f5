"""One rule for which arm a served call counts for, shared by the report, the dashboard and the rollout analysis.

A call the split sent to ``new`` that a fallback rescued is an error of ``new`` (``split_arm``), whatever the
fallback answered: the rollout analysis judges it so (``core/accounting.py``), and ``holyroute report`` and
``holyroute dashboard`` now count it the same way (the report used to list it apart, the dashboard to count it as a
success of ``new``). A log from before ``split_arm`` cannot say which arm failed: the report lists such calls apart
and the dashboard counts them for the route only.
"""

from __future__ import annotations

from typing import Any

from holyroute.readers.aggregate import aggregate_log
from holyroute.readers.dashboard import Board
from holyroute.readers.log import ChargedArm, EventLog, charged_arm
from holyroute.readers.report import build_report


def request(
    arm: str, *, split_arm: str | None = None, fallback: str | None = None, outcome: str = "ok"
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "holyroute.request",
        "route": "chat",
        "arm": arm,
        "endpoint": arm,
        "fallback": fallback,
        "outcome": outcome,
        "status": 200 if outcome == "ok" else 500,
        "latency_ms": 100.0,
        "cost_usd": 0.001,
    }
    if split_arm is not None:
        event["split_arm"] = split_arm
    return event


EVENTS = [
    *(request("stable", split_arm="stable") for _ in range(3)),
    request("new", split_arm="new"),
    *(request("cheap", split_arm="new", fallback="chat-cheap") for _ in range(2)),
    request("new", split_arm="new", outcome="error"),
]


def test_charged_arm_is_the_split_arm_which_failed_a_rescued_call() -> None:
    assert charged_arm(request("cheap", split_arm="new", fallback="chat-cheap")) == ChargedArm("new", True)
    assert charged_arm(request("new", split_arm="new")) == ChargedArm("new", False)
    assert charged_arm(request("new", split_arm="new", outcome="error")) == ChargedArm("new", True)
    assert charged_arm(request("cheap", fallback="chat-cheap")) is None  # an older log: no split_arm


def test_the_report_and_the_dashboard_charge_the_same_arms_the_same_errors() -> None:
    report = build_report(aggregate_log(EventLog("mem", tuple(EVENTS))))
    [route] = report.routes
    from_report = {arm.arm: (arm.calls, arm.errors) for arm in route.arms}
    assert from_report == {"new": (4, 3), "stable": (3, 0)}
    assert route.fallbacks == ()

    board = Board()
    for event in EVENTS:
        board.add(event, received=1000.0)
    [shown] = board.snapshot(now=1001.0)["routes"]
    from_dashboard = {arm["arm"]: (arm["calls"], arm["errors"]) for arm in shown["arms"]}
    assert from_dashboard == from_report
    assert (shown["calls"], shown["errors"], shown["fallback_calls"]) == (7, 1, 2)  # the route served 6 of 7


def test_without_split_arm_a_rescued_call_counts_for_no_arm_in_either() -> None:
    events = [request("stable"), request("cheap", fallback="chat-cheap")]
    [route] = build_report(aggregate_log(EventLog("mem", tuple(events)))).routes
    assert [(arm.arm, arm.calls) for arm in route.arms] == [("stable", 1)]
    assert [(f.arm, f.fallback, f.calls) for f in route.fallbacks] == [("cheap", "chat-cheap", 1)]

    board = Board()
    for event in events:
        board.add(event, received=1000.0)
    [shown] = board.snapshot(now=1001.0)["routes"]
    assert [(arm["arm"], arm["calls"]) for arm in shown["arms"]] == [("stable", 1)]
    assert (shown["calls"], shown["fallback_calls"]) == (2, 1)
