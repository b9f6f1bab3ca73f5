"""Spend budgets: caps per route, endpoint or tag; block or fall back; spend counted from finished calls."""

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

from .conftest import Events, Harness, base_config, drive, ok

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}
USAGE = {"usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}}


def priced_ok() -> tuple[int, dict[str, str], bytes]:
    """An answer with usage: gpt-4.1 at $2 / $8 per 1M tokens makes it $0.006."""
    return (200, {"content-type": "application/json"}, json.dumps({"choices": [], **USAGE}).encode())


def with_budgets(*budgets: dict[str, Any]) -> dict[str, Any]:
    config = base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0, "budget_min_per_s": 100})
    config["budgets"] = list(budgets)
    return config


def spend(h: Harness, key: str, usd: float) -> None:
    h.router.state.add_spend(key, usd)


class TestRouteBudget:
    def test_block_after_the_cap(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(with_budgets({"scope": "route", "name": "chat-default", "usd": 0.01}))
        for _ in range(2):  # $0.006 each: the second call is allowed (spent $0.006 < $0.01) and crosses the cap
            assert drive(h.call(headers=PRIMARY), [priced_ok()]).endpoints == ["main"]
        assert h.router.state.spent("budget:route:chat-default", "day") == pytest.approx(0.012)
        refused = [drive(h.call(headers=PRIMARY), []) for _ in range(3)]
        for outcome in refused:
            assert outcome.sent == [], "nothing is sent once the budget is spent"
            assert isinstance(outcome.final, Respond)
            assert outcome.final.status == 429
            error = json.loads(outcome.final.body)["error"]
            assert error["code"] == "holyroute_budget_exceeded"
            assert "budget route chat-default spent: $0.0120 of $0.01 this day" in error["message"]
        exceeded = h.events.named("holyroute.budget_exceeded")
        assert len(exceeded) == 1, "one event per budget and period, not one per refused call"
        assert exceeded[0]["name"] == "chat-default"
        assert exceeded[0]["action"] == "block"
        requests = h.events.named("holyroute.request")
        assert [r["status"] for r in requests[-3:]] == [429, 429, 429]
        assert "budget route chat-default" in requests[-1]["error"]

    def test_fallback_serves_from_the_cheaper_route(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(with_budgets({"scope": "route", "name": "chat-default", "usd": 1.0, "action": "fallback"}))
        spend(h, "budget:route:chat-default", 1.5)
        outcome = drive(h.call(headers=PRIMARY), [priced_ok()])
        assert outcome.endpoints == ["cheap"]
        event = h.events.named("holyroute.request")[-1]
        assert event["fallback"] == "chat-cheap"
        assert event["status"] == 200
        # The fallback route's spend is its own: chat-default's counter does not grow.
        assert h.router.state.spent("budget:route:chat-default", "day") == pytest.approx(1.5)

    def test_fallback_over_budget_too_is_refused(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(
            with_budgets(
                {"scope": "route", "name": "chat-default", "usd": 1.0, "action": "fallback"},
                {"scope": "route", "name": "chat-cheap", "usd": 0.5},
            )
        )
        spend(h, "budget:route:chat-default", 1.0)
        spend(h, "budget:route:chat-cheap", 0.5)
        outcome = drive(h.call(headers=PRIMARY), [])
        assert outcome.sent == []
        assert isinstance(outcome.final, Respond)
        error = json.loads(outcome.final.body)["error"]
        assert error["code"] == "holyroute_budget_exceeded"
        assert "budget route chat-cheap spent" in error["message"]

    def test_other_periods_and_routes_are_untouched(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(with_budgets({"scope": "route", "name": "chat-cheap", "usd": 0.01, "period": "hour"}))
        spend(h, "budget:route:chat-cheap", 1.0)
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["main"]


class TestEndpointBudget:
    def test_spent_endpoint_is_skipped(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(with_budgets({"scope": "endpoint", "name": "main", "usd": 0.005}))
        assert drive(h.call(headers=PRIMARY), [priced_ok()]).endpoints == ["main"]
        assert drive(h.call(headers=PRIMARY), [priced_ok()]).endpoints == ["backup"]
        assert h.router.state.spent("budget:endpoint:main", "day") == pytest.approx(0.006)
        assert h.router.state.spent("budget:endpoint:backup", "day") == 0.0, "only budgeted names are counted"


class TestTagBudget:
    def test_tag_from_header(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(with_budgets({"scope": "tag", "name": "team-a", "usd": 0.001}))
        tagged = {**PRIMARY, "x-holyroute-tags": "batch, team-a"}
        assert drive(h.call(headers=tagged), [priced_ok()]).endpoints == ["main"]
        refused = drive(h.call(headers=tagged), [])
        assert isinstance(refused.final, Respond)
        assert "budget tag team-a" in json.loads(refused.final.body)["error"]["message"]
        other = {**PRIMARY, "x-holyroute-tags": "team-b"}
        assert drive(h.call(headers=other), [ok()]).endpoints == ["main"], "other tags are not capped"

    def test_tags_header_is_not_forwarded(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(with_budgets({"scope": "tag", "name": "team-a", "usd": 10}))
        outcome = drive(h.call(headers={**PRIMARY, "x-holyroute-tags": "team-a"}), [ok()])
        assert all(name != "x-holyroute-tags" for name, _ in outcome.sent[0].headers)


class TestConfig:
    @pytest.mark.parametrize(
        ("budget", "message"),
        [
            ({"scope": "route", "name": "chat-nope", "usd": 1}, "budgets[0].name: unknown route 'chat-nope'"),
            ({"scope": "endpoint", "name": "mian", "usd": 1}, "budgets[0].name: unknown endpoint 'mian'"),
            (
                {"scope": "route", "name": "chat-cheap", "usd": 1, "action": "fallback"},
                "budgets[0].action: 'fallback' but route 'chat-cheap' has no fallbacks",
            ),
            ({"scope": "route", "name": "chat-default", "usd": 0}, "budgets[0].usd: Input should be greater than 0"),
            (
                {"scope": "team", "name": "x", "usd": 1},
                "budgets[0].scope: Input should be 'route'",
            ),
        ],
    )
    def test_bad_budgets(self, budget: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_config(with_budgets(budget))
        assert message in str(caught.value)


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream("primary") as primary, FakeUpstream("cheap") as cheap:
        yield primary, cheap


def sdk_config(primary: FakeUpstream, cheap: FakeUpstream, action: str) -> dict[str, Any]:
    return {
        "endpoints": {"primary": {"base_url": primary.base_url}, "cheap": {"base_url": cheap.base_url}},
        "routes": {
            "chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["primary"]}], "fallbacks": ["chat-cheap"]},
            "chat-cheap": {"targets": [{"model": "gpt-4.1-nano", "endpoints": ["cheap"]}]},
        },
        "budgets": [{"scope": "route", "name": "chat", "usd": 0.0001, "action": action}],
        "state": {"backend": "memory"},
    }


class TestWithTheSDK:
    def test_block_raises_rate_limit_error_naming_the_budget(
        self, upstreams: tuple[FakeUpstream, FakeUpstream]
    ) -> None:
        primary, cheap = upstreams
        events = Events()
        with openai.OpenAI(
            api_key="x",
            base_url="http://unused.invalid/v1",
            http_client=holyroute.client(sdk_config(primary, cheap, "block"), log=False, sinks=[events]),
            max_retries=2,
        ) as client:
            messages: Any = [{"role": "user", "content": "a long enough question " * 20}]
            # A stream's cost counts too: it is charged when the stream ends.
            with client.chat.completions.create(model="chat", messages=messages, stream=True) as stream:
                chunks = list(stream)
            assert chunks
            cost = events.named("holyroute.request")[-1]["cost_usd"]
            assert cost > 0.0001
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="chat", messages=messages)
        assert "budget route chat spent" in str(caught.value)
        assert f"${cost:.4f} of $0.0001 this day" in str(caught.value)
        assert len(primary.requests) == 1, "the SDK did not retry the refusal (x-should-retry: false)"
        assert cheap.requests == []

    def test_fallback_serves_from_the_cheaper_route(self, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
        primary, cheap = upstreams
        with openai.OpenAI(
            api_key="x",
            base_url="http://unused.invalid/v1",
            http_client=holyroute.client(sdk_config(primary, cheap, "fallback"), log=False, sinks=[Events()]),
            max_retries=0,
        ) as client:
            messages: Any = [{"role": "user", "content": "a long enough question " * 20}]
            first = client.chat.completions.create(model="chat", messages=messages)
            second = client.chat.completions.create(model="chat", messages=messages)
        assert first.model == "gpt-4.1"
        assert second.model == "gpt-4.1-nano"
        assert [len(primary.requests), len(cheap.requests)] == [1, 1]
