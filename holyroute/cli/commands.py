"""The ``holyroute`` command: ``demo`` runs offline on local fake upstreams, ``check`` probes a configuration.

``demo`` runs the whole path on local fake upstreams; ``check`` probes every endpoint of a configuration once and says
whether every route still has a healthy path.

The demo is an application, so unlike the library it configures structlog: events go as JSON lines to the file it
names. Nothing in the demo touches the network beyond 127.0.0.1, and no real key is used. ``check`` sends one probe
per endpoint to the configured URLs, with the configured keys, and never prints a key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from holyroute.config.prices import PriceRow
    from holyroute.config.schema import Config
    from holyroute.readers.log import EventLog
    from holyroute.readers.report import Report

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    return _dispatch(parser, parser.parse_args(argv))


def _parser() -> argparse.ArgumentParser:  # long but linear: one add_parser block per command
    parser = argparse.ArgumentParser(prog="holyroute", description=__doc__.split("\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="route a few hundred SDK calls across local fake upstreams, offline")
    demo.add_argument("--calls", type=int, default=300, help="total calls, split sync / async / streaming")
    demo.add_argument(
        "--events", type=Path, default=Path("holyroute-demo-events.jsonl"), help="JSON-lines event log to write"
    )
    check = commands.add_parser(
        "check", help="probe every endpoint once; exit 1 when a route has no healthy path, 2 on a bad configuration"
    )
    check.add_argument("config", type=Path, help="the configuration file (YAML or TOML)")
    rollout = commands.add_parser("rollout", help="show or steer the rollouts of a configuration")
    rollout.add_argument("action", choices=["status", "promote", "abort", "retry"])
    rollout.add_argument("route", nargs="?", help="the route alias (every rollout for status)")
    rollout.add_argument("--config", type=Path, required=True, help="the configuration file (YAML or TOML)")
    rollout.add_argument("--full", action="store_true", help="promote: straight to 100%%")
    rollout.add_argument("--reason", default="aborted by hand", help="abort: why (recorded in the event)")
    rollout.add_argument("--json", action="store_true", help="print the state as JSON")
    report = commands.add_parser(
        "report", help="per route and arm from an event log: errors, latency, cost and a verdict against the control"
    )
    report.add_argument("events", type=Path, help="the JSON-lines event log (structlog JSONRenderer)")
    report.add_argument("--config", type=Path, help="the configuration: control arms, and weights for the SRM check")
    report.add_argument("--route", help="report only this route")
    report.add_argument("--format", choices=["table", "json", "markdown"], default="table", help="default: table")
    report.add_argument("--plot", type=Path, metavar="FILE.png", help="latency and errors over time (needs [plot])")
    report.add_argument("--margin", type=float, default=0.01, help="error-rate non-inferiority margin (default 0.01)")
    report.add_argument("--alpha", type=float, default=0.05, help="level of the error-rate test (default 0.05)")
    report.add_argument("--max-latency-ratio", type=float, default=1.5, help="p95 vs the control's (default 1.5)")
    report.add_argument("--min-calls", type=int, default=100, help="calls per arm before PROMOTE (default 100)")
    dashboard = commands.add_parser(
        "dashboard", help="a local web page that follows an event log live: endpoints, routes, rollouts, failovers"
    )
    dashboard.add_argument("--events", type=Path, required=True, help="the JSON-lines event log to follow")
    dashboard.add_argument("--config", type=Path, help="show its endpoints and routes (names, hosts, weights; no keys)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    explain = commands.add_parser(
        "explain", help="what the router would do with a request and why (rules, sizes, costs, health); sends nothing"
    )
    explain.add_argument("config", type=Path, help="the configuration file (YAML or TOML)")
    explain.add_argument("request", type=Path, help="the request body as JSON (model, messages, max_tokens, ...)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME: VALUE", help="a request header (repeatable)"
    )
    prices = commands.add_parser(
        "prices", help="the prices in use: per endpoint, configured, from the genai-prices catalogue"
    )
    prices.add_argument("--config", type=Path, help="include this configuration's prices and its models")
    prices.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "explain":
        return run_explain(args.config, args.request, args.header, sys.stdout, sys.stderr)
    if args.command == "prices":
        return run_prices(args.config, sys.stdout, sys.stderr, as_json=args.json)
    if args.command == "demo":
        if args.calls < 10:
            parser.error("--calls must be at least 10")
        return run_demo(args.calls, args.events, sys.stdout)
    if args.command == "check":
        return run_check(args.config, sys.stdout, sys.stderr)
    if args.command == "rollout":
        return run_rollout(
            args.action,
            args.route,
            args.config,
            sys.stdout,
            sys.stderr,
            full=args.full,
            reason=args.reason,
            as_json=args.json,
        )
    if args.command == "report":
        return run_report(
            args.events,
            sys.stdout,
            sys.stderr,
            config=args.config,
            route=args.route,
            fmt=args.format,
            plot=args.plot,
            margin=args.margin,
            alpha=args.alpha,
            max_latency_ratio=args.max_latency_ratio,
            min_calls=args.min_calls,
        )
    if args.command == "dashboard":
        return run_dashboard(args.events, sys.stdout, sys.stderr, config=args.config, host=args.host, port=args.port)
    return 2  # pragma: no cover - argparse requires a command


def run_dashboard(
    events: Path, out: TextIO, err: TextIO, *, config: Path | None = None, host: str = "127.0.0.1", port: int = 0
) -> int:
    """``holyroute dashboard``: serve the page until Ctrl-C; 2 for a bad configuration or an address in use."""
    from holyroute.exceptions import ConfigError
    from holyroute.readers import dashboard as _dashboard
    from holyroute.readers.report import load_report_config

    loaded = None
    if config is not None:
        try:
            loaded, _unset = load_report_config(config)  # keys are not needed, and never reach the page
        except ConfigError as exc:
            err.write(f"{exc}\n")
            return 2
    shown = None if config is None else str(config)
    try:
        return _dashboard.run(events, loaded, out, host=host, port=port, config_path=shown)
    except OSError as exc:
        err.write(f"holyroute dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
        return 2


def run_explain(config_path: Path, request: Path, header_args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``holyroute explain``: 0 with the explanation written, 2 for a bad configuration, request or header."""
    from holyroute.cli.explain import ExplainError, explain
    from holyroute.config.schema import load_config
    from holyroute.exceptions import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    try:
        body = json.loads(request.read_text(encoding="utf-8"))
    except OSError as exc:
        err.write(f"holyroute explain: cannot read {request}: {exc.strerror}\n")
        return 2
    except ValueError as exc:
        err.write(f'holyroute explain: {request} is not JSON ({exc}); give the request body, e.g. {{"model": ...}}\n')
        return 2
    if not isinstance(body, dict):
        err.write(f"holyroute explain: {request} must hold a JSON object (the request body)\n")
        return 2
    headers: dict[str, str] = {}
    for raw in header_args:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            err.write(f"holyroute explain: --header {raw!r} must look like 'x-task: complex_reasoning'\n")
            return 2
        headers[name.strip()] = value.strip()
    try:
        out.write(explain(config, body, headers))
    except ExplainError as exc:
        err.write(f"holyroute explain: {exc}\n")
        return 2
    return 0


