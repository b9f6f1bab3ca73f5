"""Durations written by people: ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``, ``"0.5"``, for the configuration.

One grammar for every duration holyroute reads: the configuration's are read by the same total parser as upstream
header values (:func:`holyroute.boundary.parse.header_seconds`), without its upper bound.
"""

from __future__ import annotations

import math

from holyroute.boundary.parse import header_seconds

__all__ = ["parse_duration"]


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` or ``"0.5"`` (the form OpenAI's
    ``x-ratelimit-reset-*`` headers use, and this configuration's); ``None`` when ``text`` is not one.

    >>> parse_duration("1m30s"), parse_duration("250ms"), parse_duration("2")
    (90.0, 0.25, 2.0)
    """
    return header_seconds(text, max_s=math.inf)
