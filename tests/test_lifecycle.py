"""One owner per call: whatever stops a call (a cancel, KeyboardInterrupt, a bug, a torn stream, a caller that lets
go of a stream) ends its attempt and emits its one ``holyroute.request``.

Each run drives one call through the real drivers (``Transport`` / ``AsyncTransport``) and an in-memory upstream that
answers at random (200, 500, 429, connection errors, timeouts, torn bodies), with a fake clock and an injected sleep.
Every upstream step and every sleep is a checkpoint; a seeded draw picks the checkpoint at which the run is
interrupted: a real cancellation (anyio's cancel scope under asyncio and trio) or an injected exception
(``KeyboardInterrupt`` / ``RuntimeError`` in the sync driver, ``RuntimeError`` in the async one). Afterwards no
endpoint has an attempt in flight, no half-open trial is stuck, events equal calls, each interrupted call's event
says ``cancelled`` or ``error`` as its interruption was, with the attempts it made, and the exception reached the
caller unchanged.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest

from holyroute import Router, load_config
from holyroute.drivers.transport import AsyncTransport, Transport

from .conftest import Events, FakeClock

RUNS = 800  # per driver: 2,400 calls in all, over 1,300 of them interrupted mid-call (seeded)
ENDPOINTS = ("a", "b", "c")
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
DONE = b"data: [DONE]\n\n"
ANSWER = json.dumps(
    {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
     "content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
).encode()  # fmt: skip


def config() -> dict[str, Any]:
    return {
        "endpoints": {name: {"base_url": f"https://{name}.example/v1", "api_key": f"key-{name}"} for name in ENDPOINTS},
        "routes": {
            "chat": {"targets": [{"model": "m", "endpoints": ["a", "b"]}], "fallbacks": ["spare"]},
            "spare": {"targets": [{"model": "m", "endpoints": ["c"]}]},
        },
        "retry": {
            "max_attempts": 4,
            "backoff_initial_s": 0.05,
            "backoff_jitter_s": 0,
            "max_wait_s": 2,
            "default_cooldown_s": 0.5,
        },
        "health": {"consecutive_failures": 2, "base_ejection_s": 1, "max_ejection_s": 4, "max_ejected_percent": 100},
    }


class Interrupt(Exception):
    """Raised by a checkpoint to ask the run to interrupt there (turned into a cancel or an injected exception)."""


@dataclass
class Run:
    """One call's script: at which checkpoint it is interrupted (0: never), and what it saw."""

    rng: random.Random
    stop_at: int
    sends: int = 0
    checkpoints: int = 0
    fired: bool = False
    events_at_fire: int = -1


@dataclass
class World:
    """The router, its clock and events, and the run in progress (the upstream reads it)."""

    clock: FakeClock = field(default_factory=FakeClock)
    events: Events = field(default_factory=Events)
    run: Run | None = None
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.router = Router(
            load_config(config()), clock=self.clock, log=False, sinks=[self.events], rng=random.Random(3)
        )

    def requests(self) -> list[dict[str, Any]]:
        return self.events.named("holyroute.request")

    def tick(self) -> bool:
        """A checkpoint: True when the run must be interrupted here."""
        run = self.run
        assert run is not None
        run.checkpoints += 1
        if run.checkpoints == run.stop_at and not run.fired:
            run.fired = True
            run.events_at_fire = len(self.requests())
            return True
        return False

    def answer(self, stream: bool) -> tuple[str, int, list[tuple[str, str]], list[bytes]]:
        """What the upstream does with the next attempt: ("raise" | "answer" | "tear"), status, headers, body parts."""
        run = self.run
        assert run is not None
        roll = run.rng.random()
        json_headers = [("content-type", "application/json")]
        if roll < 0.1:
            return "connect", 0, [], []
        if roll < 0.2:
            return "timeout", 0, [], []
        if roll < 0.3:
            return "answer", 500, json_headers, [b'{"error":{"message":"boom"}}']
        if roll < 0.4:
            return "answer", 429, [*json_headers, ("retry-after-ms", "300")], [b'{"error":{"message":"slow"}}']
        if stream:
            parts = [CHUNK, CHUNK, USAGE, DONE]
            kind = "tear" if roll < 0.5 else "answer"
            return kind, 200, [("content-type", "text/event-stream")], parts
        return ("tear" if roll < 0.5 else "answer"), 200, json_headers, [ANSWER[:20], ANSWER[20:]]


