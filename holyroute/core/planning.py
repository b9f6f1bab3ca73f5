"""Where a call goes first: the route's rules, a pinned arm, the split's pick, the arms that fit, the spend caps.

Decided once, when the call begins: a rule may hand the call to another route or arm, ``x-holyroute-arm`` pins an arm,
otherwise the split picks one (sticky when configured). Arms that cannot take the request (too big, over the cost
ceiling) are followed by those that can; a spent route or tag budget blocks the call or sends it to the fallbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from holyroute.config.rules import DEFAULT_RULE
from holyroute.core.accounting import Accounting
from holyroute.core.health import HeaderLookup
from holyroute.core.plan import PIN_HEADER, Leg, RoutePlan
from holyroute.core.spend import SpendBudgets

__all__ = ["Planning"]


class Planning(Accounting):
    __slots__ = ()

    def _plan_legs(
        self, plan: RoutePlan, headers: HeaderLookup, data: Mapping[str, Any], body: bytes
    ) -> RoutePlan | None:
        """The legs the call starts with; the route they belong to, or None when the call is answered locally (a pin
        that matches no arm, a malformed cost ceiling)."""
        router = self._router
        pinned = headers.get(PIN_HEADER)
        ruled: Leg | None = None
        if pinned is None and plan.rules is not None:
            matched = plan.rules.match(headers, data, self._input_tokens() if plan.rules.uses_prompt_tokens else 0)
            self._rule = matched.label if matched is not None else DEFAULT_RULE
            if matched is not None:
                use = matched.use
                if isinstance(use, str):
                    plan = self._plan = router.routes[use]
                else:
                    ruled = Leg(plan.alias, use, None, False)
                    self._observe = False
        if not self._limit_size_and_cost(plan, headers, body):
            self._legs = [ruled or Leg(plan.alias, plan.arms[0], None, False)]
            return None
        if ruled is not None:
            self._legs = [ruled]
        elif pinned is not None:
            arm = next((a for a in plan.arms if pinned in (a.name, a.model)), None)
            if arm is None:
                names = ", ".join(a.name for a in plan.arms)
                self._final = self._local_answer(
                    400,
                    f"holyroute: {PIN_HEADER} '{pinned}' matches no arm of route '{plan.alias}'; arms: {names}",
                    "invalid_request_error",
                    "holyroute_unknown_arm",
                )
                self._legs = [Leg(plan.alias, plan.arms[0], None, False)]
                return None
            self._legs = [Leg(plan.alias, arm, None, False)]
        else:
            self._legs = [router.pick(plan, data, headers)]
        self._extend_sequence(self._legs[0])
        if self._check_size or self._ceiling is not None:
            self._add_alternatives()
        return plan

    def _check_spend(self, spend: SpendBudgets, plan: RoutePlan, headers: HeaderLookup) -> None:
        """A spent route or tag budget: block the call (one event), or keep it off the route's own arms."""
        self._tags = spend.tags(headers)
        verdict = spend.over("route", (plan.alias,)) or spend.over("tag", self._tags)
        if verdict is not None:
            self._budget = verdict
            if verdict.action == "block" or not plan.fallbacks:
                self._final = self._local_answer(
                    429,
                    f"holyroute: {verdict.reason} (action: block); the call was not sent. Raise the budget's "
                    "usd, wait for the next period, or use action: fallback with a cheaper fallback route",
                    "budget_exceeded",
                    "holyroute_budget_exceeded",
                )
                self._emit_request(429, "error", None, verdict.reason, None)
