"""Per-call overhead of the Redis state backend against the in-process memory backend, measured side by side in one run.

Two ``holyroute.client`` clients with the same configuration except ``state`` (``backend: memory`` and
``backend: redis`` on 127.0.0.1:6379 under a fresh prefix) call the same local fake upstream, which runs in its own
process as a provider would. Each comparison alternates the two clients call by call (the order flips every pair) and
reports the median, p90 and p99 of the paired differences (redis - memory), which is what survives a noisy shared
machine. Two comparisons:

* ``redis, shared rpm, leases (default)``: the endpoint has ``rpm: 100000`` (it does not bind at this call rate),
  default ``state.lease_fraction`` (0.01): a grant from the shared bucket (one Lua script, ``EVALSHA``) covers the
  requests this process expects in the next 100 ms, so most calls spend no round trip; ``evalsha/call`` says how
  many did.
* ``redis, shared rpm, lease_fraction 0``: the same with leasing off: every call takes its grant in one round trip.
  This is the worst case, and what every call costs while a limit binds (the bucket then holds less than two
  requests, so grants are for one).
* ``redis without limits (0 round trips)``: no ``rpm``/``tpm``, so the request path reads only local state and Redis
  is touched by the backend's background threads alone (sync every ``sync_interval_s``, pub/sub listener).

holyroute's info-level events are dropped by a level filter (warnings are still rendered, to /dev/null, and counted:
a ``holyroute.state_degraded`` during the run means Redis calls fell back to local state, which the output says).
A third, unjudged row is the floor on the machine at hand: the memory client's call against the same call followed
by one bare redis-py ``PING``, i.e. what any single Redis round trip from this process costs in this loop (on a
busy 2-core host it is several times what it is on a quiet one).

The ``evalsha/call`` column is the server's ``EVALSHA`` count over the measured calls divided by the Redis client's
calls (from ``INFO commandstats``, so anything else using this Redis at the time inflates it).

    python benchmarks/bench_state.py            # default 2000 pairs per comparison
    python benchmarks/bench_state.py --pairs 500 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import openai
import redis
import structlog
from _common import percentile, upstream_process  # benchmarks/_common.py

import holyroute

REDIS_URL = "redis://127.0.0.1:6379/0"
REFERENCE = "reference: memory + bare PING"
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]


def evalsha_calls(store: redis.Redis) -> int:
    """``EVALSHA`` commands the server has run since it started (every process that uses it)."""
    return int(store.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def paired(
    name: str, memory: Callable[[], Any], shared: Callable[[], Any], pairs: int, warmup: int, *, store: redis.Redis
) -> dict[str, Any]:
    for _ in range(warmup):
        memory()
        shared()
    memory_t: list[float] = []
    redis_t: list[float] = []
    clock = time.perf_counter
    scripts = evalsha_calls(store)
    for i in range(pairs):
        order = (memory, shared) if i % 2 == 0 else (shared, memory)
        timings = []
        for fn in order:
            start = clock()
            fn()
            timings.append(clock() - start)
        if i % 2 == 0:
            memory_t.append(timings[0])
            redis_t.append(timings[1])
        else:
            redis_t.append(timings[0])
            memory_t.append(timings[1])
    scripts = evalsha_calls(store) - scripts
    diffs = [(b - a) * 1e6 for a, b in zip(memory_t, redis_t, strict=True)]
    return {
        "comparison": name,
        "pairs": pairs,
        "memory_p50_us": percentile(memory_t, 50) * 1e6,
        "memory_p99_us": percentile(memory_t, 99) * 1e6,
        "redis_p50_us": percentile(redis_t, 50) * 1e6,
        "redis_p99_us": percentile(redis_t, 99) * 1e6,
        "overhead_p50_us": statistics.median(diffs),
        "overhead_p90_us": percentile(diffs, 90),
        "overhead_p99_us": percentile(diffs, 99),
        "ratio_p50": percentile(redis_t, 50) / percentile(memory_t, 50),
        "evalsha_per_call": scripts / pairs,
    }


def config_for(base_url: str, state: dict[str, Any], *, rpm: bool) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"base_url": base_url, "api_key": "sk-bench"}
    if rpm:
        endpoint["rpm"] = 100_000  # does not bind at this rate: every call still needs a grant from the shared bucket
    return {
        "endpoints": {"up": endpoint},
        "routes": {"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["up"]}]}},
        "state": state,
    }


def delete_prefix(store: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN MATCH, then DEL): the run leaves nothing behind."""
    deleted = 0
    batch: list[bytes] = []
    for key in store.scan_iter(match=f"{prefix}*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(store.delete(*batch))
            batch = []
    if batch:
        deleted += int(store.delete(*batch))
    return deleted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--target-us", type=float, default=300.0, help="the p50 overhead Redis may add per call")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    store = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        store.ping()
    except redis.RedisError as error:
        print(f"bench_state: Redis at {REDIS_URL} does not answer ({error}); start redis-server", file=sys.stderr)
        return 2
    prefix = f"holyroute-bench-{uuid.uuid4().hex}"
    memory_state = {"backend": "memory"}

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    warnings: list[str] = []

    def count_warnings(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        warnings.append(str(event_dict.get("event")))
        return event_dict

    # info events (one per call) are dropped by the level filter; warnings (state_degraded, ...) are counted
    structlog.configure(
        processors=[count_warnings, structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.WriteLoggerFactory(file=devnull),
        cache_logger_on_first_use=True,
    )

    results = []
    alias = {"model": "chat-default", "messages": MESSAGES}
    try:
        with upstream_process(record=False) as base_url:
            for rpm, lease, label in (
                (True, 0.01, "redis, shared rpm, leases (default)"),
                (True, 0.0, "redis, shared rpm, lease_fraction 0"),
                (False, 0.01, "redis without limits (0 round trips)"),
            ):
                redis_state = {"backend": "redis", "url": REDIS_URL, "prefix": prefix, "lease_fraction": lease}
                clients = [
                    openai.OpenAI(
                        api_key="x",
                        base_url=base_url,
                        http_client=holyroute.client(config_for(base_url, state, rpm=rpm)),
                        max_retries=0,
                    )
                    for state in (memory_state, redis_state)
                ]
                seen = len(warnings)
                try:
                    result = paired(
                        label,
                        lambda c=clients[0]: c.chat.completions.create(**alias),
                        lambda c=clients[1]: c.chat.completions.create(**alias),
                        args.pairs,
                        args.warmup,
                        store=store,
                    )
                finally:
                    for client in clients:
                        client.close()  # closes the http client, whose transport closes the Redis backend
                result["warnings"] = ", ".join(sorted(set(warnings[seen:]))) or "none"
                result["target_p50_us"] = args.target_us
                result["target_held"] = float(result["overhead_p50_us"]) < args.target_us
                results.append(result)
            # the floor on this machine, not judged: one bare redis-py PING added to the memory client's call
            reference = openai.OpenAI(
                api_key="x",
                base_url=base_url,
                http_client=holyroute.client(config_for(base_url, memory_state, rpm=True)),
                max_retries=0,
            )

            def call_then_ping() -> None:
                reference.chat.completions.create(**alias)
                store.ping()

            with reference:
                result = paired(
                    REFERENCE,
                    lambda: reference.chat.completions.create(**alias),
                    call_then_ping,
                    args.pairs,
                    args.warmup,
                    store=store,
                )
            result["warnings"] = "n/a"
            result["target_p50_us"] = args.target_us
            result["target_held"] = None
            results.append(result)
    finally:
        deleted = delete_prefix(store, prefix)
        store.close()
        devnull.close()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"holyroute {holyroute.__version__}, openai {openai.__version__}, redis-py {redis.__version__}, "
        f"python {sys.version.split()[0]}"
    )
    print("per-call times in microseconds; overhead = paired differences (redis - memory), p50 = their median")
    print(f"redis prefix {prefix}: {deleted} key(s) deleted at the end\n")
    header = f"{'comparison':<40}{'pairs':>6}{'mem p50':>9}{'mem p99':>9}{'rds p50':>9}{'rds p99':>9}"
    header += f"{'ovh p50':>9}{'ovh p90':>9}{'ovh p99':>9}{'ratio':>7}{'evalsha/call':>14}"
    print(header)
    for r in results:
        print(
            f"{r['comparison']:<40}{r['pairs']:>6}{r['memory_p50_us']:>9.0f}{r['memory_p99_us']:>9.0f}"
            f"{r['redis_p50_us']:>9.0f}{r['redis_p99_us']:>9.0f}{r['overhead_p50_us']:>9.0f}"
            f"{r['overhead_p90_us']:>9.0f}{r['overhead_p99_us']:>9.0f}{r['ratio_p50']:>7.2f}"
            f"{r['evalsha_per_call']:>14.2f}"
        )
    print()
    for r in results:
        if r["target_held"] is None:
            print(f"reference: one bare redis-py PING round trip adds {r['overhead_p50_us']:.0f} us at p50 here")
            continue
        verdict = "held" if r["target_held"] else "MISSED"
        print(
            f"target: redis adds < {args.target_us:.0f} us at p50 -- {verdict} for {r['comparison']} "
            f"({r['overhead_p50_us']:.0f} us); holyroute warnings: {r['warnings']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