def check_world(world: World, runs: list[tuple[Run, BaseException | None, str]]) -> None:
    """The invariants after every run: nothing in flight, no stuck trial, one event per call, honest outcomes."""
    router, clock = world.router, world.clock
    for name in ENDPOINTS:
        assert router.health.in_flight(name) == 0, name
    clock.advance(1000.0)  # every ejection over: an endpoint still refusing now has a trial stuck in flight
    for name in ENDPOINTS:
        assert router.health.ejected(name, clock()) is None, name
    done = [e for e in world.requests() if not e["shadow"]]
    assert len(done) == len(runs)
    assert len({e["call_id"] for e in done}) == len(runs)
    fired = 0
    for (run, caught, expected), event in zip(runs, done, strict=True):
        assert event["attempts"] == run.sends
        if run.fired and run.events_at_fire < len(done) and event is done[run.events_at_fire]:
            # Interrupted before the call had ended: the event says so.
            fired += 1
            assert event["outcome"] == expected, (event, run)
            assert caught is not None
    outcomes = {e["outcome"] for e in done}
    assert {"ok", "error", "cancelled"} <= outcomes
    assert fired > len(runs) * 2 // 5, f"only {fired} runs were interrupted mid-call"


# ---- sync ------------------------------------------------------------------------------------------------------


class SyncUpstream(httpx2.BaseTransport):
    def __init__(self, world: World, raising: list[BaseException]) -> None:
        self.world = world
        self.raising = raising  # what the current run raises at its interruption point

    def point(self) -> None:
        if self.world.tick():
            raise self.raising[0]

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        assert self.world.run is not None
        self.world.run.sends += 1  # an attempt the core asked for, whatever happens to it next
        self.point()  # before headers
        stream = json.loads(request.read()).get("stream") is True
        kind, status, headers, parts = self.world.answer(stream)
        if kind == "connect":
            raise httpx2.ConnectError("refused", request=request)
        if kind == "timeout":
            raise httpx2.ReadTimeout("slow", request=request)
        return httpx2.Response(status, headers=headers, stream=SyncBody(self, parts, tear=kind == "tear"))


class SyncBody(httpx2.SyncByteStream):
    def __init__(self, upstream: SyncUpstream, parts: list[bytes], *, tear: bool) -> None:
        self.upstream, self.parts, self.tear = upstream, parts, tear

    def __iter__(self) -> Iterator[bytes]:
        for n, part in enumerate(self.parts):
            self.upstream.point()  # mid-body
            if self.tear and n == 1:
                raise httpx2.ReadError("torn")
            yield part


def test_sync_interrupted_anywhere() -> None:
    """Sync: KeyboardInterrupt or RuntimeError at any checkpoint, and callers closing streams early."""
    world = World()
    raising: list[BaseException] = [KeyboardInterrupt()]
    upstream = SyncUpstream(world, raising)
    transport = Transport(
        router=world.router, transport=upstream, sleep=lambda s: (world.clock.advance(s), upstream.point())[0]
    )
    client = httpx2.Client(transport=transport)
    rng = random.Random(12)
    runs: list[tuple[Run, BaseException | None, str]] = []
    for _ in range(RUNS):
        run = world.run = Run(random.Random(rng.random()), stop_at=rng.choice([0, *range(1, 8)]))
        error: BaseException = KeyboardInterrupt() if rng.random() < 0.5 else RuntimeError("bug in the upstream")
        raising[0] = error
        stream = rng.random() < 0.5
        close_after = rng.choice([None, None, 0, 1]) if stream else None
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        caught: BaseException | None = None
        expected = "cancelled" if isinstance(error, KeyboardInterrupt) else "error"
        try:
            if stream:
                with client.stream("POST", "https://api.example/v1/chat/completions", json=body) as response:
                    for n, _chunk in enumerate(response.iter_bytes()):
                        if close_after is not None and n >= close_after:
                            break  # the caller lets go early: closing the response ends the call
            else:
                client.post("https://api.example/v1/chat/completions", json=body)
        except (KeyboardInterrupt, RuntimeError) as exc:
            caught = exc
        except httpx2.HTTPError:
            pass  # every attempt failed (or the stream tore): the call's own answer, not an interruption
        assert caught is None or caught is error, "the interruption reaches the caller unchanged"
        if close_after is not None and not run.fired:
            # Closed early by the caller before its end: cancelled, unless the stream had ended already.
            event = world.requests()[-1]
            assert event["outcome"] in ("cancelled", "ok", "error")
        world.clock.advance(rng.random())
        runs.append((run, caught, expected))
    check_world(world, runs)
    cancelled_by_caller = [e for e in world.requests() if e["outcome"] == "cancelled"]
    assert cancelled_by_caller, "some calls ended cancelled"
    client.close()


# ---- async (asyncio and trio) ----------------------------------------------------------------------------------


