"""OpenTelemetry traces: one CLIENT span per call, one child per upstream attempt, GenAI attributes, right parents.

Real SDK calls (``openai.OpenAI`` / ``AsyncOpenAI`` over ``holyroute.client`` / ``async_client``) against local fake
upstreams, and made-up events fed to a tracer directly (``TestMatching``); spans go to an SDK ``TracerProvider`` with
an in-memory exporter, passed explicitly (the global provider is never set).
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

import holyroute
from holyroute.observe import tracing as tracing_impl
from holyroute.testing import FakeUpstream, Reply
from holyroute.tracing import Tracer, instrument

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    ups = {"main": FakeUpstream("main", cached_tokens=3), "backup": FakeUpstream("backup"), "spare": FakeUpstream()}
    for up in ups.values():
        up.start()
    yield ups
    for up in ups.values():
        up.stop()


def config_for(ups: dict[str, FakeUpstream], **retry: Any) -> dict[str, Any]:
    return {
        "endpoints": {name: {"base_url": up.base_url, "api_key": f"key-{name}"} for name, up in ups.items()},
        "routes": {
            "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main", "backup"]}]},
            "embed": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["main"]}]},
        },
        "prices": {"gpt-4.1": {"input": 2.0, "output": 8.0}},
        "health": {"consecutive_failures": 1000},  # no ejections: each test scripts its own failures
        "retry": {"max_attempts": 3, "backoff_initial_s": 0.001, "backoff_jitter_s": 0, "budget_ratio": 1.0, **retry},
    }


@pytest.fixture
def make_client(provider: TracerProvider) -> Iterator[Callable[[dict[str, Any]], openai.OpenAI]]:
    made: list[openai.OpenAI] = []

    def make(config: dict[str, Any]) -> openai.OpenAI:
        http_client = holyroute.client(config, log=False, sinks=[])
        instrument(http_client, tracer_provider=provider)
        client = openai.OpenAI(api_key="x", base_url="http://unused/v1", http_client=http_client, max_retries=0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# ---- reading the exported spans ---------------------------------------------------------------------------------


def calls(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.attributes and "holyroute.attempts" in s.attributes]


def attempts_of(exporter: InMemorySpanExporter, call: ReadableSpan) -> list[ReadableSpan]:
    assert call.context is not None
    children = [s for s in exporter.get_finished_spans() if parent_id(s) == call.context.span_id]
    return sorted(children, key=lambda s: int(attrs(s)["holyroute.attempt"]))


def only_call(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (call,) = calls(exporter)
    return call, attempts_of(exporter, call)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def assert_nested(call: ReadableSpan, children: Sequence[ReadableSpan]) -> None:
    """Each attempt lies inside the call, and attempts follow one another without overlapping."""
    assert call.start_time is not None
    assert call.end_time is not None
    previous_end = call.start_time
    for child in children:
        assert child.start_time is not None
        assert child.end_time is not None
        assert previous_end <= child.start_time <= child.end_time <= call.end_time
        assert child.context is not None
        assert call.context is not None
        assert child.context.trace_id == call.context.trace_id
        previous_end = child.end_time


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def parent_id(span: ReadableSpan) -> int | None:
    return int(span.parent.span_id) if span.parent is not None else None


def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a fake upstream to have received a request (it offers no signal of its own)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def on_a_thread(work: Callable[[], None]) -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()


# ---- the specifications ---------------------------------------------------------------------------------------


class TestPlainCall:
    """A call that succeeds at once: one call span, one attempt span, every GenAI attribute right."""

    def test_call_span(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        client = make_client(config_for(upstreams))
        answer = client.chat.completions.create(model="chat-default", messages=MESSAGES)
        usage = answer.usage
        assert usage is not None
        assert usage.prompt_tokens_details is not None
        call, _ = only_call(exporter)
        assert call.name == "chat chat-default"
        assert call.kind == SpanKind.CLIENT
        assert call.status.status_code == StatusCode.UNSET
        assert call.parent is None
        assert attrs(call) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "chat-default",
            "gen_ai.response.model": "gpt-4.1",
            "openai.api.type": "chat_completions",
            "server.address": "127.0.0.1",
            "server.port": upstreams["main"].port,
            "http.response.status_code": 200,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.prompt_tokens_details.cached_tokens,
            "gen_ai.usage.reasoning.output_tokens": 0,
            "gen_ai.response.finish_reasons": ("stop",),
            "holyroute.route": "chat-default",
            "holyroute.arm": "gpt-4.1",
            "holyroute.endpoint": "main",
            "holyroute.attempts": 1,
            "holyroute.cost_usd": pytest.approx((usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6),
            "holyroute.outcome": "ok",
            "holyroute.request_id": answer._request_id,
        }
        assert usage.prompt_tokens_details.cached_tokens == 3

    def test_attempt_span(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        client = make_client(config_for(upstreams))
        client.chat.completions.create(model="chat-default", messages=MESSAGES)
        call, children = only_call(exporter)
        (attempt,) = children
        assert attempt.name == "chat gpt-4.1"
        assert attempt.kind == SpanKind.CLIENT
        assert attempt.status.status_code == StatusCode.UNSET
        assert attrs(attempt) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4.1",
            "gen_ai.response.model": "gpt-4.1",
            "server.address": "127.0.0.1",
            "server.port": upstreams["main"].port,
            "http.response.status_code": 200,
            "holyroute.route": "chat-default",
            "holyroute.arm": "gpt-4.1",
            "holyroute.endpoint": "main",
            "holyroute.attempt": 1,
        }
        assert_nested(call, children)  # it starts when it was sent, after the call's own routing
        assert attempt.end_time == call.end_time

    def test_embeddings(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """Embeddings are named for their operation and carry input tokens only."""
        client = make_client(config_for(upstreams))
        answer = client.embeddings.create(model="embed", input="hello")
        call, _ = only_call(exporter)
        assert call.name == "embeddings embed"
        assert attrs(call)["gen_ai.operation.name"] == "embeddings"
        assert attrs(call)["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
        assert "openai.api.type" not in attrs(call)
        assert "gen_ai.response.finish_reasons" not in attrs(call)


class TestResponseCache:
    def test_cache_outcome_and_saving(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """A call span says what the response cache did; a hit's says what it saved and has no attempt span."""
        config = config_for(upstreams)
        config["routes"]["chat-default"]["cache"] = {"ttl": "1h"}
        client = make_client(config)
        for temperature in (0, 0, 1):
            client.chat.completions.create(model="chat-default", messages=MESSAGES, temperature=temperature)
        client.embeddings.create(model="embed", input="hello")  # a route without a cache
        stored, hit, bypass, plain = calls(exporter)
        assert [attrs(span).get("holyroute.cache") for span in (stored, hit, bypass, plain)] == [
            "stored", "hit", "bypass", None,
        ]  # fmt: skip
        cost = attrs(stored)["holyroute.cost_usd"]
        assert cost > 0
        assert (attrs(hit)["holyroute.cost_usd"], attrs(hit)["holyroute.saved_usd"]) == (0.0, cost)
        assert [span for span in (stored, hit) if "holyroute.saved_usd" in attrs(span)] == [hit]
        assert (len(attempts_of(exporter, stored)), attempts_of(exporter, hit)) == (1, [])
        assert attrs(hit)["gen_ai.response.model"] == "gpt-4.1"


