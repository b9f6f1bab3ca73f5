"""What request rules add to a call: 20 compiled rules evaluated against a realistic chat request.

Three cases, each the median (and the best) over many runs of the time per ``CompiledRules.match`` call:

* ``last rule matches``: the request is decided by rule 20, so every rule before it is evaluated and fails;
* ``no rule matches``: all 20 are evaluated and the route's own targets take the request (the worst case);
* ``first rule matches``: the best case, for scale.

Each case runs with the request headers as the core holds them (``httpx2.Headers``, whose case-insensitive ``get``
costs more than a dict's) and as a plain lowercase ``dict``. The rules mix every condition kind and operator (header
equality, metadata ``in``, body params with dotted paths, ``prompt_tokens`` ranges, ``regex``, ``exists``, ``any``,
``not``). The cost of estimating the input (``_context.estimate_input_tokens``, heuristic) for the same request is
reported too, as the core pays it once per call when a rule or a context check needs it.

    python benchmarks/bench_rules.py                 # default 200 runs x 2000 evaluations per case
    python benchmarks/bench_rules.py --runs 50 --json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx2

from holyroute.config.rules import CompiledRules, HeaderLookup, compile_rules
from holyroute.core.context import estimate_input_tokens

ALIASES = ["reasoning", "chat-cheap", "long-context", "fast", "vision", "assistant"]


def twenty_rules(last: Mapping[str, Any]) -> list[dict[str, Any]]:
    """19 rules the request below does not match, then ``last``."""
    return [
        {"when": {"header": {"x-task": "complex_reasoning"}}, "use": "reasoning"},
        {"when": {"metadata": {"tier": {"in": ["free", "trial"]}}}, "use": "chat-cheap"},
        {"when": {"prompt_tokens": {"gt": 100_000}}, "use": "long-context"},
        {"when": {"param": {"reasoning_effort": "high"}}, "use": "reasoning"},
        {"when": {"header": {"x-priority": {"gte": 8}}}, "use": "fast"},
        {"when": {"param": {"reasoning.effort": {"in": ["medium", "high"]}}}, "use": "reasoning"},
        {"when": {"metadata": {"team": {"regex": "^research-"}}}, "use": "reasoning"},
        {"when": {"header": {"x-task": "summarise"}, "prompt_tokens": {"gte": 20_000}}, "use": "long-context"},
        {"when": {"any": [{"header": {"x-urgent": "1"}}, {"metadata": {"sla": "interactive"}}]}, "use": "fast"},
        {"when": {"param": {"tools": {"exists": True}}, "metadata": {"tier": "free"}}, "use": "chat-cheap"},
        {"when": {"all": [{"param": {"stream": True}}, {"prompt_tokens": {"lt": 100}}]}, "use": "fast"},
        {"when": {"param": {"user": {"regex": "^batch-"}}}, "use": "chat-cheap"},
        {"when": {"header": {"x-task": {"in": ["vision", "ocr"]}}}, "use": "vision"},
        {"when": {"metadata": {"region": "eu"}, "not": {"header": {"x-allow-us": "true"}}}, "use": "assistant"},
        {"when": {"param": {"temperature": {"gt": 1.5}}}, "use": "chat-cheap"},
        {"when": {"prompt_tokens": {"gte": 50_000, "lt": 100_000}}, "use": "long-context"},
        {"when": {"header": {"x-tenant": {"regex": "^(acme|globex)$"}}}, "use": "fast"},
        {"when": {"param": {"max_completion_tokens": {"gt": 16_000}}}, "use": "reasoning"},
        {"when": {"metadata": {"experiment": {"exists": True}}}, "use": "assistant"},
        dict(last),
    ]


LAST = {"when": {"header": {"x-task": "draft"}, "metadata": {"tier": "pro"}}, "use": "fast"}
NEVER = {"when": {"header": {"x-task": "translate"}}, "use": "fast"}
REQUEST = {
    "model": "assistant",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant for the support team. Answer briefly."},
        {"role": "user", "content": "Draft a reply to the customer below, apologising for the delay.\n" + "x" * 1500},
    ],
    "metadata": {"tier": "pro", "team": "support", "region": "us"},
    "user": "user-4812",
    "temperature": 0.7,
    "max_completion_tokens": 800,
    "stream": False,
}
HEADERS = {
    "x-task": "draft",
    "x-tenant": "initech",
    "content-type": "application/json",
    "user-agent": "OpenAI/Python 3.0.0",
    "x-stainless-lang": "python",
    "accept": "application/json",
}


def compiled(rules: list[dict[str, Any]]) -> CompiledRules[Any]:
    result, problems = compile_rules(rules, known_aliases=ALIASES, at="routes.assistant.rules")
    assert not problems, problems
    return result


def timings_us(fn: Callable[[], object], *, runs: int, loops: int) -> tuple[float, float]:
    """The median and the best, over ``runs``, of the mean time of one call in a batch of ``loops`` calls, in
    microseconds (the best is what the code costs on an idle core; the median, what it cost in this run)."""
    for _ in range(loops):
        fn()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(runs):
        start = clock()
        for _ in range(loops):
            fn()
        samples.append((clock() - start) / loops / 1000)
    return statistics.median(samples), min(samples)


def core_paired(pairs: int) -> list[dict[str, Any]]:
    """The whole decision the core makes for one call (``Router.begin`` then the first step), on two routers that
    differ only in the route's 20 rules, alternated call by call: the median of the paired differences is what the
    rules add to a call, with the header view, the input estimate and the event-free bookkeeping included."""
    from holyroute import Router, load_config

    def config(rules: list[dict[str, Any]]) -> Any:
        aliases = {alias: {"targets": [{"model": "gpt-4.1-mini", "endpoints": ["e"]}]} for alias in ALIASES}
        aliases["assistant"] = {"targets": [{"model": "gpt-4.1", "endpoints": ["e"]}], "rules": rules}
        return load_config(
            {
                "endpoints": {"e": {"base_url": "http://127.0.0.1:1/v1"}},
                "routes": aliases,
                "state": {"backend": "memory"},
            }
        )

    rows = []
    body = json.dumps(REQUEST).encode()
    from holyroute.drivers.compat import header_view

    headers = header_view(httpx2.Headers(HEADERS))  # what the transport hands the core
    for case, rules in (
        ("core: 20 rules, none matches", twenty_rules(NEVER)),
        ("core: 20 rules, last matches", twenty_rules(LAST)),
    ):
        with_rules = Router(config(rules), log=False, sinks=[])
        without = Router(config([]), log=False, sinks=[])

        def decide(router: Router) -> float:
            start = time.perf_counter()
            call = router.begin("POST", "/v1/chat/completions", "", headers, body)
            assert call is not None
            call.next_step()
            return time.perf_counter() - start

        for _ in range(2000):  # warm up both
            decide(with_rules)
            decide(without)
        diffs, plain = [], []
        for i in range(pairs):
            if i % 2:
                a, b = decide(with_rules), decide(without)
            else:
                b, a = decide(without), decide(with_rules)
            diffs.append((a - b) * 1e6)
            plain.append(b * 1e6)
        with_rules.close()
        without.close()
        rows.append(
            {
                "case": case,
                "headers": "header_view",
                "rules": 20,
                "median_us": statistics.median(diffs),
                "best_us": statistics.median(plain),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=20000, help="paired core decisions (with rules, without)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    body = json.dumps(REQUEST).encode()
    data = json.loads(body)
    tokens = estimate_input_tokens(data, body)
    last, never = compiled(twenty_rules(LAST)), compiled(twenty_rules(NEVER))
    first = compiled([LAST, *twenty_rules(NEVER)[:19]])
    for rules, expected in ((last, 19), (never, None), (first, 0)):
        matched = rules.match(HEADERS, data, tokens)
        assert (matched.index if matched else None) == expected

    results: list[dict[str, Any]] = []
    header_kinds: list[tuple[str, HeaderLookup]] = [("httpx2.Headers", httpx2.Headers(HEADERS)), ("dict", HEADERS)]
    for kind, headers in header_kinds:
        for case, rules in (("last rule matches", last), ("no rule matches", never), ("first rule matches", first)):
            median, best = timings_us(
                functools.partial(rules.match, headers, data, tokens), runs=args.runs, loops=args.loops
            )
            results.append({"case": case, "headers": kind, "rules": len(rules), "median_us": median, "best_us": best})
    median, best = timings_us(functools.partial(estimate_input_tokens, data, body), runs=args.runs, loops=args.loops)
    results.append(
        {"case": "estimate_input_tokens (heuristic)", "headers": "-", "rules": 0, "median_us": median, "best_us": best}
    )

    results.extend(core_paired(args.pairs))

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'case':<36} {'headers':<15} {'rules':>5} {'median µs/eval':>15} {'best µs/eval':>13}")
    for row in results:
        head = f"{row['case']:<36} {row['headers']:<15} {row['rules']:>5}"
        print(f"{head} {row['median_us']:>15.2f} {row['best_us']:>13.2f}")
    print(f"({args.runs} runs x {args.loops} evaluations each; request body {len(body):,} bytes, ~{tokens:,} tokens)")
    print(
        f"(core rows: median of {args.pairs} paired differences, with rules - without; the 'best' column there is the"
        " median decision without rules, for scale)"
    )
    print(f"(load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
