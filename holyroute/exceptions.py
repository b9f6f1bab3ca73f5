"""The exceptions holyroute raises itself.

::

    HolyrouteError
    └── ConfigError        bad configuration, raised at construction with every problem's key path

At request time holyroute raises no exception of its own: the caller sees what its HTTP client family expects
(the last upstream response, an ``httpx2`` transport error, or the matching ``openai`` error for SDK calls).
"""

from __future__ import annotations

__all__ = ["ConfigError", "HolyrouteError"]


class HolyrouteError(Exception):
    """Base class of holyroute's own exceptions."""


class ConfigError(HolyrouteError, ValueError):
    """The configuration is invalid; the message lists each problem with its key path and the fix."""
