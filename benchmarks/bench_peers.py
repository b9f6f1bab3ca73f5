"""The raw OpenAI SDK, holyroute and LiteLLM's Router side by side in one run, against one local upstream.

All clients call the same fake upstream (``holyroute.testing.FakeUpstream`` in its own process, as a provider would
be; with two or more CPUs it is pinned to the last one and the clients to the others, so the upstream's work never
shows up as a client's). Nothing leaves 127.0.0.1: LiteLLM is told to use its bundled price map, not to fetch one.

* ``sequential``: one synchronous call per client per round, the clients' order rotating every round. Per client:
  p50/p99 wall time, the median of the paired differences against the raw SDK's call in the same round, and the
  CPU the calling thread spent per call (``time.thread_time``: LiteLLM's logging threads would otherwise bill their
  work to whichever call runs next; their share shows in the async rows, which count the whole process).
  LiteLLM's Router runs in rounds of its own, after holyroute's, paired with raw SDK calls of those rounds
  (``raw SDK (LiteLLM's rounds)``): its logging threads keep working after each of its calls and slow whichever
  call comes next on the client's CPU. In shared rounds that was always the raw SDK's (the rotation keeps the
  clients' cyclic order), so the raw SDK's calls ran slower than holyroute's and holyroute's differences came out
  negative. In LiteLLM's rounds the raw SDK calls first, after a 10 ms pause (not timed) in which those threads
  finish; LiteLLM's own call then follows the raw SDK's.
  ``holyroute`` renders its one event per call as JSON to /dev/null (a production pipeline); ``holyroute + redis
  rpm`` is the same client with ``state: {backend: redis}`` on 127.0.0.1:6379 (fresh prefix, deleted at the end)
  and an ``rpm`` limit on the endpoint, so every call goes through the shared-limit grant path (skipped when Redis
  does not answer).
* ``async``: each client runs ``--async-calls`` calls with 64 in flight at once (``AsyncOpenAI`` /
  ``acompletion``), ``--async-rounds`` rounds with the clients' order rotating. Per client: median calls per second,
  the median of the per-round ratios to the raw SDK's throughput in the same round, and process CPU per call
  (``time.process_time`` over the round: every thread). Against the local upstream, a busy machine often makes the
  upstream the bottleneck, which hides the clients' cost; the ``[mem]`` rows therefore repeat the raw SDK and
  holyroute over an in-memory inner transport that answers at once, where throughput is bound by the client's own
  CPU alone (the ratio the issue's 97 % target is about).

The machine this runs on matters more than usual: on a shared host, say so next to the figures (the load average
is printed); the paired differences and per-round ratios are what survive the noise.

LiteLLM is a benchmark-only dependency (the ``bench`` extra). It brings ``httpx`` (not ``httpx2``), aiohttp, boto3
and friends, so keep it out of the environment the tests run in: a separate virtual environment is simplest::

    python -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -e '.[bench]'
    cd benchmarks && /tmp/bench-venv/bin/python bench_peers.py          # 500 rounds, 3 x 1000 async calls
    /tmp/bench-venv/bin/python bench_peers.py --rounds 200 --async-rounds 5 --json
    python bench_peers.py --no-litellm                                   # the raw SDK and holyroute only
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before LiteLLM is imported: no fetch at import

import httpx2
import openai
import structlog
from _common import percentile, upstream_process  # benchmarks/_common.py
from _floor import async_floor_for

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
    "usage": {"prompt_tokens": 19, "completion_tokens": 4, "total_tokens": 23},
}
ALIAS = "chat-default"
UPSTREAM_MODEL = "gpt-4.1"
REDIS_URL = "redis://127.0.0.1:6379/0"
CONCURRENCY = 64
MEM = " [mem]"
#: The raw SDK's calls in LiteLLM's own sequential rounds: LiteLLM's row is paired with these.
LITELLM_RAW = "raw SDK (LiteLLM's rounds)"
#: The sleep before each of LiteLLM's rounds, outside the timing: its logging threads finish their work on the last
#: call, so the raw SDK's call that opens the round runs on a quiet CPU.
LITELLM_PAUSE_S = 0.01


@dataclass
class Timings:
    """One client's samples: wall seconds and CPU seconds per call (sequential), calls/s and CPU/call (async)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    async_cpu: list[float] = field(default_factory=list)


