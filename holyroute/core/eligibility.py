"""Whether an endpoint can take this call now, and the arms it may try: size and cost first, then budgets, then health.

Size (context fit) and cost (the tightest ceiling) never change during a call and are judged once per endpoint;
spend budgets and health (ejections, active checks, cooldowns, rpm/tpm headroom) are judged at every step.
"""

from __future__ import annotations

from holyroute.boundary.parse import requested_choices
from holyroute.config.catalogue import catalogue_bound
from holyroute.core.call_state import CallState
from holyroute.core.context import (
    DEFAULT_OUTPUT_RESERVE,
    estimate_input_tokens,
    fits,
)
from holyroute.core.health import HeaderLookup
from holyroute.core.plan import (
    MAX_COST_HEADER,
    Arm,
    Leg,
    RoutePlan,
    Upstream,
    cost_ceilings,
    usd,
)
from holyroute.core.spend import SpendBudgets, Verdict

__all__ = ["Eligibility"]


class Eligibility(CallState):
    __slots__ = ()

    def _input_tokens(self) -> int:
        found = self._input
        if found is None:
            encoder = self._router.token_encoder
            found = self._input = estimate_input_tokens(
                self._data, self._raw_body, exact=encoder is not None, encoding=encoder
            )
        return found

    def _limit_size_and_cost(self, plan: RoutePlan, headers: HeaderLookup, body: bytes) -> bool:
        """Decide whether endpoints must be checked for size (only a request that might not fit somewhere) and
        cost (the tightest ceiling of the request, the route it named and the route its rules chose). False when the
        request's own ceiling is malformed."""
        raw = headers.get(MAX_COST_HEADER)
        asked: float | None = None
        if raw is not None:
            try:
                asked = float(raw)
            except ValueError:
                asked = -1.0
            if not asked > 0 or asked == float("inf"):
                self._final = self._local_answer(
                    400,
                    f"holyroute: {MAX_COST_HEADER} must be a positive number of USD such as 0.05; got {raw[:40]!r}",
                    "invalid_request_error",
                    "holyroute_bad_max_cost",
                )
                return False
        ceilings = cost_ceilings(self._router.routes[self._alias], plan, asked)
        self._ceiling = min(ceiling for ceiling, _ in ceilings) if ceilings else None
        out = self._out
        self._check_size = len(body) // 4 + (out or DEFAULT_OUTPUT_RESERVE) > plan.fit_floor or (
            out is not None and out > plan.out_floor
        )
        return True

    def _size_cost(self, upstream: Upstream) -> str | None:
        """Why this upstream cannot take this request whatever its health: too big for it, or over the ceiling."""
        key = (upstream.endpoint, upstream.model)
        if key in self._size_cost_seen:
            return self._size_cost_seen[key]
        why: str | None = None
        limits = upstream.limits
        if self._check_size and limits is not None:
            too_big = fits(limits, self._input_tokens(), self._out)
            if too_big is not None:
                why = f"context: {too_big}"
        ceiling = self._ceiling
        if why is None and ceiling is not None:
            worst = self._worst_cost(upstream)
            if isinstance(worst, str):
                why = f"cost: {worst}"
            elif worst > ceiling:
                why = f"cost: up to ${worst:.6f} at {upstream.model} prices, over the ${usd(ceiling)} ceiling"
        self._size_cost_seen[key] = why
        return why

    def _worst_cost(self, upstream: Upstream) -> float | str:
        """The most this call can cost on ``upstream`` (USD), or why that cannot be known."""
        price = upstream.price
        rates = None if price is None else (price.input, max(price.output, price.reasoning or 0.0))
        if upstream.price_source == "catalogue":
            tier = self._data.get("service_tier")
            rates = (
                catalogue_bound(
                    upstream.model,
                    provider=upstream.provider,
                    base_url=upstream.base_url,
                    when=self._router.wall_clock(),
                    service_tier=tier if isinstance(tier, str) and tier not in ("auto", "default") else None,
                )
                or rates
            )  # the built-in row where the catalogue cannot say
        if rates is None:
            return f"{upstream.model} has no price, so its cost cannot be bounded; add it under prices"
        out = self._out
        if out is None and upstream.limits is not None:
            out = upstream.limits.max_output_tokens
        if out is None:
            return f"no max_tokens and no known output cap for {upstream.model}; set max_tokens"
        # Every count is clamped at the boundary (tokens <= MAX_TOKENS, n <= MAX_CHOICES): the product is finite.
        input_rate, output_rate = rates
        outputs = float(out) * requested_choices(self._data)
        return (float(self._input_tokens()) * input_rate + outputs * output_rate) / 1_000_000

    def _add_alternatives(self) -> None:
        """The split's arm cannot take this request (too big, or over the ceiling) on any endpoint: the route's
        other arms that can follow it, cheapest first under a ceiling, before the fallbacks."""
        first = self._legs[0]
        if any(self._size_cost(u) is None for u in first.arm.upstreams):
            return
        plan = self._plan
        others = [arm for arm in plan.arms if arm is not first.arm]
        able = [arm for arm in others if any(self._size_cost(u) is None for u in arm.upstreams)]
        if self._ceiling is not None:

            def cheapest(arm: Arm) -> float:
                costs = [self._worst_cost(u) for u in arm.upstreams if self._size_cost(u) is None]
                return min(c for c in costs if isinstance(c, float))

            able.sort(key=cheapest)
        self._observe = False
        for arm in able:
            leg = Leg(plan.alias, arm, None, False)
            self._legs.append(leg)
            self._extend_sequence(leg)

    def _unavailable(
        self, leg: Leg, upstream: Upstream, now: float, *, force: bool = False
    ) -> tuple[str, float | None] | None:
        """Why this endpoint cannot take the call now, and until when if that is known; None when it can.

        ``force``: health (ejection, active checks, cooldowns, rate-limit headroom) is ignored, as it is for a pass
        within the persistence floor; configured rpm/tpm limits still hold."""
        router = self._router
        health = router.health
        name = upstream.endpoint
        if self._check_size or self._ceiling is not None:
            why = self._size_cost(upstream)
            if why is not None:
                return why, None
        if name in self._excluded or health.ejections.out_of_quota(name, now):
            return "out of quota", None
        spend = router.spend
        if spend is not None:
            verdict = self._budget if leg.fallback is None else self._fallback_budget(spend, leg.fallback)
            if verdict is None and spend.has_endpoint_budgets:
                verdict = spend.over("endpoint", (name,))
            if verdict is not None:
                return verdict.reason, None
        if force or self._forced:
            return health.blocked(name, upstream.model, now, self._tokens, limits_only=True)
        # An arm of one endpoint is out of panic only while that endpoint is in rotation: nothing more to ask.
        # Judged afresh at every step: an endpoint ejected while this call ran puts its arm in panic now.
        if not router.panicking(leg, now) and len(leg.arm.upstreams) > 1:
            why = health.ejections.ejected(name, now)
            if why is None and router.probing and health.probe_status(name) == "unhealthy":
                why = "unhealthy (active health check)"
            if why is not None:
                return why, None
        return health.blocked(name, upstream.model, now, self._tokens)

    def _fallback_budget(self, spend: SpendBudgets, alias: str) -> Verdict | None:
        if alias not in self._fallback_budgets:
            self._fallback_budgets[alias] = spend.over("route", (alias,))
        return self._fallback_budgets[alias]

    def _add_fallbacks(self) -> None:
        self._fallbacks_added = True
        router = self._router
        for alias in self._plan.fallbacks:
            plan = router.routes[alias]
            picked = router.pick(plan, self._data, self._headers)
            leg = Leg(alias, picked.arm, alias, picked.sticky)
            self._legs.append(leg)
            self._extend_sequence(leg)

    def _extend_sequence(self, leg: Leg) -> None:
        arm = leg.arm
        upstreams = arm.upstreams if arm.balance == "ordered" and not self._router.probing else self._router.order(arm)
        sequence = self._sequence
        for upstream in upstreams:
            sequence.append((leg, upstream))
