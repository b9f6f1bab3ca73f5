"""Rollouts: the step engine on a fake clock, its analysis verdicts, sticky monotonicity, restarts, CLI, and end to
end through the official SDK against local upstreams."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest
from structlog.testing import capture_logs

import holyroute
from holyroute.cli import main
from holyroute.config import Rollout
from holyroute.rollout.engine import MemoryStore, RolloutEngine
from holyroute.state.file import FileStore
from holyroute.testing import FakeUpstream, Reply

from .conftest import Events, FakeClock


def rollout(steps: list[dict[str, Any]], **analysis: Any) -> Rollout:
    return Rollout.model_validate(
        {
            "stable": {"model": "gpt-4o", "endpoints": ["main"]},
            "candidate": {"model": "gpt-4.1", "endpoints": ["main"]},
            "steps": steps,
            "analysis": {"min_calls": 20, "min_duration": 0, "interval": 0, **analysis},
        }
    )


def engine(
    steps: list[dict[str, Any]], *, store: Any = None, clock: FakeClock | None = None, **analysis: Any
) -> tuple[RolloutEngine, Events, FakeClock]:
    events = Events()
    clock = clock or FakeClock(1_700_000_000.0)
    made = RolloutEngine("chat", rollout(steps, **analysis), store or MemoryStore(), emit=events, clock=clock)
    return made, events, clock


def feed(
    e: RolloutEngine, arm: str, calls: int, *, error_rate: float = 0.0, latency: float = 100.0, seed: int = 1
) -> None:
    rng = random.Random(seed)
    for _ in range(calls):
        e.observe(
            arm, ok=rng.random() >= error_rate, latency_ms=latency * rng.uniform(0.8, 1.2), ttft_ms=None, cost_usd=None
        )


class TestSteps:
    """Weights change only at step boundaries; pauses wait; people can promote, abort and retry."""

    STEPS: ClassVar[list[dict[str, Any]]] = [
        {"set_weight": 10},
        {"pause": {"duration": "1m"}},
        {"set_weight": 50},
        {"pause": {}},
        {"set_weight": 80},
    ]

    def test_walk(self) -> None:
        e, events, clock = engine(self.STEPS)
        assert (e.state.step, e.state.weight, e.state.status) == (1, 10, "progressing")
        clock.advance(59)
        assert e.tick(clock()).weight == 10, "no weight change inside a pause"
        clock.advance(1)
        state = e.tick(clock())
        assert (state.step, state.weight, state.status) == (3, 50, "paused")
        assert state.reason == "step 4: paused until promoted"
        clock.advance(3600)
        assert e.tick(clock()).weight == 50, "an indefinite pause waits for a person"
        state = e.promote()
        assert (state.weight, state.status) == (100, "completed")
        actions = [f["action"] for f in events.named("holyroute.rollout")]
        assert actions == ["set_weight", "pause_done", "set_weight", "pause", "promote", "set_weight", "completed"]

    def test_picker_follows_the_weight(self) -> None:
        e, _, _ = engine(self.STEPS)
        users = [f"u{n}" for n in range(2000)]
        share = sum(e.picker().sticky(u) for u in users) / len(users)
        assert 0.08 <= share <= 0.12

    def test_abort_sticks_until_retry(self) -> None:
        e, _, clock = engine(self.STEPS)
        state = e.abort("candidate answers are empty")
        assert (state.weight, state.status, state.reason) == (0, "aborted", "candidate answers are empty")
        clock.advance(3600)
        assert e.tick(clock()).status == "aborted"
        assert e.promote().status == "aborted", "an aborted rollout is not promoted: retry it"
        state = e.retry()
        assert (state.step, state.weight, state.status) == (1, 10, "progressing")

    def test_promote_full(self) -> None:
        e, _, _ = engine(self.STEPS)
        assert (e.promote(full=True).weight, e.state.status) == (100, "completed")

    def test_restart_resumes_from_the_state_file(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        first, _, _ = engine(self.STEPS, store=FileStore(path), clock=clock)
        clock.advance(60)
        first.tick(clock())
        assert (first.state.weight, first.state.status) == (50, "paused")
        again, events, _ = engine(self.STEPS, store=FileStore(path), clock=clock)
        assert (again.state.step, again.state.weight, again.state.status) == (3, 50, "paused")
        assert events.named("holyroute.rollout") == [], "resuming changes nothing"

    def test_processes_follow_each_other(self, tmp_path: Path) -> None:
        """A promote written by one process (the CLI) is adopted by another within the sync interval."""
        path = tmp_path / "state.json"
        clock = FakeClock(1_700_000_000.0)
        worker, _, _ = engine(self.STEPS, store=FileStore(path), clock=clock)
        clock.advance(60)
        worker.tick(clock())
        other, _, _ = engine(self.STEPS, store=FileStore(path), clock=clock)
        other.promote()
        clock.advance(1.0)
        assert worker.tick(clock()).weight == 100


class TestAnalysis:
    """Candidate against stable over the same window; Argo's failure and inconclusive limits."""

    STEPS: ClassVar[list[dict[str, Any]]] = [{"set_weight": 20}, {"analysis": {}}, {"set_weight": 60}]

    def test_healthy_candidate_promoted(self) -> None:
        e, events, _ = engine(self.STEPS)
        feed(e, "gpt-4o", 200, error_rate=0.02)
        feed(e, "gpt-4.1", 40, error_rate=0.02, seed=2)
        assert (e.state.weight, e.state.status) == (100, "completed")
        passed = [f for f in events.named("holyroute.rollout") if f["action"] == "analysis_passed"]
        assert passed
        assert passed[0]["reason"].startswith("step 2: analysis passed: error rate")

    def test_error_regression_aborts(self) -> None:
        """Traffic as a 20% canary sees it: the regression is caught before the candidate reaches min_calls."""
        e, _, _ = engine(self.STEPS, min_calls=100)
        for n in range(100):
            feed(e, "gpt-4o", 4, error_rate=0.01, seed=n)
            feed(e, "gpt-4.1", 1, error_rate=0.30, seed=1000 + n)
            if e.state.status != "progressing":
                break
        assert (e.state.weight, e.state.status) == (0, "aborted")
        assert e.state.reason.startswith("analysis failed: error rate ")
        assert "non-inferiority rejected (p=" in e.state.reason

    def test_above_margin_is_not_promoted(self) -> None:
        """Observed worse by more than the margin but not yet significant: keep measuring, then inconclusive."""
        e, _, clock = engine(self.STEPS, max_duration=600)
        feed(e, "gpt-4o", 100, error_rate=0.0)
        feed(e, "gpt-4.1", 25, error_rate=0.08, seed=11)
        assert (e.state.status, e.state.weight) == ("progressing", 20)
        clock.advance(601)
        e.tick(clock())
        assert e.state.status == "paused"
        assert "above margin" in e.state.reason

    def test_step_overrides_reach_the_test(self) -> None:
        """A step's own margin decides: 3% vs 0% errors passes a 5-point margin where the 1-point default holds it."""
        steps = [{"set_weight": 20}, {"analysis": {"max_error_rate_increase": 0.05}}, {"set_weight": 60}]
        e, _, _ = engine(steps, min_calls=100)
        for n in range(100):
            feed(e, "gpt-4o", 4, error_rate=0.0, seed=n)
            e.observe("gpt-4.1", ok=n % 33 != 0, latency_ms=100, ttft_ms=None, cost_usd=None)  # 3 errors in 100
        assert (e.state.status, e.state.weight) == ("completed", 100), "the 1-point default would have held it"

    def test_latency_regression_aborts(self) -> None:
        e, _, _ = engine(self.STEPS)
        feed(e, "gpt-4o", 100, latency=200)
        feed(e, "gpt-4.1", 40, latency=400, seed=4)
        assert e.state.status == "aborted"
        assert "latency" in e.state.reason

    def test_no_candidate_data_fails(self) -> None:
        e, _, clock = engine(self.STEPS, max_duration=600)
        feed(e, "gpt-4o", 100)
        clock.advance(601)
        e.tick(clock())
        e.tick(clock())
        assert e.state.status == "aborted"
        assert "no data for the candidate" in e.state.reason

    def test_too_little_data_pauses(self) -> None:
        e, _, clock = engine(self.STEPS, max_duration=600)
        feed(e, "gpt-4o", 100)
        feed(e, "gpt-4.1", 5, seed=5)
        clock.advance(601)
        e.tick(clock())
        assert e.state.status == "paused"
        assert e.state.reason.startswith("analysis inconclusive: 5 candidate / 100 stable calls < min_calls 20")

    def test_failure_limit(self) -> None:
        """With failure_limit 2, the third failed measurement aborts, not the first."""
        e, events, _ = engine(self.STEPS, failure_limit=2)
        feed(e, "gpt-4o", 100, latency=200)
        feed(e, "gpt-4.1", 20, latency=400, seed=6)
        assert e.state.status == "progressing"
        assert e.state.failed == 1
        feed(e, "gpt-4.1", 2, latency=400, seed=7)
        assert e.state.status == "aborted"
        measurements = [f for f in events.named("holyroute.rollout") if f["action"] == "measurement"]
        assert len(measurements) == 2


