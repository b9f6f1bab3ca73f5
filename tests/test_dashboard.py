"""``holyroute dashboard``: the tail, the board, the server and the page in a real headless browser.

The tail and the board are tested without sockets or clocks: the board takes the time as an argument. The server is
tested on 127.0.0.1 with the standard library's HTTP client. The browser test drives Debian's Chromium through
Playwright and waits on the page's own state (bounded), never on a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from holyroute.cli import main
from holyroute.config import load_config
from holyroute.readers.dashboard import (
    MAX_BUCKETS,
    Board,
    ConfigView,
    Dashboard,
    DashboardServer,
    LogTail,
    config_view,
    serve,
)

SECRETS = ("sk-main-SECRET", "sk-backup-SECRET", "hdr-SECRET", "pw-SECRET", "/secret-path")
T0 = 1_800_000_000.0


def config_dict() -> dict[str, Any]:
    return {
        "endpoints": {
            "main": {
                "base_url": "https://user:pw-SECRET@api.main.example:8443/secret-path/v1",
                "api_key": "sk-main-SECRET",
                "headers": {"x-extra": "hdr-SECRET"},
                "rpm": 500,
            },
            "backup": {"base_url": "https://backup.example/v1", "api_key": "sk-backup-SECRET"},
            "deep": {"base_url": "https://deep.example/v1", "auth": "none"},
            "quiet": {"base_url": "http://[::1]:9000/v1", "auth": "none"},
        },
        "routes": {
            "chat": {
                "sticky": "user",
                "targets": [
                    {"model": "gpt-4.1", "endpoints": ["main", "backup"], "weight": 3},
                    {"model": "deepseek-chat", "endpoints": ["deep"], "weight": 1},
                ],
                "fallbacks": ["cheap"],
            },
            "cheap": {"targets": [{"model": "gpt-4o-mini", "endpoints": [{"endpoint": "quiet", "model": "mini"}]}]},
            "canary": {
                "rollout": {
                    "stable": {"model": "gpt-4o", "endpoints": ["backup"]},
                    "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
                    "steps": [{"set_weight": 20}, {"analysis": {}}, {"set_weight": 100}],
                }
            },
        },
        "state": {"backend": "memory"},
    }


@pytest.fixture
def view() -> ConfigView:
    return config_view(load_config(config_dict()))


def request(
    at: float, *, route: str = "chat", arm: str = "gpt-4.1", endpoint: str = "main", **fields: Any
) -> dict[str, Any]:
    event = {
        "event": "holyroute.request",
        "timestamp": at,
        "route": route,
        "arm": arm,
        "endpoint": endpoint,
        "outcome": "ok",
        "status": 200,
        "latency_ms": 100.0,
        "cost_usd": 0.001,
    }
    event.update(fields)
    return event


def failover(at: float, **fields: Any) -> dict[str, Any]:
    event = {
        "event": "holyroute.failover",
        "timestamp": at,
        "route": "chat",
        "arm": "gpt-4.1",
        "endpoint": "main",
        "next_endpoint": "backup",
        "status": 429,
        "error": None,
        "reason": "429 from upstream; cooldown 2s",
        "attempt": 1,
        "attempt_ms": 12.5,
        "wait_s": 0.0,
    }
    event.update(fields)
    return event


def lines(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(event) + "\n" for event in events)


# ---- the tail ----------------------------------------------------------------------------------------------------


class TestLogTail:
    """Reads only what was appended, whole lines only, and survives truncation and rotation."""

    def test_appends_are_read_once(self, tmp_path: Path) -> None:
        """Each read returns the lines appended since the previous one."""
        path = tmp_path / "events.jsonl"
        path.write_text("a\nb\n")
        tail = LogTail(path)
        assert tail.read().lines == ("a", "b")
        assert tail.read().lines == ()
        with path.open("a") as f:
            f.write("c\n")
        assert tail.read().lines == ("c",)
        assert tail.offset == 6
        tail.close()

    def test_partial_last_line_waits_for_its_newline(self, tmp_path: Path) -> None:
        """A line being written is not parsed until it is complete."""
        path = tmp_path / "events.jsonl"
        path.write_text('{"event": "holyroute.req')
        tail = LogTail(path)
        assert tail.read().lines == ()
        with path.open("a") as f:
            f.write('uest"}\n{"x"')
        assert tail.read().lines == ('{"event": "holyroute.request"}',)
        with path.open("a") as f:
            f.write(": 1}\n")
        assert tail.read().lines == ('{"x": 1}',)
        tail.close()

    def test_truncation_starts_over(self, tmp_path: Path) -> None:
        """A file that shrank is read again from its start, and the read says so."""
        path = tmp_path / "events.jsonl"
        path.write_text("one\ntwo\nthree\n")
        tail = LogTail(path)
        tail.read()
        path.write_text("new\n")
        read = tail.read()
        assert (read.truncated, read.lines) == (True, ("new",))
        tail.close()

    def test_rewrite_in_place_is_noticed_even_when_longer(self, tmp_path: Path) -> None:
        """A second ``holyroute demo`` rewrites the file: its first bytes change, so the tail starts over."""
        path = tmp_path / "events.jsonl"
        path.write_text('{"run": 1}\n')
        tail = LogTail(path)
        tail.read()
        path.write_text('{"run": 2}\n{"run": 2, "more": true}\n')
        read = tail.read()
        assert read.truncated
        assert read.lines == ('{"run": 2}', '{"run": 2, "more": true}')
        tail.close()

    def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(self, tmp_path: Path) -> None:
        """After a rename, what was appended to the old file is not lost, and the new file is read from its start."""
        path = tmp_path / "events.jsonl"
        path.write_text("old-1\n")
        tail = LogTail(path)
        assert tail.read().lines == ("old-1",)
        with path.open("a") as f:
            f.write("old-2\nold-unterminated")
        path.rename(tmp_path / "events.jsonl.1")
        path.write_text("new-1\n")
        read = tail.read()
        assert read.rotated
        assert not read.truncated
        assert read.lines == ("old-2", "old-unterminated", "new-1")
        tail.close()

    def test_missing_file_is_waited_for(self, tmp_path: Path) -> None:
        """No file yet is not an error; the tail opens it once it appears."""
        path = tmp_path / "later.jsonl"
        tail = LogTail(path)
        assert tail.read().missing
        path.write_text("first\n")
        assert tail.read().lines == ("first",)
        tail.close()

    def test_overlong_lines_are_dropped_and_counted(self, tmp_path: Path) -> None:
        """A line longer than the limit is skipped (even across reads); the next line is read normally."""
        path = tmp_path / "events.jsonl"
        path.write_text("x" * 50)
        tail = LogTail(path, max_line_bytes=20)
        assert tail.read().too_long == 1
        with path.open("a") as f:
            f.write("y" * 50 + "\nshort\n")
        read = tail.read()
        assert (read.too_long, read.lines) == (0, ("short",))
        tail.close()

    def test_large_backlog_is_read_in_slices(self, tmp_path: Path) -> None:
        """One read takes about ``max_bytes``; the rest is reported as ``behind`` and comes next time."""
        path = tmp_path / "events.jsonl"
        path.write_text("".join(f"{i:04d}\n" for i in range(100)))  # 500 bytes
        tail = LogTail(path)
        first = tail.read(max_bytes=200)
        assert (len(first.lines), first.behind) == (40, 300)
        rest = tail.read()
        assert (len(rest.lines), rest.behind) == (60, 0)
        assert rest.lines[-1] == "0099"
        tail.close()


# ---- the board ---------------------------------------------------------------------------------------------------


def by_name(rows: list[dict[str, Any]], key: str, name: str) -> dict[str, Any]:
    return next(row for row in rows if row[key] == name)


class TestBoard:
    """Events in, the page's state out."""

    def test_configured_endpoints_and_routes_show_before_any_event(self, view: ConfigView) -> None:
        """Every endpoint and route of the configuration is listed, idle, with its arms and weights."""
        state = Board(view).snapshot(T0)
        assert [e["name"] for e in state["endpoints"]] == ["main", "backup", "deep", "quiet"]
        assert {e["status"] for e in state["endpoints"]} == {"idle"}
        main_ep = by_name(state["endpoints"], "name", "main")
        assert (main_ep["host"], main_ep["rpm"], main_ep["models"]) == ("api.main.example:8443", 500, ["gpt-4.1"])
        assert by_name(state["endpoints"], "name", "quiet")["host"] == "[::1]:9000"
        assert by_name(state["endpoints"], "name", "quiet")["models"] == ["mini"]
        chat = by_name(state["routes"], "route", "chat")
        assert [(a["arm"], a["weight"], a["endpoints"]) for a in chat["arms"]] == [
            ("gpt-4.1", 75.0, ["main", "backup"]),
            ("deepseek-chat", 25.0, ["deep"]),
        ]
        assert (chat["sticky"], chat["fallbacks"]) == ("user", ["cheap"])
        canary = by_name(state["routes"], "route", "canary")
        assert [(a["arm"], a["weight"]) for a in canary["arms"]] == [("gpt-4o", 100.0), ("gpt-4.1", 0.0)]
        assert canary["rollout"] == {"strategy": "canary", "steps": 3, "last": None}

    def test_config_secrets_never_reach_the_state(self, view: ConfigView) -> None:
        """Keys, headers, URL credentials and paths are not in the view, so not in anything served."""
        text = json.dumps(Board(view).snapshot(T0)) + repr(view)
        for secret in SECRETS:
            assert secret not in text

    def test_requests(self, view: ConfigView) -> None:
        """Calls, errors, p95 and cost, per route, arm, endpoint and in total."""
        board = Board(view)
        for i in range(19):
            board.add(request(T0 + i, latency_ms=float(10 * (i + 1))), received=0.0)
        board.add(request(T0 + 19, arm="deepseek-chat", endpoint="deep", outcome="error", cost_usd=None), 0.0)
        state = board.snapshot(T0 + 20)
        assert state["totals"] | {"cost_usd": round(state["totals"]["cost_usd"], 9)} == {
            "calls": 20,
            "errors": 1,
            "cancelled": 0,
            "shadow_calls": 0,
            "cost_usd": 0.019,
            "p50_ms": pytest.approx(100, rel=0.02),
            "p95_ms": pytest.approx(180, rel=0.02),
            "failovers": 0,
            "alerts": 0,
            "outcomes": {"ok": 19, "error": 1},
            "cache_hits": 0,
            "cache_lookups": 0,
            "saved_usd": 0.0,
        }
        chat = by_name(state["routes"], "route", "chat")
        gpt, deep = chat["arms"]
        assert (gpt["calls"], gpt["errors"], gpt["share"]) == (19, 0, 0.95)
        assert (deep["calls"], deep["errors"], deep["share"]) == (1, 1, 0.05)
        assert by_name(state["endpoints"], "name", "main")["status"] == "healthy"
        assert by_name(state["endpoints"], "name", "backup")["status"] == "idle"

    def test_degraded_by_recent_errors(self, view: ConfigView) -> None:
        """An endpoint is degraded when a fifth of its recent attempts failed, once it has made ten."""
        board = Board(view)
        for i in range(9):
            board.add(request(T0 + i, endpoint="deep", outcome="error" if i < 2 else "ok"), 0.0)
        deep = by_name(board.snapshot(T0 + 9)["endpoints"], "name", "deep")
        assert (deep["status"], deep["recent_attempts"]) == ("healthy", 9)
        board.add(request(T0 + 9, endpoint="deep"), 0.0)
        deep = by_name(board.snapshot(T0 + 10)["endpoints"], "name", "deep")
        assert (deep["status"], deep["reason"]) == ("degraded", "2 of the last 10 attempts failed")

    def test_failovers_feed_and_endpoint_errors(self, view: ConfigView) -> None:
        """A failover is listed newest first and counts as a failed attempt of its endpoint."""
        board = Board(view)
        board.add(failover(T0, reason="first"), 0.0)
        board.add(failover(T0 + 1, status=None, error="ConnectTimeout", reason="second"), 0.0)
        board.add(request(T0 + 1, endpoint="backup", attempts=2), 0.0)
        state = board.snapshot(T0 + 2)
        assert [f["reason"] for f in state["failovers"]] == ["second", "first"]
        assert state["failovers"][0]["error"] == "ConnectTimeout"
        main_ep = by_name(state["endpoints"], "name", "main")
        assert (main_ep["attempts"], main_ep["failed"], main_ep["recent_error_rate"]) == (2, 2, 1.0)
        assert state["totals"]["failovers"] == 2

    def test_cooldown_then_expiry(self, view: ConfigView) -> None:
        """A cooldown shows until its time is up, judged against the time the snapshot is taken."""
        board = Board(view)
        cooldown = {"event": "holyroute.cooldown", "timestamp": T0, "endpoint": "main", "upstream_model": "gpt-4.1"}
        board.add(cooldown | {"cooldown_s": 2.5, "reason": "429 retry-after 2.5s"}, 0.0)
        during = by_name(board.snapshot(T0 + 1)["endpoints"], "name", "main")
        assert (during["status"], during["until"]) == ("cooldown", T0 + 2.5)
        assert "429 retry-after 2.5s" in during["reason"]
        assert by_name(board.snapshot(T0 + 3)["endpoints"], "name", "main")["status"] == "idle"

    def test_ejection_trial_restore(self, view: ConfigView) -> None:
        """Ejected until its time ends, then awaiting its trial, then restored by the event."""
        board = Board(view)
        ejected = {"event": "holyroute.endpoint_ejected", "timestamp": T0, "endpoint": "backup", "ejection_s": 30}
        board.add(ejected | {"reason": "5 consecutive 503; ejected for 30s"}, 0.0)
        assert by_name(board.snapshot(T0 + 10)["endpoints"], "name", "backup")["status"] == "ejected"
        assert by_name(board.snapshot(T0 + 31)["endpoints"], "name", "backup")["status"] == "trial"
        board.add({"event": "holyroute.endpoint_restored", "timestamp": T0 + 32, "endpoint": "backup"}, 0.0)
        assert by_name(board.snapshot(T0 + 33)["endpoints"], "name", "backup")["status"] == "idle"
        assert [a["event"] for a in board.snapshot(T0 + 33)["activity"]] == ["endpoint_restored", "endpoint_ejected"]

    def test_active_health_and_headroom(self, view: ConfigView) -> None:
        """An unhealthy probe marks the endpoint; remaining requests / tokens are shown when an event carries them."""
        board = Board(view)
        board.add(
            {"event": "holyroute.endpoint_health", "endpoint": "deep", "status": "unhealthy", "reason": "503"}, T0
        )
        board.add(request(T0, endpoint="main", remaining_requests=42, remaining_tokens=9000), T0)
        state = board.snapshot(T0)
        assert by_name(state["endpoints"], "name", "deep")["status"] == "unhealthy"
        main_ep = by_name(state["endpoints"], "name", "main")
        assert (main_ep["remaining_requests"], main_ep["remaining_tokens"]) == (42, 9000)

    def test_rollout_steps_set_the_weights(self, view: ConfigView) -> None:
        """The latest holyroute.rollout event gives the candidate's weight and the step."""
        board = Board(view)
        step = {"event": "holyroute.rollout", "timestamp": T0, "route": "canary", "stable": "gpt-4o"}
        step |= {"candidate": "gpt-4.1", "steps": 3, "status": "progressing", "action": "set_weight"}
        board.add(step | {"step": 1, "weight": 20.0, "reason": "step 1: set_weight 20"}, 0.0)
        canary = by_name(board.snapshot(T0)["routes"], "route", "canary")
        assert [(a["arm"], a["weight"]) for a in canary["arms"]] == [("gpt-4o", 80.0), ("gpt-4.1", 20.0)]
        assert (canary["rollout"]["last"]["step"], canary["rollout"]["last"]["status"]) == (1, "progressing")
        board.add(step | {"step": 1, "weight": 0.0, "status": "aborted", "reason": "analysis failed"}, 0.0)
        canary = by_name(board.snapshot(T0)["routes"], "route", "canary")
        assert [a["weight"] for a in canary["arms"]] == [100.0, 0.0]
        assert board.snapshot(T0)["activity"][0]["kind"] == "bad"

    def test_alerts(self) -> None:
        """An alert is listed with its title, message and its other fields, whatever they are called."""
        board = Board()
        alert = {"event": "holyroute.alert", "timestamp": T0, "level": "warning", "alert": "error_rate"}
        board.add(alert | {"message": "error rate 12% > 5%", "route": "chat", "window_s": 60}, 0.0)
        (shown,) = board.snapshot(T0)["alerts"]
        assert shown == {
            "t": T0,
            "severity": "warning",
            "title": "error_rate",
            "message": "error rate 12% > 5%",
            "details": "route=chat, window_s=60",
        }

    def test_bad_lines_are_counted_not_fatal(self) -> None:
        """Not JSON, JSON that is not a holyroute event, and blank lines: counted (blank ones not), then ignored."""
        board = Board()
        for line in ["{not json", "", '{"event": "other.thing"}', "[1, 2]", "\ufffd\ufffd", json.dumps(request(T0))]:
            board.add_line(line, T0)
        log = board.snapshot(T0)["log"]
        assert (log["lines"], log["events"], log["not_json"], log["not_holyroute"]) == (6, 1, 2, 2)
        assert board.snapshot(T0)["totals"]["calls"] == 1

    def test_event_fields_pass_through_as_text(self) -> None:
        """Markup in event fields is kept as text (the page writes it with textContent) and bounded in length."""
        board = Board()
        evil = "<img src=x onerror=alert(1)><script>alert(2)</script>"
        board.add(failover(T0, route=evil, reason=evil * 20), 0.0)
        state = board.snapshot(T0)
        assert state["failovers"][0]["route"] == evil
        assert len(state["failovers"][0]["reason"]) == 400
        assert by_name(state["routes"], "route", evil)["configured"] is False

    def test_shadow_and_cancelled_calls_are_not_calls(self) -> None:
        """Shadow copies and calls the caller cancelled cost money but are not counted as the application's calls."""
        board = Board()
        board.add(request(T0, shadow=True, cost_usd=0.5), 0.0)
        board.add(request(T0, outcome="cancelled", cost_usd=0.25), 0.0)
        totals = board.snapshot(T0)["totals"]
        assert (totals["calls"], totals["shadow_calls"], totals["cancelled"], totals["cost_usd"]) == (0, 1, 1, 0.75)
        assert sum(b["calls"] for b in board.snapshot(T0)["series"]["buckets"]) == 0

    def test_series_widens_to_stay_bounded(self) -> None:
        """Over a long log the buckets widen (merging exactly): at most MAX_BUCKETS points, no call lost."""
        board = Board()
        for i in range(2000):
            board.add(request(T0 + i * 7.3, outcome="error" if i % 10 == 0 else "ok"), 0.0)
        series = board.snapshot(T0)["series"]
        assert len(series["buckets"]) <= MAX_BUCKETS
        assert series["width_s"] == 300.0
        assert sum(b["calls"] for b in series["buckets"]) == 2000
        assert sum(b["errors"] for b in series["buckets"]) == 200

    def test_events_without_timestamps_use_the_time_read(self) -> None:
        """A log without timestamps still charts: each event is placed at the time it was read."""
        board = Board()
        board.add({"event": "holyroute.request", "route": "r", "arm": "a", "outcome": "ok"}, received=T0 + 0.05)
        assert board.snapshot(T0)["series"]["buckets"][0]["t"] == T0

    def test_reset_forgets_events_not_the_config(self, view: ConfigView) -> None:
        """After a truncation the board starts over, still listing the configured endpoints."""
        board = Board(view)
        board.add(request(T0), 0.0)
        board.reset()
        state = board.snapshot(T0)
        assert state["totals"]["calls"] == 0
        assert len(state["endpoints"]) == 4


