"""The plan of a route, compiled once from the configuration: arms, their endpoints, prices, fallbacks and floors.

:func:`compile_routes` turns ``routes:`` into one :class:`RoutePlan` per alias; a call walks a :class:`Leg` of it
(one alias, the chosen :class:`Arm`, its :class:`Upstream` endpoints in order). :func:`cost_ceilings` says which
USD limits apply to a call, :func:`sticky_key` which key pins a caller to an arm. No I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from holyroute.boundary.parse import CACHE_HEADER, CACHE_TTL_HEADER
from holyroute.config.prices import PriceRow
from holyroute.config.rules import CompiledRules, compile_rules
from holyroute.config.schema import Config, Endpoint, EndpointRef, Target
from holyroute.core.context import (
    ModelLimits,
    limits_for,
)
from holyroute.core.health import HeaderLookup
from holyroute.core.spend import TAGS_HEADER
from holyroute.core.usage import find_price
from holyroute.rollout.split import SplitPicker

__all__ = [
    "DROPPED_HEADERS",
    "DROPPED_QUERY",
    "MAX_COST_HEADER",
    "OPERATIONS",
    "PIN_HEADER",
    "Arm",
    "Leg",
    "RoutePlan",
    "Upstream",
    "compile_routes",
    "cost_ceilings",
    "operation_of",
    "price_of",
    "sticky_key",
    "upstream_of",
    "usd",
    "with_floors",
]

PIN_HEADER: Final = "x-holyroute-arm"
#: A per-request cost ceiling in USD (``x-holyroute-max-cost: 0.05``); never forwarded.
MAX_COST_HEADER: Final = "x-holyroute-max-cost"
#: Headers that belong to the caller's own account or to the hop, never forwarded to a routed endpoint (an endpoint's
#: ``forward_headers`` may name a credential to forward to that endpoint only; see config.Endpoint).
DROPPED_HEADERS: Final = frozenset(
    {
        "host",
        "authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "proxy-authorization",
        "openai-organization",
        "openai-project",
        "content-length",
        "transfer-encoding",
        "connection",
        "accept-encoding",
        PIN_HEADER,
        TAGS_HEADER,
        MAX_COST_HEADER,
        CACHE_HEADER,
        CACHE_TTL_HEADER,
    }
)
#: Query parameters that carry the caller's credentials, never forwarded (names compared case-insensitively).
DROPPED_QUERY: Final = frozenset({"key", "api-key", "api_key", "access_token"})

#: Path suffix -> API family, for the model-bearing operations holyroute routes.
OPERATIONS: Final = {
    "chat/completions": "chat",
    "responses": "responses",
    "embeddings": "embeddings",
    "completions": "completions",
}


_IDENTITY: Final = ("accept-encoding", "identity")
_GZIP_DEFLATE: Final = ("accept-encoding", "gzip, deflate")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One endpoint serving one arm's model: everything needed to address it, precomputed at load."""

    endpoint: str
    model: str
    base_url: str
    headers: tuple[tuple[str, str], ...]  # auth and configured headers; holds the secret, never logged
    query: str
    timeout: float | None
    price: PriceRow | None
    stream_usage: bool
    token: bytes  # the model as a JSON string token, for swapping it into a body
    limits: ModelLimits | None = None  # context window and output cap, when known
    forward: frozenset[str] = frozenset()  # the caller's headers forwarded here although dropped elsewhere
    price_source: str = "catalogue"  # where its cost comes from: "endpoint" or "config" (``price``), or the catalogue
    provider: str | None = None  # the catalogue provider configured for the endpoint (None: inferred)
    #: ``headers`` and the answer coding asked for: ``[False]`` a JSON answer's (gzip, deflate), ``[True]`` a
    #: stream's (identity: events pass as they come); built once here rather than on every attempt.
    sent_headers: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        sent = ((*self.headers, _GZIP_DEFLATE), (*self.headers, _IDENTITY))
        object.__setattr__(self, "sent_headers", sent)

    def __repr__(self) -> str:  # the headers hold the key
        return f"Upstream(endpoint={self.endpoint!r}, model={self.model!r})"


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    model: str
    upstreams: tuple[Upstream, ...]
    balance: str = "ordered"
    turns: itertools.count[int] = field(default_factory=itertools.count, compare=False)  # round robin

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(u.endpoint for u in self.upstreams)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    alias: str
    arms: tuple[Arm, ...]
    picker: SplitPicker
    sticky: str | None
    fallbacks: tuple[str, ...]
    token: bytes  # the alias as a JSON string token
    shadow: Arm | None = None  # mirrors a sampled share of calls
    shadow_sample: float = 0.0
    shadow_cap_usd: float | None = None
    rules: CompiledRules[str | Arm] | None = None  # before the split: an alias, or an inline arm
    max_cost_usd: float | None = None
    #: No upstream this plan may reach (its arms, fallbacks and rule targets) holds fewer tokens than this, or
    #: caps its output below ``out_floor``: a request under both needs no size check.
    fit_floor: int = 1 << 62
    out_floor: int = 1 << 62
    #: Each arm's leg when the split picks it at random: built once, shared by the calls (a leg is a frozen value).
    legs: tuple[Leg, ...] = ()


