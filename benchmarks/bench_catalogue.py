"""What pricing a call through the genai-prices catalogue costs, against the hand-written table it replaced.

A paired micro-benchmark of the cost step alone: the old ``cost_usd(usage, row)`` with a precomputed row, and
``catalogue_cost`` (cached lookup, the price at the call's time and service tier, the catalogue's arithmetic), timed
in alternating batches (the order flips every pair) and reported as the median of the paired per-call differences.
Also reports the one-off cost of the first priced call in a process (importing the catalogue's data, first lookup),
which ``import holyroute`` does not pay.

    python benchmarks/bench_catalogue.py             # 300 pairs of 200-call batches
    python benchmarks/bench_catalogue.py --pairs 100 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from holyroute.boundary.parse import Usage
from holyroute.config.catalogue import catalogue_cost
from holyroute.config.prices import BUILTIN_PRICES, PriceRow
from holyroute.core.usage import cost_usd

OPENAI = "https://api.openai.com/v1"
USAGES = {
    "chat, cached": Usage(3_000, 200, 1_024, 0, model="gpt-4.1-2025-04-14"),
    "chat, flex + reasoning": Usage(10_000, 1_000, 2_000, 400, model="gpt-5-2025-08-07", service_tier="flex"),
}

FIRST_USE = """
import time
from holyroute.boundary.parse import Usage
from holyroute.config.catalogue import catalogue_cost
start = time.perf_counter()
catalogue_cost(Usage(10, 10), ("gpt-4.1",), provider=None, base_url="https://api.openai.com/v1", when=time.time())
print((time.perf_counter() - start) * 1000)
"""


def batch(fn: Callable[[], object], size: int) -> float:
    start = time.perf_counter()
    for _ in range(size):
        fn()
    return (time.perf_counter() - start) / size


def paired(old: Callable[[], object], new: Callable[[], object], pairs: int, size: int) -> dict[str, float]:
    for _ in range(3):
        batch(old, size)
        batch(new, size)
    old_t, new_t = [], []
    for i in range(pairs):
        if i % 2 == 0:
            old_t.append(batch(old, size))
            new_t.append(batch(new, size))
        else:
            new_t.append(batch(new, size))
            old_t.append(batch(old, size))
    diffs = [(b - a) * 1e6 for a, b in zip(old_t, new_t, strict=True)]
    return {
        "table_us": statistics.median(old_t) * 1e6,
        "catalogue_us": statistics.median(new_t) * 1e6,
        "added_us_p50": statistics.median(diffs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {}
    first = subprocess.run([sys.executable, "-c", FIRST_USE], capture_output=True, text=True, check=True, timeout=120)
    results["first_priced_call_ms"] = round(float(first.stdout), 1)
    when = time.time()
    for name, usage in USAGES.items():
        row = BUILTIN_PRICES["gpt-4.1" if usage.model and usage.model.startswith("gpt-4.1") else "gpt-5"]
        models = (usage.model or "", "gpt-4.1")

        def old(usage: Usage = usage, row: PriceRow = row) -> object:
            return cost_usd(usage, row)

        def new(usage: Usage = usage, models: tuple[str, ...] = models) -> object:
            return catalogue_cost(usage, models, provider=None, base_url=OPENAI, when=when)

        results[name] = {k: round(v, 2) for k, v in paired(old, new, args.pairs, args.batch).items()}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
