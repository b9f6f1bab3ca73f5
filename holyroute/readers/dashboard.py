"""``holyroute dashboard``: a local web page that follows an event log as it grows.

Three parts, one concern each. :func:`page_state` decides what the page shows, as a rendering of
:class:`holyroute.readers.aggregate.Aggregate`, the one aggregation that ``holyroute report`` renders too (the tail
updates it line by line; an import-linter contract keeps this module from reading events itself, so the page and the
report cannot disagree): per-endpoint health, per-route arms and rollout steps, time series of calls, errors, p95
latency and cost, and the latest failovers, alerts and state changes. :class:`Board` holds the aggregation and the
configuration's view; neither performs I/O or reads a clock (callers pass the time). :class:`LogTail` reads only
what was appended since the last read: it remembers its offset, keeps a partial last line until its newline arrives,
starts again on truncation and follows a rotated file. :class:`DashboardServer` (stdlib ``ThreadingHTTPServer``)
serves one static page and ``/api/state``, which the page polls.

What must never happen: a secret reaching the page. The configuration is reduced by :func:`config_view` to names,
models, weights, limits and each ``base_url``'s host before the board sees it, so keys, headers, query parameters
and URL credentials are never in memory here. The page writes every text with ``textContent``, never as markup, and
is served with a Content-Security-Policy that allows no inline script. A bad line in the log is counted, never fatal.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TextIO
from urllib.parse import urlsplit

from holyroute.readers.aggregate import MAX_BUCKETS, Aggregate, EndpointRecord, RouteRecord, TimeSeries
from holyroute.readers.tally import Tally

if TYPE_CHECKING:
    from holyroute.config.schema import Config, Target

__all__ = [
    "ArmView",
    "Board",
    "ConfigView",
    "Dashboard",
    "DashboardServer",
    "EndpointView",
    "LogTail",
    "RouteView",
    "TailRead",
    "config_view",
    "run",
    "serve",
]

__all__ += ["MAX_BUCKETS", "page_state"]  # MAX_BUCKETS: the aggregation's, re-exported for the page's tests

# ---- what the page may know of the configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the page shows it: no key, header, query or path, only the host of its ``base_url``."""

    name: str
    host: str
    models: tuple[str, ...]
    rpm: int | None = None
    tpm: int | None = None
    health_check: bool = False


@dataclass(frozen=True, slots=True)
class ArmView:
    """One arm of a route: its model, its endpoints in failover order and its share of the split in percent."""

    arm: str
    model: str
    endpoints: tuple[str, ...]
    weight: float


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A route's rollout: which arm is stable, which is the candidate, how many steps."""

    strategy: str
    stable: str
    candidate: str
    steps: int


@dataclass(frozen=True, slots=True)
class RouteView:
    """A route alias: its arms (the rollout's stable and candidate for a rollout route), fallbacks and shadow."""

    alias: str
    arms: tuple[ArmView, ...]
    sticky: str | None = None
    fallbacks: tuple[str, ...] = ()
    rollout: RolloutView | None = None
    shadow: ArmView | None = None  # weight: the sampled share in percent


@dataclass(frozen=True, slots=True)
class ConfigView:
    """Everything the dashboard takes from a configuration."""

    endpoints: tuple[EndpointView, ...] = ()
    routes: tuple[RouteView, ...] = ()