class TestFailover:
    """Each upstream attempt is its own child span; failed ones say why."""

    def test_429_then_backup(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        upstreams["main"].push(Reply.rate_limited(retry_after_s=30))
        client = make_client(config_for(upstreams))
        client.chat.completions.create(model="chat-default", messages=MESSAGES)
        call, children = only_call(exporter)
        first, second = children
        assert call.status.status_code == StatusCode.UNSET
        assert attrs(call)["holyroute.attempts"] == 2
        assert attrs(call)["holyroute.endpoint"] == "backup"
        assert attrs(call)["server.port"] == upstreams["backup"].port
        assert parent_id(first) == parent_id(second) == span_id(call)

        assert first.name == "chat gpt-4.1"
        assert first.status.status_code == StatusCode.ERROR
        assert first.status.description == "429 from upstream; cooldown 30s (retry-after 30s)"
        assert attrs(first) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4.1",
            "server.address": "127.0.0.1",
            "server.port": upstreams["main"].port,
            "http.response.status_code": 429,
            "error.type": "429",
            "holyroute.route": "chat-default",
            "holyroute.arm": "gpt-4.1",
            "holyroute.endpoint": "main",
            "holyroute.attempt": 1,
            "holyroute.reason": "429 from upstream; cooldown 30s (retry-after 30s)",
        }
        assert second.status.status_code == StatusCode.UNSET
        assert attrs(second)["holyroute.attempt"] == 2
        assert attrs(second)["holyroute.endpoint"] == "backup"
        assert attrs(second)["server.port"] == upstreams["backup"].port
        assert "error.type" not in attrs(second)
        assert_nested(call, children)
        assert second.end_time == call.end_time

    def test_connection_reset_then_backup(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """An attempt without an HTTP answer is named by its exception type."""
        upstreams["main"].push(Reply(drop=True))
        client = make_client(config_for(upstreams))
        client.chat.completions.create(model="chat-default", messages=MESSAGES)
        _, (first, _second) = only_call(exporter)
        assert attrs(first)["error.type"] in {"RemoteProtocolError", "ReadError", "ConnectError"}
        assert "http.response.status_code" not in attrs(first)

    def test_gives_up(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """Every attempt fails: the call span is an error too, named by the answer the caller got."""
        upstreams["main"].push(Reply.error(503))
        upstreams["backup"].push(Reply.error(502))
        client = make_client(config_for(upstreams, max_attempts=2))
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="chat-default", messages=MESSAGES)
        call, (first, second) = only_call(exporter)
        assert call.status.status_code == StatusCode.ERROR
        assert attrs(call)["error.type"] == "502"
        assert attrs(call)["holyroute.outcome"] == "error"
        assert "gen_ai.response.model" not in attrs(call)
        assert [attrs(first)["error.type"], attrs(second)["error.type"]] == ["503", "502"]
        assert [first.status.status_code, second.status.status_code] == [StatusCode.ERROR, StatusCode.ERROR]
        assert [attrs(first)["holyroute.endpoint"], attrs(second)["holyroute.endpoint"]] == ["main", "backup"]
        assert_nested(call, [first, second])

    def test_fallback(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """Both endpoints of the arm fail: the fallback alias serves, and the spans say so."""
        config = config_for(upstreams)
        config["routes"]["chat-default"]["fallbacks"] = ["chat-cheap"]
        config["routes"]["chat-cheap"] = {"targets": [{"model": "gemini-2.5-flash", "endpoints": ["spare"]}]}
        upstreams["main"].push(Reply.error(503))
        upstreams["backup"].push(Reply.error(500))
        client = make_client(config)
        client.chat.completions.create(model="chat-default", messages=MESSAGES)
        call, children = only_call(exporter)
        assert [attrs(c)["holyroute.endpoint"] for c in children] == ["main", "backup", "spare"]
        assert [attrs(c).get("error.type") for c in children] == ["503", "500", None]
        assert attrs(call)["holyroute.fallback"] == attrs(children[2])["holyroute.fallback"] == "chat-cheap"
        assert attrs(call)["gen_ai.response.model"] == "gemini-2.5-flash"
        assert children[2].name == "chat gemini-2.5-flash"
        assert_nested(call, children)

    def test_gives_up_after_a_reset(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """The caller gets the earlier 503; the last attempt (a reset at backup) is still drawn at backup."""
        upstreams["main"].push(Reply.error(503))
        upstreams["backup"].push(Reply(drop=True))
        client = make_client(config_for(upstreams, max_attempts=2))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="chat-default", messages=MESSAGES)
        call, (first, second) = only_call(exporter)
        assert attrs(call)["error.type"] == "503"
        assert attrs(call)["holyroute.endpoint"] == "main"
        assert (attrs(first)["holyroute.endpoint"], attrs(first)["error.type"]) == ("main", "503")
        assert attrs(second)["holyroute.endpoint"] == "backup"
        assert attrs(second)["gen_ai.request.model"] == "gpt-4.1"
        assert attrs(second)["error.type"] == "_OTHER"  # the request event describes the 503, not this reset
        assert second.status.status_code == StatusCode.ERROR


class TestStreaming:
    def test_stream_after_failover(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """A stream's span ends with the stream and carries the usage holyroute asked for on the caller's behalf."""
        client = make_client(config_for(upstreams))
        upstreams["main"].push(Reply.error(503))
        # The same request unstreamed, for the usage the fake upstream gives it.
        expected = client.chat.completions.create(model="chat-default", messages=MESSAGES)
        assert expected.usage is not None
        exporter.clear()

        upstreams["main"].push(Reply.error(503))
        with client.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True) as stream:
            chunks = list(stream)
        assert all(chunk.usage is None for chunk in chunks)  # the caller did not ask for the usage chunk
        call, children = only_call(exporter)
        first, second = children
        values = attrs(call)
        assert values["gen_ai.request.stream"] is True
        assert values["gen_ai.usage.input_tokens"] == expected.usage.prompt_tokens
        assert values["gen_ai.usage.output_tokens"] == expected.usage.completion_tokens
        assert values["gen_ai.response.finish_reasons"] == ("stop",)
        assert 0 < values["gen_ai.response.time_to_first_chunk"] < 5
        assert attrs(first)["error.type"] == "503"
        assert attrs(second)["holyroute.endpoint"] == "backup"
        assert_nested(call, children)
        assert second.end_time == call.end_time

    def test_stream_finished_on_another_thread(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
    ) -> None:
        """A stream opened on one thread (429, then backup) and read to its end on another keeps its failed attempt."""
        upstreams["main"].push(Reply.rate_limited(retry_after_s=30))
        client = make_client(config_for(upstreams))
        opened: list[openai.Stream[Any]] = []
        chunks: list[Any] = []

        def open_stream() -> None:
            opened.append(client.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True))

        def read_stream() -> None:
            with opened[0] as stream:
                chunks.extend(stream)

        on_a_thread(open_stream)
        assert calls(exporter) == []  # the call ends with its stream, on the other thread
        on_a_thread(read_stream)
        assert chunks
        call, children = only_call(exporter)
        first, second = children
        assert attrs(call)["holyroute.attempts"] == 2
        assert (attrs(first)["holyroute.endpoint"], attrs(first)["error.type"]) == ("main", "429")
        assert first.status.status_code == StatusCode.ERROR
        assert (attrs(second)["holyroute.endpoint"], attrs(second)["holyroute.attempt"]) == ("backup", 2)
        assert "error.type" not in attrs(second)
        assert parent_id(first) == parent_id(second) == span_id(call)
        assert_nested(call, children)

    async def test_stream_finished_in_another_task(
        self, provider: TracerProvider, upstreams: dict[str, FakeUpstream], exporter: InMemorySpanExporter
    ) -> None:
        """The async twin: a stream opened in one task and read to its end in another keeps its failed attempt."""
        upstreams["main"].push(Reply.rate_limited(retry_after_s=30))
        http_client = holyroute.async_client(config_for(upstreams), log=False, sinks=[])
        instrument(http_client, tracer_provider=provider)
        client = openai.AsyncOpenAI(api_key="x", base_url="http://unused/v1", http_client=http_client, max_retries=0)

        async def read(stream: openai.AsyncStream[Any]) -> list[Any]:
            async with stream:
                return [chunk async for chunk in stream]

        try:
            stream = await asyncio.create_task(
                client.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True)
            )
            assert calls(exporter) == []
            chunks = await asyncio.create_task(read(stream))
        finally:
            await client.close()
        assert chunks
        call, (first, second) = only_call(exporter)
        assert (attrs(first)["holyroute.endpoint"], attrs(first)["error.type"]) == ("main", "429")
        assert (attrs(second)["holyroute.endpoint"], attrs(second)["holyroute.attempt"]) == ("backup", 2)
        assert parent_id(first) == parent_id(second) == span_id(call)
        assert_nested(call, [first, second])