def run_prices(path: Path | None, out: TextIO, err: TextIO, *, as_json: bool = False) -> int:
    """``holyroute prices``: every price row in use and where it comes from (an endpoint's ``prices``, the
    configuration's, or the genai-prices catalogue's standard rates now, with what else it prices); models a route
    uses that none of them knows are listed as unpriced (their calls log ``cost_usd: null``), never guessed. 2 on a
    bad configuration."""
    from holyroute.config.prices import BUILTIN_PRICES, PRICES_AS_OF
    from holyroute.config.schema import load_config
    from holyroute.exceptions import ConfigError

    rows: list[dict[str, Any]] = []
    if path is not None:
        try:
            config = load_config(path)
        except ConfigError as exc:
            err.write(f"{exc}\n")
            return 2
        rows += _config_price_rows(config)
    for model, row in BUILTIN_PRICES.items():
        rows.append(
            _price_row(model, row, f"built in, as of {PRICES_AS_OF}; bounds cost ceilings where the catalogue cannot")
        )
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    _write_price_table(rows, out)
    return 0


def _price_row(model: str, row: PriceRow | None, source: str) -> dict[str, Any]:
    return {
        "model": model,
        "input": row.input if row else None,
        "cached_input": row.cached_input if row else None,
        "output": row.output if row else None,
        "reasoning": row.reasoning if row else None,
        "source": source,
    }


