"""Every example in README.md and docs/ runs here, through Sybil, against local fake upstreams.

Each page is one Sybil document with its own namespace, run in a fresh temporary directory with dummy keys in the
environment (``${OPENAI_API_KEY}`` and the others the pages name) and nothing reachable but 127.0.0.1:

- ``python`` blocks run in the page's namespace; a block that starts with ``>>>`` is a doctest whose output is
  compared (``...`` matches anything). holyroute's events, which structlog's defaults print, go to stderr.
- ``console`` blocks run each ``$ holyroute ...`` line through the command's own ``main`` and compare what it prints
  (stdout and stderr, in order) with the lines under it; ``...`` matches anything, as in a doctest. A command that
  exits non-zero must be followed by ``$ echo $?`` and its code, so an example never fails quietly. ``$ cat FILE``
  prints a file the examples wrote. Any other command is an error: mark the block skipped instead.
- ``yaml`` and ``toml`` blocks are parsed. A complete configuration (``endpoints`` and ``routes``) is loaded with
  :func:`holyroute.load_config`, then written to ``holyroute.yaml`` in the page's directory with every endpoint's
  ``base_url`` pointed at a :class:`~holyroute.testing.FakeUpstream` of its own, so the commands and code after it
  run on the configuration the reader just saw. ``json`` blocks are parsed.
- Any other block (``bash``, ``text``...) fails unless a ``<!-- skip: next "why" -->`` comment before it says why it
  is not run. Nothing is ignored silently.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog
import yaml
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import ClearNamespaceParser, CodeBlockParser, PythonCodeBlockParser, SkipParser

from holyroute.testing import FakeUpstream

__all__ = ["REPOSITORY", "DocPage", "sybil"]

#: The repository the pages belong to (examples may copy its files, such as the cassettes).
REPOSITORY = Path(__file__).resolve().parent.parent

#: The variables the pages' configurations name; dummies, since every endpoint is a local fake.
DUMMY_ENVIRONMENT = {
    "OPENAI_API_KEY": "sk-docs-openai",
    "OPENAI_BACKUP_KEY": "sk-docs-backup",
    "DEEPSEEK_API_KEY": "sk-docs-deepseek",
    "GEMINI_API_KEY": "sk-docs-gemini",
    "RESELLER_KEY": "sk-docs-reseller",
    "REDIS_PASSWORD": "docs-redis-password",
}
#: The width argparse formats help at, as scripts/gen_reference.py wrote the CLI reference.
HELP_COLUMNS = "100"
#: Variables that would change what a command does, unset while a page runs.
CLEARED_ENVIRONMENT = ("HOLYROUTE_CONFIG", "OPENAI_BASE_URL")
HANDLED_LANGUAGES = frozenset({"python", "console", "yaml", "toml", "json"})


class DocPage:
    """What one page's examples share: its directory and the fake upstreams its configurations point at."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="holyroute-docs-"))
        self.upstreams: dict[str, FakeUpstream] = {}
        self.last_exit: int | None = None
        self._previous_cwd = Path.cwd()
        names = (*DUMMY_ENVIRONMENT, *CLEARED_ENVIRONMENT, "COLUMNS")
        self._previous_env = {name: os.environ.get(name) for name in names}

    def enter(self) -> None:
        # structlog's defaults print holyroute's events to stdout, between the lines a doctest compares: the pages
        # show what the code returns, and the events (structlog's default rendering) go to stderr instead.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        os.chdir(self.directory)
        os.environ.update(DUMMY_ENVIRONMENT)
        os.environ["COLUMNS"] = HELP_COLUMNS
        for name in CLEARED_ENVIRONMENT:
            os.environ.pop(name, None)

    def close(self) -> None:
        for upstream in self.upstreams.values():
            upstream.stop()
        structlog.reset_defaults()  # a page may configure structlog, as an application does
        os.chdir(self._previous_cwd)
        for name, value in self._previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.directory, ignore_errors=True)

    def upstream(self, name: str, models: Iterable[str] = ()) -> FakeUpstream:
        """The fake upstream standing in for endpoint ``name``, started on first use, listing ``models`` (the ones
        the configuration sends it) in ``GET /models`` as a real provider would."""
        if name not in self.upstreams:
            self.upstreams[name] = FakeUpstream(name, models=sorted(models) or None).start()
        return self.upstreams[name]

    def local_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with each endpoint's ``base_url`` pointed at its fake upstream (keys and all else kept)."""
        served = _served_models(config)
        endpoints = {
            name: {**endpoint, "base_url": self.upstream(name, served.get(name, ())).base_url}
            for name, endpoint in config["endpoints"].items()
        }
        return {**config, "endpoints": endpoints}


def _served_models(config: dict[str, Any]) -> dict[str, set[str]]:
    """The upstream models a configuration sends to each endpoint: targets, rollout arms, shadows, rules' targets."""
    served: dict[str, set[str]] = {}
    for route in config.get("routes", {}).values():
        rollout = route.get("rollout") or {}
        rules = [rule["use"] for rule in route.get("rules", []) if isinstance(rule.get("use"), dict)]
        targets = [*route.get("targets", []), rollout.get("stable"), rollout.get("candidate"), route.get("shadow")]
        for target in [*targets, *rules]:
            if not isinstance(target, dict):
                continue
            for entry in target.get("endpoints", []):
                name, model = (entry, None) if isinstance(entry, str) else (entry["endpoint"], entry.get("model"))
                served.setdefault(name, set()).add(model or target["model"])
    return served