# A named tuple, not a frozen dataclass: one is built on every call, and a frozen dataclass's __init__ costs
# several times as much (a call to object.__setattr__ per field).
class Leg(NamedTuple):
    """The arm chosen for the route or for one of its fallbacks."""

    route: str
    arm: Arm
    fallback: str | None
    sticky: bool


# ---- steps the core asks the transports to take ---------------------------------------------------------------


def cost_ceilings(named: RoutePlan, chosen: RoutePlan, asked: float | None) -> list[tuple[float, str]]:
    """Every cost ceiling that bounds a call, with where it comes from; the call is held to the smallest. A rule
    that sends the call to another alias never lifts the ceiling of the route the caller named."""
    found: list[tuple[float, str]] = []
    if asked is not None:
        found.append((asked, f"header {MAX_COST_HEADER}"))
    if named.max_cost_usd is not None:
        found.append((named.max_cost_usd, f"route {named.alias}"))
    if chosen is not named and chosen.max_cost_usd is not None:
        found.append((chosen.max_cost_usd, f"route {chosen.alias} (chosen by a rule)"))
    return found


def usd(amount: float) -> str:
    """``0.00001`` rather than ``1e-05``: a price as people write it."""
    return f"{amount:.8f}".rstrip("0").rstrip(".") or "0"


@functools.lru_cache(maxsize=256)  # a client sends to a handful of paths
def operation_of(path: str) -> tuple[str, str] | None:
    """The API family and operation path of a request path, e.g. ``/v1/chat/completions`` -> chat."""
    trimmed = path.rstrip("/")
    for suffix, api in OPERATIONS.items():
        if trimmed.endswith(suffix) and (len(trimmed) == len(suffix) or trimmed[-len(suffix) - 1] == "/"):
            return api, suffix
    return None


def sticky_key(spec: str, data: Mapping[str, Any], headers: HeaderLookup) -> str | None:
    if spec == "user":
        value = data.get("user") or data.get("safety_identifier")
    elif spec.startswith("header:"):
        value = headers.get(spec[7:].lower())
    else:
        value = data
        for part in spec[5:].split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    return str(value)


