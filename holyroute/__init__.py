"""holyroute: route, fail over and cost every OpenAI SDK call from inside the process, as an httpx2 transport.

>>> from openai import OpenAI
>>> import holyroute
>>> client = OpenAI(api_key="unused", http_client=holyroute.client("holyroute.yaml"))  # doctest: +SKIP
"""

from holyroute.config.schema import Config, load_config
from holyroute.core.alerts import Alert
from holyroute.core.call import Router
from holyroute.core.rollouts import Rollouts
from holyroute.drivers.transport import AsyncTransport, Transport, async_client, client, router_of
from holyroute.exceptions import ConfigError, HolyrouteError
from holyroute.state import factory as _state_factory

del _state_factory  # imported for its effect: it registers the state backend factory with the core

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