class TestDashboard:
    """The tail feeding the board: one ``state()`` per poll."""

    def test_unreadable_log_is_reported_not_raised(self, tmp_path: Path) -> None:
        """A log that cannot be read (here: a directory) is said on the page; the server keeps answering."""
        dashboard = Dashboard(tmp_path, clock=lambda: T0)
        state = dashboard.state()
        assert state["source"]["error"] == f"cannot read {tmp_path}: Is a directory"
        assert state["totals"]["calls"] == 0
        dashboard.close()

    def test_truncation_resets_the_board(self, tmp_path: Path) -> None:
        """A truncated log's old events are forgotten; the count of restarts is reported."""
        path = tmp_path / "events.jsonl"
        path.write_text(lines(request(T0), request(T0 + 1)))
        dashboard = Dashboard(path, clock=lambda: T0)
        assert dashboard.state()["totals"]["calls"] == 2
        path.write_text(lines(request(T0 + 2)))
        state = dashboard.state()
        assert (state["totals"]["calls"], state["source"]["resets"]) == (1, 1)
        dashboard.close()


# ---- the server --------------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[DashboardServer, Path]]:
    events = tmp_path / "events.jsonl"
    events.write_text(lines(request(T0), failover(T0)))
    with serve(events, load_config(config_dict()), config_path="holyroute.yaml", poll_s=0.1) as server:
        yield server, events


