"""The ``holyroute`` command: one grammar for every subcommand, and errors as messages, never tracebacks.

Every subcommand that reads a configuration takes ``--config PATH`` and, without it, reads ``$HOLYROUTE_CONFIG``,
then ``./holyroute.yaml`` (``.yml``, ``.toml``), as :func:`holyroute.client` does. Exit status, for every command:
0 done; 1 what was checked is unhealthy, or the action failed or changed nothing; 2 a usage or configuration error.
A :class:`~holyroute.exceptions.ConfigError` anywhere is a message and exit 2; any other error is one line naming its
type (never its message, which may quote a URL with a key) and exit 1, with the traceback only under ``--debug``.

The demo is an application, so unlike the library it configures structlog: events go as JSON lines to the file it
names. Nothing in the demo touches the network beyond 127.0.0.1, and no real key is used. ``check`` sends one probe
per endpoint and model to the configured URLs, with the configured keys, and never prints a key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from holyroute.config.prices import PriceRow
    from holyroute.config.schema import Config
    from holyroute.core.call import Router
    from holyroute.readers.log import EventLog
    from holyroute.readers.report import Report

__all__ = ["main"]

_DESCRIPTION = """\
Route, fail over and cost every OpenAI SDK call from inside the process.

Commands that read a configuration take --config PATH; without it they read $HOLYROUTE_CONFIG, then ./holyroute.yaml
(like holyroute.client()). Run "holyroute COMMAND --help" for a command's options and an example.
"""

_EXIT_CODES = "exit status: 0 ok; 1 {one}; 2 a usage or configuration error"

_TOP_EPILOG = f"""\
example:
  holyroute demo                       run offline on local fake upstreams; writes holyroute.yaml and an event log
  holyroute check --config holyroute.yaml

