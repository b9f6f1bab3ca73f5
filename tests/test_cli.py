"""Issue 15: the command line and the library behave as their help and the README say, as a user types them.

Each class is one finding of the issue; commands run through ``main(argv)`` with their output captured, or as a
subprocess where the process itself (a traceback, the exit status of ``python -m holyroute``) is the point.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI

import holyroute
from holyroute.cli import main
from holyroute.testing import FakeUpstream


def _one_route(base_url: str) -> dict[str, Any]:
    return {
        "endpoints": {"local": {"base_url": base_url, "api_key": "test-key"}},
        "routes": {"chat": {"targets": [{"model": "gpt-4o", "endpoints": ["local"]}]}},
    }


class TestSinksAddToTheEventLog:
    """Finding 1: ``sinks=`` adds to the structlog event; ``log=False`` is the explicit way to turn it off."""

    def _call(self, **options: Any) -> tuple[list[str], list[dict[str, Any]]]:
        received: list[str] = []
        with FakeUpstream("local") as up, structlog.testing.capture_logs() as logged:
            http = holyroute.client(
                _one_route(up.base_url), sinks=[lambda name, fields: received.append(name)], **options
            )
            with OpenAI(api_key="unused", http_client=http) as sdk:
                sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        return received, logged

    def test_a_sink_receives_the_event_and_structlog_still_logs_it(self) -> None:
        received, logged = self._call()
        assert received == ["holyroute.request"]
        assert [entry["event"] for entry in logged] == ["holyroute.request"]

    def test_log_false_leaves_only_the_sinks(self) -> None:
        received, logged = self._call(log=False)
        assert received == ["holyroute.request"]
        assert logged == []

    def test_report_reads_the_log_written_beside_a_sink(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The event log `report` reads is still written when the application adds a sink of its own."""
        events = tmp_path / "events.jsonl"
        with events.open("w", encoding="utf-8") as log_file:
            structlog.configure(
                processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()],
                logger_factory=structlog.WriteLoggerFactory(file=log_file),
                cache_logger_on_first_use=False,
            )
            try:
                with FakeUpstream("local") as up:
                    seen: list[str] = []
                    http = holyroute.client(_one_route(up.base_url), sinks=[lambda name, fields: seen.append(name)])
                    with OpenAI(api_key="unused", http_client=http) as sdk:
                        for _ in range(3):
                            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            finally:
                structlog.reset_defaults()
        assert seen == ["holyroute.request"] * 3
        assert main(["report", str(events), "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["routes"][0]["route"] == "chat"


def _run(*argv: str, without: tuple[str, ...] = (), env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    """``holyroute ARGV`` in a fresh interpreter, as from a shell; ``without`` hides installed packages, as on a base
    install that lacks an extra."""
    import os
    import subprocess
    import sys

    hide = "".join(f"sys.modules[{name!r}] = None; " for name in without)
    code = f"import sys; {hide}from holyroute.cli import main; sys.exit(main(sys.argv[1:]))"
    root = str(Path(__file__).resolve().parent.parent)
    environ = {**os.environ, "PYTHONPATH": root, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=120,
        check=False,
    )


_REDIS_CONFIG = """\
endpoints:
  local: {base_url: "http://127.0.0.1:9/v1", api_key: test-key}
state: {backend: redis, url: "redis://127.0.0.1:6379/15"}
routes:
  chat:
    rollout:
      stable: {model: gpt-4o, endpoints: [local]}
      candidate: {model: gpt-4.1, endpoints: [local]}
      steps: [{set_weight: 20}]
"""


class TestAMissingExtraIsAConfigurationError:
    """Finding 2: ``state: {backend: redis}`` without redis-py names the extra to install, with no traceback."""

    @pytest.mark.parametrize("command", [["check"], ["rollout", "status"]])
    def test_the_cli_exits_2_and_names_the_extra(self, tmp_path: Path, command: list[str]) -> None:
        config = tmp_path / "holyroute.yaml"
        config.write_text(_REDIS_CONFIG)
        done = _run(*command, "--config", str(config), without=("redis",))
        assert done.returncode == 2
        assert "pip install 'holyroute[redis]'" in done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout == ""

    def test_client_raises_a_config_error_naming_the_extra(self, tmp_path: Path) -> None:
        import subprocess
        import sys

        config = tmp_path / "holyroute.yaml"
        config.write_text(_REDIS_CONFIG)
        code = (
            "import sys; sys.modules['redis'] = None\n"
            "import holyroute\n"
            "try:\n"
            f"    holyroute.client({str(config)!r})\n"
            "except holyroute.ConfigError as exc:\n"
            "    print(exc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert "state.backend: 'redis' needs redis-py, which is not installed: pip install 'holyroute[redis]'" in (
            done.stdout
        )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``holyroute demo --calls 30`` run once in an empty directory: the directory and what it printed."""
    where = tmp_path_factory.mktemp("demo")
    done = _run("demo", "--calls", "30", cwd=where)
    assert done.returncode == 0, done.stderr
    return where, done.stdout


class TestTheDemoLeavesWhatItsCommandsRead:
    """Finding 3: the demo writes its configuration beside its event log, prints the commands that read them, says
    what it runs, and leaves nothing untracked."""

    def test_it_writes_its_configuration_beside_its_event_log(self, demo: tuple[Path, str]) -> None:
        where, out = demo
        assert sorted(p.name for p in where.iterdir()) == [
            "holyroute-demo-events.jsonl",
            "holyroute-demo-state.json",
            "holyroute-demo-state.json.lock",
            "holyroute.yaml",
        ]
        assert holyroute.load_config(where / "holyroute.yaml").state.backend == "file"
        assert "configuration: holyroute.yaml\n" in out

    def test_it_describes_itself(self, demo: tuple[Path, str]) -> None:
        _, out = demo
        assert out.startswith("holyroute demo: 5 local fake upstreams on 127.0.0.1: primary")
        # --calls 30: 30 to chat-default, max(40, 20) to each canary route
        assert "110 calls: 30 to chat-default (sync, streaming, async), 40 to each canary route\n" in out
        assert "\n110 calls in " in out

    def test_each_printed_command_works_as_printed(self, demo: tuple[Path, str]) -> None:
        import shlex

        where, out = demo
        commands = out.split("next, on what the demo wrote:\n", 1)[1].splitlines()
        assert [c.split()[:2] for c in commands] == [
            ["holyroute", "report"],
            ["holyroute", "dashboard"],
            ["holyroute", "rollout"],
        ]
        report = _run(*shlex.split(commands[0])[1:], cwd=where)
        assert report.returncode == 0, report.stderr
        assert "route chat-default: control gpt-4.1" in report.stdout
        status = _run(*shlex.split(commands[2])[1:], cwd=where)
        assert status.returncode == 0, status.stderr
        # the state it shows is the one the demo's rollouts ended in, as its event log records it
        last = {}
        for line in (where / "holyroute-demo-events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "holyroute.rollout":
                last[event["route"]] = event["status"]
        shown = {row.split()[0]: row.split()[1] for row in status.stdout.splitlines()[1::2]}
        assert shown == last
        assert set(shown) == {"canary-good", "canary-bad"}

    def test_the_dashboard_command_serves_what_it_wrote(self, demo: tuple[Path, str]) -> None:
        import shlex

        from holyroute.readers.dashboard import serve
        from holyroute.readers.report import load_report_config

        where, out = demo
        argv = shlex.split(out.split("next, on what the demo wrote:\n", 1)[1].splitlines()[1])
        events, config = where / argv[argv.index("--events") + 1], where / argv[argv.index("--config") + 1]
        with serve(events, load_report_config(config)[0], config_path=str(config)) as server:
            import httpx2

            assert httpx2.get(server.url).status_code == 200

    def test_it_runs_again_over_what_it_wrote(self, tmp_path: Path) -> None:
        for _ in range(2):
            done = _run("demo", "--calls", "10", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
        assert (tmp_path / "holyroute.yaml").read_text().startswith("# holyroute demo configuration")

    def test_it_never_overwrites_a_configuration_of_yours(self, tmp_path: Path) -> None:
        mine = tmp_path / "holyroute.yaml"
        mine.write_text("endpoints: {}\n")
        done = _run("demo", "--calls", "10", cwd=tmp_path)
        assert done.returncode == 2
        assert "holyroute.yaml exists and was not written by the demo" in done.stderr
        assert mine.read_text() == "endpoints: {}\n"
        assert not (tmp_path / "holyroute-demo-events.jsonl").exists()

    def test_its_outputs_are_ignored_by_git(self) -> None:
        import shutil
        import subprocess

        root = Path(__file__).resolve().parent.parent
        if shutil.which("git") is None or not (root / ".git").exists():
            pytest.skip("not a git checkout")
        names = ["holyroute.yaml", "holyroute-demo-events.jsonl", "holyroute-demo-state.json"]
        names.append("holyroute-demo-state.json.lock")
        done = subprocess.run(["git", "check-ignore", *names], cwd=root, capture_output=True, text=True, check=False)
        assert done.stdout.split() == names


_README_ROLLOUT = """\
endpoints:
  openai-main: {base_url: "http://127.0.0.1:9/v1", api_key: test-key}
routes:
  chat-default:
    sticky: user
    rollout:
      stable:    {model: gpt-4o,  endpoints: [openai-main]}
      candidate: {model: gpt-4.1, endpoints: [openai-main]}
      steps:
        - set_weight: 5
        - analysis: {}
        - set_weight: 25
        - pause: {duration: 10m}
        - analysis: {min_calls: 500}
        - pause: {}
        - set_weight: 100
  plain:
    targets: [{model: gpt-4o, endpoints: [openai-main]}]
state: {backend: file, path: STATE}
"""


class TestRolloutCommands:
    """Finding 4: step numbers mean the same in status, events and the README; an action that changes nothing says
    why and exits 1; an unknown route names the routes that have rollouts and exits 2."""

    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        path = tmp_path / "holyroute.yaml"
        path.write_text(_README_ROLLOUT.replace("STATE", str(tmp_path / "state.json")))
        return path

    def rollout(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main(["rollout", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def test_the_readme_walk_through_prints_what_the_readme_shows(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for _ in range(3):  # by hand past the analysis (step 2), the timed pause (4) and the analysis (5)
            assert self.rollout(capsys, "promote", "chat-default", "--config", str(config))[0] == 0
        code, out, _ = self.rollout(capsys, "status", "--config", str(config))
        assert code == 0
        assert out.splitlines()[:2] == [
            "route               status         step  weight  reason",
            "chat-default        paused          6/7     25%  step 6: paused until promoted",
        ]
        code, out, _ = self.rollout(capsys, "promote", "chat-default", "--config", str(config))
        assert code == 0
        assert "chat-default        completed       7/7    100%  all steps done: candidate at 100%" in out

    def test_events_json_and_table_count_steps_alike(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        events: list[dict[str, Any]] = []
        rollouts = holyroute.Rollouts(config, emit=lambda name, fields: events.append(dict(fields)))
        try:
            for _ in range(3):
                rollouts.promote("chat-default")
            [status] = rollouts.status()
        finally:
            rollouts.close()
        assert (events[-1]["step"], events[-1]["steps"], events[-1]["reason"]) == (
            6,
            7,
            "step 6: paused until promoted",
        )
        assert (status["step"], status["steps"]) == (6, 7)
        code, out, _ = self.rollout(capsys, "status", "--config", str(config), "--json")
        assert code == 0
        assert [(row["step"], row["steps"]) for row in json.loads(out)] == [(6, 7)]

    def test_promote_on_an_aborted_rollout_says_why_and_exits_1(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert self.rollout(capsys, "abort", "chat-default", "--config", str(config), "--reason", "bad answers")[0] == 0
        code, out, err = self.rollout(capsys, "promote", "chat-default", "--config", str(config))
        assert (code, out) == (1, "")
        assert err == (
            "holyroute rollout promote: chat-default is aborted (step 2/7: bad answers); an aborted rollout is not "
            "promoted: holyroute rollout retry chat-default starts it again\n"
        )
        code, _, err = self.rollout(capsys, "abort", "chat-default", "--config", str(config))
        assert code == 1
        assert "it is already aborted" in err
        assert self.rollout(capsys, "retry", "chat-default", "--config", str(config))[0] == 0

    def test_promote_on_a_completed_rollout_exits_1(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert self.rollout(capsys, "promote", "chat-default", "--full", "--config", str(config))[0] == 0
        code, _, err = self.rollout(capsys, "promote", "chat-default", "--config", str(config))
        assert code == 1
        assert "chat-default is completed (step 7/7" in err
        assert "there is nothing left to promote" in err

    @pytest.mark.parametrize(
        ("route", "why"),
        [
            ("nosuch", "no route 'nosuch' in this configuration; routes with a rollout: chat-default"),
            ("plain", "route 'plain' has no rollout; routes with a rollout: chat-default"),
        ],
    )
    @pytest.mark.parametrize("action", ["status", "promote", "abort", "retry"])
    def test_a_route_without_a_rollout_exits_2_naming_those_with_one(
        self, config: Path, capsys: pytest.CaptureFixture[str], action: str, route: str, why: str
    ) -> None:
        code, out, err = self.rollout(capsys, action, route, "--config", str(config))
        assert (code, out, err) == (2, "", f"holyroute rollout {action}: {why}\n")


def _arm_rows(lines: list[str]) -> list[tuple[str, ...]]:
    """The rows of `check`'s arm table as (route, arm, share, served by)."""
    return [tuple(line.split(None, 3)) for line in lines if re.match(r"^\S+\s+\S+\s+(\d+%|\?)\s", line)]


class TestCheckJudgesArms:
    """Finding 5: `check` judges each arm (is its model served on a healthy endpoint) and the share of each route's
    traffic with no healthy path; a route is not ok while a weighted arm has none."""

    def write(self, tmp_path: Path, endpoints: dict[str, str], routes: dict[str, Any]) -> Path:
        path = tmp_path / "holyroute.yaml"
        config = {
            "endpoints": {name: {"base_url": url, "api_key": "test-key"} for name, url in endpoints.items()},
            "routes": routes,
            "state": {"backend": "file", "path": str(tmp_path / "state.json")},
        }
        path.write_text(json.dumps(config))
        return path

    def check(self, capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> tuple[int, list[str]]:
        code = main(["check", "--config", str(path), *options])
        out, err = capsys.readouterr()
        assert err == ""
        return code, out.splitlines()

    def test_the_arm_taking_90_percent_without_its_model_is_not_ok(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with FakeUpstream("main", models=["deepseek-chat"]) as up:
            routes = {
                "chat-default": {
                    "targets": [
                        {"model": "gpt-4.1", "endpoints": ["main"], "weight": 90},
                        {"model": "deepseek-chat", "endpoints": ["main"], "weight": 10},
                    ]
                }
            }
            code, lines = self.check(capsys, self.write(tmp_path, {"main": up.base_url}, routes))
        assert code == 1
        assert ("chat-default", "gpt-4.1", "90%", "NONE: main does not list gpt-4.1 in GET /models") in _arm_rows(lines)
        assert ("chat-default", "deepseek-chat", "10%", "main") in _arm_rows(lines)
        assert lines[-1] == "route chat-default: NO HEALTHY PATH for 90% of its traffic (arm gpt-4.1); those calls fail"

    def test_a_fallback_rescues_the_calls_but_the_route_is_still_not_ok(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with FakeUpstream("main", models=["gpt-4o"]) as up:
            routes = {
                "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}], "fallbacks": ["cheap"]},
                "cheap": {"targets": [{"model": "gpt-4o", "endpoints": ["main"]}]},
            }
            code, lines = self.check(capsys, self.write(tmp_path, {"main": up.base_url}, routes))
        assert code == 1
        assert lines[-2:] == [
            "route chat-default: NO HEALTHY PATH for 100% of its traffic (arm gpt-4.1); fallback cheap answers "
            "those calls instead",
            "route cheap: ok",
        ]

    def test_a_rollout_route_with_healthy_endpoints_is_ok(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with FakeUpstream("stable", models=["gpt-4o"]) as stable, FakeUpstream("next", models=["gpt-4.1"]) as nxt:
            routes = {
                "chat": {
                    "rollout": {
                        "stable": {"model": "gpt-4o", "endpoints": ["stable"]},
                        "candidate": {"model": "gpt-4.1", "endpoints": ["next"]},
                        "steps": [{"set_weight": 20}, {"pause": {}}],
                    }
                }
            }
            path = self.write(tmp_path, {"stable": stable.base_url, "next": nxt.base_url}, routes)
            assert main(["rollout", "status", "--config", str(path)]) == 0  # the rollout starts: candidate at 20%
            capsys.readouterr()
            code, lines = self.check(capsys, path)
        assert code == 0
        assert ("chat", "gpt-4o", "80%", "stable") in _arm_rows(lines)
        assert ("chat", "gpt-4.1", "20%", "next") in _arm_rows(lines)
        assert lines[-1] == "route chat: ok"

    def test_probe_chat_asks_each_model_with_one_token(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with FakeUpstream("main", models=["gpt-4o"]) as up:
            routes = {
                "chat": {
                    "targets": [
                        {"model": "gpt-4o", "endpoints": ["main"], "weight": 50},
                        {"model": "gpt-4.1", "endpoints": ["main"], "weight": 50},
                    ]
                }
            }
            code, lines = self.check(capsys, self.write(tmp_path, {"main": up.base_url}, routes), "--probe", "chat")
            sent = [(r.method, r.path, r.json) for r in up.requests]
        assert code == 1
        assert sorted(body["model"] for _, _, body in sent) == ["gpt-4.1", "gpt-4o"]
        assert {(method, path, body["max_tokens"]) for method, path, body in sent} == {
            ("POST", "/v1/chat/completions", 1)
        }
        assert ("chat", "gpt-4.1", "50%", "NONE: main does not serve gpt-4.1 (404 model_not_found)") in _arm_rows(lines)
        assert lines[-1] == "route chat: NO HEALTHY PATH for 50% of its traffic (arm gpt-4.1); those calls fail"


_SEVEN_PROBLEMS = """\
endpoints:
  main: {base_url: "http://127.0.0.1:1/v1", api_key: "${HOLYROUTE_TEST_UNSET_KEY}", apikey: typo}
  backup: {base_url: "http://127.0.0.1:2/v1", organisation: org}
routes:
  chat:
    targets:
      - {model: gpt-4.1, endpoints: [main, bakup]}
    fallbacks: [nosuch]
  other:
    targets: [{model: m, endpoints: [backup]}]
    stciky: user
retry: {max_attempts: 0}
"""


class TestEveryProblemAtOnce:
    """Finding 6: a configuration's problems are all reported together, whatever stage finds them."""

    EXPECTED: ClassVar[list[str]] = [
        "endpoints.main.api_key: environment variable HOLYROUTE_TEST_UNSET_KEY is not set; "
        "export HOLYROUTE_TEST_UNSET_KEY=... or write ${HOLYROUTE_TEST_UNSET_KEY:-default}",
        "endpoints.main.apikey: unknown key; did you mean 'api_key'?",
        "endpoints.backup.organisation: unknown key; did you mean 'organization'?",
        "routes.other.stciky: unknown key; did you mean 'sticky'?",
        "retry.max_attempts: Input should be greater than or equal to 1",
        "routes.chat.targets[0].endpoints[1]: unknown endpoint 'bakup' (did you mean 'backup'?); known: backup, main",
        "routes.chat.fallbacks[0]: unknown route 'nosuch'; known: chat, other",
    ]

    @pytest.mark.parametrize("command", [["check"], ["rollout", "status"], ["prices"], ["explain", "request.json"]])
    def test_each_command_lists_all_seven(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        command: list[str],
    ) -> None:
        monkeypatch.delenv("HOLYROUTE_TEST_UNSET_KEY", raising=False)
        monkeypatch.chdir(tmp_path)
        Path("holyroute.yaml").write_text(_SEVEN_PROBLEMS)
        Path("request.json").write_text('{"model": "chat", "messages": []}')
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.splitlines() == [
            "invalid holyroute configuration (holyroute.yaml): 7 problems",
            *(f"  - {problem}" for problem in self.EXPECTED),
        ]

    def test_the_client_raises_them_all(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("HOLYROUTE_TEST_UNSET_KEY", raising=False)
        path = tmp_path / "holyroute.yaml"
        path.write_text(_SEVEN_PROBLEMS)
        with pytest.raises(holyroute.ConfigError) as raised:
            holyroute.client(path)
        assert str(raised.value).splitlines()[1:] == [f"  - {problem}" for problem in self.EXPECTED]

    def test_a_required_key_missing_still_reports_the_others(self, tmp_path: Path) -> None:
        """A problem that leaves no valid configuration to cross-check (a required key) still comes with the rest."""
        with pytest.raises(holyroute.ConfigError) as raised:
            holyroute.load_config(
                {
                    "endpoints": {"main": {"api_key": "k", "apikey": "typo"}},
                    "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["main"]}]}},
                    "retry": {"max_attempts": 0},
                }
            )
        assert str(raised.value).splitlines()[1:] == [
            "  - endpoints.main.base_url: required; add it",
            "  - endpoints.main.apikey: unknown key; did you mean 'api_key'?",
            "  - retry.max_attempts: Input should be greater than or equal to 1",
        ]

    @given(
        edits=st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        ("endpoints", "main"),
                        ("endpoints", "main", "rpm"),
                        ("endpoints", "typo"),
                        ("routes", "chat"),
                        ("routes", "chat", "targets"),
                        ("routes", "chat", "fallbacks"),
                        ("routes", "chat", "stciky"),
                        ("retry",),
                        ("retry", "max_attempts"),
                        ("state",),
                        ("nonsense",),
                    ]
                ),
                st.recursive(
                    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6,
                ),
            ),
            max_size=4,
        )
    )
    def test_any_mix_of_problems_is_a_config_error_or_a_config(self, edits: list[tuple[tuple[str, ...], Any]]) -> None:
        """Whatever is wrong and wherever, loading ends in a Config or one ConfigError listing problems: the
        search for the other problems never raises anything else."""
        raw: dict[str, Any] = {
            "endpoints": {"main": {"base_url": "http://127.0.0.1:1/v1"}},
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["main"]}]}},
        }
        for path, value in edits:
            parent: Any = raw
            for part in path[:-1]:
                child = parent.get(part) if isinstance(parent, dict) else None
                if not isinstance(child, dict):
                    child = {}
                    parent[part] = child
                parent = child
            parent[path[-1]] = value
        message = ""
        try:
            holyroute.load_config(raw, environ={})
        except holyroute.ConfigError as exc:
            message = str(exc)
        assert message == "" or message.startswith(
            ("invalid holyroute configuration (configuration): ", "configuration: ")
        )


_COMMANDS = ["demo", "check", "rollout", "report", "dashboard", "explain", "prices", "schema"]
#: Each command that reads a configuration, with the arguments it needs besides --config.
_READERS = {
    "check": [],
    "rollout": ["status"],
    "report": ["events.jsonl"],
    "dashboard": ["--events", "events.jsonl"],
    "explain": ["request.json"],
    "prices": [],
}


class TestOneGrammar:
    """Finding 8: --version, help, --config with one fallback rule, one exit-code scheme, no tracebacks."""

    def test_version(self) -> None:
        done = _run("--version")
        assert (done.returncode, done.stdout) == (0, f"holyroute {holyroute.__version__}\n")

    def test_bare_holyroute_prints_help_and_exits_2(self) -> None:
        done = _run()
        assert done.returncode == 2
        assert done.stdout.startswith("usage: holyroute [-h] [--version] [--debug] COMMAND ...")
        for command in _COMMANDS:
            assert f"\n    {command}" in done.stdout
        assert "bare holyroute prints this help\nand exits 2" in done.stdout

    def test_top_level_help_has_no_markup(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            main(["--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert "``" not in out
        assert ":class:" not in out
        assert "Commands that read a configuration take --config PATH" in out

    @pytest.mark.parametrize("command", _COMMANDS)
    def test_each_command_shows_an_example_and_the_exit_codes(
        self, capsys: pytest.CaptureFixture[str], command: str
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        example = out.split("\nexample:\n  ", 1)[1].splitlines()[0]
        assert example.startswith(f"holyroute {command}")
        assert "\nexit status: 0 ok; 1 " in out
        assert out.rstrip().endswith("2 a usage or configuration error")
        if command in _READERS:
            assert "--config PATH" in out
            assert "default: $HOLYROUTE_CONFIG, then ./holyroute.yaml" in " ".join(out.split())

    @pytest.mark.parametrize("how", ["--config", "HOLYROUTE_CONFIG", "./holyroute.yaml"])
    @pytest.mark.parametrize("command", sorted(_READERS))
    def test_each_command_finds_the_configuration_as_the_client_does(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        command: str,
        how: str,
    ) -> None:
        """A broken configuration, given each way, is the one each command reads: it exits 2 naming that file."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("HOLYROUTE_CONFIG", raising=False)
        Path("events.jsonl").write_text("")
        Path("request.json").write_text('{"model": "chat"}')
        name = {"--config": "given.yaml", "HOLYROUTE_CONFIG": "from-env.yaml", "./holyroute.yaml": "holyroute.yaml"}[
            how
        ]
        Path(name).write_text("endpoints: {}\nroutes: {}\nretyr: {}\n")
        argv = [command, *_READERS[command]]
        if how == "--config":
            argv += ["--config", name]
        elif how == "HOLYROUTE_CONFIG":
            monkeypatch.setenv("HOLYROUTE_CONFIG", name)
            Path("holyroute.yaml").write_text("not: read\n")  # the variable comes first, as for holyroute.client()
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"invalid holyroute configuration ({name}): 2 problems\n")
        assert "retyr: unknown key; did you mean 'retry'?" in err

    @pytest.mark.parametrize("command", ["check", "rollout", "explain"])
    def test_no_configuration_at_all_says_the_three_ways(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
    ) -> None:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("HOLYROUTE_CONFIG", raising=False)
        Path("request.json").write_text('{"model": "chat"}')
        assert main([command, *_READERS[command]]) == 2
        assert capsys.readouterr().err == (
            "no configuration given: pass --config PATH, set HOLYROUTE_CONFIG, or create ./holyroute.yaml "
            "(holyroute demo writes one)\n"
        )

    def test_an_unexpected_error_is_one_line_unless_debug(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from holyroute.cli import commands

        def broken(out: Any) -> int:
            raise RuntimeError("cannot reach https://api.example/v1?api-key=sk-SECRET")

        monkeypatch.setattr(commands, "run_schema", broken)
        assert main(["schema"]) == 1
        # the type, never the message: another library's message may quote a URL with a key
        assert capsys.readouterr().err == (
            "holyroute schema: failed with RuntimeError (run with --debug for the traceback)\n"
        )
        for argv in (["--debug", "schema"], ["schema", "--debug"]):
            with pytest.raises(RuntimeError, match="cannot reach"):
                main(argv)

    def test_a_usage_error_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            main(["rollout", "launch"])
        assert exited.value.code == 2
        assert "invalid choice: 'launch'" in capsys.readouterr().err

    def test_explain_an_unrouted_model_passes_through(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.chdir(tmp_path)
        Path("holyroute.yaml").write_text(
            json.dumps(_one_route("http://127.0.0.1:9/v1") | {"state": {"backend": "memory"}})
        )
        Path("request.json").write_text('{"model": "gpt-4o-mini", "messages": []}')
        assert main(["explain", "request.json"]) == 0
        assert capsys.readouterr().out == (
            "model 'gpt-4o-mini' is no route of this configuration (routes: chat): holyroute would pass this call "
            "through untouched, to the base_url and with the key the client was built with\n"
        )

    def test_prices_lists_an_overridden_model_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.chdir(tmp_path)
        config = _one_route("http://127.0.0.1:9/v1") | {"prices": {"gpt-4o": {"input": 1.0, "output": 2.0}}}
        Path("holyroute.yaml").write_text(json.dumps(config))
        assert main(["prices", "--json"]) == 0
        rows = [row for row in json.loads(capsys.readouterr().out) if row["model"] == "gpt-4o"]
        assert rows == [
            {
                "model": "gpt-4o",
                "input": 1.0,
                "cached_input": 1.0,
                "output": 2.0,
                "reasoning": None,
                "source": "configuration prices",
            }
        ]


def _loads(raw: Any) -> bool:
    try:
        holyroute.load_config(raw, environ={})
    except holyroute.ConfigError:
        return False
    return True


def _nothing_required(schema: Any) -> Any:
    """``schema`` with no ``required`` list anywhere: what a fragment of a configuration must meet."""
    if isinstance(schema, dict):
        return {key: _nothing_required(value) for key, value in schema.items() if key != "required"}
    if isinstance(schema, list):
        return [_nothing_required(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """What `holyroute schema` prints, parsed."""
    done = _run("schema")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


class TestSchema:
    """`holyroute schema` prints the configuration's JSON Schema, which the demo's and the README's examples meet."""

    def test_it_is_a_2020_12_schema_of_the_whole_file(self, schema: dict[str, Any]) -> None:
        import jsonschema

        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["required"] == ["endpoints", "routes"]
        assert schema["additionalProperties"] is False  # editors flag a misspelt top-level key

    def test_the_demo_configuration_meets_it(self, schema: dict[str, Any], demo: tuple[Path, str]) -> None:
        import jsonschema
        import yaml

        where, _ = demo
        jsonschema.validate(yaml.safe_load((where / "holyroute.yaml").read_text()), schema)

    def test_every_readme_configuration_meets_it(self, schema: dict[str, Any]) -> None:
        """What load_config accepts of the README's YAML examples meets the schema as it is; each other example, a
        fragment that adds a few keys, meets it with no key required (every key it shows is known, of the right
        type)."""
        import jsonschema
        import yaml

        root = Path(__file__).resolve().parent.parent
        pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]  # where the README's examples moved
        readme = "\n".join(page.read_text(encoding="utf-8") for page in pages)
        # ${VAR} is replaced when the file is loaded (the schema describes what it becomes, a string here), and
        # `[...]` stands for "as above"
        blocks = [
            yaml.safe_load(re.sub(r"\$\{[^}]*\}", "from-the-environment", block).replace("[...]", "[]"))
            for block in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
        ]
        whole = [block for block in blocks if _loads(block)]
        assert whole, "the docs show at least one whole configuration"
        for block in whole:
            jsonschema.validate(block, schema)
        fragments = _nothing_required(schema)
        for block in blocks:
            jsonschema.validate(block, fragments)

    def test_a_typo_fails_it(self, schema: dict[str, Any]) -> None:
        import jsonschema

        config = _one_route("http://127.0.0.1:9/v1")
        config["routes"]["chat"]["stciky"] = "user"
        with pytest.raises(jsonschema.ValidationError, match="'stciky' was unexpected"):
            jsonschema.validate(config, schema)
