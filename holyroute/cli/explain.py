"""``holyroute explain``: what the router would do with one request, and why, without sending anything.

It builds the router the configuration describes over a read-only view of its state: with ``state: {backend:
redis}`` it sees the cooldowns and ejections every process shares, and it never creates, advances or writes any
state (not the rollout state file, not a Redis key). It begins the call as the transport would and reports: the
size and cost estimates, each rule's verdict, every arm and endpoint the call could reach with the reason it could
not take the call, and the step the core would take first. The split's draw is random for non-sticky routes; the
weights are shown beside it."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from typing import Any

from holyroute.config.rules import DEFAULT_RULE
from holyroute.config.schema import Config
from holyroute.core.call import Call, Router
from holyroute.core.plan import MAX_COST_HEADER, Leg, cost_ceilings, usd
from holyroute.core.steps import Acquire, Respond, Send
from holyroute.state.factory import open_backend

__all__ = ["ExplainError", "explain"]


class ExplainError(ValueError):
    """The request cannot be explained (not a routed call); the message says why and what to change."""


def explain(config: Config, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> str:
    """The explanation of ``body`` (a request body, as JSON would decode it) with ``headers``, as text."""
    header_view = {k.lower(): v for k, v in (headers or {}).items()}
    raw = json.dumps(body).encode()
    # Read-only: what is shared is read, nothing is written (no rollout state created or advanced, no Redis key).
    state = open_backend(config.state, emit=_ignore, clock=time.monotonic, wall_clock=time.time, read_only=True)
    router = Router(config, log=False, rng=random.Random(0), state=state)
    try:
        path = "/v1/responses" if "input" in body and "messages" not in body else "/v1/chat/completions"
        call = router.begin("POST", path, "", header_view, raw)
        if call is None:
            model = body.get("model")
            if not isinstance(model, str):
                raise ExplainError('the request names no model; give the body as the SDK sends it: {"model": ...}')
            return (
                f"model {model!r} is no route of this configuration (routes: {', '.join(sorted(router.routes))}): "
                "holyroute would pass this call through untouched, to the base_url and with the key the client "
                "was built with\n"
            )
        return "\n".join(_lines(router, call, body, header_view)) + "\n"
    finally:
        router.close()


def _ignore(event: str, fields: dict[str, Any]) -> None:
    return None


def _lines(router: Router, call: Call, body: Mapping[str, Any], headers: Mapping[str, str]) -> list[str]:
    plan = call._plan
    alias = call._alias
    out = call._out
    estimate = "tiktoken" if router.token_encoder is not None else "heuristic"
    ceiling = call._ceiling
    lines = [
        f"request: model {alias}, ~{call._input_tokens():,} input tokens ({estimate}), "
        + (f"max output {out:,}" if out is not None else "no max output")
        + (f", cost ceiling {_ceiling(router, call, headers)}" if ceiling is not None else "")
    ]
    original = router.routes[alias]
    if original.rules is not None:
        lines.append(f"rules of {alias}:")
        decided = False
        for verdict in original.rules.explain(headers, body, call._input_tokens()):
            target = verdict.use if isinstance(verdict.use, str) else f"inline {verdict.use.model}"
            if verdict.matched and not decided:
                decided = True
                lines.append(f"  {verdict.label:<14}MATCH  {verdict.reason} -> {target}")
            elif verdict.matched:
                lines.append(f"  {verdict.label:<14}(would match, but an earlier rule decided) -> {target}")
            else:
                lines.append(f"  {verdict.label:<14}no     {verdict.reason}")
        if not decided:
            lines.append(f"  {DEFAULT_RULE:<14}the route's own targets")
    if isinstance(call._final, Respond):
        lines.append(f"answer: {call._final.status} {_message(call._final)}")
        return lines
    # Every reason, sizes included, even for a request small enough that the call itself would not check them.
    call._check_size = True
    call._size_cost_seen.clear()
    now = router.clock()
    first = call._legs[0]
    weights = _weights(router, plan)
    lines.append(f"route {plan.alias}" + (f" (by {call._rule})" if call._rule not in (None, DEFAULT_RULE) else ""))
    if first.arm not in plan.arms:
        lines.append(f"  inline target {first.arm.model}")
        lines.extend(_endpoints(call, first, now))
    for arm in plan.arms:
        picked = " <- the split's draw" if arm is first.arm else ""
        share = f"weight {weights.get(arm.name, 0.0):g}%"
        lines.append(f"  arm {arm.name} ({share}){picked}")
        lines.extend(_endpoints(call, Leg(plan.alias, arm, None, False), now))
    for fallback in plan.fallbacks:
        fallback_plan = router.routes[fallback]
        lines.append(f"  fallback {fallback}")
        for arm in fallback_plan.arms:
            lines.append(f"    arm {arm.name}")
            lines.extend(_endpoints(call, Leg(fallback, arm, fallback, False), now, "      "))
    lines.append(_first_step(call))
    return lines


def _endpoints(call: Call, leg: Leg, now: float, indent: str = "    ") -> list[str]:
    lines = []
    for upstream in leg.arm.upstreams:
        why = call._unavailable(leg, upstream, now)
        state = "eligible" if why is None else why[0]
        worst = call._worst_cost(upstream)
        shown = isinstance(worst, float) and call._ceiling is not None and not state.startswith("cost:")
        cost = f"  (at most ${worst:.6f})" if shown else ""
        name = f"{upstream.endpoint}/{upstream.model}"
        lines.append(f"{indent}{name:<{40 - len(indent)}}{state}{cost}")
    return lines


def _ceiling(router: Router, call: Call, headers: Mapping[str, str]) -> str:
    """The ceiling the call is held to and where it comes from (the request, the route named, the route a rule
    chose), with the looser ones beside it."""
    raw = headers.get(MAX_COST_HEADER)
    asked = float(raw) if raw is not None else None  # a malformed one answered 400 before this is asked
    found = sorted(cost_ceilings(router.routes[call._alias], call._plan, asked), key=lambda item: item[0])
    (amount, source), looser = found[0], found[1:]
    also = f" (also {', '.join(f'{where} ${usd(limit)}' for limit, where in looser)})" if looser else ""
    return f"${usd(amount)} from {source}{also}"


def _weights(router: Router, plan: Any) -> dict[str, float]:
    picker = plan.picker
    if router.rollouts is not None:
        engine = router.rollouts.get(plan.alias)
        if engine is not None:
            picker = engine.picker()
    return dict(picker.shares())


def _first_step(call: Call) -> str:
    step = call.next_step()
    if isinstance(step, Acquire):
        call.on_acquired(0.0)  # explain asks the shared rpm/tpm bucket for nothing
        step = call.next_step()
    if isinstance(step, Send):
        leg = call._current_leg
        route = leg.fallback if leg is not None and leg.fallback else call._plan.alias
        model = call._current.model if call._current is not None else "?"
        return f"pick: {route} / {model} on {step.endpoint} (nothing was sent)"
    if isinstance(step, Respond):
        return f"answer: {step.status} {_message(step)}"
    return f"pick: none: {type(step).__name__}"


def _message(answer: Respond) -> str:
    try:
        return str(json.loads(answer.body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return answer.body.decode(errors="replace")[:500]