{_EXIT_CODES.format(one="what was checked is unhealthy, or the action failed")}; bare holyroute prints this help
and exits 2. Errors are one message, never a traceback, unless --debug is given.
"""

#: Per command: its one-line help, what exit status 1 means for it, and an example.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "route calls through the OpenAI SDK across five local fake upstreams, offline; writes a configuration and "
        "an event log",
        "never (the demo's own calls failing shows in its table, not in its exit status)",
        "holyroute demo --calls 300 --events demo/events.jsonl   # and demo/holyroute.yaml beside it",
    ),
    "check": (
        "probe every endpoint once and judge every arm: is its model served, which share of a route's traffic "
        "has no healthy path",
        "a weighted arm of some route has no healthy endpoint serving its model",
        "holyroute check --config holyroute.yaml --probe chat",
    ),
    "rollout": (
        "show or steer the rollouts of a configuration (the shared state every process follows)",
        "the action changed nothing (for example promote on an aborted rollout); the message says why",
        "holyroute rollout status --config holyroute.yaml\n  holyroute rollout promote chat-default",
    ),
    "report": (
        "per route and arm from an event log: errors, latency, cost and a verdict against the control",
        "never (a verdict of ROLLBACK is a result, not a failure)",
        "holyroute report holyroute-demo-events.jsonl --route chat-default --format markdown",
    ),
    "dashboard": (
        "a local web page that follows an event log live: endpoints, routes, rollouts, failovers",
        "never",
        "holyroute dashboard --events holyroute-demo-events.jsonl --port 8000",
    ),
    "explain": (
        "what the router would do with a request and why (rules, sizes, costs, health); sends nothing",
        "never (a model no route serves is explained as passed through untouched)",
        "holyroute explain request.json --header 'x-task: complex_reasoning'",
    ),
    "prices": (
        "the prices in use: per endpoint, configured, from the genai-prices catalogue",
        "never",
        "holyroute prices --json",
    ),
    "schema": (
        "print the configuration's JSON Schema, for editors to complete and check holyroute.yaml",
        "never",
        "holyroute schema > holyroute.schema.json",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """``holyroute ARGS``: the exit status (0 ok, 1 unhealthy or failed, 2 usage or configuration error)."""
    from holyroute.exceptions import ConfigError

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 2
    try:
        return _dispatch(parser, args)
    except ConfigError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"{exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        # The type only (and for a file, the OS's reason): another library's message may quote a URL with a key.
        what = (
            f"{type(exc).__name__}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        )
        sys.stderr.write(f"holyroute {args.command}: failed with {what} (run with --debug for the traceback)\n")
        return 1


def _parser() -> argparse.ArgumentParser:  # long but linear: one block per command
    from holyroute import __version__

    parser = argparse.ArgumentParser(
        prog="holyroute",
        description=_DESCRIPTION,
        epilog=_TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"holyroute {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    with_config = argparse.ArgumentParser(add_help=False, parents=[common])
    with_config.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="the configuration (YAML or TOML); default: $HOLYROUTE_CONFIG, then ./holyroute.yaml",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        summary, one, example = _COMMANDS[name]
        return commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}\n\n{_EXIT_CODES.format(one=one)}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=parents,
        )

    demo = command("demo", [common])
    demo.add_argument(
        "--calls",
        type=int,
        default=300,
        help="calls to the 90/10 route chat-default, split sync / streaming / async (default 300); each canary "
        "route gets two thirds as many more",
    )
    demo.add_argument(
        "--events", type=Path, default=Path("holyroute-demo-events.jsonl"), help="JSON-lines event log to write"
    )
    demo.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="where to write the demo's configuration (default: holyroute.yaml beside the event log); never "
        "overwrites a file the demo did not write",
    )
    check = command("check", [with_config])
    check.add_argument(
        "--probe",
        choices=["models", "chat"],
        help="models: GET /models, and is each arm's model listed; chat: a 1-token chat call per endpoint and model "
        "(default: each endpoint's health_check.probe, else models)",
    )
    rollout = command("rollout", [with_config])
    rollout.add_argument("action", choices=["status", "promote", "abort", "retry"])
    rollout.add_argument("route", nargs="?", help="the route alias (every rollout for status)")
    rollout.add_argument("--full", action="store_true", help="promote: straight to 100%%")
    rollout.add_argument("--reason", default="aborted by hand", help="abort: why (recorded in the event)")
    rollout.add_argument("--json", action="store_true", help="print the state as JSON")
    report = command("report", [with_config])
    report.add_argument("events", type=Path, help="the JSON-lines event log (structlog JSONRenderer)")
    report.add_argument("--route", help="report only this route")
    report.add_argument("--format", choices=["table", "json", "markdown"], default="table", help="default: table")
    report.add_argument("--plot", type=Path, metavar="FILE.png", help="latency and errors over time (needs [plot])")
    report.add_argument("--margin", type=float, default=0.01, help="error-rate non-inferiority margin (default 0.01)")
    report.add_argument("--alpha", type=float, default=0.05, help="level of the error-rate test (default 0.05)")
    report.add_argument("--max-latency-ratio", type=float, default=1.5, help="p95 vs the control's (default 1.5)")
    report.add_argument("--min-calls", type=int, default=100, help="calls per arm before PROMOTE (default 100)")
    dashboard = command("dashboard", [with_config])
    dashboard.add_argument("--events", type=Path, required=True, help="the JSON-lines event log to follow")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    explain = command("explain", [with_config])
    explain.add_argument("request", type=Path, help="the request body as JSON (model, messages, max_tokens, ...)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME: VALUE", help="a request header (repeatable)"
    )
    prices = command("prices", [with_config])
    prices.add_argument("--json", action="store_true", help="print the rows as JSON")
    command("schema", [common])
    return parser


def resolve_config(given: Path | None, *, required: bool, environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration a command reads: ``--config``, else ``$HOLYROUTE_CONFIG``, else ``./holyroute.yaml``
    (``.yml``, ``.toml``), as :func:`holyroute.client` finds it. None when there is none and it is optional."""
    from holyroute.config.schema import default_config_path
    from holyroute.exceptions import ConfigError

    if given is not None:
        return given
    found = default_config_path(os.environ if environ is None else environ)
    if found is None and required:
        raise ConfigError(
            "no configuration given: pass --config PATH, set HOLYROUTE_CONFIG, or create ./holyroute.yaml "
            "(holyroute demo writes one)"
        )
    return found


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "schema":
        return run_schema(sys.stdout)
    if args.command == "demo":
        if args.calls < 10:
            parser.error("--calls must be at least 10")
        return run_demo(args.calls, args.events, sys.stdout, config=args.config, err=sys.stderr)
    required = args.command in ("check", "rollout", "explain")
    config = resolve_config(args.config, required=required)
    if args.command == "explain":
        assert config is not None
        return run_explain(config, args.request, args.header, sys.stdout, sys.stderr)
    if args.command == "prices":
        return run_prices(config, sys.stdout, sys.stderr, as_json=args.json)
    if args.command == "check":
        assert config is not None
        return run_check(config, sys.stdout, sys.stderr, probe=args.probe)
    if args.command == "rollout":
        assert config is not None
        return run_rollout(
            args.action,
            args.route,
            config,
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
            config=config,
            route=args.route,
            fmt=args.format,
            plot=args.plot,
            margin=args.margin,
            alpha=args.alpha,
            max_latency_ratio=args.max_latency_ratio,
            min_calls=args.min_calls,
        )
    if args.command == "dashboard":
        return run_dashboard(args.events, sys.stdout, sys.stderr, config=config, host=args.host, port=args.port)
    return 2  # pragma: no cover - argparse allows only the commands above


