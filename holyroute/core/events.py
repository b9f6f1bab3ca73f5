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

    def emit(event: str, fields: dict[str, Any]) -> None:
        if event == "holyroute.request":
            logger.info(event, **fields)
        else:
            logger.warning(event, **fields)

    return emit