def _page(example: Example) -> DocPage:
    page = example.namespace["__docs_page__"]
    assert isinstance(page, DocPage)
    return page


def _setup(namespace: dict[str, Any]) -> None:
    page = DocPage()
    page.enter()
    namespace["__docs_page__"] = page


def _teardown(namespace: dict[str, Any]) -> None:
    _page_of(namespace).close()


def _page_of(namespace: dict[str, Any]) -> DocPage:
    page = namespace["__docs_page__"]
    assert isinstance(page, DocPage)
    return page


# ----------------------------------------------------------------------------------------------------
# Console blocks


def _run_holyroute(argv: list[str]) -> tuple[str, int]:
    """Run ``holyroute ARGV`` in this process as the entry point would: stdout and stderr in one stream, in order."""
    from holyroute.cli import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    # A progress line ends in '\r' and is written over on a terminal; in a pipe only its last state is written.
    return output.getvalue().replace("\r", ""), code


def _commands(source: str) -> Iterator[tuple[str, str]]:
    """Each ``$ command`` of a console block with the output printed under it."""
    command: str | None = None
    lines: list[str] = []
    for line in source.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, "\n".join(lines)
            command, lines = line[2:], []
        elif command is None:
            raise ValueError(f"a console block must start with '$ command', not {line!r}")
        else:
            lines.append(line)
    if command is not None:
        yield command, "\n".join(lines)


def _same_output(expected: str, actual: str) -> bool:
    want = "\n".join(line.rstrip() for line in expected.strip("\n").splitlines())
    got = "\n".join(line.rstrip() for line in actual.strip("\n").splitlines())
    return doctest.OutputChecker().check_output(want + "\n", got + "\n", doctest.ELLIPSIS)


def evaluate_console(example: Example) -> str | None:
    page = _page(example)
    pending: str | None = None  # a command that failed and whose exit code the example has not shown yet
    for command, expected in _commands(example.parsed):
        argv = shlex.split(command)
        if argv == ["echo", "$?"]:
            output, code = f"{page.last_exit}\n", 0
            pending = None
        elif argv[:1] == ["cat"] and len(argv) == 2:
            output, code = Path(argv[1]).read_text(encoding="utf-8"), 0
        elif argv[:1] == ["holyroute"]:
            if pending is not None:
                return f"'$ {pending}' exited {page.last_exit}; show it with '$ echo $?' before the next command"
            output, code = _run_holyroute(argv[1:])
        else:
            return f"'$ {command}' is not run by the docs tests: mark the block <!-- skip: next \"why\" -->"
        page.last_exit = code
        if code != 0:
            pending = command
        if not _same_output(expected, output):
            return f"'$ {command}' printed (exit {code}):\n{output}\nthe example shows:\n{expected}\n"
    if pending is not None:
        return f"'$ {pending}' exited {page.last_exit}; show it with '$ echo $?'"
    return None


# ----------------------------------------------------------------------------------------------------
# Configuration and data blocks


def evaluate_config(example: Example) -> None:
    """Parse a YAML or TOML block as holyroute reads a file; a complete configuration is also loaded, then written
    to ``holyroute.yaml`` with its endpoints on fake upstreams (``${VAR}`` references kept)."""
    from holyroute import load_config
    from holyroute.config.schema import _read_file

    language = example.region.lexemes.get("arguments")
    shown = Path(f"shown-example.{language}")
    shown.write_text(example.parsed, encoding="utf-8")
    data = _read_file(shown)  # the shielding of ${VAR} inside {...} that holyroute applies to its files
    if not isinstance(data, dict) or not {"endpoints", "routes"} <= data.keys():
        return  # a fragment: parsed above, and completed by the configuration it belongs in
    load_config(shown)  # as written, with the dummy keys: every problem raises here
    Path("holyroute.yaml").write_text(yaml.safe_dump(_page(example).local_config(data), sort_keys=False), "utf-8")
    load_config("holyroute.yaml")


def evaluate_json(example: Example) -> None:
    json.loads(example.parsed)


class UnrunBlockParser(CodeBlockParser):
    """Every fenced block in a language no evaluator runs: it fails unless it is marked skipped with a reason."""

    language = "*"

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexers(document):
            language = region.lexemes["arguments"]
            if language not in HANDLED_LANGUAGES:
                region.parsed = language
                region.evaluator = self._unrun
                yield region

    @staticmethod
    def _unrun(example: Example) -> str:
        return (
            f"a ```{example.parsed} block is not run by the docs tests: make it a python or console example, "
            'or say why it is not run with <!-- skip: next "why" --> before it'
        )


def sybil(root: Path) -> Sybil:
    """The Sybil that collects README.md and every page under docs/."""
    return Sybil(
        parsers=[
            SkipParser(),
            ClearNamespaceParser(),
            PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS),
            CodeBlockParser("console", evaluate_console),
            CodeBlockParser("yaml", evaluate_config),
            CodeBlockParser("toml", evaluate_config),
            CodeBlockParser("json", evaluate_json),
            UnrunBlockParser(),
        ],
        path=str(root),
        patterns=["README.md", "docs/*.md", "docs/*/*.md"],
        setup=_setup,
        teardown=_teardown,
        name="docs",
    )
