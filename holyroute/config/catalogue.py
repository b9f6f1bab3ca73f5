"""Prices from pydantic's genai-prices catalogue: the data bundled with the installed package, nothing else.

Decides what a call cost at the catalogue's rates: the provider (configured per endpoint, else inferred from the
endpoint's ``base_url``, else from the model's name, then OpenAI's), the model the upstream answered with (else the
configured one), the call's time (prices have a history) and the price context the answer reported
(``service_tier``). It never fetches: it builds its own snapshot from ``genai_prices.data`` and never consults the
library's global one, which an application's ``genai_prices.UpdatePrices`` may replace with prices downloaded at run
time. The catalogue is imported on first use (a router warms it when built), not with ``import holyroute``, and each
(provider, endpoint URL, model) is looked up once. It does no I/O; a lookup or arithmetic the catalogue refuses leaves
the call unpriced, never failed.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from holyroute.boundary.parse import Usage
from holyroute.config.prices import normalise_model_name

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, Provider

__all__ = [
    "CatalogueCost",
    "CatalogueRates",
    "catalogue_bound",
    "catalogue_cost",
    "catalogue_model",
    "catalogue_rates",
    "catalogue_source",
    "catalogue_version",
]

#: What a refused lookup or calculation raises inside genai-prices (bad usage shapes, unknown keys, overflow).
_REFUSED: Final = (ValueError, LookupError, ArithmeticError, TypeError, AttributeError)


# A named tuple, not a frozen dataclass: one is built on every call, and a frozen dataclass's __init__ costs
# several times as much (a call to object.__setattr__ per field).
class CatalogueCost(NamedTuple):
    """A call priced from the catalogue: USD, ``catalogue@<version>``, and the tiers applied (a service tier, a
    prompt-size tier such as ``prompt>200000``, or both; ``None``: the standard rates)."""

    cost_usd: float
    source: str
    service_tier: str | None  # the event's price_tier


@functools.cache
def catalogue_version() -> str:
    """The installed genai-prices version, which dates its bundled prices."""
    from importlib.metadata import version

    return version("genai-prices")


def catalogue_source() -> str:
    """``catalogue@<version>``: how an event names a catalogue price."""
    global _source
    if _source is None:
        _source = f"catalogue@{catalogue_version()}"
    return _source


#: The installed catalogue's ``catalogue@<version>``, read once (every priced call's event names it).
_source: str | None = None


@functools.cache
def _snapshot() -> DataSnapshot:
    # Our own snapshot of the bundled data: genai_prices.data_snapshot.get_snapshot() would return whatever an
    # application's UpdatePrices last downloaded.
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def _providers(snapshot: DataSnapshot, provider: str | None, base_url: str, model: str) -> list[Provider]:
    """Whose prices apply: the configured provider, else the one the catalogue places at ``base_url``; for a host
    it cannot place, the provider the model's name suggests, then OpenAI (the API every upstream here speaks)."""
    from genai_prices.data_snapshot import find_provider_by_id

    if provider is not None:
        found = find_provider_by_id(snapshot.providers, provider)
        return [found] if found is not None else []
    try:
        return [snapshot.find_provider(None, None, base_url)]
    except LookupError:
        pass
    candidates = []
    with contextlib.suppress(LookupError):
        candidates.append(snapshot.find_provider(model, None, None))
    openai = find_provider_by_id(snapshot.providers, "openai")
    if openai is not None and openai not in candidates:
        candidates.append(openai)
    return candidates


@functools.lru_cache(maxsize=1024)
def _lookup(provider: str | None, base_url: str, model: str) -> tuple[Provider, ModelInfo] | None:
    """The catalogue's provider and model for ``model`` served at ``base_url``; ``None`` when it does not know it."""
    snapshot = _snapshot()
    for name in normalise_model_name(model):
        for candidate in _providers(snapshot, provider, base_url, name):
            info = candidate.find_model(name, all_providers=snapshot.providers)
            if info is not None:
                return candidate, info
    return None


def catalogue_providers() -> frozenset[str]:
    """The provider ids the catalogue knows (what an endpoint's ``provider:`` may name)."""
    return frozenset(provider.id for provider in _snapshot().providers)


