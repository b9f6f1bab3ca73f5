"""The configuration layer: what a valid configuration is, how it is loaded, and the tables it compiles to.

It decides what the user asked for (endpoints, routes, rules, prices, budgets, state) and rejects, at load time and
with the key path and the fix, what cannot work. It reads only the boundary parsers below it, and must never import
the core, the rollout engine, the state backends, the drivers, the readers or the CLI: everything above reads it.
``holyroute.config`` stays the public name of the schema (``from holyroute.config import Config, load_config``).
"""

from holyroute.config.schema import (
    Analysis,
    Cache,
    Config,
    Endpoint,
    EndpointRef,
    Health,
    HealthCheck,
    Price,
    Retry,
    Rollout,
    RolloutStep,
    Route,
    RouteCache,
    Shadow,
    State,
    Target,
    load_config,
)

__all__ = [
    "Analysis",
    "Cache",
    "Config",
    "Endpoint",
    "EndpointRef",
    "Health",
    "HealthCheck",
    "Price",
    "Retry",
    "Rollout",
    "RolloutStep",
    "Route",
    "RouteCache",
    "Shadow",
    "State",
    "Target",
    "load_config",
]