def _config_price_rows(config: Config) -> list[dict[str, Any]]:
    """The configuration's price rows: per endpoint, its ``prices:``, then the catalogue's for the models routes use."""
    from holyroute.config.catalogue import CatalogueRates, catalogue_rates, catalogue_source
    from holyroute.config.prices import PriceRow
    from holyroute.config.schema import EndpointRef
    from holyroute.core.plan import price_of

    rows: list[dict[str, Any]] = []
    used: set[tuple[str, str]] = set()
    overrides = {name: price.row() for name, price in config.prices.items()}
    for name, endpoint in sorted(config.endpoints.items()):
        for model, price in sorted(endpoint.prices.items()):
            rows.append(_price_row(model, price.row(), f"endpoint {name}"))
    for model, row in sorted(overrides.items()):
        rows.append(_price_row(model, row, "configuration prices"))
    for route in config.routes.values():
        for target in route.arms:
            for entry in target.endpoints:
                ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
                used.add((ref.endpoint, ref.model or target.model))
    listed: list[tuple[str, str, CatalogueRates]] = []
    now = time.time()
    for endpoint_name, model in sorted(used):
        endpoint = config.endpoints[endpoint_name]
        if price_of(endpoint, model, overrides)[1] != "catalogue":
            continue
        rates = catalogue_rates(model, provider=endpoint.provider, base_url=endpoint.base_url, when=now)
        if rates is None:
            why = f"not in {catalogue_source()}"
            rows.append(_price_row(model, None, f"UNPRICED on endpoint {endpoint_name} ({why}): add it under prices"))
        else:
            listed.append((model, f"{catalogue_source()} {rates.model} on endpoint {endpoint_name}", rates))
    for model, source, rates in listed:
        notes = f" ({rates.notes})" if rates.notes else ""
        rows.append(_price_row(model, PriceRow(rates.input, rates.cached_input, rates.output), source + notes))
    return rows