class TestAsync:
    async def test_async_failover(
        self, provider: TracerProvider, upstreams: dict[str, FakeUpstream], exporter: InMemorySpanExporter
    ) -> None:
        upstreams["main"].push(Reply.rate_limited(retry_after_s=30))
        http_client = holyroute.async_client(config_for(upstreams), log=False, sinks=[])
        instrument(http_client, tracer_provider=provider)
        client = openai.AsyncOpenAI(api_key="x", base_url="http://unused/v1", http_client=http_client, max_retries=0)
        try:
            answer = await client.chat.completions.create(model="chat-default", messages=MESSAGES)
        finally:
            await client.close()
        assert answer.usage is not None
        call, (first, second) = only_call(exporter)
        assert call.name == "chat chat-default"
        assert attrs(call)["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
        assert attrs(first)["error.type"] == "429"
        assert attrs(second)["holyroute.endpoint"] == "backup"
        assert parent_id(first) == parent_id(second) == span_id(call)
        assert_nested(call, [first, second])


class TestParents:
    """The call span is a child of whatever span is current around the SDK call."""

    def test_app_span_is_parent(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
        provider: TracerProvider,
    ) -> None:
        upstreams["main"].push(Reply.error(500))
        client = make_client(config_for(upstreams))
        with provider.get_tracer("app").start_as_current_span("handle request") as app:
            client.chat.completions.create(model="chat-default", messages=MESSAGES)
        call, children = only_call(exporter)
        assert parent_id(call) == app.get_span_context().span_id
        assert call.context is not None
        assert call.context.trace_id == app.get_span_context().trace_id
        assert [parent_id(child) for child in children] == [span_id(call)] * 2
        (app_span,) = [s for s in exporter.get_finished_spans() if s.name == "handle request"]
        assert app_span.start_time is not None
        assert app_span.end_time is not None
        assert call.start_time is not None
        assert call.end_time is not None
        assert app_span.start_time <= call.start_time <= call.end_time <= app_span.end_time


class TestConcurrency:
    """Failovers wait for their own call's event: calls in flight on other threads or tasks never take them."""

    def test_overlapping_threads(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
        provider: TracerProvider,
    ) -> None:
        """B starts, A fails over, B fails over and finishes, then A finishes: each keeps its own failed attempt."""
        release_b, release_a = threading.Event(), threading.Event()
        upstreams["main"].push(Reply(status=502, gate=release_b, gate_after=0), Reply.error(503))
        upstreams["backup"].push(Reply(gate=release_a, gate_after=0))
        client = make_client(config_for(upstreams))
        app = provider.get_tracer("app")

        def call(name: str) -> None:
            with app.start_as_current_span(name):
                client.chat.completions.create(model="chat-default", messages=MESSAGES)

        b = threading.Thread(target=call, args=("B",))
        a = threading.Thread(target=call, args=("A",))
        try:
            b.start()
            until(lambda: upstreams["main"].received == 1)  # B waits for its first answer (502)
            a.start()
            until(lambda: upstreams["backup"].received == 1)  # A got 503 and failed over; it waits at backup
            release_b.set()
            b.join(5)
            assert not b.is_alive()
        finally:
            release_b.set()
            release_a.set()
            a.join(5)
            b.join(5)
        self.assert_own_failovers(exporter)

    async def test_overlapping_tasks(
        self, provider: TracerProvider, upstreams: dict[str, FakeUpstream], exporter: InMemorySpanExporter
    ) -> None:
        """The same overlap between two asyncio tasks of one event loop."""
        release_b, release_a = threading.Event(), threading.Event()
        upstreams["main"].push(Reply(status=502, gate=release_b, gate_after=0), Reply.error(503))
        upstreams["backup"].push(Reply(gate=release_a, gate_after=0))
        http_client = holyroute.async_client(config_for(upstreams), log=False, sinks=[])
        instrument(http_client, tracer_provider=provider)
        client = openai.AsyncOpenAI(api_key="x", base_url="http://unused/v1", http_client=http_client, max_retries=0)
        app = provider.get_tracer("app")

        async def call(name: str) -> None:
            with app.start_as_current_span(name):
                await client.chat.completions.create(model="chat-default", messages=MESSAGES)

        async def reached(up: FakeUpstream, count: int) -> None:
            deadline = time.monotonic() + 5
            while up.received < count:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.001)

        try:
            b = asyncio.create_task(call("B"))
            await reached(upstreams["main"], 1)
            a = asyncio.create_task(call("A"))
            await reached(upstreams["backup"], 1)
            release_b.set()
            await asyncio.wait_for(b, 5)
            release_a.set()
            await asyncio.wait_for(a, 5)
        finally:
            release_b.set()
            release_a.set()
            await client.close()
        self.assert_own_failovers(exporter)

    @staticmethod
    def assert_own_failovers(exporter: InMemorySpanExporter) -> None:
        spans = exporter.get_finished_spans()
        apps = {s.name: s for s in spans if s.name in ("A", "B")}
        by_app = {name: next(c for c in calls(exporter) if parent_id(c) == span_id(app)) for name, app in apps.items()}
        codes = {
            name: [attrs(child).get("error.type") for child in attempts_of(exporter, call)]
            for name, call in by_app.items()
        }
        assert codes == {"A": ["503", None], "B": ["502", None]}
        for call in by_app.values():
            assert_nested(call, attempts_of(exporter, call))

    def test_many_threads(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        exporter: InMemorySpanExporter,
        provider: TracerProvider,
    ) -> None:
        """Under load every call span has exactly its own attempts, one per upstream request."""
        upstreams["main"].push(*[Reply.error(503)] * 20)
        client = make_client(config_for(upstreams))
        app = provider.get_tracer("app")

        def work(worker: int) -> None:
            for n in range(10):
                with app.start_as_current_span(f"w{worker}-{n}"):
                    client.chat.completions.create(model="chat-default", messages=MESSAGES)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        found = calls(exporter)
        assert len(found) == 40
        apps = {span_id(s) for s in exporter.get_finished_spans() if s.name.startswith("w")}
        assert {parent_id(call) for call in found} == apps
        total = 0
        for call in found:
            children = attempts_of(exporter, call)
            total += len(children)
            assert len(children) == attrs(call)["holyroute.attempts"]
            assert [attrs(c).get("error.type") for c in children] == ["503"] * (len(children) - 1) + [None]
            assert_nested(call, children)
        assert total == upstreams["main"].received + upstreams["backup"].received == 60