def catalogue_model(model: str, *, provider: str | None = None, base_url: str = "") -> str | None:
    """The catalogue's ``provider/model`` id for ``model``, or ``None`` when the catalogue does not know it.

    >>> catalogue_model("gpt-4.1-2025-04-14", base_url="https://api.openai.com/v1")
    'openai/gpt-4.1'
    """
    found = _lookup(provider, base_url, model)
    return None if found is None else f"{found[0].id}/{found[1].id}"


def _genai_usage(usage: Usage) -> object:
    from genai_prices.types import Usage as GenaiUsage

    values = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "input_image_tokens": usage.input_image_tokens,
        "output_image_tokens": usage.output_image_tokens,
        "output_reasoning_tokens": usage.reasoning_tokens,
    }
    return GenaiUsage(**{key: count for key, count in values.items() if count})


#: Price keys the fast path computes: input and output, the parts of each that :class:`Usage` reports, and per-call
#: or per-search prices. A price under any other key goes through the catalogue's own (slower, general) arithmetic.
_INPUT_PARTS: Final = (
    ("cache_read_mtok", "cached_tokens"),
    ("cache_write_mtok", "cache_write_tokens"),
    ("input_audio_mtok", "input_audio_tokens"),
    ("input_image_mtok", "input_image_tokens"),
)
_OUTPUT_PARTS: Final = (
    ("output_reasoning_mtok", "reasoning_tokens"),
    ("output_audio_mtok", "output_audio_tokens"),
    ("output_image_mtok", "output_image_tokens"),
)
#: Parts along one axis are disjoint (cache reads and writes; audio and image); parts along two overlap (cached
#: audio), which only the catalogue's general arithmetic splits.
_AXIS: Final = {
    "cached_tokens": "token_type",
    "cache_write_tokens": "token_type",
    "reasoning_tokens": "token_type",
    "input_audio_tokens": "modality",
    "input_image_tokens": "modality",
    "output_audio_tokens": "modality",
    "output_image_tokens": "modality",
}
#: Priced units holyroute never reports (1-hour cache writes, searches): they add nothing.
_UNREPORTED: Final = frozenset({"cache_write_1h_mtok", "web_searches_kcount", "storage_searches_kcount"})
_FAST_KEYS: Final = frozenset(
    {"input_mtok", "output_mtok", "requests_kcount"} | {k for k, _ in _INPUT_PARTS + _OUTPUT_PARTS} | _UNREPORTED
)

#: A rate: USD per 1M tokens, or a base rate and (threshold, rate) tiers on the prompt's size.
Rate = float | tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class _Rates:
    """The rates one model bills at one time in one context, flattened for the hot path (``None``: unpriced)."""

    input: Rate | None
    output: Rate | None
    inputs: tuple[tuple[str, Rate], ...]  # usage field, rate: the input parts with a rate of their own
    outputs: tuple[tuple[str, Rate], ...]
    per_call: float
    applied: str | None  # the service tier that changed the rates
    tiered: bool  # the input rate has prompt-size tiers (a call may reach one)


def _rate(value: object) -> Rate | None:
    from genai_prices.types import TieredPrices

    if isinstance(value, TieredPrices):
        return float(value.base), tuple((tier.start, float(tier.price)) for tier in value.tiers)
    return None if value is None else float(value)  # type: ignore[arg-type]


def _at(rate: Rate, prompt: int) -> float:
    if isinstance(rate, float):
        return rate
    price, tiers = rate
    for start, tier_price in reversed(tiers):  # the catalogue's cliff model: the whole call at the tier reached
        if prompt > start:
            return tier_price
    return price


