"""Alerts over rolling windows: one firing and one resolution per incident, on a fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from holyroute import load_config
from holyroute.core.alerts import Alert
from holyroute.exceptions import ConfigError

from .conftest import Harness, base_config, drive, ok, status

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}


def alerting(*rules: dict[str, Any]) -> dict[str, Any]:
    config = base_config(retry={"max_attempts": 1, "backoff_jitter_s": 0})
    config["routes"]["chat-default"]["fallbacks"] = []
    config["alerts"] = list(rules)
    return config


def priced(prompt: int, completion: int) -> tuple[int, dict[str, str], bytes]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return (200, {"content-type": "application/json"}, json.dumps({"choices": [], "usage": usage}).encode())


class TestErrorRate:
    RULE: ClassVar[dict[str, Any]] = {
        "scope": "route",
        "name": "chat-default",
        "metric": "error_rate",
        "above": 0.2,
        "window": "60s",
    }

    def test_fires_once_and_resolves_once_over_a_burst(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(alerting({**self.RULE, "min_calls": 10}))
        hooked: list[Alert] = []
        assert h.router.alerts is not None
        h.router.alerts.add_hook(hooked.append)
        script = ["ok"] * 30 + ["error"] * 20 + ["ok"] * 150  # one call every 0.5 s: 100 s in all
        for answer in script:
            drive(h.call(headers=PRIMARY), [ok() if answer == "ok" else status(500)])
            h.clock.advance(0.5)
        alerts = h.events.named("holyroute.alert")
        assert [a["state"] for a in alerts] == ["firing", "resolved"], "no spam while the burst lasts"
        firing, resolved = alerts
        assert firing["alert"] == "error_rate route chat-default"
        assert firing["value"] > 0.2
        assert firing["reason"].startswith("error_rate ")
        assert "> 20.0% over the last 60s" in firing["reason"]
        assert resolved["value"] <= 0.2
        assert [(a.state, a.name) for a in hooked] == [("firing", "chat-default"), ("resolved", "chat-default")]
        # It fired during the burst, not before: the 30 good calls kept the rate under 20% for a while.
        requests = h.events.named("holyroute.request")
        fired_at = next(i for i, (name, _) in enumerate(h.events.items) if name == "holyroute.alert")
        assert 30 < sum(1 for name, _ in h.events.items[:fired_at] if name == "holyroute.request") <= 50
        assert len(requests) == len(script)

    def test_min_calls(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(alerting(self.RULE))  # default min_calls 20 for a rate
        for _ in range(19):
            drive(h.call(headers=PRIMARY), [status(500)])
        assert h.events.named("holyroute.alert") == []
        drive(h.call(headers=PRIMARY), [status(500)])
        assert [a["state"] for a in h.events.named("holyroute.alert")] == ["firing"]

    def test_an_emptied_window_resolves_on_tick(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(alerting({**self.RULE, "min_calls": 1}))
        drive(h.call(headers=PRIMARY), [status(500)])
        assert h.router.alerts is not None
        assert h.router.alerts.firing() == [("error_rate route chat-default", "chat-default")]
        h.clock.advance(66.1)  # the window (60 s) and the slice the call fell in (6 s) are over
        h.router.alerts.tick()
        resolved = h.events.named("holyroute.alert")[-1]
        assert resolved["state"] == "resolved"
        assert resolved["reason"] == "no calls over the last 60s"

    def test_a_failing_hook_does_not_break_the_call(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(alerting({**self.RULE, "min_calls": 1}))
        assert h.router.alerts is not None

        def broken(alert: Alert) -> None:
            raise RuntimeError("pager down")

        h.router.alerts.add_hook(broken)
        outcome = drive(h.call(headers=PRIMARY), [status(500)])
        assert outcome.endpoints == ["main"]
        assert h.events.named("holyroute.alert_hook_failed")[0]["reason"] == "RuntimeError: pager down"


class TestOtherMetrics:
    def test_p95_latency_per_endpoint(self, make_harness: Callable[..., Harness]) -> None:
        rule = {"scope": "endpoint", "name": "*", "metric": "p95_latency_ms", "above": 2000, "min_calls": 5}
        h = make_harness(alerting(rule))
        for latency in (0.1, 0.1, 0.1, 3.0, 3.0, 3.0):
            call = h.call(headers=PRIMARY)
            step = call.next_step()
            h.clock.advance(latency)
            call.on_response(200, {"content-type": "application/json"})
            call.on_body(b"{}")
        [firing] = h.events.named("holyroute.alert")
        assert firing["name"] == "main"
        assert firing["scope"] == "endpoint"
        assert firing["value"] == pytest.approx(3000, rel=0.02)
        assert step is not None

    def test_cost_per_call_and_projected_daily(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(
            alerting(
                {"scope": "route", "metric": "cost_per_call_usd", "above": 0.01},
                {"scope": "route", "metric": "projected_daily_usd", "above": 50, "window": "10m"},
            )
        )
        for _ in range(5):  # gpt-4.1: 2000 in + 1000 out = $0.012 a call, one a second
            drive(h.call(headers=PRIMARY), [priced(2000, 1000)])
            h.clock.advance(1.0)
        names = [a["alert"] for a in h.events.named("holyroute.alert")]
        # Projected spend crosses at the third call; cost per call needs its 5 calls (the default min_calls).
        assert names == ["projected_daily_usd route *", "cost_per_call_usd route *"]
        projected, per_call = h.events.named("holyroute.alert")
        assert per_call["value"] == pytest.approx(0.012)
        # Three calls of $0.012 over the 60 s (a tenth of the window) seen so far, scaled to a day: $51.84.
        assert projected["value"] == pytest.approx(0.036 * 86400 / 60, rel=0.01)
        assert projected["calls"] == 3


class TestConfig:
    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                {"scope": "route", "name": "chat-nope", "metric": "error_rate", "above": 0.1},
                "alerts[0].name: unknown route 'chat-nope'",
            ),
            (
                {"scope": "route", "metric": "error_rate", "above": 0.1, "resolve_below": 0.2},
                "alerts[0].resolve_below: above 'above'",
            ),
            ({"scope": "route", "metric": "errors", "above": 0.1}, "alerts[0].metric: Input should be"),
            ({"scope": "route", "metric": "error_rate", "above": 0.1, "window": "soon"}, "alerts[0].window"),
        ],
    )
    def test_bad_rules(self, rule: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_config(alerting(rule))
        assert message in str(caught.value)