class TestMatching:
    """Failovers find their call by ``call_id``, whatever order calls end in; the waiting table stays bounded.

    Events are fed to a :class:`Tracer` directly (no sockets), on a router whose clock the test moves.
    """

    @pytest.fixture
    def clock(self) -> list[float]:
        return [1000.0]

    @pytest.fixture
    def tracer(self, provider: TracerProvider, clock: list[float]) -> Tracer:
        config = {
            "endpoints": {
                "main": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"},
                "backup": {"base_url": "http://127.0.0.1:10/v1", "api_key": "k"},
            },
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["main", "backup"]}]}},
        }
        router = holyroute.Router(holyroute.load_config(config), clock=lambda: clock[0], log=False, sinks=[])
        return Tracer(router, tracer_provider=provider)

    @staticmethod
    def failover(call_id: int | None, attempt: int, status: int = 503) -> dict[str, Any]:
        return {
            "call_id": call_id,
            "route": "chat",
            "arm": "m",
            "endpoint": "main",
            "upstream_model": "m",
            "attempt": attempt,
            "attempt_ms": 10.0,
            "status": status,
            "error": None,
            "reason": f"{status} from upstream",
            "wait_s": 0.0,
            "next_endpoint": "backup",
        }

    @staticmethod
    def request(
        call_id: int, attempts: int, *, latency_ms: float = 100.0, attempt_ms: float | None = 30.0
    ) -> dict[str, Any]:
        return {
            "call_id": call_id,
            "route": "chat",
            "arm": "m",
            "model": "chat",
            "upstream_model": "m",
            "endpoint": "backup" if attempts > 1 else "main",
            "api": "chat",
            "status": 200,
            "outcome": "ok",
            "attempts": attempts,
            "attempt_ms": attempt_ms,
            "latency_ms": latency_ms,
        }

    @staticmethod
    def failed_codes(exporter: InMemorySpanExporter) -> dict[int, list[Any]]:
        """For each call span (told apart by its request id): its attempts' error.type, in attempt order."""
        return {
            int(attrs(call)["holyroute.request_id"]): [attrs(a).get("error.type") for a in attempts_of(exporter, call)]
            for call in calls(exporter)
        }

    def end(self, tracer: Tracer, call_id: int, attempts: int) -> None:
        tracer("holyroute.request", {**self.request(call_id, attempts), "request_id": str(call_id)})

    def test_calls_ending_in_any_order(self, tracer: Tracer, exporter: InMemorySpanExporter) -> None:
        """Interleaved failovers of three calls go to their own call, whichever ends first."""
        tracer("holyroute.failover", self.failover(1, 1, 503))
        tracer("holyroute.failover", self.failover(2, 1, 429))
        tracer("holyroute.failover", self.failover(1, 2, 502))
        tracer("holyroute.failover", self.failover(3, 1, 500))
        self.end(tracer, 3, 2)
        self.end(tracer, 1, 3)
        self.end(tracer, 2, 2)
        assert self.failed_codes(exporter) == {1: ["503", "502", None], 2: ["429", None], 3: ["500", None]}
        for call in calls(exporter):
            assert_nested(call, attempts_of(exporter, call))
        assert tracer.dropped == 0

    def test_final_attempt_lasts_attempt_ms(self, tracer: Tracer, exporter: InMemorySpanExporter) -> None:
        """The final attempt starts ``attempt_ms`` before the call's end, after the call's own routing."""
        tracer("holyroute.request", self.request(1, 1, latency_ms=100.0, attempt_ms=30.0))
        call, (attempt,) = only_call(exporter)
        assert call.start_time is not None
        assert call.end_time is not None
        assert call.end_time - call.start_time == 100_000_000
        assert (attempt.start_time, attempt.end_time) == (call.end_time - 30_000_000, call.end_time)

    @pytest.mark.parametrize("attempt_ms", [500.0, None])
    def test_final_attempt_kept_inside_the_call(
        self, tracer: Tracer, exporter: InMemorySpanExporter, attempt_ms: float | None
    ) -> None:
        """An attempt_ms longer than the call, or none at all, starts the final attempt with the call."""
        tracer("holyroute.request", self.request(1, 1, attempt_ms=attempt_ms))
        call, (attempt,) = only_call(exporter)
        assert (attempt.start_time, attempt.end_time) == (call.start_time, call.end_time)

    def test_failovers_of_a_call_that_never_ends_are_forgotten(
        self, tracer: Tracer, exporter: InMemorySpanExporter, clock: list[float]
    ) -> None:
        """A call abandoned after its failovers (a stream never closed) leaves nothing behind once they are too old."""
        tracer("holyroute.failover", self.failover(1, 1))
        tracer("holyroute.failover", self.failover(1, 2))
        clock[0] += tracing_impl._MAX_WAIT_S  # not yet too old
        tracer("holyroute.failover", self.failover(2, 1))
        assert tracer.dropped == 0
        clock[0] += 1
        tracer("holyroute.failover", self.failover(3, 1))  # any later failover sweeps the stale ones
        assert tracer.dropped == 2
        for call_id in (1, 2, 3):
            self.end(tracer, call_id, 2)
        assert self.failed_codes(exporter) == {1: [None], 2: ["503", None], 3: ["503", None]}

    def test_failovers_beyond_the_cap_are_dropped(
        self, tracer: Tracer, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past ``_MAX_WAITING`` failovers, the calls waiting longest lose theirs, and the loss is counted."""
        monkeypatch.setattr(tracing_impl, "_MAX_WAITING", 3)
        tracer("holyroute.failover", self.failover(1, 1))
        tracer("holyroute.failover", self.failover(2, 1))
        tracer("holyroute.failover", self.failover(2, 2))
        tracer("holyroute.failover", self.failover(3, 1))
        assert tracer.dropped == 1
        self.end(tracer, 3, 2)
        self.end(tracer, 2, 3)
        self.end(tracer, 1, 2)
        assert self.failed_codes(exporter) == {1: [None], 2: ["503", "503", None], 3: ["503", None]}

    def test_failover_without_call_id(self, tracer: Tracer, exporter: InMemorySpanExporter) -> None:
        """A failover that names no call is counted as dropped and drawn nowhere."""
        tracer("holyroute.failover", self.failover(None, 1))
        self.end(tracer, 1, 2)
        assert tracer.dropped == 1
        assert self.failed_codes(exporter) == {1: [None]}


class TestEndpoints:
    """server.* and gen_ai.provider.name come from the endpoint's base_url; unknown hosts name no provider."""

    @pytest.mark.parametrize(
        ("base_url", "expected"),
        [
            (
                "https://api.openai.com/v1",
                {"gen_ai.provider.name": "openai", "server.address": "api.openai.com", "server.port": 443},
            ),
            (
                "https://my-res.openai.azure.com/openai/v1",
                {"gen_ai.provider.name": "azure.ai.openai", "server.address": "my-res.openai.azure.com"},
            ),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai",
                {"gen_ai.provider.name": "gcp.gemini"},
            ),
            ("https://api.deepseek.com/v1", {"gen_ai.provider.name": "deepseek"}),
            (
                "http://user:secret@llm.internal.example:8080/v1",
                {"gen_ai.provider.name": None, "server.address": "llm.internal.example", "server.port": 8080},
            ),
        ],
    )
    def test_server_and_provider(
        self, provider: TracerProvider, exporter: InMemorySpanExporter, base_url: str, expected: dict[str, Any]
    ) -> None:
        def answer(request: httpx2.Request) -> httpx2.Response:
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
            return httpx2.Response(200, json={**body, "usage": usage})

        config = {
            "endpoints": {"ep": {"base_url": base_url, "api_key": "k"}},
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["ep"]}]}},
        }
        http_client = holyroute.client(config, transport=httpx2.MockTransport(answer), log=False, sinks=[])
        instrument(http_client, tracer_provider=provider)
        with openai.OpenAI(api_key="x", base_url="http://unused/v1", http_client=http_client) as client:
            client.chat.completions.create(model="chat", messages=MESSAGES)
        call, (attempt,) = only_call(exporter)
        for span in (call, attempt):
            for key, value in expected.items():
                assert attrs(span).get(key) == value, key
            assert "secret" not in repr(attrs(span))


