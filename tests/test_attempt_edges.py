"""Edges of an attempt's life found by the review of the lifecycle work, each a way the router failed a call or
lost track of one: a broken error body counted twice, a grant that used up the deadline, a quality check that
raises, a stream dropped unread, a shadow cancelled before it ran."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import pytest

import holyroute
from holyroute import Router, load_config
from holyroute.core.steps import Send

from .conftest import Events, FakeClock, Harness, base_config, drive, ok

ANSWER = {
    "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3},
}
SSE = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n'
    b"data: [DONE]\n\n"
)
PRIMARY = {"x-holyroute-arm": "gpt-4.1"}


def one_endpoint(**health: Any) -> dict[str, Any]:
    return base_config(
        routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
        health={"consecutive_failures": 2, "base_ejection_s": 30, **health},
    )


class Broken(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A body that breaks off after its first bytes."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"error": '
        raise httpx2.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"error": '
        raise httpx2.ReadError("connection reset")


class TestBrokenErrorBody:
    """A 503 whose body breaks off is one failure of the endpoint, not two (it used to eject on half the count)."""

    def test_core(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(one_endpoint())
        call = h.call()
        assert isinstance(call.next_step(), Send)
        assert call.on_response(503, {"content-type": "application/json"}) is None
        call.on_error(httpx2.ReadError("reset"), timeout=False)
        assert h.router.health.ejected("main", h.clock()) is None, "one failure of two"
        assert h.events.named("holyroute.endpoint_ejected") == []

    @pytest.mark.parametrize("mode", ["sync", "async"])
    def test_through_the_transport(self, mode: str) -> None:
        events = Events()
        router = Router(load_config(one_endpoint()), log=False, sinks=[events])
        seen: list[str] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            seen.append(request.url.host)
            if len(seen) == 1:
                return httpx2.Response(503, headers={"content-type": "application/json"}, stream=Broken())
            return httpx2.Response(200, json=ANSWER)

        body = {"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]}
        url = "https://sdk.example/v1/chat/completions"
        if mode == "sync":
            transport = holyroute.Transport(
                router=router, transport=httpx2.MockTransport(handler), sleep=lambda _: None
            )
            with httpx2.Client(transport=transport) as client:
                assert client.post(url, json=body).status_code == 200
        else:

            async def go() -> None:
                async def nap(_: float) -> None:
                    return None

                inner = httpx2.MockTransport(handler)
                transport = holyroute.AsyncTransport(router=router, transport=inner, sleep=nap)
                async with httpx2.AsyncClient(transport=transport) as client:
                    assert (await client.post(url, json=body)).status_code == 200

            asyncio.run(go())
        assert seen == ["main.example", "main.example"]
        assert events.named("holyroute.endpoint_ejected") == [], "one failure counted, under consecutive_failures 2"
        (failover,) = events.named("holyroute.failover")
        assert failover["status"] == 503


class TestGrantAfterTheDeadline:
    """A shared-limit grant that took the time left never sends an attempt with no time (a negative timeout)."""

    def test_beyond_the_floor(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config(
            routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
            retry={"max_attempts": 3, "min_attempts": 0},
        )
        config["endpoints"]["main"]["rpm"] = 600
        h = make_harness(config)
        h.router.health.shared_limits = True
        clock: FakeClock = h.clock

        def slow_grant(_: object) -> float:
            clock.advance(0.3)  # the shared store took 300 ms to answer
            return 0.0

        outcome = drive(h.call(timeout=0.2), [], clock, grants=slow_grant)
        assert outcome.sent == []
        assert not isinstance(outcome.final, Send)

    def test_within_the_floor_the_attempt_gets_its_whole_timeout(self, make_harness: Callable[..., Harness]) -> None:
        config = base_config(routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}})
        config["endpoints"]["main"]["rpm"] = 600
        h = make_harness(config)
        h.router.health.shared_limits = True
        clock: FakeClock = h.clock

        def slow_grant(_: object) -> float:
            clock.advance(0.3)
            return 0.0

        outcome = drive(h.call(timeout=0.2), [ok()], clock, grants=slow_grant)
        assert [send.timeout for send in outcome.sent] == [pytest.approx(0.2)]


def test_a_quality_check_that_raises_never_fails_the_call() -> None:
    """The application's check is guarded as sinks are: the call succeeds with an unknown verdict, reported."""
    events = Events()

    def quality(route: str, arm: str, body: bytes) -> bool:
        raise ValueError("quality bug")

    config = {
        "endpoints": {"a": {"base_url": "https://a.example/v1", "api_key": "key-a"}},
        "routes": {
            "chat": {
                "rollout": {
                    "stable": {"model": "m", "endpoints": ["a"]},
                    "candidate": {"model": "m2", "endpoints": ["a"]},
                    "steps": [{"set_weight": 50}, {"pause": {}}],
                }
            }
        },
        "state": {"backend": "memory"},
    }
    router = Router(load_config(config), log=False, sinks=[events], quality=quality)
    transport = holyroute.Transport(
        router=router, transport=httpx2.MockTransport(lambda _: httpx2.Response(200, json=ANSWER))
    )
    with httpx2.Client(transport=transport) as client:
        for _ in range(4):
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            assert client.post("https://sdk.example/v1/chat/completions", json=body).status_code == 200
    assert [e["outcome"] for e in events.named("holyroute.request")] == ["ok"] * 4
    assert [e.get("quality") for e in events.named("holyroute.request")] == [None] * 4
    assert {e["error"] for e in events.named("holyroute.quality_failed")} == {"ValueError"}


