"""What importing holyroute costs a process that has already imported the OpenAI SDK: best of N fresh interpreters.

Three steps, each timed in its own fresh interpreter after ``import openai`` (which every user has paid for already):

* ``import holyroute``: what the ``import`` line costs. Public names load on first use (``holyroute/__init__.py``).
* ``holyroute.Transport``: ``import holyroute`` plus the configuration schema, the core and the drivers, i.e. what
  a process loads before its first routed call can be built.
* ``client(config)``: all of that plus building one client for a plain configuration (the price catalogue and
  structlog, which the router preloads so that its first call does not pay for them, and httpx2's own transport).

Each is reported two ways: the wall time of the step (``time.perf_counter`` in the child), and, for
``import holyroute``, the sum of the top-level ``-X importtime`` entries that follow ``openai`` (the issue's measure;
``-X importtime`` does not see modules imported through ``importlib``, so the lazy steps are timed by the wall clock
only). The best of ``--runs`` is what the machine can do; the median shows the noise of a shared machine.

By default the children compile to a private bytecode cache (``PYTHONPYCACHEPREFIX`` in a temporary directory,
warmed first), as an installed package would have; ``--no-bytecode-cache`` measures what a process that may not
write bytecode pays (``PYTHONDONTWRITEBYTECODE``: every module compiled on every start).

``--before REF`` checks out ``REF``'s ``holyroute/`` into a temporary directory (``git archive``) and times it
against this tree, alternating the two run by run:

    python benchmarks/bench_import.py                       # this tree, best of 5
    python benchmarks/bench_import.py --before main --runs 7
    python benchmarks/bench_import.py --before HEAD~3 --no-bytecode-cache --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = {
    "endpoints": {"local": {"base_url": "http://127.0.0.1:9/v1", "api_key": "bench"}},
    "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["local"]}]}},
    "state": {"backend": "memory"},
}

#: What each step runs after ``import openai`` and before printing the elapsed milliseconds.
STEPS: dict[str, str] = {
    "import holyroute": "import holyroute",
    "holyroute.Transport": "import holyroute\nholyroute.Transport",
    "client(config)": f"import holyroute\nholyroute.client({CONFIG!r}).close()",
}

CHILD = """\
import time, openai
start = time.perf_counter()
{step}
print("elapsed_ms", (time.perf_counter() - start) * 1e3)
print("from", holyroute.__file__)
"""

_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime_after_openai(stderr: str) -> float:
    """The sum, in ms, of the cumulative times of the top-level imports that follow ``openai``'s."""
    total_us = 0
    after = False
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match is None:
            continue
        top_level = len(match[3]) == 1
        if top_level and match[4] == "openai":
            after = True
        elif after and top_level:
            total_us += int(match[2])
    return total_us / 1e3


def run_once(tree: Path, step: str, env: Mapping[str, str]) -> tuple[float, float]:
    """(wall ms, importtime ms) of one fresh interpreter running ``step`` with ``tree`` first on the path."""
    child_env = {**env, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CHILD.format(step=step)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=tempfile.gettempdir(),  # not the repository: the tree on PYTHONPATH is the one imported
        check=True,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    if not Path(lines["from"]).is_relative_to(tree):  # an installed holyroute must not stand in for the tree
        raise RuntimeError(f"imported {lines['from']}, not the tree under {tree}")
    wall = float(lines["elapsed_ms"])
    return wall, importtime_after_openai(result.stderr)


def checkout(ref: str, into: Path) -> Path:
    """``ref``'s ``holyroute/`` package extracted under ``into``."""
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref, "holyroute"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per step and tree (default 5)")
    parser.add_argument("--before", metavar="REF", help="a git ref to time against this tree, alternately")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every module on every start")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="holyroute-bench-import-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONPYCACHEPREFIX")}
        if args.no_bytecode_cache:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": checkout(args.before, Path(tmp)), "after": ROOT}
        for tree in trees.values():  # warm the bytecode cache (and the OS's file cache) once
            run_once(tree, STEPS["client(config)"], env)

        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for step_name, step in STEPS.items():
            for i in range(args.runs):
                order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
                for label, tree in order:
                    samples.setdefault((step_name, label), []).append(run_once(tree, step, env))

    results = []
    for (step_name, label), runs in samples.items():
        walls = [wall for wall, _ in runs]
        importtimes = [it for _, it in runs]
        results.append(
            {
                "step": step_name,
                "tree": label,
                "runs": len(runs),
                "wall_best_ms": min(walls),
                "wall_median_ms": statistics.median(walls),
                "importtime_best_ms": min(importtimes) if step_name == "import holyroute" else None,
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    cache = "no bytecode cache (PYTHONDONTWRITEBYTECODE)" if args.no_bytecode_cache else "bytecode cached"
    print(f"python {sys.version.split()[0]}, {cache}; ms after `import openai`, best and median of {args.runs}\n")
    print(f"{'step':<22}{'tree':>8}{'best':>9}{'median':>9}{'-X importtime best':>20}")
    for r in results:
        importtime = r["importtime_best_ms"]
        shown = f"{importtime:.1f}" if isinstance(importtime, float) else "-"
        print(f"{r['step']:<22}{r['tree']:>8}{r['wall_best_ms']:>9.1f}{r['wall_median_ms']:>9.1f}{shown:>20}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