def holyroute_config(base_url: str, state: dict[str, Any], *, rpm: int | None = None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"base_url": base_url, "api_key": "bench-key"}
    if rpm is not None:
        endpoint["rpm"] = rpm
    return {
        "endpoints": {"bench": endpoint},
        "routes": {ALIAS: {"targets": [{"model": UPSTREAM_MODEL, "endpoints": ["bench"]}]}},
        "state": state,
    }


WARNINGS: collections.Counter[str] = collections.Counter()


def count_warnings(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Count holyroute's warning events (a ``holyroute.state_degraded`` means Redis was not shared after all)."""
    if method != "info":
        WARNINGS[str(event_dict.get("event"))] += 1
    return event_dict


def render_events_to(devnull: Any) -> None:
    """holyroute's events as JSON lines to ``devnull``: what a production pipeline pays per call."""
    structlog.configure(
        processors=[count_warnings, structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=devnull),
        cache_logger_on_first_use=True,
    )


def redis_answers() -> bool:
    try:
        import redis
    except ImportError:
        return False
    store = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        return bool(store.ping())
    except redis.RedisError:
        return False
    finally:
        store.close()


def delete_prefix(prefix: str) -> int:
    import redis

    store = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        keys = list(store.scan_iter(match=f"{prefix}*", count=1000))
        return int(store.delete(*keys)) if keys else 0
    finally:
        store.close()


def pin(upstream_cpu: int | None) -> None:
    """Keep this process off the upstream's CPU."""
    if upstream_cpu is not None:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {upstream_cpu})


def sequential(
    clients: dict[str, Callable[[], Any]], rounds: int, warmup: int, *, rotate: bool = True, pause_s: float = 0.0
) -> dict[str, Timings]:
    """One call per client per round, the order rotating (or, without ``rotate``, as given), with ``pause_s`` of
    sleep after each round (outside the timing); wall and process CPU time per call."""
    names = list(clients)
    for _ in range(warmup):
        for call in clients.values():
            call()
    samples = {name: Timings() for name in names}
    wall, cpu = time.perf_counter, time.thread_time
    for i in range(rounds):
        if pause_s:
            time.sleep(pause_s)
        shift = i % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            call = clients[name]
            start_cpu, start = cpu(), wall()
            call()
            elapsed, used = wall() - start, cpu() - start_cpu
            samples[name].wall.append(elapsed)
            samples[name].cpu.append(used)
    return samples


