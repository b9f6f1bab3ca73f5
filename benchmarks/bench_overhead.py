"""Per-call overhead of holyroute against the raw OpenAI SDK, measured side by side in one run.

Three comparisons, each alternating the two clients call by call (the order flips every pair) and reporting the
median of the paired differences, which is what survives a noisy shared machine:

* ``loopback``: the official SDK against a local fake upstream on 127.0.0.1 in its own process (as a provider would
  be; an in-process server thread would share the GIL with the client and distort both timings), raw vs. through
  ``holyroute.client`` (alias routed to the same upstream). This is what an application sees.
* ``in-memory``: the same SDK calls with an in-memory inner transport that answers instantly, so the difference is
  holyroute's own work (parse, pick, rewrite, tap, usage, cost event) without socket noise.
* ``transport alone``: the request the SDK built for that call, handed straight to the in-memory transport and to
  holyroute's transport over it, with no SDK call around either: holyroute's work in a tight loop, where its code
  and data stay in the CPU's caches. Inside an SDK call (``in-memory``) the same work takes longer: between two of
  holyroute's calls, the SDK's own code has run through those caches. Run with events as JSON only, and again with
  32 KB and 128 KB of messages, each in one loop with the small call (:func:`paired_growth`): what holyroute's own
  time grows by per KB of request, away from the SDK's own work on a large request (tens of milliseconds, whose
  noise would hide the difference inside an SDK call).

With events as JSON, each of the three is run a second time with ``_floor.py``'s transport in holyroute's place (the
same call written as plainly as we know how, sending the same request and emitting the same event, without
holyroute's failover and limit bookkeeping): what that work costs at the least, to read holyroute's figures and the
targets against.

Each comparison runs with holyroute's events rendered by structlog's JSONRenderer to /dev/null (a production JSON
pipeline) and with its info-level events dropped by a level filter, to show what the routing itself costs and what
rendering one cost event per call adds.

    python benchmarks/bench_overhead.py            # default 2000 pairs per comparison
    python benchmarks/bench_overhead.py --pairs 500 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import structlog
from _common import conversation, percentile, upstream_process  # benchmarks/_common.py
from _floor import floor_for

import holyroute

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]
CHAT_BODY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4.1",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "A prince avenges."}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 4,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 0},
    },
}


def paired(
    name: str, raw: Callable[[], Any], routed: Callable[[], Any], pairs: int, warmup: int
) -> dict[str, float | str | int]:
    for _ in range(warmup):
        raw()
        routed()
    raw_t: list[float] = []
    routed_t: list[float] = []
    clock = time.perf_counter
    for i in range(pairs):
        order = (raw, routed) if i % 2 == 0 else (routed, raw)
        timings = []
        for fn in order:
            start = clock()
            fn()
            timings.append(clock() - start)
        if i % 2 == 0:
            raw_t.append(timings[0])
            routed_t.append(timings[1])
        else:
            routed_t.append(timings[0])
            raw_t.append(timings[1])
    diffs = [(b - a) * 1e6 for a, b in zip(raw_t, routed_t, strict=True)]
    return {
        "comparison": name,
        "pairs": pairs,
        "raw_p50_us": percentile(raw_t, 50) * 1e6,
        "raw_p99_us": percentile(raw_t, 99) * 1e6,
        "holyroute_p50_us": percentile(routed_t, 50) * 1e6,
        "holyroute_p99_us": percentile(routed_t, 99) * 1e6,
        "overhead_p50_us": statistics.median(diffs),
        "overhead_p99_us": percentile(diffs, 99),
        "ratio_p50": percentile(routed_t, 50) / percentile(raw_t, 50),
    }


def paired_growth(
    name: str,
    small: tuple[Callable[[], Any], Callable[[], Any]],
    large: tuple[Callable[[], Any], Callable[[], Any]],
    pairs: int,
    warmup: int,
) -> dict[str, float | str | int]:
    """What holyroute adds on a large request beyond what it adds on a small one, measured in one loop: each round
    makes the four calls (raw and routed, small and large; the order turns every round), and the growth is the median
    over rounds of (routed - raw on the large) - (routed - raw on the small). Two comparisons run one after the other
    would each be paired, but the machine's speed can drift between them, and their difference carries that drift."""
    calls = [small[0], small[1], large[0], large[1]]
    for _ in range(warmup):
        for fn in calls:
            fn()
    clock = time.perf_counter
    taken: list[list[float]] = [[], [], [], []]
    for i in range(pairs):
        turn = i % 4
        for at in (*range(turn, 4), *range(turn)):
            start = clock()
            calls[at]()
            taken[at].append(clock() - start)
    growth = [((rl - al) - (rs - as_)) * 1e6 for as_, rs, al, rl in zip(*taken, strict=True)]
    small_added = [(r - a) * 1e6 for a, r in zip(taken[0], taken[1], strict=True)]
    large_added = [(r - a) * 1e6 for a, r in zip(taken[2], taken[3], strict=True)]
    return {
        "comparison": name,
        "pairs": pairs,
        "raw_p50_us": percentile(taken[2], 50) * 1e6,
        "raw_p99_us": percentile(taken[2], 99) * 1e6,
        "holyroute_p50_us": percentile(taken[3], 50) * 1e6,
        "holyroute_p99_us": percentile(taken[3], 99) * 1e6,
        "overhead_p50_us": statistics.median(large_added),
        "overhead_p99_us": percentile(large_added, 99),
        "ratio_p50": percentile(taken[3], 50) / percentile(taken[2], 50),
        "small_overhead_p50_us": statistics.median(small_added),
        "growth_p50_us": statistics.median(growth),
    }


