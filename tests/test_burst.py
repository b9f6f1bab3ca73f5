"""At least as persistent as the SDK: a burst against an endpoint that drops its first connections.

The endpoint is the only one of its arm and resets its first ``DROPS`` requests' connections while ``CALLS`` calls
arrive at once. The raw SDK serves every call (its own retries absorb the drops); through holyroute every call must be
served too, although the drops eject the endpoint mid-burst: ejection and panic are judged afresh at each step, and a
call makes the SDK's number of attempts (``retry.min_attempts``) whatever health and the retry budget say.

The upstream (:class:`Burst`, a small h11 server on 127.0.0.1) holds its first ``DROPS`` requests until ``CALLS``
requests have arrived and only then resets them: "at once" made exact, so no call's retry can land among the drops
by the luck of thread scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h11
import openai
import pytest

import holyroute
from holyroute.testing import close_all, closed

from .conftest import Events

DROPS = 8
CALLS = 30
MESSAGES = [{"role": "user", "content": "hello"}]


ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


class Burst:
    """An upstream that resets the connections of its first ``drops`` requests once ``together`` requests have
    arrived (or after a bounded wait), and answers every other request with a chat completion."""

    def __init__(self, drops: int, together: int) -> None:
        self.drops, self.together = drops, together
        self.received = 0
        self.loop = asyncio.new_event_loop()
        self.arrived = asyncio.Event()
        self.port = 0
        self.open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.stopping = asyncio.Event()
            ready.set()
            try:
                await self.stopping.wait()
            finally:
                await close_all(server, self.open)

        self.loop.run_until_complete(main())
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.received += 1
                    if self.received >= self.together:
                        self.arrived.set()
                    if self.received <= self.drops:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.arrived.wait(), 5)
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()  # a TCP reset, nothing sent
                        return
                    headers = [("content-type", "application/json"), ("content-length", str(len(ANSWER)))]
                    data = conn.send(h11.Response(status_code=200, headers=headers)) or b""
                    data += (conn.send(h11.Data(data=ANSWER)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
                    writer.write(data)
                    await writer.drain()
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (OSError, h11.ProtocolError, asyncio.CancelledError):
            return  # the client went away (or its socket did), or close_all cancelled this connection
        finally:
            await closed(writer)
            del self.open[task]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(5)
        assert not self.thread.is_alive(), "the burst server did not stop within 5 s"


@pytest.fixture
def upstream() -> Iterator[Burst]:
    burst = Burst(DROPS, CALLS)
    yield burst
    burst.stop()


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

    async def test_raw_sdk_serves_every_call(self, upstream: Burst, instant_sdk_retries: None) -> None:
        client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k")
        async with client:
            results = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES) for _ in range(CALLS)),
                return_exceptions=True,
            )
        assert [r for r in results if isinstance(r, BaseException)] == []

    async def test_holyroute_serves_every_call(self, upstream: Burst) -> None:
        events = Events()
        http = holyroute.async_client(config(upstream.base_url), log=False, sinks=[events])
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

    async def test_every_call_served_with_every_endpoint_ejected(self, upstream: Burst) -> None:
        """The endpoint is ejected before the burst starts: its arm is in panic, so it is still tried."""
        events = Events()
        http = holyroute.async_client(config(upstream.base_url), log=False, sinks=[events])
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

    def test_raw_sdk_serves_every_call(self, upstream: Burst, instant_sdk_retries: None) -> None:
        with openai.OpenAI(base_url=upstream.base_url, api_key="k") as client:

            def one(_: int) -> Any:
                return client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

            with ThreadPoolExecutor(max_workers=CALLS) as pool:
                futures = [pool.submit(one, n) for n in range(CALLS)]
        assert [f.exception() for f in futures if f.exception() is not None] == []

    def test_holyroute_serves_every_call(self, upstream: Burst) -> None:
        events = Events()
        http = holyroute.client(config(upstream.base_url), log=False, sinks=[events])
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
        up = Burst(20, 200)
        try:
            http = holyroute.async_client(config(up.base_url), log=False, sinks=[events])
            client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http)
            async with client:
                results = await asyncio.gather(
                    *(client.chat.completions.create(model="chat", messages=MESSAGES) for _ in range(200)),
                    return_exceptions=True,
                )
        finally:
            up.stop()
        assert [type(r).__name__ for r in results if isinstance(r, BaseException)] == []
        assert len(requests(events)) == 200