def test_sticky_users_never_move_back() -> None:
    """10,000 users, candidate 5% -> 25%: nobody leaves the candidate; the share is within one point."""
    e, _, _ = engine([{"set_weight": 5}, {"pause": {}}, {"set_weight": 25}, {"pause": {}}])
    users = [f"user-{n}" for n in range(10_000)]
    before = {u: e.picker().sticky(u) for u in users}
    e.promote()
    assert e.state.weight == 25
    after = {u: e.picker().sticky(u) for u in users}
    assert not [u for u in users if before[u] == 1 and after[u] == 0]
    assert abs(sum(before.values()) / len(users) - 0.05) <= 0.01
    assert abs(sum(after.values()) / len(users) - 0.25) <= 0.01


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "holyroute.yaml"
    config.write_text(
        f"""
endpoints:
  main: {{base_url: http://127.0.0.1:9/v1}}
routes:
  chat:
    rollout:
      stable: {{model: gpt-4o, endpoints: [main]}}
      candidate: {{model: gpt-4.1, endpoints: [main]}}
      steps: [{{set_weight: 10}}, {{pause: {{}}}}, {{set_weight: 50}}, {{pause: {{}}}}]
state: {{path: {tmp_path / "state.json"}}}
"""
    )
    assert main(["rollout", "status", "--config", str(config)]) == 0
    # issue 15: the step column counts as the reason does (it printed 1/4 here, the steps done)
    assert "chat                paused          2/4     10%  step 2: paused until promoted" in capsys.readouterr().out
    assert main(["rollout", "promote", "chat", "--config", str(config)]) == 0
    assert "50%" in capsys.readouterr().out
    assert main(["rollout", "abort", "chat", "--config", str(config), "--reason", "bad answers"]) == 0
    assert "aborted" in capsys.readouterr().out
    assert main(["rollout", "retry", "chat", "--config", str(config)]) == 0
    assert "10%" in capsys.readouterr().out
    assert main(["rollout", "promote", "nope", "--config", str(config)]) == 2
    assert "no route 'nope' in this configuration; routes with a rollout: chat" in capsys.readouterr().err