def run_schema(out: TextIO) -> int:
    """``holyroute schema``: the configuration's JSON Schema, from the pydantic models that validate it."""
    from holyroute.config.schema import json_schema

    out.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0


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
    overridden: set[str] = set()
    if path is not None:
        try:
            config = load_config(path)
        except ConfigError as exc:
            err.write(f"{exc}\n")
            return 2
        rows += _config_price_rows(config)
        overridden = set(config.prices)  # the configuration's row is the one in use, for every endpoint
    for model, row in BUILTIN_PRICES.items():
        if model in overridden:
            continue
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
    if action == "status":
        if route is not None and route not in rollouts:
            err.write(f"holyroute rollout status: {_no_rollout(rollouts, route)}\n")
            return 2
    else:
        if route is None:
            err.write(f"holyroute rollout {action}: name the route, e.g. holyroute rollout {action} chat-default\n")
            return 2
        if route not in rollouts:
            err.write(f"holyroute rollout {action}: {_no_rollout(rollouts, route)}\n")
            return 2
        refused = _change_rollout(rollouts[route], action, route, full=full, reason=reason)
        if refused:
            err.write(f"holyroute rollout {action}: {refused}\n")
            return 1
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


def _no_rollout(rollouts: Any, route: str) -> str:
    """Why ``route`` cannot be shown or changed, naming the routes that have a rollout."""
    known = ", ".join(sorted(rollouts)) or "none"
    if route in rollouts.config.routes:
        return f"route {route!r} has no rollout; routes with a rollout: {known}"
    return f"no route {route!r} in this configuration; routes with a rollout: {known}"


def _change_rollout(engine: Any, action: str, route: str, *, full: bool, reason: str) -> str | None:
    """Promote, abort or retry; None when the state changed, else why nothing changed (the command exits 1)."""
    engine.status()  # follows other processes' changes and advances what is due, as status shows it
    before = engine.state
    where = f"{route} is {before.status} (step {engine.position(before)}/{len(engine.steps)}: {before.reason})"
    if action == "promote" and before.status == "aborted":
        return f"{where}; an aborted rollout is not promoted: holyroute rollout retry {route} starts it again"
    if action == "promote" and before.status == "completed":
        return f"{where}; there is nothing left to promote"
    if action == "abort" and before.status == "aborted":
        return f"{where}; it is already aborted (the candidate takes no traffic)"
    if action == "promote":
        after = engine.promote(full=full)
    elif action == "abort":
        after = engine.abort(reason)
    else:
        after = engine.retry()
    if after.version == before.version:
        return f"{where}; nothing changed (another process may have changed it first: run holyroute rollout status)"
    return None