class TestStreamDroppedUnread:
    """A stream the caller drops without reading or closing it ends its call when it is collected."""

    def test_sync(self) -> None:
        events = Events()
        router = Router(load_config(one_endpoint()), log=False, sinks=[events])
        inner = httpx2.MockTransport(
            lambda _: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)
        )
        transport = holyroute.Transport(router=router, transport=inner)
        client = httpx2.Client(transport=transport)
        body = {"model": "chat-default", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        for _ in range(5):
            request = client.build_request("POST", "https://sdk.example/v1/chat/completions", json=body)
            response = client.send(request, stream=True)
            assert response.status_code == 200
            del response, request  # the caller's code raised before it read the stream
        gc.collect()
        assert router.health.in_flight("main") == 0
        assert [e["outcome"] for e in events.named("holyroute.request")] == ["cancelled"] * 5

    def test_async(self) -> None:
        events = Events()
        router = Router(load_config(one_endpoint()), log=False, sinks=[events])

        async def go() -> None:
            inner = httpx2.MockTransport(
                lambda _: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)
            )
            transport = holyroute.AsyncTransport(router=router, transport=inner)
            client = httpx2.AsyncClient(transport=transport)
            body = {"model": "chat-default", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            request = client.build_request("POST", "https://sdk.example/v1/chat/completions", json=body)
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            del response, request

        asyncio.run(go())
        gc.collect()
        assert router.health.in_flight("main") == 0
        assert [e["outcome"] for e in events.named("holyroute.request")] == ["cancelled"]


def test_async_shadow_cancelled_before_it_ran_still_ends() -> None:
    """aclose() straight after a sampled call: the copy never ran, and still emits its one event (cancelled)."""
    config = {
        "endpoints": {
            "a": {"base_url": "https://a.example/v1", "api_key": "key-a"},
            "s": {"base_url": "https://s.example/v1", "api_key": "key-s"},
        },
        "routes": {
            "chat": {
                "targets": [{"model": "m", "endpoints": ["a"]}],
                "shadow": {"model": "m", "endpoints": ["s"], "sample": 1.0},
            }
        },
        "state": {"backend": "memory"},
    }
    events = Events()
    router = Router(load_config(config), log=False, sinks=[events])
    hosts: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        hosts.append(request.url.host)
        return httpx2.Response(200, json=ANSWER)

    async def go() -> None:
        transport = holyroute.AsyncTransport(router=router, transport=httpx2.MockTransport(handler))
        async with httpx2.AsyncClient(transport=transport) as client:
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("https://sdk.example/v1/chat/completions", json=body)).status_code == 200
            await transport.aclose()

    asyncio.run(go())
    assert hosts == ["a.example"]
    assert sorted((e["shadow"], e["outcome"]) for e in events.named("holyroute.request")) == [
        (False, "ok"),
        (True, "cancelled"),
    ]