class TestEndToEnd:
    """Through the official SDK and local upstreams."""

    def config(self, stable: FakeUpstream, candidate: FakeUpstream) -> dict[str, Any]:
        return {
            "endpoints": {"stable": {"base_url": stable.base_url}, "candidate": {"base_url": candidate.base_url}},
            "routes": {
                "chat": {
                    "rollout": {
                        "stable": {"model": "gpt-4o", "endpoints": ["stable"]},
                        "candidate": {"model": "gpt-4.1", "endpoints": ["candidate"]},
                        "steps": [{"set_weight": 30}, {"analysis": {}}, {"set_weight": 60}, {"analysis": {}}],
                        # Local answers take about a millisecond: latency ratios there are scheduler noise.
                        "analysis": {"min_calls": 30, "min_duration": 0, "interval": 0, "max_latency_ratio": 20},
                    }
                }
            },
            "retry": {"max_attempts": 1},
            "state": {"backend": "memory"},
        }

    def run(self, sdk: openai.OpenAI, calls: int) -> list[str]:
        served = []
        for n in range(calls):
            try:
                served.append(
                    sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"{n}"}]).model
                )
            except openai.APIError:
                served.append("error")
        return served

    def test_failing_candidate_is_aborted(self, instant_sdk_retries: None) -> None:
        with FakeUpstream("stable") as stable, FakeUpstream("candidate") as candidate:
            transport = holyroute.Transport(self.config(stable, candidate), log=False, sinks=[])
            sdk = openai.OpenAI(api_key="x", max_retries=0, http_client=_client(transport))
            with sdk:
                self.run(sdk, 60)
                candidate.push(*[Reply.error(500)] * 500)  # the candidate starts failing mid-rollout
                self.run(sdk, 150)
                engine = transport.router.rollouts["chat"]  # type: ignore[index]
                assert engine.state.status == "aborted"
                assert "non-inferiority rejected" in engine.state.reason
                after = self.run(sdk, 50)
        assert after == ["gpt-4o"] * 50, "every later call is served by stable"

    def test_healthy_candidate_reaches_100(self) -> None:
        with FakeUpstream("stable") as stable, FakeUpstream("candidate") as candidate:
            transport = holyroute.Transport(self.config(stable, candidate), log=False, sinks=[])
            with capture_logs(), openai.OpenAI(api_key="x", max_retries=0, http_client=_client(transport)) as sdk:
                self.run(sdk, 400)
                engine = transport.router.rollouts["chat"]  # type: ignore[index]
                assert (engine.state.status, engine.state.weight) == ("completed", 100)
                assert set(self.run(sdk, 20)) == {"gpt-4.1"}


def _client(transport: holyroute.Transport) -> Any:
    import httpx2

    return httpx2.Client(transport=transport)