def run_check(path: Path, out: TextIO, err: TextIO, *, probe: str | None = None) -> int:
    """``holyroute check``: probe every endpoint once, then judge every arm: is its model served on a healthy
    endpoint, and what share of each route's traffic has no healthy path. 0 when every arm that draws traffic has
    one, 1 when one has none, 2 for a bad configuration."""
    from holyroute.config.schema import load_config
    from holyroute.drivers.probe import check_paths, judge_routes, render_arms, render_results
    from holyroute.state.factory import require_backend

    config = load_config(path)
    require_backend(config.state)  # before probing: a missing extra is a configuration error (exit 2)
    results, paths = check_paths(config, probe=probe)
    out.write(render_results(results) + "\n\n")
    if config.state.backend == "redis":
        _shared_health(config, out)
    checks = judge_routes(config, paths, _rollout_weights(config))
    out.write(render_arms(checks) + "\n")
    return 0 if all(check.ok for check in checks) else 1


def _rollout_weights(config: Config) -> dict[str, float | None]:
    """Each rollout's candidate weight now, read from the shared state without writing anything; None if unreadable."""
    from holyroute.state.factory import open_backend

    aliases = [alias for alias, route in config.routes.items() if route.rollout is not None]
    if not aliases:
        return {}
    weights: dict[str, float | None] = dict.fromkeys(aliases)
    try:
        backend = open_backend(
            config.state, emit=lambda event, fields: None, clock=time.monotonic, wall_clock=time.time, read_only=True
        )
    except Exception:  # the arms are still judged; only their shares are unknown
        return weights
    try:
        store = backend.rollout_store()
        for alias in aliases:
            try:
                state = store.load(alias)
            except Exception:
                continue
            weights[alias] = 0.0 if state is None else state.weight
    finally:
        backend.close()
    return weights


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
            # Local upstreams answer in about a millisecond, where latency ratios are noise (one write of the state
            # file, or the scheduler of a busy machine, makes a p95): judge errors here.
            "analysis": {"min_calls": 20, "min_duration": 0, "interval": 0, "max_latency_ratio": None},
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


#: The first line of every configuration the demo writes: the demo overwrites only files that begin with it.
DEMO_MARK = "# holyroute demo configuration"


def demo_files(events_path: Path, config: Path | None = None) -> tuple[Path, Path]:
    """Where the demo writes its configuration and its rollout state: ``config`` (default ``holyroute.yaml``) and
    ``holyroute-demo-state.json``, beside the event log."""
    return (config or events_path.parent / "holyroute.yaml"), events_path.parent / "holyroute-demo-state.json"


def _foreign(path: Path) -> bool:
    """Whether ``path`` exists and was not written by the demo (so the demo must not overwrite it)."""
    try:
        with path.open(encoding="utf-8") as file:
            return not file.readline().startswith(DEMO_MARK)
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True


