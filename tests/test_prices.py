"""Prices: the built-in table, configured and per-endpoint overrides, reasoning rates, and `holyroute prices`."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from holyroute.cli import run_prices
from holyroute.config.prices import BUILTIN_PRICES, PRICES_AS_OF, PriceRow
from holyroute.core.usage import Usage, cost_usd

from .conftest import Harness, base_config, drive

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}


def answer(prompt: int, completion: int, reasoning: int = 0) -> tuple[int, dict[str, str], bytes]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    return (200, {"content-type": "application/json"}, json.dumps({"choices": [], "usage": usage}).encode())


def test_table_covers_the_common_providers() -> None:
    for model in ("gpt-4.1", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "deepseek-chat"):
        assert model in BUILTIN_PRICES
    assert PRICES_AS_OF == "2025-11-01"


def test_reasoning_rate_replaces_the_output_rate_for_reasoning_tokens() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=3000, cached_tokens=0, reasoning_tokens=2000)
    as_output = PriceRow(1.0, 1.0, 4.0)
    separate = PriceRow(1.0, 1.0, 4.0, reasoning=10.0)
    assert cost_usd(usage, as_output) == pytest.approx((1000 * 1 + 3000 * 4) / 1e6)
    assert cost_usd(usage, separate) == pytest.approx((1000 * 1 + 1000 * 4 + 2000 * 10) / 1e6)


class TestOverrides:
    def test_endpoint_price_before_configured_before_built_in(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config()
        config["prices"] = {"gpt-4.1": {"input": 3.0, "output": 9.0}}
        config["endpoints"]["backup"]["prices"] = {"gpt-4.1": {"input": 1.0, "output": 2.0, "reasoning": 5.0}}
        h = make_harness(config)
        drive(h.call(headers=PRIMARY), [answer(1000, 1000)])
        main = h.events.named("holyroute.request")[-1]
        assert main["endpoint"] == "main"
        assert main["cost_usd"] == pytest.approx((1000 * 3 + 1000 * 9) / 1e6), "configured prices beat the table"
        h.router.health.cool("main", "gpt-4.1", 60, "test", h.clock())
        drive(h.call(headers=PRIMARY), [answer(1000, 1000, reasoning=400)])
        backup = h.events.named("holyroute.request")[-1]
        assert backup["endpoint"] == "backup"
        assert backup["cost_usd"] == pytest.approx((1000 * 1 + 600 * 2 + 400 * 5) / 1e6), "the endpoint's own rate"

    def test_dated_snapshot_on_an_endpoint(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config()
        config["endpoints"]["main"]["prices"] = {"gpt-4.1": {"input": 1.0, "output": 1.0}}
        config["routes"]["chat-default"]["targets"][0]["model"] = "gpt-4.1-2025-04-14"
        h = make_harness(config)
        drive(h.call(headers={"x-holyroute-arm": "gpt-4.1-2025-04-14"}), [answer(1000, 1000)])
        assert h.events.named("holyroute.request")[-1]["cost_usd"] == pytest.approx(2000 / 1e6)


class TestCommand:
    def write(self, tmp_path: Path) -> Path:
        config = base_config()
        config["prices"] = {"my-finetune": {"input": 4.0, "output": 16.0}}
        config["endpoints"]["deep"]["prices"] = {"deepseek-chat": {"input": 0.2, "output": 0.3}}
        config["routes"]["chat-cheap"]["targets"][0]["model"] = "mystery-model"
        path = tmp_path / "holyroute.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def test_table(self, tmp_path: Path) -> None:
        out, err = io.StringIO(), io.StringIO()
        assert run_prices(self.write(tmp_path), out, err) == 0
        lines = out.getvalue().splitlines()
        assert lines[0] == "USD per 1M tokens; reasoning '-' means billed as output"
        assert lines[1].split() == ["model", "input", "cached", "output", "reasoning", "source"]
        assert lines[2].split() == ["deepseek-chat", "0.2", "0.2", "0.3", "-", "endpoint", "deep"]
        assert lines[3].split() == ["my-finetune", "4", "4", "16", "-", "configuration", "prices"]
        unpriced = lines[4].split()
        assert unpriced[:5] == ["mystery-model", "-", "-", "-", "-"]
        assert "UNPRICED on endpoint cheap" in lines[4]
        assert "gpt-4.1 " in out.getvalue()
        assert f"built in, as of {PRICES_AS_OF}" in lines[-1]
        assert "key-main" not in out.getvalue()

    def test_json(self, tmp_path: Path) -> None:
        out = io.StringIO()
        assert run_prices(self.write(tmp_path), out, io.StringIO(), as_json=True) == 0
        rows = json.loads(out.getvalue())
        by_model = {(r["model"], r["source"]): r for r in rows}
        assert by_model[("my-finetune", "configuration prices")]["output"] == 16.0
        assert len([r for r in rows if r["source"].startswith("built in")]) == len(BUILTIN_PRICES)

    def test_bad_configuration(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text("endpoints: {}\nroutes: {}\n")
        err = io.StringIO()
        assert run_prices(path, io.StringIO(), err) == 2
        assert "no route defined" in err.getvalue()
