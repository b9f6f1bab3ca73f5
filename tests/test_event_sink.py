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
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict

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


def test_a_cached_filtering_logger_runs_no_processor_for_what_its_level_drops() -> None:
    """With the logger assembled and cached, an event its level drops goes nowhere (no processor runs, as with
    structlog's own no-op method); every event its level keeps runs them all."""
    out = io.StringIO()
    seen: list[str] = []

    def record(logger: Any, method: str, event_dict: EventDict) -> EventDict:
        seen.append(f"{method} {event_dict['event']}")
        return event_dict

    structlog.configure(
        processors=[record, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    emit = structlog_sink()
    for n in range(3):
        emit("holyroute.request", {"call_id": n})
        emit("holyroute.failover", {"call_id": n})
    assert seen == ["warning holyroute.failover"] * 3
    assert [line["call_id"] for line in _lines(out)] == [0, 1, 2]


def _drop_odd(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    if event_dict.get("call_id", 0) % 2:
        raise structlog.DropEvent
    return event_dict


def _as_args(logger: Any, method: str, event_dict: EventDict) -> tuple[tuple[str], dict[str, Any]]:
    return (json.dumps(event_dict, sort_keys=True),), {}


@pytest.mark.parametrize(
    "processors",
    [
        [structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        [structlog.processors.add_log_level, _drop_odd, structlog.processors.JSONRenderer(sort_keys=True)],
        [structlog.processors.add_log_level, _as_args],  # a last processor that returns (args, kwargs)
    ],
    ids=["json", "drop-event", "args-kwargs"],
)
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
def test_the_cached_path_writes_what_structlogs_own_logger_writes(processors: list[Any], level: int) -> None:
    """The sink's way through a cached filtering logger (its processors, then its wrapped logger) and structlog's
    own ``logger.info(event, **fields)`` write the same lines, dropped events and levels included."""
    written: dict[str, io.StringIO] = {}
    for way in ("sink", "structlog"):
        structlog.reset_defaults()
        out = written[way] = io.StringIO()
        structlog.configure(
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.WriteLoggerFactory(file=out),
            cache_logger_on_first_use=True,
        )
        emit = structlog_sink()
        proxy = structlog.get_logger("holyroute")
        for n in range(5):
            fields: dict[str, object] = {"call_id": n, "route": "chat", "latency_ms": 1.5, "shadow": False}
            event = "holyroute.request" if n < 4 else "holyroute.failover"  # the warning's call_id is even: kept
            if way == "sink":
                emit(event, fields)
            elif event == "holyroute.request":
                proxy.info(event, **fields)
            else:
                proxy.warning(event, **fields)
            assert fields == {"call_id": n, "route": "chat", "latency_ms": 1.5, "shadow": False}  # not changed
    assert written["sink"].getvalue() == written["structlog"].getvalue()
    assert written["sink"].getvalue()  # something was written at every level (the warning, at least)


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


def test_a_cached_filtering_logger_gets_the_event_without_its_info_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once structlog's own filtering logger is assembled and cached, the sink runs its processors and writes
    through its wrapped logger itself: its info() and warning() are not called (they would spread the fields)."""
    out = io.StringIO()
    _configure(out, cache=True)
    emit = structlog_sink()
    emit("holyroute.request", {"call_id": 0})  # assembles and caches the logger, through info()

    def refused(self: object, event: str, *args: object, **kw: object) -> None:
        raise AssertionError(f"{event} went through the method")

    cls = structlog.make_filtering_bound_logger(logging.INFO)
    monkeypatch.setattr(cls, "info", refused)
    monkeypatch.setattr(cls, "warning", refused)
    emit("holyroute.request", {"call_id": 1})
    emit("holyroute.failover", {"call_id": 2})
    assert [(line["call_id"], line["level"]) for line in _lines(out)] == [(0, "info"), (1, "info"), (2, "warning")]


def test_a_structlog_with_other_hooks_gets_every_event_through_its_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a structlog release change the wrapper-class hooks the sink uses, it uses info() and warning()."""
    out = io.StringIO()
    _configure(out, cache=True)
    cls = structlog.make_filtering_bound_logger(logging.INFO)
    original = cls._process_event  # type: ignore[attr-defined]

    def changed(self: Any, method_name: str, event: str | None, event_kw: dict[str, Any], extra: int = 0) -> Any:
        return original(self, method_name, event, event_kw)

    monkeypatch.setattr(cls, "_process_event", changed)
    calls: list[str] = []
    real_info = cls.info

    def counted(self: Any, event: str, **kw: Any) -> Any:
        calls.append(event)
        return real_info(self, event, **kw)

    monkeypatch.setattr(cls, "info", counted)
    emit = structlog_sink()
    for n in range(3):
        emit("holyroute.request", {"call_id": n})
    assert calls == ["holyroute.request"] * 3
    assert [line["call_id"] for line in _lines(out)] == [0, 1, 2]