@functools.lru_cache(maxsize=1024)
def _rates(provider: str | None, base_url: str, model: str, tier: str | None, minute: int) -> _Rates | None:
    """The flattened rates, cached per (provider, URL, model, tier) and minute (prices change by date and, for some
    providers, by time of day); ``None`` when they need the catalogue's general arithmetic."""
    found = _lookup(provider, base_url, model)
    if found is None:
        return None
    known_provider, info = found
    at = datetime.datetime.fromtimestamp(minute * 60, datetime.UTC)
    # As the catalogue does: a model priced from a fallback provider's list takes no price context.
    own = any(info is listed for listed in known_provider.models)
    context = {"service_tier": tier} if tier is not None and own else None
    try:
        prices = info.get_prices(at, context)
        standard = info.get_prices(at) if context is not None else prices
    except _REFUSED:
        return None  # the general path decides, and it refuses safely
    keys = {key for key, value in prices.__dict__.items() if value is not None and not key.startswith("_")}
    if not keys <= _FAST_KEYS:
        return None
    parts = [
        [(field, rate) for key, field in table if (rate := _rate(getattr(prices, key, None))) is not None]
        for table in (_INPUT_PARTS, _OUTPUT_PARTS)
    ]
    per_call = getattr(prices, "requests_kcount", None)
    input_rate = _rate(getattr(prices, "input_mtok", None))
    return _Rates(
        input_rate,
        _rate(getattr(prices, "output_mtok", None)),
        tuple(parts[0]),
        tuple(parts[1]),
        0.0 if per_call is None else float(per_call) / 1000,
        tier if context is not None and prices != standard else None,
        isinstance(input_rate, tuple),
    )


#: A :class:`Usage`'s parts (cache reads and writes, reasoning, audio, image), all zero: what most calls report.
_NO_PARTS: Final = (0,) * 7


def _fast_cost(usage: Usage, rates: _Rates) -> float | None:
    """USD for ``usage`` at ``rates``: each reported part at its own rate, the rest of its whole at the whole's;
    ``None`` when parts that may overlap are both reported (cache reads and audio, say): the general arithmetic's."""
    prompt = usage.prompt_tokens
    total = rates.per_call * 1_000_000
    if usage[2:9] == _NO_PARTS:  # no part reported (most calls): each whole at its own rate
        rate = rates.input
        if rate is not None:
            total += prompt * (rate if type(rate) is float else _at(rate, prompt))
        rate = rates.output
        if rate is not None:
            total += usage.completion_tokens * (rate if type(rate) is float else _at(rate, prompt))
        return total / 1_000_000
    for whole, whole_rate, parts in (
        (prompt, rates.input, rates.inputs),
        (usage.completion_tokens, rates.output, rates.outputs),
    ):
        rest = whole
        axis = None
        for field, rate in parts:
            count: int = getattr(usage, field)
            if count:
                along = _AXIS[field]
                if axis is not None and along != axis:
                    return None
                axis = along
                rest -= count
                total += count * (rate if type(rate) is float else _at(rate, prompt))
        if whole_rate is not None:
            total += rest * (whole_rate if type(whole_rate) is float else _at(whole_rate, prompt))
    return total / 1_000_000


def _prompt_tier(rate: Rate | None, prompt: int) -> str | None:
    """The prompt-size tier a call's input rate reached (``prompt>200000``), or None at the base rate."""
    if rate is None or isinstance(rate, float):
        return None
    reached = [start for start, _ in rate[1] if prompt > start]
    return f"prompt>{max(reached)}" if reached else None


def _tiers(*applied: str | None) -> str | None:
    """The price tiers that applied, as the event's ``price_tier`` (``flex``, ``prompt>200000``, or both)."""
    if not any(applied):  # standard rates: the usual case
        return None
    return ", ".join(tier for tier in applied if tier) or None


def _highest(rate: Rate | None) -> float:
    if rate is None:
        return 0.0
    return rate if isinstance(rate, float) else max([rate[0], *(price for _, price in rate[1])])