class TestSetup:
    def test_import_holyroute_stays_light(self) -> None:
        """`import holyroute` loads no OpenTelemetry; only holyroute.tracing does."""
        code = "import sys, holyroute; print(any(m.startswith('opentelemetry') for m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False"

    def test_missing_otel_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        monkeypatch.delitem(sys.modules, "holyroute.tracing")
        monkeypatch.delitem(sys.modules, "holyroute.observe.tracing")
        with pytest.raises(ImportError, match=r"pip install 'holyroute\[otel\]'"):
            importlib.import_module("holyroute.tracing")

    def test_capture_content_unsupported(self, upstreams: dict[str, FakeUpstream]) -> None:
        http_client = holyroute.client(config_for(upstreams), log=False, sinks=[])
        with http_client, pytest.raises(ValueError, match="capture_content=True is not supported"):
            instrument(http_client, capture_content=True)

    def test_instrument_once(
        self,
        provider: TracerProvider,
        upstreams: dict[str, FakeUpstream],
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        exporter: InMemorySpanExporter,
    ) -> None:
        """Instrumenting a client twice for one provider keeps one tracer: no doubled spans."""
        client = make_client(config_for(upstreams))  # instrumented once already
        http_client = client._client
        assert isinstance(http_client, httpx2.Client)
        first = instrument(http_client, tracer_provider=provider)
        assert instrument(http_client, tracer_provider=provider) is first
        assert sum(isinstance(s, Tracer) for s in holyroute.router_of(http_client).sinks) == 1
        client.chat.completions.create(model="chat-default", messages=MESSAGES)
        assert len(calls(exporter)) == 1

    def test_tracing_failure_never_breaks_the_call(
        self,
        make_client: Callable[[dict[str, Any]], openai.OpenAI],
        upstreams: dict[str, FakeUpstream],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def broken(self: Tracer, fields: dict[str, Any]) -> None:
            raise RuntimeError("exporter exploded")

        monkeypatch.setattr(Tracer, "_request", broken)
        client = make_client(config_for(upstreams))
        with capture_logs() as logs:
            answer = client.chat.completions.create(model="chat-default", messages=MESSAGES)
        assert answer.choices
        assert [e["event"] for e in logs] == ["holyroute.tracing_failed"]