def compile_routes(config: Config) -> dict[str, RoutePlan]:
    prices = {name: p.row() for name, p in config.prices.items()}
    routes = {}

    def arm_of(target: Target) -> Arm:
        upstreams = []
        for entry in target.endpoints:
            ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
            upstream = upstream_of(config, ref.endpoint, ref.model or target.model, prices)
            limits = limits_for(
                upstream.model, context_window=target.context_window, max_output_tokens=target.max_output_tokens
            )
            upstreams.append(dataclasses.replace(upstream, limits=limits) if limits is not None else upstream)
        return Arm(target.arm, target.model, tuple(upstreams), target.balance)

    def resolve(use: str | Target) -> str | Arm:
        return use if isinstance(use, str) else arm_of(use)

    for alias, route in config.routes.items():
        arms = [arm_of(target) for target in route.arms]
        rules = None
        if route.rules:
            rules, problems = compile_rules(
                route.rules, known_aliases=config.routes, at=f"routes.{alias}.rules", resolve=resolve
            )
            assert not problems, problems  # load_config checked them
        # A rollout's split comes from its engine at each call; this one (all stable) is only its shape.
        weights = [t.weight for t in route.targets] if route.rollout is None else [100.0, 0.0]
        picker = SplitPicker(alias, [a.name for a in arms], weights)
        token = json.dumps(alias).encode("utf-8")
        shadow = route.shadow
        shadow_arm = None
        if shadow is not None:
            shadow_ups = []
            for entry in shadow.endpoints:
                ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
                shadow_ups.append(upstream_of(config, ref.endpoint, ref.model or shadow.model, prices))
            shadow_arm = Arm(shadow.arm, shadow.model, tuple(shadow_ups))
        routes[alias] = RoutePlan(
            alias,
            tuple(arms),
            picker,
            route.sticky,
            tuple(route.fallbacks),
            token,
            shadow_arm,
            shadow.sample if shadow is not None else 0.0,
            shadow.max_cost_usd_per_day if shadow is not None else None,
            rules,
            route.max_cost_usd,
            legs=tuple(Leg(alias, arm, None, False) for arm in arms),
        )
    return {alias: with_floors(plan, routes) for alias, plan in routes.items()}


def with_floors(plan: RoutePlan, routes: Mapping[str, RoutePlan]) -> RoutePlan:
    """``plan`` with the smallest context window and output cap among every upstream a call to it may reach."""
    arms = list(plan.arms)
    for alias in plan.fallbacks:
        arms.extend(routes[alias].arms)
    if plan.rules is not None:
        for verdict_use in plan.rules.uses:
            arms.extend(routes[verdict_use].arms if isinstance(verdict_use, str) else (verdict_use,))
    windows = [1 << 62]
    outputs = [1 << 62]
    for arm in arms:
        for upstream in arm.upstreams:
            limits = upstream.limits
            if limits is not None:
                windows.append(min(limits.context_window, limits.max_input_tokens or limits.context_window))
                if limits.max_output_tokens is not None:
                    outputs.append(limits.max_output_tokens)
    return dataclasses.replace(plan, fit_floor=min(windows), out_floor=min(outputs))


def price_of(endpoint: Endpoint, model: str, prices: Mapping[str, PriceRow]) -> tuple[PriceRow | None, str]:
    """The endpoint's own price for the model, then the configuration's, each winning over the catalogue; without
    either, the built-in row (only to bound a call's cost before it is sent) and the catalogue prices the call."""
    if endpoint.prices:
        own = find_price(model, {name: p.row() for name, p in endpoint.prices.items()}, builtin=False)
        if own is not None:
            return own, "endpoint"
    configured = find_price(model, prices, builtin=False)
    if configured is not None:
        return configured, "config"
    return find_price(model, {}), "catalogue"


def upstream_of(config: Config, name: str, model: str, prices: Mapping[str, PriceRow]) -> Upstream:
    endpoint = config.endpoints[name]
    price, source = price_of(endpoint, model, prices)
    return Upstream(
        endpoint=name,
        model=model,
        base_url=endpoint.base_url,
        headers=endpoint.request_headers(),
        query=endpoint.query_string(),
        timeout=endpoint.timeout,
        price=price,
        stream_usage=endpoint.stream_usage,
        token=json.dumps(model).encode("utf-8"),
        forward=frozenset(endpoint.forward_headers),
        price_source=source,
        provider=endpoint.provider,
    )
