"""The default event sink: structlog's ``holyroute`` logger, resolved as structlog itself resolves it.

With ``cache_logger_on_first_use`` structlog assembles the logger once and keeps it; the sink then keeps that logger
too (skipping the lazy proxy's per-call resolution). Without it, every event goes through the proxy, so a
configuration made after the client was built is still the one that renders the events.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from holyroute.core.events import structlog_sink


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _configure(out: io.StringIO, *, cache: bool, level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("cache", [True, False])
def test_every_event_reaches_the_configured_logger_at_its_level(cache: bool) -> None:
    out = io.StringIO()
    _configure(out, cache=cache)
    emit = structlog_sink()
    for n in range(3):
        emit("holyroute.request", {"call_id": n, "route": "chat"})
    emit("holyroute.failover", {"call_id": 3, "route": "chat"})
    assert _lines(out) == [
        {"call_id": 0, "route": "chat", "event": "holyroute.request", "level": "info"},
        {"call_id": 1, "route": "chat", "event": "holyroute.request", "level": "info"},
        {"call_id": 2, "route": "chat", "event": "holyroute.request", "level": "info"},
        {"call_id": 3, "route": "chat", "event": "holyroute.failover", "level": "warning"},
    ]


def test_without_caching_a_later_configuration_is_seen() -> None:
    first, second = io.StringIO(), io.StringIO()
    _configure(first, cache=False)
    emit = structlog_sink()
    emit("holyroute.request", {"call_id": 1})
    _configure(second, cache=False, level=logging.WARNING)  # reconfigured after the sink was built and used
    emit("holyroute.request", {"call_id": 2})  # now below the level: dropped
    emit("holyroute.failover", {"call_id": 3})
    assert [line["call_id"] for line in _lines(first)] == [1]
    assert [line["call_id"] for line in _lines(second)] == [3]


def test_with_caching_the_logger_structlog_assembled_is_kept() -> None:
    """As structlog's own proxy does: once assembled under ``cache_logger_on_first_use``, the logger stays."""
    first, second = io.StringIO(), io.StringIO()
    _configure(first, cache=True)
    emit = structlog_sink()
    proxy = structlog.get_logger("holyroute")
    proxy.info("holyroute.request", call_id=0)
    emit("holyroute.request", {"call_id": 1})
    _configure(second, cache=True)
    emit("holyroute.request", {"call_id": 2})
    proxy.info("holyroute.request", call_id=3)  # structlog's own proxy, used before, keeps its first logger too
    assert [line["call_id"] for line in _lines(first)] == [0, 1, 2, 3]
    assert _lines(second) == []


@pytest.mark.parametrize("cache", [True, False])
def test_an_event_below_the_level_is_dropped_and_one_above_still_logged(cache: bool) -> None:
    out = io.StringIO()
    _configure(out, cache=cache, level=logging.WARNING)
    emit = structlog_sink()
    for n in range(3):
        emit("holyroute.request", {"call_id": n})
        emit("holyroute.failover", {"call_id": n})
    assert [(line["event"], line["call_id"]) for line in _lines(out)] == [("holyroute.failover", n) for n in range(3)]


def test_a_cached_filtering_logger_is_not_called_for_what_its_level_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the logger assembled and cached, an event its level drops never reaches it: a no-op is not worth
    spreading the event's fields as keywords. Every event its level keeps still does."""
    out = io.StringIO()
    _configure(out, cache=True, level=logging.WARNING)
    emit = structlog_sink()
    emit("holyroute.failover", {"call_id": 0})  # assembles and caches the logger
    assembled = type(structlog.get_logger("holyroute").bind())
    called: list[str] = []
    monkeypatch.setattr(assembled, "info", lambda self, event, **kw: called.append(event))
    monkeypatch.setattr(assembled, "warning", lambda self, event, **kw: called.append(event))
    emit("holyroute.request", {"call_id": 1})
    emit("holyroute.failover", {"call_id": 2})
    assert called == ["holyroute.failover"]


def test_a_logger_that_cannot_say_its_level_gets_every_event() -> None:
    """structlog's stdlib BoundLogger (filtered by the standard library, not by structlog) is called as before."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.BoundLogger,
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    emit = structlog_sink()
    for n in range(2):
        emit("holyroute.request", {"call_id": n})
    assert [line["call_id"] for line in _lines(out)] == [0, 1]
