"""`holyroute explain`: the decision for a request, in words, compared with the expected text. Nothing is sent."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from holyroute.cli import run_explain

CONFIG = """\
endpoints:
  openai: {base_url: https://api.openai.com/v1, api_key: sk-secret-1}
  backup: {base_url: https://eu.example.com/v1, api_key: sk-secret-2}
  google: {base_url: https://generativelanguage.googleapis.com/v1beta/openai, api_key: g-secret}
routes:
  assistant:
    rules:
      - {name: hard, when: {header: {x-task: complex_reasoning}}, use: reasoning}
      - {when: {metadata: {tier: free}}, use: chat-cheap}
    targets:
      - {model: gpt-4o, endpoints: [openai, backup], weight: 90}
      - {model: gpt-4.1-mini, endpoints: [openai], weight: 10}
    fallbacks: [long-context]
    max_cost_usd: 0.5
  reasoning: {targets: [{model: o3, endpoints: [openai]}]}
  chat-cheap: {targets: [{model: gpt-4.1-nano, endpoints: [openai]}]}
  long-context: {targets: [{model: gemini-2.5-flash, endpoints: [google]}]}
state: {backend: memory}
"""

LONG_PROMPT = {"role": "user", "content": "lorem ipsum " * 50_000}


def explain(tmp_path: Path, body: dict[str, Any], *headers: str) -> tuple[int, str, str]:
    config = tmp_path / "holyroute.yaml"
    config.write_text(CONFIG)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    out, err = io.StringIO(), io.StringIO()
    code = run_explain(config, request, headers, out, err)
    return code, out.getvalue(), err.getvalue()


def test_too_long_for_the_split_goes_to_the_arm_that_fits(tmp_path: Path) -> None:
    code, out, _ = explain(tmp_path, {"model": "assistant", "messages": [LONG_PROMPT], "max_tokens": 2000})
    assert code == 0
    too_big = "context: needs 150,006 input + 2,000 output tokens; gpt-4o holds 128,000 (max output 16,384)"
    assert out == (
        "request: model assistant, ~150,006 input tokens (heuristic), max output 2,000, "
        "cost ceiling $0.5 from route assistant\n"
        "rules of assistant:\n"
        "  hard          no     header x-task is missing, not 'complex_reasoning'\n"
        "  rules[1]      no     metadata tier is missing, not 'free'\n"
        "  default       the route's own targets\n"
        "route assistant\n"
        "  arm gpt-4o (weight 90%) <- the split's draw\n"
        f"    openai/gpt-4o                       {too_big}  (at most $0.395015)\n"
        f"    backup/gpt-4o                       {too_big}  (at most $0.395015)\n"
        "  arm gpt-4.1-mini (weight 10%)\n"
        "    openai/gpt-4.1-mini                 eligible  (at most $0.063202)\n"
        "  fallback long-context\n"
        "    arm gemini-2.5-flash\n"
        "      google/gemini-2.5-flash           eligible  (at most $0.050002)\n"
        "pick: assistant / gpt-4.1-mini on openai (nothing was sent)\n"
    )


def test_a_rule_decides(tmp_path: Path) -> None:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "prove it"}], "max_tokens": 500}
    code, out, _ = explain(tmp_path, body, "X-Task: complex_reasoning")
    assert code == 0
    assert out == (
        # The rule hands the call to `reasoning`; the ceiling of the route the caller named still bounds it.
        "request: model assistant, ~8 input tokens (heuristic), max output 500, "
        "cost ceiling $0.5 from route assistant\n"
        "rules of assistant:\n"
        "  hard          MATCH  header x-task is 'complex_reasoning' -> reasoning\n"
        "  rules[1]      no     metadata tier is missing, not 'free'\n"
        "route reasoning (by hard)\n"
        "  arm o3 (weight 100%) <- the split's draw\n"
        "    openai/o3                           eligible  (at most $0.004016)\n"
        "pick: reasoning / o3 on openai (nothing was sent)\n"
    )


def test_nothing_under_the_ceiling(tmp_path: Path) -> None:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    code, out, _ = explain(tmp_path, body, "x-holyroute-max-cost: 0.00001")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "request: model assistant, ~7 input tokens (heuristic), max output 1,000, "
        "cost ceiling $0.00001 from header x-holyroute-max-cost (also route assistant $0.5)"
    )
    assert lines[7] == (
        "    openai/gpt-4o                       cost: up to $0.010018 at gpt-4o prices, over the $0.00001 ceiling"
    )
    assert lines[-1].startswith("answer: 400 holyroute: no model for 'assistant' can take this request: ")
    assert lines[-1].endswith("; raise the ceiling or lower max_tokens")
    assert "sk-secret" not in out


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ({"messages": []}, (), "the request names no model"),
        ({"model": "assistant"}, ("x-task",), "--header 'x-task' must look like 'x-task: complex_reasoning'"),
    ],
)
def test_bad_input(tmp_path: Path, body: dict[str, Any], headers: tuple[str, ...], message: str) -> None:
    code, out, err = explain(tmp_path, body, *headers)
    assert code == 2
    assert out == ""
    assert message in err


def test_unrouted_model_passes_through(tmp_path: Path) -> None:
    """issue 15: a model no route serves is explained (it was an error, exit 2): holyroute passes the call on."""
    code, out, err = explain(tmp_path, {"model": "nope"})
    assert (code, err) == (0, "")
    assert out == (
        "model 'nope' is no route of this configuration (routes: assistant, chat-cheap, long-context, reasoning): "
        "holyroute would pass this call through untouched, to the base_url and with the key the client was built "
        "with\n"
    )


def test_not_json(tmp_path: Path) -> None:
    config = tmp_path / "holyroute.yaml"
    config.write_text(CONFIG)
    request = tmp_path / "request.json"
    request.write_text("model: assistant")
    err = io.StringIO()
    assert run_explain(config, request, (), io.StringIO(), err) == 2
    assert "is not JSON" in err.getvalue()


class TestReadOnly:
    """Explain reads the rollout state and writes none: no file created, none changed, no step advanced."""

    ROLLOUT = """\
endpoints:
  main: {base_url: https://main.example/v1, api_key: sk-secret-1}
routes:
  chat:
    rollout:
      stable: {model: gpt-4o, endpoints: [main]}
      candidate: {model: gpt-4.1, endpoints: [main]}
      steps: [{set_weight: 20}, {pause: {duration: 1s}}, {set_weight: 70}]
state: {backend: file, path: STATE}
"""

    def run(self, tmp_path: Path) -> tuple[int, str]:
        state = tmp_path / "state" / "rollout.json"
        config = tmp_path / "holyroute.yaml"
        config.write_text(self.ROLLOUT.replace("STATE", str(state)))
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        out, err = io.StringIO(), io.StringIO()
        code = run_explain(config, request, (), out, err)
        return code, out.getvalue() + err.getvalue()

    def test_no_state_file_is_created(self, tmp_path: Path) -> None:
        code, out = self.run(tmp_path)
        assert code == 0, out
        assert "arm gpt-4.1 (weight 20%)" in out, "shows what the router would do: the first step"
        assert not (tmp_path / "state").exists(), "neither the state file nor its lock file is created"

    def test_existing_state_is_unchanged(self, tmp_path: Path) -> None:
        folder = tmp_path / "state"
        folder.mkdir()
        state = folder / "rollout.json"
        # At 20%, paused since long ago: a router would advance to 70% now; explain must not write that.
        stored = {"chat": {"route": "chat", "step": 1, "weight": 20.0, "step_started": 1.0, "version": 2}}
        state.write_text(json.dumps(stored))
        before = state.stat().st_mtime_ns
        code, out = self.run(tmp_path)
        assert code == 0, out
        assert json.loads(state.read_text()) == stored
        assert state.stat().st_mtime_ns == before
        assert sorted(p.name for p in folder.iterdir()) == ["rollout.json"]
