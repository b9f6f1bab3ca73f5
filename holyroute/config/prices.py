"""The built-in price table: USD per one million tokens, standard (non-batch) tier, as the providers published them.

Calls are priced by the genai-prices catalogue (``catalogue.py``) unless ``prices:`` configures a row; this table
only bounds a call's worst-case cost under a cost ceiling, for a model the catalogue cannot bound. Dated:
:data:`PRICES_AS_OF` says when these were taken. A row holds the base tier (no prompt-size tiers, no cache writes).
:class:`PriceRow` is also the shape of a configured price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BUILTIN_PRICES", "PRICES_AS_OF", "PriceRow", "normalise_model_name"]

PRICES_AS_OF = "2025-11-01"

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


@dataclass(frozen=True, slots=True)
class PriceRow:
    """USD per one million tokens; ``cached_input`` defaults to ``input`` when a provider has no cache discount;
    ``reasoning`` (the reasoning part of the completion tokens) is ``None`` where it is billed as output, which is
    how every provider in the built-in table bills it."""

    input: float
    cached_input: float
    output: float
    reasoning: float | None = None


def _row(input: float, cached: float | None, output: float) -> PriceRow:
    return PriceRow(input, input if cached is None else cached, output)


BUILTIN_PRICES: dict[str, PriceRow] = {
    # OpenAI
    "gpt-5": _row(1.25, 0.125, 10.00),
    "gpt-5-mini": _row(0.25, 0.025, 2.00),
    "gpt-5-nano": _row(0.05, 0.005, 0.40),
    "gpt-4.1": _row(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _row(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _row(0.10, 0.025, 0.40),
    "gpt-4o": _row(2.50, 1.25, 10.00),
    "gpt-4o-mini": _row(0.15, 0.075, 0.60),
    "o1": _row(15.00, 7.50, 60.00),
    "o3": _row(2.00, 0.50, 8.00),
    "o3-mini": _row(1.10, 0.55, 4.40),
    "o4-mini": _row(1.10, 0.275, 4.40),
    "gpt-3.5-turbo": _row(0.50, None, 1.50),
    "gpt-3.5-turbo-instruct": _row(1.50, None, 2.00),
    "text-embedding-3-small": _row(0.02, None, 0.0),
    "text-embedding-3-large": _row(0.13, None, 0.0),
    "text-embedding-ada-002": _row(0.10, None, 0.0),
    # Anthropic (cache reads as cached input)
    "claude-opus-4-1": _row(15.00, 1.50, 75.00),
    "claude-opus-4": _row(15.00, 1.50, 75.00),
    "claude-sonnet-4-5": _row(3.00, 0.30, 15.00),
    "claude-sonnet-4": _row(3.00, 0.30, 15.00),
    "claude-haiku-4-5": _row(1.00, 0.10, 5.00),
    "claude-3-5-haiku": _row(0.80, 0.08, 4.00),
    # Google (base tier, prompts up to 200k tokens)
    "gemini-2.5-pro": _row(1.25, 0.31, 10.00),
    "gemini-2.5-flash": _row(0.30, 0.075, 2.50),
    "gemini-2.5-flash-lite": _row(0.10, 0.025, 0.40),
    "gemini-2.0-flash": _row(0.10, 0.025, 0.40),
    # DeepSeek (V3.2 prices; cache hits as cached input)
    "deepseek-chat": _row(0.28, 0.028, 0.42),
    "deepseek-reasoner": _row(0.28, 0.028, 0.42),
}


def normalise_model_name(model: str) -> tuple[str, ...]:
    """Names to look a model up under, most specific first: as given, without a provider prefix, without a date.

    >>> normalise_model_name("openai/gpt-4.1-2025-04-14")
    ('openai/gpt-4.1-2025-04-14', 'gpt-4.1-2025-04-14', 'gpt-4.1')
    """
    names = [model]
    bare = model.rsplit("/", 1)[-1]
    if bare != model:
        names.append(bare)
    undated = _DATE_SUFFIX.sub("", bare)
    if undated != bare:
        names.append(undated)
    return tuple(names)
