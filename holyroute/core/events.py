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
    # structlog's own filtering loggers (make_filtering_bound_logger, what structlog configures by default). Their
    # info() and warning() do nothing below their level; at or above it, they run the processors through
    # _process_event and hand the result to the wrapped logger (_proxy_to_logger): the two hooks structlog documents
    # for custom wrapper classes.
    levels = (logging.NOTSET, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    filtering = frozenset(structlog.make_filtering_bound_logger(level) for level in levels)
    assembled: Any = None  # the logger structlog assembled, once it caches it (see below)
    direct: Any = None  # ... when it is one of structlog's own filtering loggers
    info_off = warning_off = False  # ... and whether its level drops holyroute.request, or the warnings

    def emit(event: str, fields: dict[str, Any]) -> None:
        nonlocal assembled, direct, info_off, warning_off
        request = event == "holyroute.request"
        if direct is not None:
            # What its info() or warning() does, without spreading the event's ~30 fields as keywords twice on the
            # way (into the method, then into _proxy_to_logger): about 50k instructions of a 160k event.
            if info_off if request else warning_off:
                return
            method = "info" if request else "warning"
            try:  # as its _proxy_to_logger, with the fields handed over as they are
                args, kw = direct._process_event(method, event, fields)
                getattr(direct._logger, method)(*args, **kw)
            except structlog.DropEvent:
                pass
            return
        # With ``cache_logger_on_first_use``, structlog's lazy proxy assembles the logger once and keeps it, but still
        # resolves every call through two Python calls of its own; keeping the logger it assembled here instead is
        # what the proxy itself would do. Without it, every event goes through the proxy (reconfiguration is seen).
        target = logger if assembled is None else assembled
        if request:
            target.info(event, **fields)
        else:
            target.warning(event, **fields)
        if assembled is None and structlog.get_config()["cache_logger_on_first_use"]:
            assembled = logger.bind()
            if type(assembled) in filtering and _hooks_as_known(assembled):
                info_off = not assembled.is_enabled_for(logging.INFO)  # fixed while the assembled logger lives
                warning_off = not assembled.is_enabled_for(logging.WARNING)
                direct = assembled

    return emit


def _hooks_as_known(logger: Any) -> bool:
    """Whether structlog's hooks for wrapper classes are the ones the sink was written against: a later structlog
    that changes them gets every event through ``info()`` and ``warning()``, slower but never lost."""
    import inspect

    try:
        parameters = list(inspect.signature(type(logger)._process_event).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return parameters == ["self", "method_name", "event", "event_kw"] and hasattr(logger, "_logger")