def catalogue_bound(
    model: str, *, provider: str | None, base_url: str, when: float, service_tier: str | None = None
) -> tuple[float, float] | None:
    """The highest input and output rates (USD per 1M, every prompt-size tier and reasoning included) ``model``
    bills at Unix time ``when`` in the service tier the request asks for: what bounds a call's worst-case cost
    before it is sent. ``None`` when the catalogue does not know the model or its prices need the general
    arithmetic."""
    if _lookup(provider, base_url, model) is None:
        return None
    rates = _rates(provider, base_url, model, service_tier, int(when // 60))
    if rates is None:
        return None
    outputs = [
        _highest(rates.output),
        *(_highest(rate) for field, rate in rates.outputs if field == "reasoning_tokens"),
    ]
    return _highest(rates.input), max(outputs)


def catalogue_cost(
    usage: Usage, models: tuple[str, ...], *, provider: str | None, base_url: str, when: float
) -> CatalogueCost | None:
    """What ``usage`` cost at the catalogue's rates at Unix time ``when``: the first of ``models`` the catalogue
    knows (the answered model, then the configured one), in the context the answer reported; ``None`` when none is
    known or the catalogue cannot price this usage."""
    tier = usage.service_tier
    for model in models:
        # The flattened rates first: they exist only for a model the catalogue knows, so on the usual call one
        # cached lookup answers both "is it known" and "at what rates" (the model is looked up only without them).
        rates = _rates(provider, base_url, model, tier, int(when // 60))
        if rates is not None:
            cost = _fast_cost(usage, rates)
            if cost is not None:
                applied = rates.applied  # the service tier that applied, if any ...
                if rates.tiered:  # ... and the prompt-size tier reached (most models have none)
                    applied = _tiers(applied, _prompt_tier(rates.input, usage.prompt_tokens))
                # Built by tuple.__new__: a named tuple's own __new__ is a Python function, on every priced call.
                return tuple.__new__(CatalogueCost, (round(cost, 10), _source or catalogue_source(), applied))
        found = _lookup(provider, base_url, model)
        if found is not None:
            return _general_cost(usage, found, tier, when)
    return None


def _general_cost(
    usage: Usage, found: tuple[Provider, ModelInfo], tier: str | None, when: float
) -> CatalogueCost | None:
    """The catalogue's own arithmetic, for prices and usages the fast path does not cover."""
    known_provider, info = found
    at = datetime.datetime.fromtimestamp(when, datetime.UTC)
    context = {"service_tier": tier} if tier is not None else None
    try:
        calculation = info.calc_price(
            _genai_usage(usage), known_provider, genai_request_timestamp=at, price_context=context
        )
        prices = info.get_prices(at, context)
        applied = tier if context is not None and prices != info.get_prices(at) else None
    except _REFUSED:
        return None
    applied = _tiers(applied, _prompt_tier(_rate(getattr(prices, "input_mtok", None)), usage.prompt_tokens))
    return CatalogueCost(round(float(calculation.total_price), 10), catalogue_source(), applied)


@dataclass(frozen=True, slots=True)
class CatalogueRates:
    """A model's standard rates in the catalogue at one time, USD per one million tokens, for listing."""

    model: str  # provider/model, the catalogue's ids
    input: float
    cached_input: float
    output: float
    notes: str  # what else is priced: cache writes, audio, tiers


def catalogue_rates(model: str, *, provider: str | None, base_url: str, when: float) -> CatalogueRates | None:
    """The standard (no price context) rates the catalogue holds for ``model`` at Unix time ``when``."""
    from genai_prices.types import TieredPrices

    found = _lookup(provider, base_url, model)
    if found is None:
        return None
    known_provider, info = found
    prices = info.get_prices(datetime.datetime.fromtimestamp(when, datetime.UTC))
    notes = []

    def rate(key: str) -> float | None:
        value = getattr(prices, key, None)
        if isinstance(value, TieredPrices):
            notes.append(f"{key.removesuffix('_mtok')} tiers above {', '.join(str(t.start) for t in value.tiers)}")
            value = value.base
        return None if value is None else float(value)

    input_rate = rate("input_mtok") or 0.0
    cached = rate("cache_read_mtok")
    output = rate("output_mtok") or 0.0
    for key in ("cache_write_mtok", "input_audio_mtok", "output_audio_mtok", "input_image_mtok", "output_image_mtok"):
        value = rate(key)
        if value is not None:
            notes.append(f"{key.removesuffix('_mtok').replace('_', ' ')} {value:g}")
    variants = sorted({f"{k}={v}" for variant in info.price_variants or () for k, v in variant.when.items()})
    if variants:
        notes.append("variants " + " ".join(variants))
    return CatalogueRates(
        f"{known_provider.id}/{info.id}", input_rate, input_rate if cached is None else cached, output, "; ".join(notes)
    )
