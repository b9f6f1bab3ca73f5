"""The rollout state file fails safe: a bad file or entry keeps the last known good state (stable takes all traffic
with nothing known) with one event, a failed write is retried and never fails a call, and writes follow symlinks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holyroute.config import Rollout
from holyroute.core.steps import Accepted
from holyroute.rollout.engine import (
    MAX_COUNT,
    RolloutEngine,
    RolloutState,
    parse_state,
    parse_state_file,
    parse_stored_state,
)
from holyroute.state.file import FileStore

from .conftest import Events, FakeClock, drive, ok

STEPS: list[dict[str, Any]] = [{"set_weight": 10}, {"pause": {"duration": "1m"}}, {"set_weight": 50}, {"pause": {}}]


def rollout() -> Rollout:
    return Rollout.model_validate(
        {
            "stable": {"model": "gpt-4o", "endpoints": ["main"]},
            "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
            "steps": STEPS,
            "analysis": {"min_calls": 20, "min_duration": 0, "interval": 0},
        }
    )


def engine(path: Path, clock: FakeClock, events: Events | None = None) -> tuple[RolloutEngine, Events]:
    events = events if events is not None else Events()
    made = RolloutEngine("chat", rollout(), FileStore(path, emit=events), emit=events, clock=clock)
    return made, events


class TestCorruptFile:
    """A file that cannot be read keeps the last known good; with nothing known the stable arm takes all."""

    def test_truncated_file_keeps_an_aborted_rollout_aborted(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        running, events = engine(path, clock)
        running.abort("candidate broke")
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])  # truncated
        clock.advance(3600)
        state = running.tick(clock())
        assert (state.status, state.weight) == ("aborted", 0.0), "the aborted rollout is not restarted"
        for _ in range(50):
            clock.advance(1.0)
            running.tick(clock())
        invalid = events.named("holyroute.state_invalid")
        assert len(invalid) == 1, "one event per distinct problem, not per read"
        assert invalid[0]["path"] == str(path)
        assert invalid[0]["problem"].startswith("not JSON")
        assert path.read_bytes() == whole[: len(whole) // 2], "a file that cannot be read is never written over"

    def test_nothing_known_means_stable_takes_all(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        path.write_text('{"chat": {"route": "chat", "status": "abor')
        clock = FakeClock(1_700_000_000.0)
        fresh, events = engine(path, clock)
        assert (fresh.state.status, fresh.state.weight) == ("paused", 0.0)
        assert "stable arm takes all traffic" in fresh.state.reason
        assert all(not fresh.picker().sticky(f"user{n}") for n in range(200)), "no call goes to the candidate"
        clock.advance(3600)
        assert fresh.tick(clock()).weight == 0.0, "held: nothing advances"
        assert events.named("holyroute.rollout") == []
        assert len(events.named("holyroute.state_invalid")) == 1

    def test_repaired_file_is_followed(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        path.write_text("")
        clock = FakeClock(1_700_000_000.0)
        held, _ = engine(path, clock)
        assert held.state.version == 0
        path.unlink()  # the operator removes the broken file: the rollout starts
        clock.advance(1.0)
        assert (held.tick(clock()).weight, held.state.status) == (10.0, "progressing")
        assert json.loads(path.read_text())["chat"]["weight"] == 10.0

    @pytest.mark.parametrize(
        ("entry", "field"),
        [
            ({"weight": "50"}, "weight"),
            ({"step": True}, "step"),
            ({"status": "sideways"}, "status"),
            ({"version": -1}, "version"),
            ({"weight": 1e308 * 10}, "weight"),
            ({"window": 10**400}, "window"),
        ],
    )
    def test_wrong_typed_value_keeps_the_last_good(self, tmp_path: Path, entry: dict[str, Any], field: str) -> None:
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        running, events = engine(path, clock)
        good = running.state
        data = json.loads(path.read_text())
        data["chat"].update(entry)
        path.write_text(json.dumps(data))
        clock.advance(1.0)
        assert running.tick(clock()) == good
        running.observe("gpt-4o", ok=True, latency_ms=10.0, ttft_ms=None, cost_usd=None)
        (invalid,) = events.named("holyroute.state_invalid")
        assert invalid["problem"].startswith(f"route 'chat': {field}")
        # A new process knows nothing good: it holds, and never raises.
        other, _ = engine(path, clock)
        assert (other.state.status, other.state.weight) == ("paused", 0.0)

    def test_wrong_typed_value_never_fails_a_routed_call(self, tmp_path: Path, make_harness: Any) -> None:
        path = tmp_path / "state.json"
        path.write_text(json.dumps({"chat-default": {"route": "chat-default", "weight": "ten", "version": 3}}))
        config = {
            "endpoints": {"main": {"base_url": "https://main.example/v1", "api_key": "k"}},
            "routes": {
                "chat-default": {
                    "rollout": {
                        "stable": {"model": "gpt-4o", "endpoints": ["main"]},
                        "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
                        "steps": STEPS,
                    }
                }
            },
            "state": {"backend": "file", "path": str(path)},
        }
        h = make_harness(config)
        for _ in range(20):
            outcome = drive(h.call(), [ok()])
            assert isinstance(outcome.final, Accepted)
        assert {f["upstream_model"] for f in h.events.named("holyroute.request")} == {"gpt-4o"}
        assert len(h.events.named("holyroute.state_invalid")) == 1


class TestWrites:
    """A failed write never fails a call and is retried; writes go to a symlink's target, atomically."""

    def test_failed_write_is_kept_and_retried(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        running, events = engine(path, clock)
        real_replace = os.replace

        def full_disk(src: Any, dst: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", full_disk)
        clock.advance(60)
        state = running.tick(clock())  # the pause ends: a step change that cannot be written
        assert (state.step, state.weight) == (3, 50.0), "the change holds in this process"
        for _ in range(5):
            clock.advance(1.0)
            running.tick(clock())
        (failed,) = events.named("holyroute.state_write_failed")
        assert "No space left on device" in failed["problem"]
        assert json.loads(path.read_text())["chat"]["weight"] == 10.0
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
        monkeypatch.setattr(os, "replace", real_replace)
        clock.advance(1.0)
        running.tick(clock())  # the next read writes what was kept
        assert json.loads(path.read_text())["chat"]["weight"] == 50.0

    def test_failed_write_never_fails_a_call(
        self, tmp_path: Path, make_harness: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "state.json"
        config = {
            "endpoints": {"main": {"base_url": "https://main.example/v1", "api_key": "k"}},
            "routes": {
                "chat-default": {
                    "rollout": {
                        "stable": {"model": "gpt-4o", "endpoints": ["main"]},
                        "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
                        "steps": [{"set_weight": 10}, {"pause": {"duration": 1}}, {"set_weight": 60}],
                    }
                }
            },
            "state": {"backend": "file", "path": str(path)},
        }
        h = make_harness(config)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "replace", broken)
        h.clock.advance(5.0)  # the pause is over: the next call's observation changes the step
        for _ in range(5):
            outcome = drive(h.call(), [ok()])
            assert isinstance(outcome.final, Accepted)
        assert h.router.rollouts is not None
        assert h.router.rollouts["chat-default"].state.status == "completed", "the steps went on in memory"
        assert len(h.events.named("holyroute.state_write_failed")) == 1

    def test_lock_that_cannot_be_taken(self, tmp_path: Path) -> None:
        """The lock file cannot be opened: the rollout goes on in this process and is written once it can be."""
        path = tmp_path / "state.json"
        blocker = tmp_path / "state.json.lock"
        blocker.mkdir()  # opening it for appending fails
        clock = FakeClock(1_700_000_000.0)
        running, events = engine(path, clock)
        assert running.state.weight == 10.0
        clock.advance(60)
        assert running.tick(clock()).weight == 50.0
        assert not path.exists()
        (failed,) = events.named("holyroute.state_write_failed")
        assert failed["problem"].startswith(f"cannot lock {blocker}")
        blocker.rmdir()
        clock.advance(1.0)
        running.tick(clock())
        assert json.loads(path.read_text())["chat"]["weight"] == 50.0

    def test_symlink_stays_a_symlink(self, tmp_path: Path) -> None:
        target_dir = tmp_path / "real"
        target_dir.mkdir()
        target = target_dir / "state.json"
        link = tmp_path / "state.json"
        link.symlink_to(target)
        clock = FakeClock(1_700_000_000.0)
        running, _ = engine(link, clock)
        clock.advance(60)
        running.tick(clock())
        assert link.is_symlink(), "the symlink is not replaced by a regular file"
        assert json.loads(target.read_text())["chat"]["weight"] == 50.0
        assert sorted(p.name for p in target_dir.iterdir()) == ["state.json"]

    def test_other_routes_and_unknown_fields_survive(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        other = {"route": "other", "weight": 30.0, "version": 4, "added_later": [1, 2]}
        path.write_text(json.dumps({"other": other}))
        clock = FakeClock(1_700_000_000.0)
        engine(path, clock)
        data = json.loads(path.read_text())
        assert data["other"] == other
        assert data["chat"]["weight"] == 10.0


# ---- the parser: any input gives a valid state or a problem, never an exception ----------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(
    ["route", "step", "weight", "status", "reason", "step_started", "window", "failed", "inconclusive", "version"]
)
_entries = st.dictionaries(_fields, _json, max_size=10).map(lambda d: {"route": "chat", **d}) | _json


def _valid(state: RolloutState) -> None:
    assert 0.0 <= state.weight <= 100.0
    assert state.status in ("progressing", "paused", "aborted", "completed")
    for count in (state.step, state.window, state.failed, state.inconclusive):
        assert isinstance(count, int)
        assert 0 <= count <= MAX_COUNT
    assert isinstance(state.version, int)
    assert state.version >= 0
    assert math.isfinite(state.step_started)


class TestParser:
    """Property: for any stored bytes, text or JSON value, the parser returns a valid state or names a problem."""

    @given(_entries)
    def test_any_entry(self, value: Any) -> None:
        parsed = parse_state("chat", value)
        if isinstance(parsed, str):
            assert len(parsed) < 1000
        else:
            _valid(parsed)
            assert parsed.route == "chat"

    @given(st.binary(max_size=200) | st.text(max_size=200))
    def test_any_bytes(self, raw: bytes | str) -> None:
        states, problems, problem = parse_state_file(raw)
        for state in states.values():
            _valid(state)
        assert problem is None or not (states or problems)
        found = parse_stored_state("chat", raw)
        assert found is None or isinstance(found, str) or found.route == "chat"

    @given(st.dictionaries(st.sampled_from(["chat", "other"]), _entries, max_size=2))
    def test_any_file(self, data: dict[str, Any]) -> None:
        states, problems, problem = parse_state_file(json.dumps(data))
        assert problem is None
        assert set(states) | set(problems) == set(data)
        for state in states.values():
            _valid(state)

    @given(st.binary(max_size=300) | _entries.map(lambda v: json.dumps({"chat": v}).encode()))
    def test_store_never_raises(self, raw: bytes) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "state.json"
            path.write_bytes(raw)
            events = Events()
            store = FileStore(path, emit=events)
            state = store.load("chat")
            if state is not None:
                _valid(state)
            made = RolloutEngine("chat", rollout(), store, emit=events, clock=FakeClock(1_700_000_000.0))
            _valid(made.state)
            assert len(events.named("holyroute.state_invalid")) <= 1


class TestEvent:
    """The event names the path and the problem, never the file's content."""

    EXPECTED: ClassVar[set[str]] = {"path", "problem", "reason", "backend"}

    def test_event_fields(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        path.write_text('{"chat": {"route": "chat", "reason": "sk-secret", "weight": "x"}}')
        events = Events()
        FileStore(path, emit=events).load("chat")
        (invalid,) = events.named("holyroute.state_invalid")
        assert set(invalid) == self.EXPECTED
        assert "sk-secret" not in json.dumps(invalid), "the file's content is never echoed"


class TestConflicts:
    def test_a_change_that_could_not_be_written_yields_to_another_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A's step change could not be written; B promotes meanwhile: B's state wins and A follows it."""
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        a, _ = engine(path, clock)
        b, _ = engine(path, clock)
        real_replace = os.replace
        monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left")))
        clock.advance(60)
        assert a.tick(clock()).weight == 50.0  # pending in A only
        monkeypatch.setattr(os, "replace", real_replace)
        b.abort("B saw errors")
        clock.advance(1.0)
        state = a.tick(clock())
        assert (state.status, state.weight) == ("aborted", 0.0)
        assert json.loads(path.read_text())["chat"]["status"] == "aborted"

    def test_an_abort_that_could_not_be_written_wins_over_a_later_change(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        a, _ = engine(path, clock)
        real_replace = os.replace
        monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left")))
        a.abort("A saw errors")
        monkeypatch.setattr(os, "replace", real_replace)
        b, _ = engine(path, clock)
        clock.advance(60)
        assert b.tick(clock()).weight == 50.0, "B never saw the abort"
        clock.advance(1.0)
        assert a.tick(clock()).status == "aborted"
        stored = json.loads(path.read_text())["chat"]
        assert (stored["status"], stored["weight"], stored["reason"]) == ("aborted", 0.0, "A saw errors")
        clock.advance(1.0)
        assert b.tick(clock()).status == "aborted", "B follows the abort"