def test_rollout_config_errors() -> None:
    bad: Callable[[dict[str, Any]], None] = holyroute.load_config  # type: ignore[assignment]
    with pytest.raises(holyroute.ConfigError, match="a step is exactly one of"):
        bad(
            {
                "endpoints": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
                "routes": {
                    "chat": {
                        "rollout": {
                            "stable": {"model": "a", "endpoints": ["main"]},
                            "candidate": {"model": "b", "endpoints": ["main"]},
                            "steps": [{"set_weight": 10, "pause": {}}],
                        }
                    }
                },
            }
        )


class TestBlueGreen:
    """Switch 100% at once (after an optional preview analysis); roll back to blue on consecutive errors."""

    def engine(self, **settings: Any) -> tuple[RolloutEngine, Events]:
        config = Rollout.model_validate(
            {
                "strategy": "blue_green",
                "stable": {"model": "blue", "endpoints": ["main"]},
                "candidate": {"model": "green", "endpoints": ["main"]},
                "analysis": {"min_calls": 20, "min_duration": 0, "interval": 0},
                **settings,
            }
        )
        events = Events()
        return RolloutEngine("chat", config, MemoryStore(), emit=events, clock=FakeClock(1_700_000_000.0)), events

    def test_switch_then_instant_rollback(self) -> None:
        e, _ = self.engine()
        assert (e.state.weight, e.state.status) == (100, "completed")
        feed(e, "green", 20)
        for _ in range(4):
            e.observe("green", ok=False, latency_ms=100, ttft_ms=None, cost_usd=None)
        assert e.state.weight == 100, "4 errors in a row are below the limit of 5"
        e.observe("green", ok=False, latency_ms=100, ttft_ms=None, cost_usd=None)
        assert (e.state.weight, e.state.status) == (0, "aborted")
        assert e.state.reason == "5 consecutive candidate errors >= rollback_on_consecutive_errors (5)"

    def test_preview_analysis_then_switch(self) -> None:
        e, _ = self.engine(preview_weight=5)
        assert e.state.weight == 5
        feed(e, "blue", 100)
        feed(e, "green", 20, seed=9)
        assert (e.state.weight, e.state.status) == (100, "completed")

    def test_failed_preview_never_switches(self) -> None:
        e, _ = self.engine(preview_weight=5, rollback_on_consecutive_errors=100)
        feed(e, "blue", 100, latency=100)
        feed(e, "green", 20, latency=300, seed=10)
        assert (e.state.weight, e.state.status) == (0, "aborted")

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"strategy": "blue_green", "steps": [{"set_weight": 5}]}, "a blue_green rollout has no steps"),
            ({"strategy": "canary"}, "a canary rollout needs steps"),
        ],
    )
    def test_config(self, settings: dict[str, Any], message: str) -> None:
        with pytest.raises(holyroute.ConfigError, match=message):
            holyroute.load_config(
                {
                    "endpoints": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
                    "routes": {
                        "chat": {
                            "rollout": {
                                "stable": {"model": "a", "endpoints": ["main"]},
                                "candidate": {"model": "b", "endpoints": ["main"]},
                                **settings,
                            }
                        }
                    },
                }
            )


class TestQuality:
    """An application's quality callback (empty answers, refusals, bad JSON) is a metric of its own."""

    def test_poor_answers_abort(self) -> None:
        e, _, _ = engine([{"set_weight": 20}, {"analysis": {}}, {"set_weight": 60}], min_calls=100)
        rng = random.Random(5)
        for _ in range(150):
            for _ in range(4):
                e.observe("gpt-4o", ok=True, latency_ms=100, ttft_ms=None, cost_usd=None, quality=rng.random() > 0.01)
            e.observe("gpt-4.1", ok=True, latency_ms=100, ttft_ms=None, cost_usd=None, quality=rng.random() > 0.4)
            if e.state.status != "progressing":
                break
        assert e.state.status == "aborted"
        assert e.state.reason.startswith("analysis failed: quality: poor answers ")

    def test_callback_sees_route_arm_and_body(self) -> None:
        seen: list[tuple[str, str, bool]] = []

        def quality(route: str, arm: str, body: bytes) -> bool:
            import json

            content = json.loads(body)["choices"][0]["message"]["content"]
            seen.append((route, arm, bool(content)))
            return bool(content)

        with FakeUpstream("stable") as stable, FakeUpstream("candidate") as candidate:
            config = TestEndToEnd().config(stable, candidate)
            transport = holyroute.Transport(config, log=False, sinks=[], quality=quality)
            with openai.OpenAI(api_key="x", max_retries=0, http_client=_client(transport)) as sdk:
                TestEndToEnd().run(sdk, 20)
        assert {route for route, _, _ in seen} == {"chat"}
        assert {arm for _, arm, _ in seen} <= {"gpt-4o", "gpt-4.1"}
        assert len(seen) == 20
        assert all(good for _, _, good in seen)