def _write_price_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    def usd(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    out.write("USD per 1M tokens; reasoning '-' means billed as output\n")
    out.write(f"{'model':<26}{'input':>9}{'cached':>9}{'output':>9}{'reasoning':>11}  source\n")
    for r in rows:
        out.write(
            f"{r['model']:<26}{usd(r['input']):>9}{usd(r['cached_input']):>9}{usd(r['output']):>9}"
            f"{usd(r['reasoning']):>11}  {r['source']}\n"
        )


def run_report(  # a 13-line signature (one option per line); the body checks, loads, builds, renders
    events: Path,
    out: TextIO,
    err: TextIO,
    *,
    config: Path | None = None,
    route: str | None = None,
    fmt: str = "table",
    plot: Path | None = None,
    margin: float = 0.01,
    alpha: float = 0.05,
    max_latency_ratio: float = 1.5,
    min_calls: int = 100,
) -> int:
    """``holyroute report``: 0 with the report written, 2 for a bad log, configuration, option or plot."""

    from holyroute.exceptions import ConfigError
    from holyroute.readers.aggregate import aggregate_log
    from holyroute.readers.log import load_log
    from holyroute.readers.report import (
        PlotUnavailableError,
        Settings,
        build_report,
        load_report_config,
        require_matplotlib,
    )

    try:
        settings = Settings(margin=margin, alpha=alpha, max_latency_ratio=max_latency_ratio, min_calls=min_calls)
    except ValueError as exc:
        err.write(f"holyroute report: {exc}\n")
        return 2
    if plot is not None:
        try:
            require_matplotlib()  # before any work: a missing extra should not cost a pass over a large log
        except PlotUnavailableError as exc:
            err.write(f"holyroute report: {exc}\n")
            return 2
    notes: list[str] = []
    loaded = None
    if config is not None:
        try:
            loaded, unset = load_report_config(config)
        except ConfigError as exc:
            err.write(f"{exc}\n")
            return 2
        if unset:
            notes.append(f"environment variables not set, not needed for a report: {', '.join(unset)}")
    try:
        log = load_log(events)
    except OSError as exc:
        err.write(f"holyroute report: cannot read {events}: {exc.strerror or exc}\n")
        return 2
    result = build_report(
        aggregate_log(log),
        loaded,
        settings=settings,
        route=route,
        config_path=None if config is None else str(config),
        notes=notes,
    )
    if not result.routes:
        err.write(_no_requests(events, log, route))
        return 2
    _write_report(result, fmt, out)
    if plot is not None:
        return _write_report_plot(log, route, plot, out, err, fmt=fmt)
    return 0


def _no_requests(events: Path, log: EventLog, route: str | None) -> str:
    """Why ``holyroute report`` found nothing to report: the log's counts, and its routes when one was asked for."""
    what = f"for route {route!r}" if route is not None else "at all"
    seen = sorted({e["route"] for e in log.events if isinstance(e.get("route"), str)})
    return (
        f"holyroute report: {events} has no holyroute.request events {what} "
        f"({len(log.events)} holyroute events, {log.not_json} lines not JSON, "
        f"{log.not_holyroute} not holyroute events, {log.malformed} malformed"
        + (f"; routes in the log: {', '.join(seen)}" if seen and route is not None else "")
        + ")\n"
    )


def _write_report(result: Report, fmt: str, out: TextIO) -> None:
    from holyroute.readers.report import render_markdown, render_report, report_json

    if fmt == "json":
        out.write(json.dumps(report_json(result), indent=2) + "\n")
    elif fmt == "markdown":
        out.write(render_markdown(result) + "\n")
    else:
        out.write(render_report(result) + "\n")


def _write_report_plot(log: EventLog, route: str | None, plot: Path, out: TextIO, err: TextIO, *, fmt: str) -> int:
    from holyroute.readers.report import PlotUnavailableError, time_series, write_plot

    try:
        write_plot(time_series(log.events, route=route), plot)
    except PlotUnavailableError as exc:
        err.write(f"holyroute report: {exc}\n")
        return 2
    except OSError as exc:
        err.write(f"holyroute report: cannot write the plot to {plot}: {exc.strerror or exc}\n")
        return 2
    if fmt != "json":
        out.write(f"plot: {plot}\n")
    return 0


def run_rollout(
    action: str,
    route: str | None,
    path: Path,
    out: TextIO,
    err: TextIO,
    *,
    full: bool = False,
    reason: str = "",
    as_json: bool = False,
) -> int:
    """``holyroute rollout status|promote|abort|retry``: read or change the shared rollout state (the file or
    Redis the configuration's ``state`` names, so every running process follows)."""
    from holyroute.core.rollouts import Rollouts
    from holyroute.exceptions import ConfigError

    try:
        rollouts = Rollouts(path, emit=lambda event, fields: None)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    try:
        return _rollout_action(rollouts, action, route, out, err, full=full, reason=reason, as_json=as_json)
    finally:
        rollouts.close()


def _rollout_action(
    rollouts: Any,
    action: str,
    route: str | None,
    out: TextIO,
    err: TextIO,
    *,
    full: bool,
    reason: str,
    as_json: bool,
) -> int:
    backend = rollouts.backend
    if backend is not None and backend.name == "redis" and not backend.live:
        err.write(
            f"holyroute rollout: the shared state at {backend.where} cannot be reached; "
            "start Redis or fix state.url (nothing was changed)\n"
        )
        return 2
    if action != "status":
        if route is None:
            err.write(f"holyroute rollout {action}: name the route, e.g. holyroute rollout {action} chat-default\n")
            return 2
        try:
            engine = rollouts[route]
        except KeyError as exc:
            err.write(f"{exc.args[0]}\n")
            return 2
        if action == "promote":
            engine.promote(full=full)
        elif action == "abort":
            engine.abort(reason)
        else:
            engine.retry()
    rows = [engine_status for engine_status in rollouts.status() if route is None or engine_status["route"] == route]
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if not rows:
        out.write("no route in this configuration has a rollout\n")
        return 0
    header = f"{'route':<20}{'status':<13}{'step':>6}{'weight':>8}  reason"
    out.write(header + "\n")
    for row in rows:
        step = f"{row['step']}/{row['steps']}"
        out.write(f"{row['route']:<20}{row['status']:<13}{step:>6}{row['weight']:>7g}%  {row['reason']}\n")
        arms = ", ".join(f"{arm} {m['calls']} calls / {m['errors']} errors" for arm, m in row["arms"].items())
        out.write(f"{'':<20}this window: {arms}\n")
    return 0


def run_check(path: Path, out: TextIO, err: TextIO) -> int:
    """Probe every endpoint once, print a table and one line per route; 0 when every route has a path."""
    from holyroute.config.schema import load_config
    from holyroute.drivers.probe import check_once, dead_arms, render_results, route_endpoints, route_paths
    from holyroute.exceptions import ConfigError

    try:
        config = load_config(path)
        results = check_once(config)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    by_endpoint = {result.endpoint: result for result in results}
    out.write(render_results(results) + "\n\n")
    if config.state.backend == "redis":
        _shared_health(config, out)
    paths = route_paths(config, by_endpoint)
    for alias, ok in paths.items():
        if ok:
            dead = dead_arms(config, alias, by_endpoint)
            note = f" (no healthy endpoint for arm {', '.join(dead)}; its calls will fail)" if dead else ""
            out.write(f"route {alias}: ok{note}\n")
        else:
            names = route_endpoints(config, alias, fallbacks=True)
            down = ", ".join(f"{name} {by_endpoint[name].status}" for name in names)
            out.write(f"route {alias}: NO HEALTHY PATH ({down})\n")
    return 0 if all(paths.values()) else 1


def _shared_health(config: Any, out: TextIO) -> None:
    """What every process sharing the configuration's Redis agrees on: who is alive, what is cooling or ejected."""
    import redis

    from holyroute.state.redis.backend import RedisBackend

    backend = RedisBackend(config.state, emit=lambda event, fields: None)
    try:
        alive, changes = backend.snapshot()
    except redis.RedisError as exc:
        out.write(
            f"shared state {backend.where}: UNREACHABLE ({type(exc).__name__}); running processes route on their "
            "own state until it is back\n\n"
        )
        return
    finally:
        backend.redis.close()
    now = time.time()
    out.write(f"shared state {backend.where}: {alive} process(es) alive in the last 10s\n")
    for change in changes:
        what = f"{change.endpoint}/{change.model}" if change.model else change.endpoint
        out.write(f"  {what:<40}{change.kind:<10}{change.until - now:>8.1f}s left  {change.reason}\n")
    if not changes:
        out.write("  no endpoint is cooling down or ejected\n")
    out.write("\n")


def _canary(candidate_endpoint: str) -> dict[str, Any]:
    return {
        "sticky": "user",
        "rollout": {
            "stable": {"model": "gpt-4o", "endpoints": ["secondary"]},
            "candidate": {"model": "gpt-4.1", "endpoints": [candidate_endpoint]},
            "steps": [{"set_weight": 20}, {"analysis": {}}, {"set_weight": 50}, {"analysis": {}}],
            # Local upstreams answer in about a millisecond, where latency ratios are noise: judge errors here.
            "analysis": {"min_calls": 20, "min_duration": 0, "interval": 0, "max_latency_ratio": 5},
        },
        "fallbacks": ["chat-stable"],
    }


def demo_config(primary: str, secondary: str, slow: str, good: str = "", bad: str = "") -> dict[str, Any]:
    """The demo's routing: a 90/10 sticky split, two equivalent endpoints for the main arm, a cheap fallback; and
    two canary rollouts of gpt-4.1 against gpt-4o, one on a healthy upstream and one on a failing one."""
    endpoints = {
        "primary": {"base_url": primary, "api_key": "demo-key-primary"},
        "secondary": {"base_url": secondary, "api_key": "demo-key-secondary"},
        "slow": {"base_url": slow, "api_key": "demo-key-slow"},
    }
    canaries: dict[str, Any] = {}
    if good and bad:
        endpoints["candidate-good"] = {"base_url": good, "api_key": "demo-key-good"}
        endpoints["candidate-bad"] = {"base_url": bad, "api_key": "demo-key-bad"}
        canaries = {
            "canary-good": _canary("candidate-good"),
            "canary-bad": _canary("candidate-bad"),
            "chat-stable": {"targets": [{"model": "gpt-4o", "endpoints": ["secondary"]}]},
        }
    return {
        "endpoints": endpoints,
        "state": {"backend": "memory"},
        "routes": {
            "chat-default": {
                "sticky": "user",
                "targets": [
                    {"model": "gpt-4.1", "endpoints": ["primary", "secondary"], "weight": 90},
                    {"model": "deepseek-chat", "endpoints": ["slow"], "weight": 10},
                ],
                "fallbacks": ["chat-cheap"],
            },
            "chat-cheap": {"targets": [{"model": "gemini-2.5-flash", "endpoints": ["secondary"]}]},
            **canaries,
        },
    }


def run_demo(calls: int, events_path: Path, out: TextIO) -> int:
    import httpx2
    import structlog
    from openai import AsyncOpenAI, OpenAI

    from holyroute import AsyncTransport, Router, Transport, load_config
    from holyroute.testing import FakeUpstream, Reply

    events_path.parent.mkdir(parents=True, exist_ok=True)
    with events_path.open("w", encoding="utf-8") as log_file:
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.WriteLoggerFactory(file=log_file),
            cache_logger_on_first_use=False,
        )
        with (
            FakeUpstream("primary") as primary,
            FakeUpstream("secondary") as secondary,
            FakeUpstream("slow", latency_s=0.05) as slow,
            FakeUpstream("candidate-good") as good,
            FakeUpstream("candidate-bad") as bad,
        ):
            config = demo_config(primary.base_url, secondary.base_url, slow.base_url, good.base_url, bad.base_url)
            primary.fail_for(1.5, Reply.rate_limited(retry_after_s=0.5))
            bad.push(*[Reply.error(500) if n % 3 else Reply() for n in range(1000)])  # 2 in 3 calls fail
            out.write(
                "holyroute demo: 3 local upstreams on 127.0.0.1 (primary answers 429 for its first 1.5 s, "
                "slow adds 50 ms)\nroute chat-default: gpt-4.1 90% on [primary, secondary], deepseek-chat 10% on "
                "[slow], sticky per user, fallback chat-cheap\n\n"
            )
            sync_n = calls * 2 // 5
            async_n = calls * 2 // 5
            stream_n = calls - sync_n - async_n
            started = time.perf_counter()
            # One router for the sync and the async client: one set of cooldowns, budgets and rollout states.
            router = Router(load_config(config))
            sdk = OpenAI(
                api_key="unused-holyroute-routes", http_client=httpx2.Client(transport=Transport(router=router))
            )
            rollout_n = max(40, calls * 2 // 3)
            with sdk:
                _phase("sync calls", sync_n, out, lambda i: _chat(sdk, i))
                _phase("streaming calls", stream_n, out, lambda i: _stream(sdk, i))
                _phase("canary-good (healthy)", rollout_n, out, lambda i: _chat(sdk, i, "canary-good", 400))
                _phase("canary-bad (2/3 fail)", rollout_n, out, lambda i: _chat(sdk, i, "canary-bad", 400))
            asyncio.run(
                _async_phase(AsyncOpenAI, httpx2.AsyncClient(transport=AsyncTransport(router=router)), async_n, out)
            )
            elapsed = time.perf_counter() - started
        structlog.reset_defaults()
    _write_demo_summary(events_path, elapsed, out)
    return 0


def _write_demo_summary(events_path: Path, elapsed: float, out: TextIO) -> None:
    """What the demo's event log shows: calls, attempts, cooldowns and errors, the per-route table, the rollouts."""
    from holyroute.readers.aggregate import aggregate_events
    from holyroute.readers.log import read_events
    from holyroute.readers.report import render_table, summarise

    events = list(read_events(events_path))
    rows = summarise(aggregate_events(events))
    requests = [e for e in events if e["event"] == "holyroute.request"]
    attempts = sum(int(e.get("attempts") or 0) for e in requests)
    cooldowns = sum(1 for e in events if e["event"] == "holyroute.cooldown")
    failed = sum(1 for e in requests if e.get("outcome") == "error")
    out.write(f"\n{len(requests)} calls in {elapsed:.1f} s: {attempts} upstream attempts, {cooldowns} cooldowns, ")
    out.write(f"{failed} errors seen by the application\n\n")
    out.write(render_table(rows) + "\n\n")
    out.write("rollouts (gpt-4o -> gpt-4.1, judged by the candidate's error rate and latency against stable):\n")
    for event in events:
        if event["event"] == "holyroute.rollout":
            out.write(f"  {event['route']:<12} {event['status']:<12} {event['weight']:>5g}%  {event['reason']}\n")
    out.write(f"\nevents: {events_path} (JSON lines; one holyroute.request per call)\n")


def _chat(sdk: Any, i: int, model: str = "chat-default", users: int = 40) -> None:
    sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"question {i}"}], user=f"user-{i % users}"
    )


def _stream(sdk: Any, i: int) -> None:
    stream = sdk.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": f"tell me a story {i}"}],
        user=f"user-{i % 40}",
        stream=True,
    )
    for _ in stream:
        pass


def _phase(label: str, count: int, out: TextIO, one: Callable[[int], None]) -> None:
    for i in range(count):
        one(i)
        _progress(label, i + 1, count, out)
    out.write("\n")


async def _async_phase(factory: Any, http_client: Any, count: int, out: TextIO) -> None:
    sdk = factory(api_key="unused-holyroute-routes", http_client=http_client)
    done = 0
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        nonlocal done
        async with limit:
            await sdk.chat.completions.create(
                model="chat-default",
                messages=[{"role": "user", "content": f"async question {i}"}],
                user=f"user-{i % 40}",
            )
        done += 1
        _progress("async calls (8 at a time)", done, count, out)

    async with sdk:
        await asyncio.gather(*(one(i) for i in range(count)))
    out.write("\n")


def _progress(label: str, done: int, total: int, out: TextIO) -> None:
    width = 30
    filled = width * done // total
    if out.isatty() or done == total:
        out.write(f"\r  {label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        out.flush()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
