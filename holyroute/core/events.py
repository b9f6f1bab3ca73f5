"""Events: the sink type every layer emits through, and the default sink (structlog's ``holyroute`` logger).

A library never configures the host application's logging; it logs through ``structlog.get_logger("holyroute")``.
``holyroute.request`` is logged at info, every other event (failover, ejection, rollout step) at warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EventSink", "structlog_sink"]

#: ``sink(event, fields)``: one call per event, flat snake_case fields.
EventSink = Callable[[str, dict[str, Any]], None]


def structlog_sink() -> EventSink:
    import structlog  # imported when the first client is built, keeping `import holyroute` light

    logger = structlog.get_logger("holyroute")
    assembled: Any = None  # the logger structlog assembled, once it caches it (see below)

    def emit(event: str, fields: dict[str, Any]) -> None:
        # With ``cache_logger_on_first_use``, structlog's lazy proxy assembles the logger once and keeps it, but still
        # resolves every call through two Python calls of its own; keeping the logger it assembled here instead is
        # what the proxy itself would do. Without it, every event goes through the proxy (reconfiguration is seen).
        nonlocal assembled
        target = logger if assembled is None else assembled
        if event == "holyroute.request":
            target.info(event, **fields)
        else:
            target.warning(event, **fields)
        if assembled is None and structlog.get_config()["cache_logger_on_first_use"]:
            assembled = logger.bind()

    return emit
