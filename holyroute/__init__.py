"""holyroute: route, fail over and cost every OpenAI SDK call from inside the process, as an httpx2 transport.

>>> from openai import OpenAI
>>> import holyroute
>>> client = OpenAI(api_key="unused", http_client=holyroute.client("holyroute.yaml"))  # doctest: +SKIP
"""

from ._alerts import Alert
from ._core import Router
from ._rollout import Rollouts
from ._transport import AsyncTransport, Transport, async_client, client, router_of
from .config import Config, load_config
from .exceptions import ConfigError, HolyrouteError

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
