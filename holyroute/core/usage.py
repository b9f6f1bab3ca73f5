"""Token usage and cost: read from JSON bodies and SSE events as they pass, normalised, priced.

Chat Completions, legacy Completions and Embeddings report ``prompt_tokens`` / ``completion_tokens`` with
``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``; the Responses API reports
``input_tokens`` / ``output_tokens`` with ``input_tokens_details`` / ``output_tokens_details`` (in a stream, inside the
``response.completed`` event). :class:`Usage` is the one shape both become. Cached input tokens are a subset of the
prompt tokens and are priced once, at the cached rate. Reading usage out of bodies and streams is the boundary's
(``_boundary.py``: total parsers that clamp every count); this module prices what they found. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from holyroute.boundary.parse import (
    SSEScanner,
    Usage,
    decode_content,
    finish_reason,
    usage_from_body,
    usage_from_mapping,
)
from holyroute.config.prices import BUILTIN_PRICES, PriceRow, normalise_model_name

__all__ = [
    "SSEScanner",
    "Usage",
    "cost_usd",
    "decode_content",
    "find_price",
    "finish_reason",
    "usage_from_body",
    "usage_from_mapping",
]


def find_price(model: str, overrides: Mapping[str, PriceRow], *, builtin: bool = True) -> PriceRow | None:
    """The price row for an upstream model: configured first, then built in (unless ``builtin`` is false); dated
    snapshots fall back to their base model."""
    for table in (overrides, BUILTIN_PRICES) if builtin else (overrides,):
        for name in normalise_model_name(model):
            row = table.get(name)
            if row is not None:
                return row
    return None


def cost_usd(usage: Usage, price: PriceRow) -> float:
    """USD for ``usage`` at ``price`` (per million tokens); cached tokens at the cached rate, reasoning tokens at
    the reasoning rate when one is set; none counted twice."""
    uncached = usage.prompt_tokens - usage.cached_tokens
    total = uncached * price.input + usage.cached_tokens * price.cached_input + usage.completion_tokens * price.output
    if price.reasoning is not None and usage.reasoning_tokens:
        total += usage.reasoning_tokens * (price.reasoning - price.output)  # reasoning is part of the completion
    return round(total / 1_000_000, 10)