async def throughput(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """``calls`` calls with ``CONCURRENCY`` in flight: (calls per second, process CPU seconds per call)."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start_cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed, used = time.perf_counter() - start, time.process_time() - start_cpu
    return calls / elapsed, used / calls


async def concurrent(
    clients: dict[str, Callable[[], Awaitable[Any]]], rounds: int, calls: int, samples: dict[str, Timings]
) -> None:
    names = list(clients)
    for name in names:  # warm up: connections open, caches filled
        await throughput(clients[name], CONCURRENCY * 4)
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            rate, cpu_per_call = await throughput(clients[name], calls)
            samples.setdefault(name, Timings()).throughput.append(rate)
            samples[name].async_cpu.append(cpu_per_call)


def canned_answer(body: bytes) -> Callable[[httpx2.Request], Awaitable[httpx2.Response]]:
    async def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "application/json", "x-request-id": "req_bench"}
        return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(body))

    return answer


def litellm_router(base_url: str) -> Any:
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.turn_off_message_logging = True
    model = {"model": f"openai/{UPSTREAM_MODEL}", "api_base": base_url, "api_key": "bench-key"}
    return litellm.Router(model_list=[{"model_name": ALIAS, "litellm_params": model}], num_retries=0)


def summarise(samples: dict[str, Timings]) -> list[dict[str, Any]]:
    rows = []
    for name, t in samples.items():
        row: dict[str, Any] = {"client": name}
        if t.wall:  # LiteLLM's calls (and the raw SDK's among them) against the raw SDK's in LiteLLM's own rounds
            raw = samples[LITELLM_RAW if name in ("LiteLLM Router", LITELLM_RAW) else "raw SDK"]
            row.update(
                p50_us=percentile(t.wall, 50) * 1e6,
                p99_us=percentile(t.wall, 99) * 1e6,
                added_p50_us=statistics.median((a - b) * 1e6 for a, b in zip(t.wall, raw.wall, strict=True)),
                cpu_us=statistics.median(t.cpu) * 1e6,
                added_cpu_us=statistics.median((a - b) * 1e6 for a, b in zip(t.cpu, raw.cpu, strict=True)),
            )
        if t.throughput:
            raw = samples["raw SDK" + (MEM if name.endswith(MEM) else "")]  # a [mem] row against the raw [mem] one
            row.update(
                calls_per_s=statistics.median(t.throughput),
                ratio_to_raw=statistics.median(a / b for a, b in zip(t.throughput, raw.throughput, strict=True)),
                async_cpu_us=statistics.median(t.async_cpu) * 1e6,
            )
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=500, help="sequential rounds (one call per client each)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--async-rounds", type=int, default=3)
    parser.add_argument("--async-calls", type=int, default=1000, help="calls per client per async round")
    parser.add_argument("--no-litellm", action="store_true", help="only the raw SDK and holyroute")
    parser.add_argument("--no-redis", action="store_true", help="skip holyroute + redis rpm")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the upstream to its own CPU")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    upstream_cpu = cpus[-1] if len(cpus) > 1 and not args.no_pin else None
    use_redis = not args.no_redis and redis_answers()
    prefix = f"holyroute-bench-peers-{uuid.uuid4().hex}"
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    render_events_to(devnull)
    alias = {"model": ALIAS, "messages": MESSAGES}
    direct = {"model": UPSTREAM_MODEL, "messages": MESSAGES}
    samples: dict[str, Timings]
    warned: dict[str, dict[str, int]] = {}  # section -> holyroute warning events counted in it
    try:
        with upstream_process(record=False, cpu=upstream_cpu) as base_url:
            pin(upstream_cpu)
            memory = {"backend": "memory"}
            shared = {"backend": "redis", "url": REDIS_URL, "prefix": prefix}
            raw = openai.OpenAI(base_url=base_url, api_key="bench-key", max_retries=0)
            routed = openai.OpenAI(
                api_key="unused", max_retries=0, http_client=holyroute.client(holyroute_config(base_url, memory))
            )
            sync: dict[str, Callable[[], Any]] = {
                "raw SDK": lambda: raw.chat.completions.create(**direct),
                "holyroute": lambda: routed.chat.completions.create(**alias),
            }
            limited = None
            if use_redis:
                config = holyroute_config(base_url, shared, rpm=1_000_000)  # does not bind: every call takes a grant
                limited = openai.OpenAI(api_key="unused", max_retries=0, http_client=holyroute.client(config))
                sync["holyroute + redis rpm"] = lambda: limited.chat.completions.create(**alias)
            router = None if args.no_litellm else litellm_router(base_url)
            try:
                samples = sequential(sync, args.rounds, args.warmup)
                if router is not None:  # after holyroute's rounds: its threads must not slow holyroute's pairs
                    peer = {
                        LITELLM_RAW: lambda: raw.chat.completions.create(**direct),
                        "LiteLLM Router": lambda: router.completion(**alias),
                    }
                    # The raw SDK first in every round, after a pause in which LiteLLM's threads finish.
                    samples.update(sequential(peer, args.rounds, args.warmup, rotate=False, pause_s=LITELLM_PAUSE_S))
                warned["sequential"] = dict(WARNINGS)
                WARNINGS.clear()
            finally:
                for client in (raw, routed, limited):
                    if client is not None:
                        client.close()

            async def run_async() -> None:
                araw = openai.AsyncOpenAI(base_url=base_url, api_key="bench-key", max_retries=0)
                arouted = openai.AsyncOpenAI(
                    api_key="unused",
                    max_retries=0,
                    http_client=holyroute.async_client(holyroute_config(base_url, memory)),
                )
                clients: dict[str, Callable[[], Awaitable[Any]]] = {
                    "raw SDK": lambda: araw.chat.completions.create(**direct),
                    "holyroute": lambda: arouted.chat.completions.create(**alias),
                }
                alimited = None
                if use_redis:
                    config = holyroute_config(base_url, shared, rpm=1_000_000)
                    alimited = openai.AsyncOpenAI(
                        api_key="unused", max_retries=0, http_client=holyroute.async_client(config)
                    )
                    clients["holyroute + redis rpm"] = lambda: alimited.chat.completions.create(**alias)
                if router is not None:
                    clients["LiteLLM Router"] = lambda: router.acompletion(**alias)
                # The same SDK calls over an in-memory inner transport: throughput bound by the client's CPU alone.
                mock = httpx2.MockTransport(canned_answer(json.dumps(CHAT_BODY).encode()))
                fake_url = "http://127.0.0.1:9/v1"
                mraw = openai.AsyncOpenAI(
                    base_url=fake_url, api_key="k", max_retries=0, http_client=httpx2.AsyncClient(transport=mock)
                )
                routed_mem = holyroute.AsyncTransport(holyroute_config(fake_url, memory), transport=mock)
                mrouted = openai.AsyncOpenAI(
                    base_url=fake_url, api_key="k", max_retries=0, http_client=httpx2.AsyncClient(transport=routed_mem)
                )
                clients["raw SDK" + MEM] = lambda: mraw.chat.completions.create(**direct)
                clients["holyroute" + MEM] = lambda: mrouted.chat.completions.create(**alias)
                # The floor (benchmarks/_floor.py) in holyroute's place: what the same work costs at the least.
                mfloor = openai.AsyncOpenAI(
                    base_url=fake_url,
                    api_key="k",
                    max_retries=0,
                    http_client=httpx2.AsyncClient(transport=async_floor_for(mock, fake_url)),
                )
                clients["the floor" + MEM] = lambda: mfloor.chat.completions.create(**alias)
                try:
                    await concurrent(clients, args.async_rounds, args.async_calls, samples)
                finally:
                    for client in (araw, arouted, alimited, mraw, mrouted, mfloor):
                        if client is not None:
                            await client.close()

            asyncio.run(run_async())
            warned["async"] = dict(WARNINGS)
    finally:
        deleted = delete_prefix(prefix) if use_redis else 0
        devnull.close()

    rows = summarise(samples)
    if args.json:
        print(json.dumps({"rows": rows, "warnings": warned}, indent=2))
        return 0
    versions = f"holyroute {holyroute.__version__}, openai {openai.__version__}"
    if not args.no_litellm:
        versions += f", litellm {importlib.metadata.version('litellm')}"
    pinned = f"upstream pinned to CPU {upstream_cpu}" if upstream_cpu is not None else "nothing pinned"
    print(f"{versions}, python {sys.version.split()[0]}; {os.cpu_count()} CPUs, {pinned}")
    print(f"load average {os.getloadavg()[0]:.1f}; redis keys deleted: {deleted}")
    print("holyroute warnings: " + "; ".join(f"{section} {found or 'none'}" for section, found in warned.items()))
    print(f"sequential: {args.rounds} rounds; async: {args.async_rounds} rounds x {args.async_calls} calls, c=64")
    print("times in microseconds; added = median of paired differences against the raw SDK in the same round\n")
    header = f"{'client':<24}{'p50':>8}{'p99':>8}{'added':>8}{'cpu':>8}{'+cpu':>8}"
    print(header + f"{'calls/s':>10}{'ratio':>8}{'cpu/call':>10}")
    for r in rows:
        line = f"{r['client']:<24}"
        if "p50_us" in r:
            line += f"{r['p50_us']:>8.0f}{r['p99_us']:>8.0f}{r['added_p50_us']:>8.0f}"
            line += f"{r['cpu_us']:>8.0f}{r['added_cpu_us']:>8.0f}"
        else:
            line += f"{'-':>8}" * 5
        if "calls_per_s" in r:
            line += f"{r['calls_per_s']:>10.0f}{r['ratio_to_raw']:>8.2f}{r['async_cpu_us']:>10.0f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