def get(server: DashboardServer, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    address, port = server.server_address[0], server.server_address[1]
    connection = http.client.HTTPConnection(str(address), port, timeout=5)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host or f"127.0.0.1:{port}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class TestServer:
    """Stdlib HTTP on 127.0.0.1: the page, its assets and /api/state."""

    def test_state(self, served: tuple[DashboardServer, Path]) -> None:
        """/api/state is the board's snapshot plus where it came from; it never holds a configured secret."""
        server, events = served
        status, headers, body = get(server, "/api/state")
        assert (status, headers["content-type"], headers["cache-control"]) == (200, "application/json", "no-store")
        state = json.loads(body)
        assert (state["totals"]["calls"], state["totals"]["failovers"]) == (1, 1)
        assert state["source"] == {
            "events": str(events),
            "config": "holyroute.yaml",
            "missing": False,
            "error": None,
            "behind_bytes": 0,
            "resets": 0,
            "rotations": 0,
            "poll_ms": 100,
        }
        for secret in SECRETS:
            assert secret.encode() not in body

    def test_page_and_assets(self, served: tuple[DashboardServer, Path]) -> None:
        """One page, its script and its style, each with a policy that forbids inline script; others are 404."""
        server, _ = served
        for path, kind in [("/", "text/html"), ("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")]:
            status, headers, body = get(server, path)
            assert (status, headers["content-type"].split(";")[0]) == (200, kind)
            assert "script-src 'self'" in headers["content-security-policy"]
            assert "unsafe-inline" not in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert body
        assert get(server, "/etc/passwd")[0] == 404

    def test_script_writes_text_never_markup(self, served: tuple[DashboardServer, Path]) -> None:
        """The page's script has no way to turn a string into markup."""
        script = get(served[0], "/dashboard.js")[2].decode()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in script

    def test_foreign_host_header_is_refused(self, served: tuple[DashboardServer, Path]) -> None:
        """On loopback only loopback names are served, so a rebinding web page cannot read the state."""
        server, _ = served
        assert get(server, "/api/state", host="evil.example")[0] == 421
        assert get(server, "/api/state", host=f"localhost:{server.server_address[1]}")[0] == 200


class TestCommand:
    """``holyroute dashboard`` exits 2 with a message rather than a traceback."""

    def test_bad_config(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        config = tmp_path / "holyroute.yaml"
        config.write_text("endpoints: {}\nroutes: {chat: {targets: [{model: m, endpoints: [nope]}]}}\n")
        assert main(["dashboard", "--events", str(tmp_path / "e.jsonl"), "--config", str(config)]) == 2
        assert "unknown endpoint 'nope'" in capsys.readouterr().err

    def test_port_in_use(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            assert main(["dashboard", "--events", str(tmp_path / "e.jsonl"), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ---- the page in a real browser ----------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class TestBrowser:
    """Headless Chromium loads the page, sees the configuration, and follows appends to the log."""

    def test_page_follows_the_log(self, tmp_path: Path) -> None:
        chromium = shutil.which("chromium")
        if chromium is None:
            pytest.skip("no chromium on PATH: apt-get install -y chromium (.ci/run installs it)")
        sync_api = pytest.importorskip(
            "playwright.sync_api", reason="playwright is not installed (pip install '.[test]')"
        )
        events = tmp_path / "events.jsonl"
        events.write_text(lines(request(T0), request(T0 + 0.5, endpoint="backup")))
        evil = "<img src=x id=injected onerror=alert(1)>"
        problems: list[str] = []
        with (
            serve(events, load_config(config_dict()), poll_s=0.1) as server,
            sync_api.sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
                page.goto(server.url)
                page.wait_for_selector("#kpi-calls .value >> text=2", timeout=10_000)
                shown = page.eval_on_selector_all(
                    "#endpoints-table tbody tr", "rows => rows.map(r => r.dataset.endpoint)"
                )
                assert shown == ["main", "backup", "deep", "quiet"]
                assert page.get_attribute("[data-endpoint=quiet]", "data-status") == "idle"
                assert page.locator("[data-route=canary]").count() == 1

                with events.open("a") as log:
                    log.write(lines(request(T0 + 1), failover(T0 + 1, route=evil, reason=f"because {evil}")))
                    log.write("not json at all\n")
                    log.write(json.dumps(request(T0 + 2))[:30])  # a line still being written
                page.wait_for_selector("#failovers-table .failover-row", timeout=10_000)
                page.wait_for_selector("#kpi-calls .value >> text=3", timeout=10_000)
                with events.open("a") as log:
                    log.write(json.dumps(request(T0 + 2))[30:] + "\n")
                page.wait_for_selector("#kpi-calls .value >> text=4", timeout=10_000)

                row = page.locator("#failovers-table .failover-row").first
                assert evil in row.inner_text()
                assert page.locator("#injected").count() == 0
                assert "1 bad lines skipped" in page.inner_text("#source")
                screenshot = tmp_path / "dashboard.png"
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
        assert problems == []
        width, height = png_size(screenshot)
        assert (width, height >= 900) == (1400, True)
        assert os.path.getsize(screenshot) > 30_000
