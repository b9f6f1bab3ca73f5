"""The response cache: what a hit adds to a call, against a routed call, and memory within the cap.

Per-call timings, the official SDK over an in-memory inner transport that answers instantly (so only holyroute's own
work is measured, not sockets), each comparison alternating its two clients call by call and reporting the median of
the paired differences against the raw SDK (no holyroute):

* ``routed``: a routed call on a route without a cache (what holyroute adds anyway; the issue's target for a hit);
* ``routed, cache bypass``: a routed call on a caching route that the cache does not apply to (temperature 1): what
  the hook costs a call it does not serve;
* ``hit``: the same call answered from the memory cache (the upstream is never asked);
* ``routed, streamed`` and ``hit, streamed``: the same two, to a streaming caller (the hit replayed as a stream).

Then the memory store is filled with 100,000 distinct entries (chat answers of about 1 KB, under real keys) with a
cap of 16 MiB: its counted size and the memory tracemalloc sees it hold must both stay within the cap.

    python benchmarks/bench_cache.py               # default 2000 pairs per comparison
    python benchmarks/bench_cache.py --pairs 500 --entries 100000 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import structlog
from _common import percentile  # benchmarks/_common.py

import holyroute
from holyroute.boundary.cache import StoredAnswer, stored_bytes
from holyroute.core.cache import cache_key
from holyroute.state.cache.memory import MemoryCache

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]
CHAT_BODY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4.1",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "A prince avenges."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 19, "completion_tokens": 4, "total_tokens": 23},
}
BASE = "http://127.0.0.1:9/v1"
_CHUNK = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}
SSE_BODY = (
    b"".join(
        b"data: " + json.dumps({**_CHUNK, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode()
        + b"\n\n"
        for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": "A prince avenges."}, None),
                              ({}, "stop"))
    )
    + b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[],'
    + b'"usage":{"prompt_tokens":19,"completion_tokens":4,"total_tokens":23}}\n\n'
    + b"data: [DONE]\n\n"
)  # fmt: skip


def canned(request: httpx2.Request) -> httpx2.Response:
    """The answer, instantly: whole, or as an event stream when the request asks for one."""
    if b'"stream":true' in request.content.replace(b" ", b""):
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=httpx2.ByteStream(SSE_BODY))
    return httpx2.Response(
        200, headers={"content-type": "application/json"}, stream=httpx2.ByteStream(json.dumps(CHAT_BODY).encode())
    )


def config() -> dict[str, Any]:
    target = {"targets": [{"model": "gpt-4.1", "endpoints": ["bench"]}]}
    return {
        "endpoints": {"bench": {"base_url": BASE, "api_key": "bench-key"}},
        "prices": {"gpt-4.1": {"input": 2.0, "output": 8.0}},
        "routes": {"plain": target, "cached": {**target, "cache": {"ttl": "1h"}}},
        "state": {"backend": "memory"},
    }


def paired(name: str, raw: Callable[[], Any], other: Callable[[], Any], pairs: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        raw()
        other()
    raw_t: list[float] = []
    other_t: list[float] = []
    clock = time.perf_counter
    for i in range(pairs):
        first, second = (raw, other) if i % 2 == 0 else (other, raw)
        start = clock()
        first()
        middle = clock()
        second()
        end = clock()
        a, b = (middle - start, end - middle) if i % 2 == 0 else (end - middle, middle - start)
        raw_t.append(a)
        other_t.append(b)
    diffs = [(b - a) * 1e6 for a, b in zip(raw_t, other_t, strict=True)]
    return {
        "comparison": name,
        "pairs": pairs,
        "raw_p50_us": percentile(raw_t, 50) * 1e6,
        "holyroute_p50_us": percentile(other_t, 50) * 1e6,
        "added_p50_us": statistics.median(diffs),
        "added_p99_us": percentile(diffs, 99),
    }


def memory(entries: int, cap: int) -> dict[str, Any]:
    """Fill a memory store capped at ``cap`` bytes with ``entries`` distinct answers; what it counts and holds."""
    body = json.dumps(CHAT_BODY | {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 700},
                                                "finish_reason": "stop"}]}).encode()  # fmt: skip
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = MemoryCache(max_entries=10 * entries, max_bytes=cap)
    peak_counted = 0
    started = time.perf_counter()
    for index in range(entries):
        key = cache_key(route="cached", models=["gpt-4.1"], api="chat", tenant=None, data={"messages": index})
        store.put(key, stored_bytes(StoredAnswer(body, "gpt-4.1", 0.0001, 1.0)), 3600)
        peak_counted = max(peak_counted, store.size)
    seconds = time.perf_counter() - started
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "entries_written": entries,
        "entries_kept": len(store),
        "cap_bytes": cap,
        "counted_peak_bytes": peak_counted,
        "held_bytes": held,
        "within_cap": peak_counted <= cap and held <= cap,
        "put_us": seconds / entries * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--cap-mib", type=float, default=16.0)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    structlog.configure(  # a production JSON pipeline, to /dev/null
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=devnull),
        cache_logger_on_first_use=True,
    )
    mock = httpx2.MockTransport(canned)
    raw = openai.OpenAI(base_url=BASE, api_key="k", http_client=httpx2.Client(transport=mock))
    routed = openai.OpenAI(
        base_url=BASE, api_key="k", http_client=httpx2.Client(transport=holyroute.Transport(config(), transport=mock))
    )
    chat = {"model": "gpt-4.1", "messages": MESSAGES, "temperature": 0}
    results = []
    with raw, routed:
        comparisons: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            ("routed (no cache)", lambda: raw.chat.completions.create(**chat),
             lambda: routed.chat.completions.create(**{**chat, "model": "plain"})),
            ("routed, cache bypass", lambda: raw.chat.completions.create(**{**chat, "temperature": 1}),
             lambda: routed.chat.completions.create(**{**chat, "model": "cached", "temperature": 1})),
            ("hit", lambda: raw.chat.completions.create(**chat),
             lambda: routed.chat.completions.create(**{**chat, "model": "cached"})),
            ("routed, streamed", lambda: list(raw.chat.completions.create(stream=True, **chat)),
             lambda: list(routed.chat.completions.create(stream=True, **{**chat, "model": "plain"}))),
            ("hit, streamed", lambda: list(raw.chat.completions.create(stream=True, **chat)),
             lambda: list(routed.chat.completions.create(stream=True, **{**chat, "model": "cached"}))),
        ]  # fmt: skip
        for name, a, b in comparisons:
            results.append(paired(name, a, b, args.pairs, args.warmup))
    devnull.close()
    stored = memory(args.entries, int(args.cap_mib * 1024 * 1024))

    if args.json:
        print(json.dumps({"calls": results, "memory": stored}, indent=2))
        return 0
    print(f"holyroute {holyroute.__version__}, openai {openai.__version__}, python {sys.version.split()[0]}")
    print("per-call times in microseconds; added = median of paired differences against the raw SDK\n")
    print(f"{'comparison':<24}{'pairs':>7}{'raw p50':>10}{'hr p50':>10}{'added p50':>11}{'added p99':>11}")
    for r in results:
        print(
            f"{r['comparison']:<24}{r['pairs']:>7}{r['raw_p50_us']:>10.0f}{r['holyroute_p50_us']:>10.0f}"
            f"{r['added_p50_us']:>11.0f}{r['added_p99_us']:>11.0f}"
        )
    print(
        f"\nmemory store: {stored['entries_written']:,} distinct entries written, {stored['entries_kept']:,} kept; "
        f"cap {stored['cap_bytes']:,} B, counted peak {stored['counted_peak_bytes']:,} B, "
        f"held (tracemalloc) {stored['held_bytes']:,} B; within the cap: {stored['within_cap']}; "
        f"{stored['put_us']:.1f} us per put (key included, under tracemalloc)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