def _host(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if host == "unset.invalid":  # the report's stand-in for an unset ${VAR}
        return "(not set)"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def _endpoint_names(target: Target) -> tuple[str, ...]:
    return tuple(ref if isinstance(ref, str) else ref.endpoint for ref in target.endpoints)


def config_view(config: Config) -> ConfigView:
    """Names, models, weights, limits and hosts of ``config``; never a key, header, query parameter or URL path."""
    models: dict[str, list[str]] = {name: [] for name in config.endpoints}
    routes: list[RouteView] = []
    for alias, route in config.routes.items():
        targets = route.arms
        for target in [*targets, *([route.shadow] if route.shadow is not None else [])]:
            for ref in target.endpoints:
                name, model = (ref, target.model) if isinstance(ref, str) else (ref.endpoint, ref.model or target.model)
                if name in models and model not in models[name]:
                    models[name].append(model)
        rollout = None
        if route.rollout is not None:
            rollout = RolloutView(
                route.rollout.strategy, route.rollout.stable.arm, route.rollout.candidate.arm, len(route.rollout.plan())
            )
            weights = [100.0, 0.0]  # where every rollout starts, until the log says otherwise
        else:
            total = sum(t.weight for t in targets) or 1.0
            weights = [t.weight * 100.0 / total for t in targets]
        arms = tuple(ArmView(t.arm, t.model, _endpoint_names(t), w) for t, w in zip(targets, weights, strict=True))
        shadow = route.shadow
        routes.append(
            RouteView(
                alias,
                arms,
                route.sticky,
                tuple(route.fallbacks),
                rollout,
                None
                if shadow is None
                else ArmView(shadow.arm, shadow.model, _endpoint_names(shadow), shadow.sample * 100),
            )
        )
    endpoints = tuple(
        EndpointView(name, _host(e.base_url), tuple(models[name]), e.rpm, e.tpm, e.health_check is not None)
        for name, e in config.endpoints.items()
    )
    return ConfigView(endpoints, tuple(routes))


# ---- the page's state: a rendering of the aggregation ------------------------------------------------------------


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _p(tally: Tally, q: float) -> float | None:
    return _round(tally.latency.quantile(q))


def page_state(source: Aggregate, config: ConfigView, now: float) -> dict[str, Any]:
    """What ``/api/state`` returns: the aggregation as JSON-safe data, with the configured endpoints and routes
    listed before any call. Text is raw (the page escapes it); times are Unix seconds; ``now`` judges cooldowns and
    ejections."""
    totals, activity = source.totals, source.activity
    configured_endpoints = {e.name: e for e in config.endpoints}
    configured_routes = {r.alias: r for r in config.routes}
    endpoints = [*configured_endpoints, *(name for name in source.endpoints if name not in configured_endpoints)]
    routes = [*configured_routes, *(alias for alias in source.routes if alias not in configured_routes)]
    return {
        "version": source.version,
        "now": now,
        "log": {
            "lines": source.lines,
            "events": source.events,
            "not_json": source.not_json,
            "not_holyroute": source.not_holyroute,
            "too_long": source.too_long,
            "malformed": source.malformed,
            "malformed_requests": source.malformed_requests,
            "other_events": source.unknown_events,
            "dropped_names": source.dropped_names,
            "first_at": source.first_at,
            "last_at": source.last_at,
        },
        "totals": {
            "calls": totals.calls,
            "errors": totals.errors,
            "cancelled": totals.cancelled,
            "shadow_calls": source.shadow.calls + source.shadow.cancelled,
            "cost_usd": totals.cost_usd + source.shadow.cost_usd,
            "cache_hits": totals.cache_hits,
            "cache_lookups": totals.cache_lookups,
            "saved_usd": totals.saved_usd,
            "p50_ms": _p(totals, 0.5),
            "p95_ms": _p(totals, 0.95),
            "failovers": activity.failover_count,
            "alerts": activity.alert_count,
            "outcomes": dict(source.outcomes),
        },
        "series": _series(source.series),
        "endpoints": [
            _endpoint_row(name, configured_endpoints.get(name), source.endpoints.get(name), now) for name in endpoints
        ],
        "routes": [_route_row(alias, configured_routes.get(alias), source.routes.get(alias)) for alias in routes],
        "failovers": list(activity.failovers),
        "alerts": list(activity.alerts),
        "activity": list(activity.activity),
    }


def _series(series: TimeSeries) -> dict[str, Any]:
    width = series.width
    if not series.buckets:
        return {"width_s": width, "buckets": []}
    first, last = min(series.buckets), max(series.buckets)
    rows = []
    for key in range(first, last + 1):
        tally = series.buckets.get(key) or Tally()
        rows.append(
            {
                "t": round(key * width, 3),
                "calls": tally.calls,
                "errors": tally.errors,
                "p50_ms": _p(tally, 0.5),
                "p95_ms": _p(tally, 0.95),
                "cost_usd": tally.cost_usd,
            }
        )
    return {"width_s": width, "buckets": rows}


def _endpoint_row(name: str, view: EndpointView | None, record: EndpointRecord | None, now: float) -> dict[str, Any]:
    record = record or EndpointRecord()
    health = record.health
    status, reason = health.status(now)
    until = health.ejected_until if status == "ejected" else None
    if status == "cooldown":
        until = health.cooling_until()
    recent = len(health.recent)
    return {
        "name": name,
        "configured": view is not None,
        "host": view.host if view is not None else None,
        "models": list(view.models) if view is not None else [],
        "status": status,
        "reason": reason,
        "until": until,
        "calls": record.served.calls,
        "attempts": health.attempts,
        "failed": health.failed,
        "recent_attempts": recent,
        "recent_error_rate": sum(health.recent) / recent if recent else None,
        "p95_ms": _p(record.served, 0.95),
        "cost_usd": record.served.cost_usd,
        "rpm": view.rpm if view is not None else None,
        "tpm": view.tpm if view is not None else None,
        "health_check": view.health_check if view is not None else False,
        "probe": health.probe,
        "remaining_requests": health.remaining_requests,
        "remaining_tokens": health.remaining_tokens,
        "headroom_at": health.headroom_at,
        "last_seen": health.last_seen,
    }


def _route_row(alias: str, view: RouteView | None, record: RouteRecord | None) -> dict[str, Any]:
    record = record or RouteRecord()
    last = record.rollout
    # A rollout's split is the candidate's weight from its latest event; the stable arm has the rest.
    rolled = last.weights() if last is not None else {}
    served = sum(t.calls for t in record.arms.values())

    def arm_row(arm: str, model: str | None, endpoints: tuple[str, ...], weight: float | None) -> dict[str, Any]:
        tally = record.arms.get(arm) or Tally()
        return {
            "arm": arm,
            "model": model,
            "endpoints": list(endpoints),
            "weight": rolled.get(arm, weight),
            "share": tally.calls / served if served else None,
            "calls": tally.calls,
            "errors": tally.errors,
            "p95_ms": _p(tally, 0.95),
            "cost_usd": tally.cost_usd,
            "panic": arm in record.panic,
        }

    configured = view.arms if view is not None else ()
    arms = [arm_row(a.arm, a.model, a.endpoints, a.weight) for a in configured]
    known = {a.arm for a in configured}
    arms += [arm_row(arm, None, (), None) for arm in record.arms if arm not in known]
    plan = view.rollout if view is not None else None
    rollout = None
    if plan is not None or last is not None:
        rollout = {
            "strategy": plan.strategy if plan is not None else None,
            "steps": plan.steps if plan is not None else None,
            "last": asdict(last) if last is not None else None,
        }
    return {
        "route": alias,
        "configured": view is not None,
        "sticky": view.sticky if view is not None else None,
        "fallbacks": list(view.fallbacks) if view is not None else [],
        "calls": record.served.calls,
        "errors": record.served.errors,
        "cancelled": record.served.cancelled,
        "fallback_calls": record.rescued,
        "p95_ms": _p(record.served, 0.95),
        "cost_usd": record.served.cost_usd,
        "cache_hits": record.served.cache_hits,
        "cache_lookups": record.served.cache_lookups,
        "saved_usd": record.served.saved_usd,
        "rollout": rollout,
        "arms": arms,
        "shadow": _shadow_row(view.shadow if view is not None else None, record),
    }


def _shadow_row(target: ArmView | None, record: RouteRecord) -> dict[str, Any] | None:
    shadow = record.shadow()
    if target is None and not shadow.calls:
        return None
    return {
        "arm": target.arm if target is not None else None,
        "sample_percent": target.weight if target is not None else None,
        "calls": shadow.calls,
        "errors": shadow.errors,
        "p95_ms": _p(shadow, 0.95),
        "cost_usd": shadow.cost_usd,
    }


class Board:
    """The dashboard's aggregation of the log and its configuration view; :meth:`snapshot` is what ``/api/state``
    returns (:func:`page_state`).

    No I/O and no clock: :meth:`add` takes the time the event was read (used when an event has no ``timestamp``)
    and :meth:`snapshot` the time to judge cooldowns and ejections against.

    >>> board = Board()
    >>> board.add({"event": "holyroute.request", "route": "chat", "arm": "gpt-4.1", "endpoint": "main",
    ...            "outcome": "ok", "latency_ms": 120.0, "cost_usd": 0.001}, received=1000.0)
    >>> board.snapshot(now=1001.0)["totals"]["calls"]
    1
    """

    def __init__(self, config: ConfigView | None = None) -> None:
        self.config = config or ConfigView()
        self.aggregate = Aggregate()

    @property
    def routes(self) -> dict[str, RouteRecord]:
        return self.aggregate.routes

    def reset(self) -> None:
        """Forget every event (the log was truncated or replaced); the configuration stays."""
        self.aggregate.reset()

    def add_line(self, line: str, received: float) -> None:
        """One line of the log: a holyroute event is added; anything else is counted."""
        self.aggregate.add_line(line, received)

    def skip_long_line(self) -> None:
        """A line longer than the tail keeps was dropped."""
        self.aggregate.skip_long_line()

    def add(self, event: Mapping[str, Any], received: float) -> None:
        """Fold one ``holyroute.*`` event in."""
        self.aggregate.add(event, received)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The page's whole state as JSON-safe data."""
        return page_state(self.aggregate, self.config, now)


# ---- the tail: what was appended since the last read -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailRead:
    """One read of the log: complete lines in order, and what happened to the file since the last read."""

    lines: tuple[str, ...] = ()
    too_long: int = 0  # lines dropped for exceeding max_line_bytes
    truncated: bool = False  # the file shrank: what came before is gone, start over
    rotated: bool = False  # a new file took the path; the old one was read to its end first
    missing: bool = False  # no file at the path (yet)
    behind: int = 0  # bytes written but not read yet (max_bytes was reached)
    error: str | None = None  # the file exists but cannot be read (permissions, ...): said on the page


class LogTail:
    """Reads a growing JSON-lines file incrementally.

    The offset is remembered between reads, so each read costs what was appended. A last line without its newline
    is held until the newline arrives. A file that shrank, or whose first bytes changed (rewritten in place, as a
    second ``holyroute demo`` does), is read again from the start and the read says ``truncated``. When another
    file takes the path (rotation), the old one is read to its end, then the new one from its start. A line longer
    than ``max_line_bytes`` is dropped and counted.
    """

    _HEAD = 256  # bytes of the file's start remembered to notice a rewrite that is not shorter

    def __init__(self, path: str | os.PathLike[str], *, max_line_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.offset = 0
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._head = b""
        self._partial = bytearray()
        self._dropping = False  # inside an over-long line: skip to its newline

    def close(self) -> None:
        """Close the file; a later read opens it again from the start."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, max_bytes: int = 8 << 20) -> TailRead:
        """Complete lines appended since the last read: about ``max_bytes`` at most, the rest says ``behind``."""
        if self._file is None and not self._open():
            return TailRead(missing=True)
        handle = self._file
        assert handle is not None
        lines: list[str] = []
        truncated = rotated = False
        if self._size(handle) < self.offset or not self._same_head(handle):
            truncated = True
            self._restart(handle)
        too_long = self._drain(handle, lines, max_bytes)
        if self._replaced() and self._size(handle) <= self.offset:
            self._flush_partial(lines)  # the old file grows no more: its unterminated last line is complete
            self.close()
            rotated = True
            if self._open():
                assert self._file is not None
                handle = self._file
                too_long += self._drain(handle, lines, max_bytes)
        behind = max(0, self._size(handle) - self.offset) if self._file is not None else 0
        return TailRead(tuple(lines), too_long, truncated, rotated, False, behind)

    @staticmethod
    def _size(handle: BinaryIO) -> int:
        return os.fstat(handle.fileno()).st_size

    def _open(self) -> bool:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        stat = os.fstat(handle.fileno())
        self._file, self._identity = handle, (stat.st_dev, stat.st_ino)
        self._restart(handle)
        return True

    def _replaced(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False  # moved away with nothing in its place yet: keep reading the old file
        return (stat.st_dev, stat.st_ino) != self._identity

    def _same_head(self, handle: BinaryIO) -> bool:
        if not self._head:
            return True
        handle.seek(0)
        found = handle.read(len(self._head))
        handle.seek(self.offset)
        return found == self._head

    def _restart(self, handle: BinaryIO) -> None:
        self.offset = 0
        self._head = b""
        self._partial.clear()
        self._dropping = False
        handle.seek(0)

    def _drain(self, handle: BinaryIO, lines: list[str], max_bytes: int) -> int:
        too_long = 0
        start = self.offset
        while self.offset - start < max_bytes:
            chunk = handle.read(min(1 << 20, max_bytes - (self.offset - start)))
            if not chunk:
                break
            if len(self._head) < self._HEAD and self.offset < self._HEAD:
                self._head += chunk[: self._HEAD - self.offset]
            self.offset += len(chunk)
            too_long += self._split(chunk, lines)
        return too_long

    def _split(self, chunk: bytes, lines: list[str]) -> int:
        too_long = 0
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            if self._dropping:
                self._dropping = False
                continue
            self._partial += piece
            if len(self._partial) > self.max_line_bytes:
                too_long += 1
            else:
                lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial.clear()
        if not self._dropping:
            self._partial += rest
            if len(self._partial) > self.max_line_bytes:
                too_long += 1
                self._partial.clear()
                self._dropping = True
        return too_long

    def _flush_partial(self, lines: list[str]) -> None:
        if self._partial and not self._dropping:
            lines.append(self._partial.decode("utf-8", errors="replace"))
        self._partial.clear()
        self._dropping = False


# ---- the driver: tail + board, and the HTTP server ---------------------------------------------------------------


class Dashboard:
    """A board fed by a tail of ``events``: every :meth:`state` reads what was appended, then snapshots."""

    def __init__(
        self,
        events: str | os.PathLike[str],
        config: ConfigView | None = None,
        *,
        config_path: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        max_bytes_per_read: int = 8 << 20,
    ) -> None:
        self.events_path = str(events)
        self.config_path = config_path
        self.board = Board(config)
        self.tail = LogTail(events)
        self.clock = clock
        self.poll_s = poll_s
        self.max_bytes_per_read = max_bytes_per_read
        self.resets = 0
        self.rotations = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.tail.close()

    def state(self) -> dict[str, Any]:
        """Read what was appended, then the page's state plus where it came from."""
        with self._lock:
            try:
                read = self.tail.read(self.max_bytes_per_read)
            except OSError as exc:
                self.tail.close()  # start afresh once the file can be read again
                read = TailRead(error=f"cannot read {self.events_path}: {exc.strerror or exc}")
            now = self.clock()
            if read.truncated:
                self.resets += 1
                self.board.reset()
            self.rotations += read.rotated
            board = self.board
            for line in read.lines:
                board.add_line(line, now)
            for _ in range(read.too_long):
                board.skip_long_line()
            state = board.snapshot(now)
        state["source"] = {
            "events": self.events_path,
            "config": self.config_path,
            "missing": read.missing,
            "error": read.error,
            "behind_bytes": read.behind,
            "resets": self.resets,
            "rotations": self.rotations,
            "poll_ms": round(self.poll_s * 1000),
        }
        return state


_ASSETS: Final = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/index.html": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _load_assets() -> dict[str, bytes]:
    folder = resources.files(__package__ or "holyroute").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name, _ in _ASSETS.values()}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardServer(ThreadingHTTPServer):
    """Serves the page and ``/api/state`` for one :class:`Dashboard`. ``port=0`` takes a free port."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 0) -> None:
        self.dashboard = dashboard
        self.assets = _load_assets()
        self.loopback = _loopback(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        shown = str(host)
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/"

    def allowed_host(self, header: str | None) -> bool:
        """On a loopback address, only loopback names: a web page elsewhere cannot rebind DNS to read the state."""
        if not self.loopback:
            return True
        if not header:
            return False
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return _loopback(name)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "holyroute-dashboard"

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        if not self.server.allowed_host(self.headers.get("Host")):
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain; charset=utf-8")
            return
        path = self.path.split("?", 1)[0]
        if path == "/api/state":
            body = json.dumps(self.server.dashboard.state(), allow_nan=False, separators=(",", ":")).encode()
            self._send(HTTPStatus.OK, body, "application/json")
            return
        asset = _ASSETS.get(path)
        if asset is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        name, content_type = asset
        self._send(HTTPStatus.OK, self.server.assets[name], content_type)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per poll would drown the terminal


@contextmanager
def serve(
    events: str | os.PathLike[str],
    config: Config | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config_path: str | None = None,
    poll_s: float = 1.0,
) -> Iterator[DashboardServer]:
    """Serve the dashboard from a background thread for the ``with`` block; yields the server (``server.url``).

    >>> with serve("events.jsonl", port=0) as server:  # doctest: +SKIP
    ...     print(server.url)
    """
    dashboard = Dashboard(
        events, config_view(config) if config is not None else None, config_path=config_path, poll_s=poll_s
    )
    try:
        server = DashboardServer(dashboard, host, port)
    except OSError:
        dashboard.close()
        raise
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        dashboard.close()


def run(
    events: Path,
    config: Config | None,
    out: TextIO,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config_path: str | None = None,
) -> int:
    """Serve until Ctrl-C (the ``holyroute dashboard`` command). Raises ``OSError`` when the address is taken."""
    dashboard = Dashboard(events, config_view(config) if config is not None else None, config_path=config_path)
    try:
        server = DashboardServer(dashboard, host, port)
    except OSError:
        dashboard.close()
        raise
    note = "" if events.exists() else f" ({events} does not exist yet; waiting for it)"
    out.write(f"holyroute dashboard: {server.url} following {events}{note}; Ctrl-C to stop\n")
    if not server.loopback:
        out.write(
            f"  listening on {host}: anyone who can reach this port sees routes, endpoints and traffic (never keys)\n"
        )
    out.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out.write("\n")
    finally:
        server.server_close()
        dashboard.close()
    return 0
