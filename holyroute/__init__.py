"""holyroute: route, fail over and cost every OpenAI SDK call from inside the process, as an httpx2 transport.

>>> from openai import OpenAI
>>> import holyroute
>>> client = OpenAI(api_key="unused", http_client=holyroute.client("holyroute.yaml"))  # doctest: +SKIP

``import holyroute`` loads almost nothing: each public name is imported on first use (:pep:`562`), so a process pays
for the configuration schema, the core and the drivers when it builds a client, and never for what its configuration
does not use (rules, rollouts, alerts, Redis, the price catalogue are each imported when first needed). What it does
load is the state backend factory, registered with the core so that any router, however built, can open its state.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from holyroute.exceptions import ConfigError, HolyrouteError
from holyroute.state import factory as _state_factory

del _state_factory  # imported for its effect: it registers the state backend factory with the core

if TYPE_CHECKING:
    from holyroute.config.schema import Config, load_config
    from holyroute.core.alerts import Alert
    from holyroute.core.call import Router
    from holyroute.core.rollouts import Rollouts
    from holyroute.drivers.transport import AsyncTransport, Transport, async_client, client, router_of

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AsyncTransport",
    "Config",
    "ConfigError",
    "HolyrouteError",
    "Rollouts",
    "Router",
    "Transport",
    "__version__",
    "async_client",
    "client",
    "load_config",
    "router_of",
]

#: Where each lazily imported public name lives. The public submodules (``holyroute.testing``, ``.metrics``,
#: ``.tracing``) are reachable as attributes too at run time (the last two need their extras); type checkers see
#: them once imported, as before (importing them here, even for type checkers, would break the layers contract).
_LAZY: dict[str, str] = {
    "Alert": "holyroute.core.alerts",
    "AsyncTransport": "holyroute.drivers.transport",
    "Config": "holyroute.config.schema",
    "Rollouts": "holyroute.core.rollouts",
    "Router": "holyroute.core.call",
    "Transport": "holyroute.drivers.transport",
    "async_client": "holyroute.drivers.transport",
    "client": "holyroute.drivers.transport",
    "load_config": "holyroute.config.schema",
    "router_of": "holyroute.drivers.transport",
}
_SUBMODULES = frozenset({"metrics", "testing", "tracing"})


if not TYPE_CHECKING:  # for type checkers the names above are ordinary imports: a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES:
            return importlib.import_module(f"holyroute.{name}")
        try:
            module = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module 'holyroute' has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next lookup is an ordinary attribute
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
