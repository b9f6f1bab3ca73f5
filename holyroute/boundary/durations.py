"""Durations written by people and by upstreams: ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``, ``"0.5"``.

The configuration's durations are read here; upstream header values go through the bounded, total
:func:`holyroute.boundary.parse.header_seconds` beside it, never through the configuration module.
"""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_SCALE = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` or ``"0.5"`` (the form OpenAI's
    ``x-ratelimit-reset-*`` headers use, and this configuration's); ``None`` when ``text`` is not one.

    >>> parse_duration("1m30s"), parse_duration("250ms"), parse_duration("2")
    (90.0, 0.25, 2.0)
    """
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_SCALE[match.group(2)]
        position = match.end()
    return total if position == len(text) else None