def config_for(base_url: str) -> dict[str, Any]:
    return {
        "endpoints": {"bench": {"base_url": base_url, "api_key": "bench-key"}},
        "routes": {"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["bench"]}]}},
    }


def canned(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200,
        headers={"content-type": "application/json", "x-request-id": "req_bench"},
        stream=httpx2.ByteStream(json.dumps(CHAT_BODY).encode()),
    )


def sdk_request(body: dict[str, Any]) -> httpx2.Request:
    """The request the SDK builds for ``body`` (what its client hands a transport), kept to be handed over again."""
    seen: list[httpx2.Request] = []

    def keep(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return canned(request)

    with openai.OpenAI(
        base_url="http://127.0.0.1:9/v1", api_key="k", http_client=httpx2.Client(transport=httpx2.MockTransport(keep))
    ) as sdk:
        sdk.chat.completions.create(**body)
    request = seen[0]
    request.read()  # the SDK sends bytes, so this is already read; an unread body would not be routed at all
    return request


def answered(transport: httpx2.BaseTransport, request: httpx2.Request) -> bytes:
    """One request handed straight to ``transport``, its answer read and closed, as the client would."""
    response = transport.handle_request(request)
    try:
        return response.read()
    finally:
        response.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    results = []
    chat = {"model": "gpt-4.1", "messages": MESSAGES}
    alias = {"model": "chat-default", "messages": MESSAGES}

    def events(rendered: bool) -> None:
        """JSON lines to /dev/null (a production pipeline), or info events dropped by a level filter."""
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO if rendered else logging.WARNING),
            logger_factory=structlog.WriteLoggerFactory(file=devnull),
            cache_logger_on_first_use=True,
        )

    def compare(name: str, baseline: Callable[[], Any], other: Callable[[], Any]) -> None:
        """One paired comparison at the run's pairs and warm-up, kept with the others."""
        results.append(paired(name, baseline, other, args.pairs, args.warmup))

    with upstream_process() as base_url:
        raw = openai.OpenAI(base_url=base_url, api_key="bench-key")
        for rendered in (True, False):
            events(rendered)  # a new holyroute client per setting: its logger binds on first use
            routed = openai.OpenAI(
                base_url=base_url, api_key="unused", http_client=holyroute.client(config_for(base_url))
            )
            label = "events json" if rendered else "events off"
            compare(
                f"loopback chat, {label}",
                lambda: raw.chat.completions.create(**chat),
                lambda r=routed: r.chat.completions.create(**alias),
            )
            if rendered:
                # The floor over a connection pool like holyroute's own (and the SDK's): the same sockets' reuse.
                pool = httpx2.HTTPTransport(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100))
                floor = openai.OpenAI(
                    base_url=base_url, api_key="unused", http_client=httpx2.Client(transport=floor_for(pool, base_url))
                )
                with floor:
                    compare(
                        f"loopback chat, {label}, the floor",
                        lambda: raw.chat.completions.create(**chat),
                        lambda f=floor: f.chat.completions.create(**alias),
                    )
                results.append(
                    paired(
                        f"loopback stream, {label}",
                        lambda: list(raw.chat.completions.create(stream=True, **chat)),
                        lambda r=routed: list(r.chat.completions.create(stream=True, **alias)),
                        max(100, args.pairs // 4),
                        args.warmup // 4,
                    )
                )
            routed.close()
        raw.close()

    for rendered in (True, False):
        events(rendered)
        mock = httpx2.MockTransport(canned)
        raw_mem = openai.OpenAI(
            base_url="http://127.0.0.1:9/v1", api_key="k", http_client=httpx2.Client(transport=mock)
        )
        routed_transport = holyroute.Transport(config_for("http://127.0.0.1:9/v1"), transport=mock)
        routed_mem = openai.OpenAI(
            base_url="http://127.0.0.1:9/v1", api_key="k", http_client=httpx2.Client(transport=routed_transport)
        )
        with raw_mem, routed_mem:
            compare(
                f"in-memory chat, {'events json' if rendered else 'events off'}",
                lambda c=raw_mem: c.chat.completions.create(**chat),
                lambda c=routed_mem: c.chat.completions.create(**alias),
            )
            if rendered:
                request = sdk_request(alias)
                compare(
                    "transport alone, events json",
                    lambda t=mock, r=request: answered(t, r),
                    lambda t=routed_transport, r=request: answered(t, r),
                )
                for kilobytes in (32, 128):  # what it grows by with the request, against the small call in one loop
                    sized = sdk_request({**alias, "messages": conversation(kilobytes)})
                    result = paired_growth(
                        f"transport alone, events json, {kilobytes} KB of messages",
                        (
                            lambda t=mock, r=request: answered(t, r),
                            lambda t=routed_transport, r=request: answered(t, r),
                        ),
                        (lambda t=mock, r=sized: answered(t, r), lambda t=routed_transport, r=sized: answered(t, r)),
                        args.pairs,
                        args.warmup,
                    )
                    result.update(request_bytes=len(sized.content), small_request_bytes=len(request.content))
                    results.append(result)
                floor_transport = floor_for(mock, "http://127.0.0.1:9/v1")
                floor_mem = openai.OpenAI(
                    base_url="http://127.0.0.1:9/v1", api_key="k", http_client=httpx2.Client(transport=floor_transport)
                )
                with floor_mem:
                    compare(
                        "in-memory chat, events json, the floor",
                        lambda c=raw_mem: c.chat.completions.create(**chat),
                        lambda c=floor_mem: c.chat.completions.create(**alias),
                    )
                compare(
                    "transport alone, events json, the floor",
                    lambda t=mock, r=request: answered(t, r),
                    lambda t=floor_transport, r=request: answered(t, r),
                )
    devnull.close()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"holyroute {holyroute.__version__}, openai {openai.__version__}, python {sys.version.split()[0]}")
    print("per-call times in microseconds; overhead = median of paired differences (holyroute - raw)\n")
    header = f"{'comparison':<52}{'pairs':>7}{'raw p50':>10}{'raw p99':>10}{'hr p50':>10}{'hr p99':>10}"
    header += f"{'ovh p50':>10}{'ovh p99':>10}{'ratio':>8}"
    print(header)
    for r in results:
        print(
            f"{r['comparison']:<52}{r['pairs']:>7}{r['raw_p50_us']:>10.0f}{r['raw_p99_us']:>10.0f}"
            f"{r['holyroute_p50_us']:>10.0f}{r['holyroute_p99_us']:>10.0f}{r['overhead_p50_us']:>10.0f}"
            f"{r['overhead_p99_us']:>10.0f}{r['ratio_p50']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