class AsyncUpstream(httpx2.AsyncBaseTransport):
    def __init__(self, world: World) -> None:
        self.world = world

    async def point(self) -> None:
        if self.world.tick():
            raise Interrupt
        await anyio.sleep(0)  # a real checkpoint: a pending cancellation is delivered here

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert self.world.run is not None
        self.world.run.sends += 1
        await self.point()
        stream = json.loads(await request.aread()).get("stream") is True
        kind, status, headers, parts = self.world.answer(stream)
        if kind == "connect":
            raise httpx2.ConnectError("refused", request=request)
        if kind == "timeout":
            raise httpx2.ReadTimeout("slow", request=request)
        return httpx2.Response(status, headers=headers, stream=AsyncBody(self, parts, tear=kind == "tear"))


class AsyncBody(httpx2.AsyncByteStream):
    def __init__(self, upstream: AsyncUpstream, parts: list[bytes], *, tear: bool) -> None:
        self.upstream, self.parts, self.tear = upstream, parts, tear

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n, part in enumerate(self.parts):
            await self.upstream.point()
            if self.tear and n == 1:
                raise httpx2.ReadError("torn")
            yield part


class Interrupting(AsyncUpstream):
    """Turns a checkpoint's ``Interrupt`` into the run's interruption: cancel the caller's scope there (delivered
    at the same checkpoint), or raise an injected RuntimeError."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.scope: anyio.CancelScope | None = None
        self.error: BaseException | None = None

    async def point(self) -> None:
        try:
            await super().point()
        except Interrupt:
            if self.error is not None:
                raise self.error from None
            assert self.scope is not None
            self.scope.cancel()
            await anyio.sleep(0)
            raise AssertionError("the cancellation was not delivered") from None


async def interrupted_anywhere(seed: int) -> None:
    world = World()
    upstream = Interrupting(world)

    async def sleep(seconds: float) -> None:
        world.clock.advance(seconds)
        await upstream.point()  # a backoff or cooldown wait is a checkpoint too

    transport = AsyncTransport(router=world.router, transport=upstream, sleep=sleep)
    client = httpx2.AsyncClient(transport=transport)
    rng = random.Random(seed)
    runs: list[tuple[Run, BaseException | None, str]] = []
    for _ in range(RUNS):
        run = world.run = Run(random.Random(rng.random()), stop_at=rng.choice([0, *range(1, 8)]))
        upstream.error = RuntimeError("bug in the upstream") if rng.random() < 0.25 else None
        expected = "error" if upstream.error is not None else "cancelled"
        stream = rng.random() < 0.5
        close_after = rng.random() < 0.2 if stream else None
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        caught: BaseException | None = None
        with anyio.CancelScope() as scope:
            upstream.scope = scope
            try:
                if stream:
                    async with client.stream("POST", "https://api.example/v1/chat/completions", json=body) as resp:
                        # Closed early by the caller: not read at all. (Breaking out of httpx2's byte iterators
                        # leaves async generators for the GC, which trio warns about; a cancel mid-stream ends them.)
                        if not close_after:
                            async for _chunk in resp.aiter_bytes():
                                pass
                else:
                    await client.post("https://api.example/v1/chat/completions", json=body)
            except RuntimeError as exc:
                caught = exc
            except httpx2.HTTPError:
                pass
        assert caught is None or caught is upstream.error, "the injected error reaches the caller unchanged"
        if scope.cancelled_caught:
            caught = Interrupt("cancelled")  # the cancellation itself was absorbed by the caller's scope
        if run.fired and upstream.error is None:
            assert scope.cancelled_caught, "the cancellation propagated to the caller's scope"
        world.clock.advance(rng.random())
        runs.append((run, caught, expected))
    check_world(world, runs)
    await client.aclose()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_interrupted_anywhere(backend: str) -> None:
    """Async under asyncio and trio: real cancellation at any checkpoint (before headers, mid-body, mid-stream, in a
    backoff or cooldown wait), injected errors, and callers closing streams early."""
    anyio.run(interrupted_anywhere, 21, backend=backend)


# ---- one path at a time ----------------------------------------------------------------------------------------

TWO = {
    "endpoints": {name: {"base_url": f"https://{name}.example/v1", "api_key": f"key-{name}"} for name in ("a", "b")},
    "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["a", "b"]}]}},
    "health": {"consecutive_failures": 1, "base_ejection_s": 10},
}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
URL = "https://api.example/v1/chat/completions"


def half_open(router: Router, clock: FakeClock) -> None:
    """Endpoint ``a`` ejected, then its ejection over: the next attempt to it is its half-open trial."""
    router.transition(router.health.failure("a", "ConnectError", clock(), ("a", "b")))
    clock.advance(11)
    assert router.health.ejected("a", clock()) is None


def json_answer(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": "application/json"}, content=ANSWER)


class TestTrialReleased:
    """A half-open trial whose attempt is cancelled is released: the endpoint takes traffic again."""

    def test_sync_keyboard_interrupt(self) -> None:
        clock, events = FakeClock(), Events()
        router = Router(load_config(TWO), clock=clock, log=False, sinks=[events])
        half_open(router, clock)
        hosts: list[str] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            hosts.append(request.url.host)
            if len(hosts) == 1:
                raise KeyboardInterrupt
            return json_answer(request)

        with httpx2.Client(transport=Transport(router=router, transport=httpx2.MockTransport(handler))) as client:
            with pytest.raises(KeyboardInterrupt):
                client.post(URL, json=BODY)
            assert router.health.in_flight("a") == 0
            assert router.health.ejected("a", clock()) is None, "the trial is not stuck in flight"
            assert client.post(URL, json=BODY).status_code == 200
        assert hosts == ["a.example", "a.example"]
        assert [(e["outcome"], e["attempts"]) for e in events.named("holyroute.request")] == [
            ("cancelled", 1),
            ("ok", 1),
        ]

    async def test_asyncio_wait_for(self) -> None:
        clock, events = FakeClock(), Events()
        router = Router(load_config(TWO), clock=clock, log=False, sinks=[events])
        half_open(router, clock)
        hosts: list[str] = []
        never = anyio.Event()

        class Hanging(httpx2.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
                hosts.append(request.url.host)
                if len(hosts) == 1:
                    await never.wait()  # only a cancellation ends this attempt
                return json_answer(request)

        async with httpx2.AsyncClient(transport=AsyncTransport(router=router, transport=Hanging())) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.post(URL, json=BODY), 0.01)
            assert router.health.in_flight("a") == 0
            assert router.health.ejected("a", clock()) is None
            assert (await client.post(URL, json=BODY)).status_code == 200
        assert hosts == ["a.example", "a.example"]
        assert [(e["outcome"], e["attempts"]) for e in events.named("holyroute.request")] == [
            ("cancelled", 1),
            ("ok", 1),
        ]


class Chunks(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """An event stream that arrives event by event."""

    PARTS = (CHUNK, CHUNK, CHUNK, USAGE, DONE)

    def __iter__(self) -> Iterator[bytes]:
        yield from self.PARTS

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.PARTS:
            yield part


def sse(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Chunks())


class TestStreamClosedEarly:
    """A caller that closes a stream before its end: the call ends cancelled, its attempt with it."""

    def test_sync(self) -> None:
        events = Events()
        router = Router(load_config(TWO), log=False, sinks=[events])
        transport = Transport(router=router, transport=httpx2.MockTransport(sse))
        with (
            httpx2.Client(transport=transport) as client,
            client.stream("POST", URL, json={**BODY, "stream": True}) as response,
        ):
            for _ in response.iter_bytes():
                break  # one event read, then the caller lets go
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["attempts"]) == ("cancelled", 1)
        assert router.health.in_flight("a") == 0

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_async(self, backend: str) -> None:
        events = Events()
        router = Router(load_config(TWO), log=False, sinks=[events])

        async def main() -> None:
            transport = AsyncTransport(router=router, transport=httpx2.MockTransport(sse))
            async with (
                httpx2.AsyncClient(transport=transport) as client,
                client.stream("POST", URL, json={**BODY, "stream": True}),
            ):
                pass  # closed unread

        anyio.run(main, backend=backend)
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["attempts"]) == ("cancelled", 1)
        assert router.health.in_flight("a") == 0


class TestEventsEqualCalls:
    """Calls answered locally before any attempt still emit their one event."""

    def test_unknown_pin(self) -> None:
        events = Events()
        router = Router(load_config(TWO), log=False, sinks=[events])
        with httpx2.Client(transport=Transport(router=router, transport=httpx2.MockTransport(json_answer))) as client:
            response = client.post(URL, json=BODY, headers={"x-holyroute-arm": "nope"})
        assert response.status_code == 400
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["status"], event["attempts"]) == ("error", 400, 0)


def test_closed_shadow_pool_never_fails_the_call() -> None:
    """After close(), a sampled call still gets its answer: the shadow copy is dropped, not raised."""
    cfg = {**TWO, "routes": {"chat": {**TWO["routes"]["chat"], "shadow": {"model": "m", "endpoints": ["b"]}}}}
    cfg["routes"]["chat"]["shadow"]["sample"] = 1.0
    events = Events()
    transport = Transport(cfg, transport=httpx2.MockTransport(json_answer), log=False, sinks=[events])
    client = httpx2.Client(transport=transport)
    assert client.post(URL, json=BODY).status_code == 200
    transport.close()
    assert client.post(URL, json=BODY).status_code == 200
