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
    import logging

    import structlog  # imported when the first client is built, keeping `import holyroute` light

    logger = structlog.get_logger("holyroute")
    assembled: Any = None  # the logger structlog assembled, once it caches it (see below)
    info_off = warning_off = False  # ... and whether its level drops holyroute.request, or the warnings

    def emit(event: str, fields: dict[str, Any]) -> None:
        # With ``cache_logger_on_first_use``, structlog's lazy proxy assembles the logger once and keeps it, but still
        # resolves every call through two Python calls of its own; keeping the logger it assembled here instead is
        # what the proxy itself would do. Without it, every event goes through the proxy (reconfiguration is seen).
        nonlocal assembled, info_off, warning_off
        request = event == "holyroute.request"
        if assembled is None:
            target = logger
        elif info_off if request else warning_off:
            return  # dropped by its level: spreading ~30 fields as keywords into a no-op costs ~16k instructions
        else:
            target = assembled
        if request:
            target.info(event, **fields)
        else:
            target.warning(event, **fields)
        if assembled is None and structlog.get_config()["cache_logger_on_first_use"]:
            assembled = logger.bind()
            # A filtering logger (make_filtering_bound_logger) says which levels it drops, and its level is fixed for
            # as long as the assembled logger lives. Any other logger gets every event, as before.
            # Asked of its class: structlog's generic BoundLogger answers any attribute with a proxy to the wrapped
            # logger, which may not have it.
            enabled = getattr(type(assembled), "is_enabled_for", None)
            if callable(enabled):
                try:
                    info_off = enabled(assembled, logging.INFO) is False
                    warning_off = enabled(assembled, logging.WARNING) is False
                except Exception:  # a logger that cannot say gets every event, as before
                    info_off = warning_off = False

    return emit
