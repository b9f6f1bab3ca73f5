"""Load and outage behaviour through the async SDK: nothing lost, nothing duplicated, attempts and memory bounded.

Bounded in count (5,000 calls) and time (a 120 s guard); local upstreams only. The figures are printed (run with
``-s`` to see them) for the resilience issue's closing note.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import holyroute
from holyroute.testing import FakeUpstream, Reply

CALLS = 5000
CONCURRENCY = 128


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


@pytest.fixture
def three() -> Iterator[dict[str, FakeUpstream]]:
    made = {name: FakeUpstream(name, record=False).start() for name in ("flaky", "dying", "steady")}
    yield made
    for up in made.values():
        up.stop()


def config(ups: dict[str, FakeUpstream], **retry: Any) -> dict[str, Any]:
    return {
        "endpoints": {name: {"base_url": up.base_url, "api_key": f"key-{name}"} for name, up in ups.items()},
        "routes": {
            "chat": {
                "targets": [{"model": "gpt-4.1", "endpoints": list(ups), "balance": "round_robin"}],
            }
        },
        "retry": {"max_attempts": 3, "backoff_initial_s": 0.01, "backoff_jitter_s": 0, **retry},
    }


def test_load_with_429s_and_a_dying_endpoint(three: dict[str, FakeUpstream], measured: Callable[[str], None]) -> None:
    flaky, dying = three["flaky"], three["dying"]
    # 30% of the flaky endpoint's answers are 429s (deterministic pattern), with a short server-given cooldown.
    flaky.push(*[Reply.rate_limited(0.02) if i % 10 in (0, 3, 6) else Reply() for i in range(2 * CALLS)])
    ids: list[str] = []
    latencies: list[float] = []
    errors: list[BaseException] = []

    counts: Counter[str] = Counter()

    def sink(event: str, fields: dict[str, Any]) -> None:
        counts[event] += 1

    async def main() -> tuple[float, float, int]:
        transport = holyroute.AsyncTransport(config(three), log=False, sinks=[sink])
        sdk = openai.AsyncOpenAI(api_key="unused", max_retries=0, http_client=httpx2.AsyncClient(transport=transport))
        limit = asyncio.Semaphore(CONCURRENCY)
        done = 0

        async def one(n: int) -> None:
            nonlocal done
            async with limit:
                start = time.perf_counter()
                try:
                    answer = await sdk.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": f"call {n}"}]
                    )
                except openai.APIError as error:
                    errors.append(error)
                else:
                    ids.append(answer.id)
                    latencies.append(time.perf_counter() - start)
                done += 1
                if done == CALLS // 2:
                    await asyncio.to_thread(dying.stop)  # half-way: the endpoint dies (connections refused)

        async with sdk:
            await asyncio.gather(*(one(n) for n in range(1000)))  # warm-up: pools, caches, allocator
            warm = sum(up.received for up in three.values())
            before = rss_mb()
            ids.clear()
            latencies.clear()
            errors.clear()
            done = 0
            await asyncio.gather(*(one(n) for n in range(CALLS)))
            after = rss_mb()
        return before, after, sum(up.received for up in three.values()) - warm

    started = time.perf_counter()
    before, after, attempts = asyncio.run(asyncio.wait_for(main(), timeout=120))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(0.99 * len(latencies)) - 1] * 1000
    measured(
        f"load: {CALLS} calls at concurrency {CONCURRENCY} in {elapsed:.1f} s; {len(errors)} errors; "
        f"{attempts} upstream attempts ({attempts / CALLS:.3f} per call); p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"RSS {before:.1f} MB -> {after:.1f} MB; events: {dict(sorted(counts.items()))}"
    )
    assert errors == [], f"lost calls: {errors[:3]}"
    assert len(ids) == CALLS, "every call answered"
    assert len(set(ids)) == CALLS, "no upstream answer handed to two callers"
    assert attempts <= 1.25 * CALLS + 20
    assert after - before < 20, "memory stays flat"


def test_total_outage_costs_about_one_attempt(three: dict[str, FakeUpstream], measured: Callable[[str], None]) -> None:
    """Every endpoint 503: the retry budget holds upstream attempts to about 1.2 per call, not max_attempts.

    The budget limits the retries beyond the persistence floor (retry.min_attempts, by default the SDK's 3
    attempts), so this run sets the floor to 1 to see the budget alone."""
    calls = 400
    for up in three.values():
        up.push(*[Reply.error(503)] * (3 * calls))
    cfg = config(three, min_attempts=1, budget_ratio=0.2, budget_min_per_s=1, budget_window_s=10)
    cfg["health"] = {"consecutive_failures": 1000}  # keep ejection out of it: this is the budget alone

    async def main() -> int:
        transport = holyroute.AsyncTransport(cfg, log=False, sinks=[])
        sdk = openai.AsyncOpenAI(api_key="unused", max_retries=2, http_client=httpx2.AsyncClient(transport=transport))
        failed = 0
        limit = asyncio.Semaphore(32)

        async def one() -> None:
            nonlocal failed
            async with limit:
                try:
                    await sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
                except openai.InternalServerError:
                    failed += 1

        async with sdk:
            await asyncio.gather(*(one() for _ in range(calls)))
        return failed

    failed = asyncio.run(asyncio.wait_for(main(), timeout=60))
    attempts = sum(up.received for up in three.values())
    measured(f"outage: {calls} calls, {attempts} upstream attempts ({attempts / calls:.2f} per call)")
    assert failed == calls
    assert calls < attempts <= 1.2 * calls + 10 * 1 + 1