def run_demo(
    calls: int, events_path: Path, out: TextIO, *, config: Path | None = None, err: TextIO | None = None
) -> int:
    """``holyroute demo``: ``calls`` calls to chat-default and two thirds as many (at least 40) to each of the two
    canary routes, on five local fake upstreams. Writes the event log, the configuration beside it (which the
    commands it prints at the end read) and the rollouts' state file. 2 when the configuration path holds a file the
    demo did not write."""
    # Just over 60 lines: the files it writes, the structlog setup and the five upstreams' lifetimes nest in one place
    # so that each ends on every path; the banner and the traffic are their own functions.
    import structlog
    import yaml

    from holyroute import Router, load_config
    from holyroute.testing import FakeUpstream, Reply

    config_path, state_path = demo_files(events_path, config)
    if _foreign(config_path):
        (err or sys.stderr).write(
            f"holyroute demo: {config_path} exists and was not written by the demo; nothing was run. Pass "
            "--config demo.yaml (or another free path), or run the demo in another directory\n"
        )
        return 2
    events_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (state_path, state_path.with_name(state_path.name + ".lock")):
        stale.unlink(missing_ok=True)  # each run starts its rollouts afresh
    rollout_n = max(40, calls * 2 // 3)
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
            routing = demo_config(primary.base_url, secondary.base_url, slow.base_url, good.base_url, bad.base_url)
            routing["state"] = {"backend": "file", "path": str(state_path)}
            config_path.write_text(
                f"{DEMO_MARK}: its upstreams ran on 127.0.0.1 while the demo ran and are gone now\n"
                + yaml.safe_dump(routing, sort_keys=False),
                encoding="utf-8",
            )
            primary.fail_for(1.5, Reply.rate_limited(retry_after_s=0.5))
            bad.push(*[Reply.error(500) if n % 3 else Reply() for n in range(1000)])  # 2 in 3 calls fail
            out.write(_demo_banner(calls, rollout_n, config_path))
            started = time.perf_counter()
            # One router for the sync and the async client: one set of cooldowns, budgets and rollout states.
            router = Router(load_config(config_path))
            try:
                _demo_traffic(router, calls, rollout_n, out)
            finally:
                router.close()
            elapsed = time.perf_counter() - started
        structlog.reset_defaults()
    _write_demo_summary(events_path, elapsed, out)
    out.write(_next_commands(events_path, config_path))
    return 0


def _demo_banner(calls: int, rollout_n: int, config_path: Path) -> str:
    """What the demo says it runs, before it runs it."""
    return (
        "holyroute demo: 5 local fake upstreams on 127.0.0.1: primary (answers 429 for its first 1.5 s), "
        "secondary, slow (adds 50 ms), candidate-good, candidate-bad (fails 2 calls in 3)\n"
        "route chat-default: gpt-4.1 90% on [primary, secondary], deepseek-chat 10% on [slow], sticky per "
        "user, fallback chat-cheap\n"
        "routes canary-good, canary-bad: rollouts of gpt-4.1 (candidate) against gpt-4o (stable)\n"
        f"{calls + 2 * rollout_n} calls: {calls} to chat-default (sync, streaming, async), {rollout_n} to "
        f"each canary route\nconfiguration: {config_path}\n\n"
    )


def _demo_traffic(router: Router, calls: int, rollout_n: int, out: TextIO) -> None:
    """The demo's calls through the official SDK, sync, streaming and async, all on one ``router``."""
    import httpx2
    from openai import AsyncOpenAI, OpenAI

    from holyroute import AsyncTransport, Transport

    sync_n = calls * 2 // 5
    async_n = calls * 2 // 5
    stream_n = calls - sync_n - async_n
    sdk = OpenAI(api_key="unused-holyroute-routes", http_client=httpx2.Client(transport=Transport(router=router)))
    with sdk:
        _phase("sync calls", sync_n, out, lambda i: _chat(sdk, i))
        _phase("streaming calls", stream_n, out, lambda i: _stream(sdk, i))
        _phase("canary-good (healthy)", rollout_n, out, lambda i: _chat(sdk, i, "canary-good", 400))
        _phase("canary-bad (2/3 fail)", rollout_n, out, lambda i: _chat(sdk, i, "canary-bad", 400))
    asyncio.run(_async_phase(AsyncOpenAI, httpx2.AsyncClient(transport=AsyncTransport(router=router)), async_n, out))


def _next_commands(events_path: Path, config_path: Path) -> str:
    """The commands that read what the demo wrote, exactly as they can be typed in the same directory."""
    events, config = shlex.quote(str(events_path)), shlex.quote(str(config_path))
    return (
        "\nnext, on what the demo wrote:\n"
        f"  holyroute report {events} --config {config}\n"
        f"  holyroute dashboard --events {events} --config {config}\n"
        f"  holyroute rollout status --config {config}\n"
    )


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
    out.write("rollouts (gpt-4o -> gpt-4.1, judged by the candidate's error rate against stable's):\n")
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
