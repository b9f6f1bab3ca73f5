"""What a call tells the rest of the router: cooldowns, settled token debits, ``holyroute.failover`` and
``holyroute.request`` events, spend and rollout measurements, and the answer when it gives up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from holyroute.config.catalogue import catalogue_cost, catalogue_model, catalogue_source
from holyroute.core.plan import Leg, Upstream
from holyroute.core.ports import HealthChange
from holyroute.core.steps import GiveUp, Respond, Step
from holyroute.core.usage import Usage, cost_usd
from holyroute.core.waiting import Waiting

if TYPE_CHECKING:
    from holyroute.core.rollouts import Rollouts

__all__ = ["Accounting"]


class Accounting(Waiting):
    __slots__ = ()

    def _cool(self, upstream: Upstream, seconds: float, reason: str, now: float) -> None:
        router = self._router
        cooldown = router.health.cooldowns.cool(upstream.endpoint, upstream.model, seconds, reason, now)
        if cooldown is not None:
            until = router.wall_clock() + seconds
            router.state.publish(HealthChange("cooldown", upstream.endpoint, upstream.model, until, reason))
            router.emit(
                "holyroute.cooldown",
                {
                    "endpoint": upstream.endpoint,
                    "upstream_model": upstream.model,
                    "cooldown_s": round(seconds, 3),
                    "reason": reason,
                },
            )

    def _settle(self, status: int | None, usage: Usage | None, now: float) -> None:
        """The call ended: correct its tpm debits to what it used (the answer's usage), crediting back what attempts
        without a successful answer took; the shared store's part goes to the state backend (no I/O here). Asked
        only when there are debits (tpm limits)."""
        upstream = self._current
        answered = upstream is not None and status is not None and 200 <= status < 300
        shared = self._router.health.rate_limits.settle(
            self._debits,
            now,
            endpoint=upstream.endpoint if answered and upstream is not None else None,
            used=usage.prompt_tokens + usage.completion_tokens if usage is not None else None,
        )
        for endpoint, tpm, tokens in shared:
            self._router.state.settle(endpoint, tpm, tokens)

    def _failure_fields(self, *, status: int | None, error: str | None, reason: str) -> dict[str, Any]:
        upstream, leg = self._current, self._last_leg
        assert upstream is not None
        assert leg is not None
        return {
            "call_id": self.id,
            "route": self._plan.alias,
            "arm": leg.arm.name,
            "endpoint": upstream.endpoint,
            "upstream_model": upstream.model,
            "attempt": self._attempts,
            "attempt_ms": round((self._router.clock() - self._sent_at) * 1e6) / 1000,
            "status": status,
            "error": error,
            "reason": reason,
        }

    def _emit_failover(self, failure: dict[str, Any], wait: float, next_endpoint: str | None) -> None:
        failure["wait_s"] = round(wait, 3)
        failure["next_endpoint"] = next_endpoint
        self._router.emit("holyroute.failover", failure)

    def _give_up(self, now: float) -> Step:
        stop = f"; {self._stop_reason}" if self._stop_reason else ""
        if self._last_response is not None:
            status, headers, body, upstream, leg = self._last_response
            # The event names the endpoint whose answer is handed back, not a later one that raised.
            self._current, self._last_leg = upstream, leg
            self._status = status
            self._request_id = next((v for k, v in headers if k == "x-request-id"), None)
            self._emit_request(status, "error", None, f"upstream {status}{stop}", self._request_id)
            return Respond(status, (*headers, ("x-should-retry", "false")), body)
        if self._last_error is not None:
            error, timeout = self._last_error
            summary = (
                f"holyroute: {self._attempts} attempt(s) for '{self._plan.alias}' failed; "
                f"last: {type(error).__name__}{stop}"
            )
            self._emit_request(None, "error", None, f"{type(error).__name__}{stop}", None)
            return GiveUp(error, timeout, summary)
        # Nothing was sent: every endpoint is cooling down, ejected or out of budget for longer than we may wait.
        untils = [until - now for _, until in self._skipped.values() if until is not None and until > now]
        soonest = min(untils, default=None)
        detail = "; ".join(
            f"{endpoint}/{model} {why}" + (f" for {until - now:.1f}s" if until is not None and until > now else "")
            for (endpoint, model), (why, until) in self._skipped.items()
        )
        reasons = [why for why, _ in self._skipped.values()]
        if reasons and all(why.startswith(("context: ", "cost: ")) for why in reasons):
            # Nothing reachable can take this request at all: a client error, not a moment to wait out.
            cost = any(why.startswith("cost: ") for why in reasons)
            self._emit_request(400, "error", None, "no model can take this request", None)
            return self._local_answer(
                400,
                f"holyroute: no model for '{self._alias}' can take this request: {detail}"
                + (
                    "; raise the ceiling or lower max_tokens"
                    if cost
                    else "; shorten the input, lower max_tokens, or add a larger model to the route or its fallbacks"
                ),
                "invalid_request_error",
                "holyroute_cost_ceiling" if cost else "context_length_exceeded",
            )
        over_budget = bool(reasons) and all(why.startswith("budget ") for why in reasons)
        answer = self._local_answer(
            429,
            f"holyroute: no endpoint for '{self._plan.alias}' can take a call now: {detail or self._stop_reason}",
            "budget_exceeded" if over_budget else "rate_limit_exceeded",
            "holyroute_budget_exceeded" if over_budget else "holyroute_no_endpoint_available",
            retry_after=soonest,
        )
        self._emit_request(429, "error", None, f"no endpoint available{stop}", None)
        return answer

    def _emit_request(
        self, status: int | None, outcome: str, usage: Usage | None, error: str | None, request_id: str | None
    ) -> None:
        # Long on purpose: one or two lines per field of the event, in the order docs/reference/events.md lists them.
        self.done = True
        router = self._router
        now = router.clock()
        upstream = self._current
        if self._debits:  # tpm debits to correct (only with tpm limits)
            self._settle(status, usage, now)
        leg = self._last_leg if upstream is not None else self._legs[0]
        cost, price_source, price_tier = _cost(upstream, usage, router.wall_clock)
        # Milliseconds to three places as a whole number of microseconds over 1000: what round(ms, 3) gives (it may
        # differ by a microsecond at a near-tie), at a quarter of its cost (round with places formats the number).
        latency_ms = round((now - self.started) * 1e6) / 1000
        first = self._first_byte if self.stream else None
        ttft_ms = round((first - self.started) * 1e6) / 1000 if first is not None else None
        if cost:  # the spend budgets' share, or a shadow copy's own daily spend (its cap)
            if self.shadow_of is not None:
                router.state.add_spend(f"shadow:{self._plan.alias}", cost)
            elif router.spend is not None and upstream is not None and leg is not None:
                router.spend.charge(leg.fallback or self._plan.alias, upstream.endpoint, self._tags, cost)
        if router.rollouts is not None:  # a route's rollout measures its arms
            self._observe_rollout(router.rollouts, outcome, leg, latency_ms=latency_ms, ttft_ms=ttft_ms, cost=cost)
        # Fields that would be null are left out (docs/reference/events.md says so): a JSON line per call is
        # most of what a call costs holyroute, and a third of the fields are null on a plain call.
        fallback = leg.fallback if leg is not None else None
        fields: dict[str, Any] = {"call_id": self.id, "route": self._plan.alias}
        if leg is not None:
            fields["arm"] = leg.arm.name
        fields["split_arm"] = self._legs[0].arm.name  # the arm the split chose, even when a fallback served
        fields["model"] = self._alias
        if self._rule is not None:
            fields["rule"] = self._rule
        if upstream is not None:
            fields["upstream_model"] = upstream.model
            fields["endpoint"] = upstream.endpoint
        fields["api"] = self._api
        if status is not None:
            fields["status"] = status
        fields["outcome"] = outcome
        if error is not None:
            fields["error"] = error
        fields["attempts"] = self._attempts
        if self._attempts:
            fields["attempt_ms"] = round((now - self._sent_at) * 1e6) / 1000
        if fallback is not None:
            fields["fallback"] = fallback
        fields["sticky"] = leg.sticky if leg is not None else False
        fields["stream"] = self.stream
        fields["latency_ms"] = latency_ms
        if ttft_ms is not None:
            fields["ttft_ms"] = ttft_ms
        if usage is not None:
            fields["prompt_tokens"] = usage.prompt_tokens
            fields["completion_tokens"] = usage.completion_tokens
            fields["cached_tokens"] = usage.cached_tokens
            fields["reasoning_tokens"] = usage.reasoning_tokens
            fields["cache_write_tokens"] = usage.cache_write_tokens
            fields["audio_tokens"] = usage.input_audio_tokens + usage.output_audio_tokens
            fields["image_tokens"] = usage.input_image_tokens + usage.output_image_tokens
            if usage.service_tier is not None:
                fields["service_tier"] = usage.service_tier
        if cost is not None:
            fields["cost_usd"] = cost
        fields["priced"] = price_source != "none"
        fields["price_source"] = price_source
        if price_tier is not None:
            fields["price_tier"] = price_tier
        if request_id is not None:
            fields["request_id"] = request_id
        if self._finish is not None:
            fields["finish_reason"] = self._finish
        if self._quality is not None:
            fields["quality"] = self._quality
        fields["shadow"] = self.shadow_of is not None
        ticket = self._cache
        if ticket is not None:
            fields["cache"] = ticket.settle(
                ok=outcome == "ok", status=status, api=self._api, finish_reason=self._finish, quality=self._quality,
                primary=leg is self._legs[0], upstream_model=upstream.model if upstream is not None else None,
                cost_usd=cost, now=router.wall_clock(),
            )  # fmt: skip
            if ticket.answer is not None:  # to be stored: the event waits for the store's word (cache_written)
                ticket.held = fields
                return
        router.emit("holyroute.request", fields)
        if router.alerts is not None:
            router.alerts.observe(fields)

    def cache_written(self, kept: bool) -> None:
        """The driver wrote the answer the call's cache ticket kept (``kept``: the store accepted it) or gave up on
        it: emit the call's ``holyroute.request``, held since the call ended, with ``cache: stored`` or ``miss``.
        A no-op when no event is held, so every path that may end a call after its answer calls it."""
        ticket = self._cache
        fields = ticket.held if ticket is not None else None
        if ticket is None or fields is None:
            return
        ticket.held = None
        if not kept:
            ticket.state = fields["cache"] = "miss"
        router = self._router
        router.emit("holyroute.request", fields)
        if router.alerts is not None:
            router.alerts.observe(fields)

    def _observe_rollout(
        self,
        rollouts: Rollouts,
        outcome: str,
        leg: Leg | None,
        *,
        latency_ms: float,
        ttft_ms: float | None,
        cost: float | None,
    ) -> None:
        """Feed the route's rollout this call's result, when the call measures the route's own arms."""
        if self.shadow_of is None and self._budget is None and self._observe and outcome != "cancelled":
            # A call kept off the route's own arms by a spent budget says nothing about them: not measured.
            engine = rollouts.get(self._plan.alias)
            if engine is not None:
                # Judged on the arm the split chose: a candidate call rescued by a fallback still failed the candidate.
                primary = self._legs[0]
                ok = outcome == "ok" and leg is primary
                engine.observe(
                    primary.arm.name,
                    ok=ok,
                    latency_ms=latency_ms,
                    ttft_ms=ttft_ms,
                    cost_usd=cost,
                    quality=self._quality,
                )


def _cost(
    upstream: Upstream | None, usage: Usage | None, wall_clock: Callable[[], float]
) -> tuple[float | None, str, str | None]:
    """What the call cost, where the price came from (``config``, ``endpoint``, ``catalogue@<version>``, ``none``)
    and the price context applied (the answer's ``service_tier`` when it changed the rates)."""
    if upstream is None:
        return None, "none", None
    if upstream.price_source != "catalogue" and upstream.price is not None:
        return (cost_usd(usage, upstream.price) if usage is not None else None), upstream.price_source, None
    if usage is None:
        known = catalogue_model(upstream.model, provider=upstream.provider, base_url=upstream.base_url)
        return None, catalogue_source() if known is not None else "none", None
    models = (usage.model, upstream.model) if usage.model and usage.model != upstream.model else (upstream.model,)
    found = catalogue_cost(usage, models, provider=upstream.provider, base_url=upstream.base_url, when=wall_clock())
    if found is None:
        return None, "none", None
    return found.cost_usd, found.source, found.service_tier
