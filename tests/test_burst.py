"""At least as persistent as the SDK: a burst against an endpoint that drops its first connections.

The endpoint is the only one of its arm and resets its first ``DROPS`` connections while ``CALLS`` calls arrive at
once. The raw SDK serves every call (its own retries absorb the drops); through holyroute every call must be served
too, although the drops eject the endpoint mid-burst: ejection and panic are judged afresh at each step, and a call
makes the SDK's number of attempts (``retry.min_attempts``) whatever health and the retry budget say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

import holyroute
from holyroute.testing import FakeUpstream, Reply

from .conftest import Events

DROPS = 8
CALLS = 30
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("solo", record=False) as up:
        up.push(*[Reply(drop=True)] * DROPS)
        yield up


def config(base_url: str, **retry: Any) -> dict[str, Any]:
    return {
        "endpoints": {"solo": {"base_url": base_url, "api_key": "key-solo"}},
        "routes": {"chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["solo"]}]}},
        # Fast backoff so the test takes no time; everything else (attempts, health, budget) at its defaults.
        "retry": {"backoff_initial_s": 0.001, "backoff_max_s": 0.01, "backoff_jitter_s": 0, **retry},
    }


def requests(events: Events) -> list[dict[str, Any]]:
    return events.named("holyroute.request")


class TestAsyncBurst:
    """Many async calls at once through AsyncOpenAI while the only endpoint drops its first connections."""

    async def test_raw_sdk_serves_every_call(self, upstream: FakeUpstream, instant_sdk_retries: None) -> None:
        client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k")
        async with client:
            results = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(CALLS)),
                return_exceptions=True,
            )
        assert [r for r in results if isinstance(r, BaseException)] == []

    async def test_holyroute_serves_every_call(self, upstream: FakeUpstream) -> None:
        events = Events()
        http = holyroute.async_client(config(upstream.base_url), sinks=[events])
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http)
        async with client:
            results = await asyncio.gather(
                *(client.chat.completions.create(model="chat", messages=MESSAGES) for _ in range(CALLS)),
                return_exceptions=True,
            )
        failed = [type(r).__name__ for r in results if isinstance(r, BaseException)]
        assert failed == []
        done = requests(events)
        assert len(done) == CALLS
        assert {e["outcome"] for e in done} == {"ok"}
        assert sum(e["attempts"] for e in done) == CALLS + DROPS
        router = holyroute.router_of(http)
        assert router.health.in_flight("solo") == 0

    async def test_every_call_served_with_every_endpoint_ejected(self, upstream: FakeUpstream) -> None:
        """The endpoint is ejected before the burst starts: its arm is in panic, so it is still tried."""
        events = Events()
        http = holyroute.async_client(config(upstream.base_url), sinks=[events])
        router = holyroute.router_of(http)
        now = router.clock()
        for _ in range(5):
            router.transition(router.health.failure("solo", "ConnectError", now, ("solo",)))
        assert router.health.ejected("solo", now) is not None
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http)
        async with client:
            results = await asyncio.gather(
                *(client.chat.completions.create(model="chat", messages=MESSAGES) for _ in range(CALLS)),
                return_exceptions=True,
            )
        assert [type(r).__name__ for r in results if isinstance(r, BaseException)] == []
        assert len(requests(events)) == CALLS


class TestSyncBurst:
    """The same burst from threads through the sync OpenAI client."""

    def test_raw_sdk_serves_every_call(self, upstream: FakeUpstream, instant_sdk_retries: None) -> None:
        with openai.OpenAI(base_url=upstream.base_url, api_key="k") as client:

            def one(_: int) -> Any:
                return client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

            with ThreadPoolExecutor(max_workers=CALLS) as pool:
                futures = [pool.submit(one, n) for n in range(CALLS)]
        assert [f.exception() for f in futures if f.exception() is not None] == []

    def test_holyroute_serves_every_call(self, upstream: FakeUpstream) -> None:
        events = Events()
        http = holyroute.client(config(upstream.base_url), sinks=[events])
        with openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http) as client:

            def one(_: int) -> Any:
                return client.chat.completions.create(model="chat", messages=MESSAGES)

            with ThreadPoolExecutor(max_workers=CALLS) as pool:
                futures = [pool.submit(one, n) for n in range(CALLS)]
            failed = [type(f.exception()).__name__ for f in futures if f.exception() is not None]
        assert failed == []
        done = requests(events)
        assert len(done) == CALLS
        assert sum(e["attempts"] for e in done) == CALLS + DROPS
        assert holyroute.router_of(http).health.in_flight("solo") == 0


class TestBigBurst:
    """200 concurrent async calls to a small local server whose first connections are dropped."""

    async def test_every_call_served(self) -> None:
        events = Events()
        with FakeUpstream("small", record=False) as up:
            up.push(*[Reply(drop=True)] * 20)
            http = holyroute.async_client(config(up.base_url), sinks=[events])
            client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http)
            async with client:
                results = await asyncio.gather(
                    *(client.chat.completions.create(model="chat", messages=MESSAGES) for _ in range(200)),
                    return_exceptions=True,
                )
        assert [type(r).__name__ for r in results if isinstance(r, BaseException)] == []
        assert len(requests(events)) == 200
