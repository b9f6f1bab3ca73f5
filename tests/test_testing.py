"""Specification of holyroute.testing.FakeUpstream: OpenAI's wire format by default, scripted faults on demand.

Clients are the official openai SDK and httpx2, sync and async. Nothing sleeps for real beyond a few tens of
milliseconds: waits are released by gates, and fail_for runs on an injected clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import openai
import pytest

from holyroute.testing import FakeUpstream, RecordedRequest, Reply

MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
STREAM_CHAT = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
# Loading CA certificates costs ~35 ms per client; everything here is plain HTTP on 127.0.0.1 anyway.
# trust_env=False keeps proxy variables from sending loopback traffic anywhere else.
TLS = ssl.create_default_context()


def sdk(base_url: str) -> openai.OpenAI:
    http_client = openai.DefaultHttpxClient(verify=TLS, trust_env=False, timeout=5.0)
    return openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, http_client=http_client)


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("primary") as upstream:
        yield upstream


@pytest.fixture
def client(up: FakeUpstream) -> Iterator[openai.OpenAI]:
    with sdk(up.base_url) as client:
        yield client


@pytest.fixture
async def aclient(up: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    http_client = openai.DefaultAsyncHttpxClient(verify=TLS, trust_env=False, timeout=5.0)
    async with openai.AsyncOpenAI(
        base_url=up.base_url, api_key="test", max_retries=0, http_client=http_client
    ) as client:
        yield client


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=TLS, trust_env=False, timeout=5.0) as raw:
        yield raw


@pytest.fixture
async def ahttp() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(verify=TLS, trust_env=False, timeout=5.0) as raw:
        yield raw


def sse_data(lines: Iterator[str]) -> list[str]:
    """The ``data:`` payloads of an SSE stream, in order."""
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


async def wait_for_requests(up: FakeUpstream, count: int) -> None:
    """Yield to the loop until the upstream has recorded ``count`` requests (bounded, never a fixed sleep)."""
    for _ in range(2000):
        if len(up.requests) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"upstream saw {len(up.requests)} requests, expected {count}")


class TestLifecycle:
    def test_binds_loopback_only(self, up: FakeUpstream) -> None:
        """base_url points at 127.0.0.1 and the bound port, under /v1."""
        assert up.base_url == f"http://127.0.0.1:{up.port}/v1"

    def test_base_url_needs_a_running_upstream(self) -> None:
        """base_url raises before start() and after stop()."""
        upstream = FakeUpstream()
        with pytest.raises(RuntimeError, match="not running"):
            _ = upstream.base_url
        upstream.start()
        upstream.stop()
        with pytest.raises(RuntimeError, match="not running"):
            _ = upstream.base_url

    def test_start_twice_raises(self, up: FakeUpstream) -> None:
        """A running upstream refuses a second start()."""
        with pytest.raises(RuntimeError, match="already running"):
            up.start()

    def test_restarts_on_a_fixed_port(self, http: httpx2.Client) -> None:
        """A stopped upstream's port can be bound again by an upstream asking for it."""
        with FakeUpstream("first") as first:
            port = first.port
        with FakeUpstream("second", port=port) as second:
            assert port == second.port
            assert http.get(f"{second.base_url}/models").headers["x-fake-upstream"] == "second"

    def test_stop_closes_open_connections(self, http: httpx2.Client) -> None:
        """stop() ends a stream held on a gate instead of waiting for it, and the client sees the tear."""
        with FakeUpstream() as upstream:
            upstream.push(Reply(gate=threading.Event(), gate_after=1))
            url = f"{upstream.base_url}/chat/completions"
            with http.stream("POST", url, json=STREAM_CHAT) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                started = time.monotonic()
                upstream.stop()
                assert time.monotonic() - started < 1.0
                with pytest.raises(httpx2.RemoteProtocolError):
                    list(lines)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"status": 101}, r"Reply\.status"),
            ({"delay_s": -1}, r"Reply\.delay_s"),
            ({"tear_after": -1}, r"Reply\.tear_after"),
        ],
    )
    def test_bad_reply_fails_at_construction(self, kwargs: dict[str, int], message: str) -> None:
        """A Reply that cannot be sent is rejected when built, naming the field."""
        with pytest.raises(ValueError, match=message):
            Reply(**kwargs)  # type: ignore[arg-type]

    def test_bad_name_fails_at_construction(self) -> None:
        """The name goes into a header, so it must be printable ASCII."""
        with pytest.raises(ValueError, match=r"FakeUpstream\.name"):
            FakeUpstream("two\nlines")


class TestChatCompletions:
    def test_sdk_parses_completion_with_usage(self) -> None:
        """A chat completion echoes the model, says who answered and carries a full usage block."""
        with (
            FakeUpstream("primary", cached_tokens=2, reasoning_tokens=3) as up,
            sdk(up.base_url) as client,
        ):
            completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

        prompt_tokens = len(json.dumps(MESSAGES)) // 4
        assert completion.id.startswith("chatcmpl-")
        assert completion.model == "gpt-4o-mini"
        assert completion.choices[0].message.content == "Hello from primary via gpt-4o-mini."
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert (prompt_tokens, 5 + 3) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
        assert prompt_tokens + 8 == completion.usage.total_tokens
        assert completion.usage.prompt_tokens_details is not None
        assert completion.usage.prompt_tokens_details.cached_tokens == 2
        assert completion.usage.completion_tokens_details is not None
        assert completion.usage.completion_tokens_details.reasoning_tokens == 3

    def test_openai_headers(self, client: openai.OpenAI) -> None:
        """Every answer carries OpenAI's headers and x-fake-upstream."""
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

        assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers["x-request-id"])
        assert raw.headers["openai-version"] == "2020-10-01"
        assert raw.headers["openai-processing-ms"].isdigit()
        assert raw.headers["content-type"] == "application/json"
        assert raw.headers["x-fake-upstream"] == "primary"
        for kind in ("requests", "tokens"):
            for field in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{field}-{kind}" in raw.headers

    def test_sdk_stream_with_usage(self, client: openai.OpenAI) -> None:
        """A stream opens with the assistant role, sends one chunk per word, then a usage-only chunk."""
        chunks = list(client.chat.completions.create(**STREAM_CHAT))  # type: ignore[call-overload]

        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text == "Hello from primary via gpt-4o-mini."
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == 5
        assert all(chunk.usage is None for chunk in chunks[:-1])

    def test_sdk_stream_helper_accumulates(self, client: openai.OpenAI) -> None:
        """The SDK's stream helper rebuilds the completion, usage included."""
        with client.chat.completions.stream(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        ) as stream:
            final = stream.get_final_completion()

        assert final.choices[0].message.content == "Hello from primary via gpt-4o-mini."
        assert final.usage is not None
        assert final.usage.completion_tokens == 5

    def test_wire_format(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """Streams are chunked SSE with compact JSON, no usage key unless asked, and end with [DONE]."""
        body = {**CHAT, "stream": True}
        with http.stream("POST", f"{up.base_url}/chat/completions", json=body) as response:
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["transfer-encoding"] == "chunked"
            payloads = sse_data(response.iter_lines())

        assert payloads[-1] == "[DONE]"
        assert all(", " not in data and '": ' not in data for data in payloads[:-1])
        assert all("usage" not in json.loads(data) for data in payloads[:-1])
        assert len(payloads) == 1 + 5 + 1 + 1

    async def test_async_sdk(self, aclient: openai.AsyncOpenAI) -> None:
        """The async SDK parses completions and streams alike."""
        completion = await aclient.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
        stream = await aclient.chat.completions.create(**STREAM_CHAT)  # type: ignore[call-overload]
        chunks = [chunk async for chunk in stream]

        assert completion.choices[0].message.content == "Hello from primary via m."
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5


class TestResponses:
    def test_sdk_parses_response(self, client: openai.OpenAI) -> None:
        """A Responses call returns a completed response with output text and usage."""
        response = client.responses.create(model="gpt-4o", input="Say hello.")

        assert response.id.startswith("resp_")
        assert (response.status, response.model) == ("completed", "gpt-4o")
        assert response.output_text == "Hello from primary via gpt-4o."
        assert response.usage is not None
        assert (len(json.dumps("Say hello.")) // 4, 5) == (
            response.usage.input_tokens,
            response.usage.output_tokens,
        )

    def test_sdk_stream_events(self, client: openai.OpenAI) -> None:
        """A Responses stream sends OpenAI's event sequence, numbered, ending with the full response."""
        with client.responses.stream(model="gpt-4o", input=[{"role": "user", "content": "hi"}]) as stream:
            events = list(stream)
            final = stream.get_final_response()

        expected = [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * 5,
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert expected == [event.type for event in events]
        assert list(range(len(expected))) == [event.sequence_number for event in events]
        assert final.output_text == "Hello from primary via gpt-4o."
        assert final.usage is not None
        assert final.usage.output_tokens == 5

    def test_stream_has_named_events_and_no_done(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """Each SSE event names its type on an event: line; there is no [DONE] sentinel."""
        body = {"model": "m", "input": "hi", "stream": True}
        with http.stream("POST", f"{up.base_url}/responses", json=body) as response:
            lines = [line for line in response.iter_lines() if line]

        names = [line.removeprefix("event: ") for line in lines[0::2]]
        types = [json.loads(line.removeprefix("data: "))["type"] for line in lines[1::2]]
        assert names == types
        assert "data: [DONE]" not in lines

    async def test_async_sdk_stream(self, aclient: openai.AsyncOpenAI) -> None:
        """The async SDK reads the Responses stream to a completed response."""
        stream = await aclient.responses.create(model="m", input="hi", stream=True)
        events = [event async for event in stream]

        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == "Hello from primary via m."


class TestEmbeddings:
    def test_sdk_decodes_base64_vectors(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """The SDK's default base64 request decodes to embedding_dims floats per input, with usage."""
        result = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])

        assert up.requests[-1].json is not None
        assert up.requests[-1].json["encoding_format"] == "base64"
        assert [item.index for item in result.data] == [0, 1]
        assert [len(item.embedding) for item in result.data] == [8, 8]
        assert result.data[0].embedding != result.data[1].embedding
        assert result.usage.prompt_tokens == 2

    def test_deterministic_across_formats(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """The same input gives the same vector, as float list or as little-endian float32 base64."""
        url = f"{up.base_url}/embeddings"
        floats = http.post(url, json={"model": "e", "input": "alpha", "encoding_format": "float"}).json()
        packed = http.post(url, json={"model": "e", "input": "alpha", "encoding_format": "base64"}).json()

        decoded = list(struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"])))
        assert floats["data"][0]["embedding"] == decoded
        assert floats["object"] == "list"

    def test_dimensions_parameter(self, client: openai.OpenAI) -> None:
        """A request's dimensions overrides embedding_dims."""
        result = client.embeddings.create(model="e", input="alpha", dimensions=3)

        assert len(result.data[0].embedding) == 3


class TestLegacyCompletionsAndModels:
    def test_sdk_completion(self, client: openai.OpenAI) -> None:
        """A legacy completion is a text_completion with usage."""
        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello.")

        assert completion.object == "text_completion"
        assert completion.choices[0].text == "Hello from primary via gpt-3.5-turbo-instruct."
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 5

    def test_sdk_stream_with_usage(self, client: openai.OpenAI) -> None:
        """A legacy stream sends text chunks, a stop chunk, then a usage-only chunk."""
        chunks = list(
            client.completions.create(model="m", prompt="hi", stream=True, stream_options={"include_usage": True})
        )

        assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == "Hello from primary via m."
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5

    def test_models(self, client: openai.OpenAI) -> None:
        """GET /v1/models lists a few models."""
        assert "gpt-4o-mini" in [model.id for model in client.models.list()]

    def test_unknown_path_is_openai_404(self, client: openai.OpenAI) -> None:
        """An unknown operation answers 404 with OpenAI's error body."""
        with pytest.raises(openai.NotFoundError) as caught:
            client.post("/nope", cast_to=object, body={})

        body = caught.value.body
        assert isinstance(body, dict)
        assert (body["message"], body["type"]) == ("Invalid URL (POST /v1/nope)", "invalid_request_error")

    def test_unparsable_body_is_400(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """A body that is not a JSON object answers 400 invalid_request_error."""
        response = http.post(f"{up.base_url}/chat/completions", content=b"{not json")

        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


class TestScriptedReplies:
    def test_queue_is_fifo_then_default(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """Each /v1 request consumes one scripted reply, oldest first; then defaults resume."""
        up.push(Reply.error(500), Reply.error(503))
        url = f"{up.base_url}/chat/completions"

        assert [http.post(url, json=CHAT).status_code for _ in range(3)] == [500, 503, 200]

    def test_rate_limited_is_sdk_rate_limit_error(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """Reply.rate_limited surfaces as openai.RateLimitError with OpenAI's body and headers."""
        up.push(Reply.rate_limited(2, reset_requests="1s", reset_tokens="6m0s"))

        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

        headers = caught.value.response.headers
        assert (
            headers["retry-after"],
            headers["x-ratelimit-remaining-requests"],
            headers["x-ratelimit-reset-requests"],
        ) == ("2", "0", "1s")
        assert (headers["x-ratelimit-reset-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("6m0s", "0")
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.type == "requests"

    def test_rate_limited_in_milliseconds(self) -> None:
        """retry_after_ms sends retry-after-ms instead of retry-after."""
        headers = Reply.rate_limited(0.25, retry_after_ms=True).headers

        assert (headers["retry-after-ms"], headers.get("retry-after")) == ("250", None)

    def test_error_reply(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """Reply.error builds OpenAI's error object; the SDK maps the status to its exception."""
        up.push(Reply.error(503, "Overloaded", code="overloaded"))

        with pytest.raises(openai.InternalServerError) as caught:
            client.responses.create(model="m", input="hi")

        assert caught.value.status_code == 503
        assert (caught.value.body) == {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }

    def test_error_status_without_body(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """A scripted status >= 400 with no body gets an OpenAI error body naming the status."""
        up.push(Reply(status=502))

        response = http.post(f"{up.base_url}/embeddings", json={"model": "e", "input": "x"})

        assert response.status_code == 502
        assert "502 Bad Gateway" in response.json()["error"]["message"]

    def test_custom_body_and_headers(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """A scripted body is sent as given; scripted headers add to or override the defaults."""
        up.push(
            Reply(body={"ok": True}, headers={"X-Extra": "1", "openai-version": "2099-01-01"}),
            Reply(status=201, body=b"raw", headers={"content-type": "text/plain"}),
        )
        url = f"{up.base_url}/anything"

        first, second = http.get(url), http.get(url)

        assert (
            first.json(),
            first.headers["x-extra"],
            first.headers["openai-version"],
        ) == ({"ok": True}, "1", "2099-01-01")
        assert (second.status_code, second.content, second.headers["content-type"]) == (201, b"raw", "text/plain")

    def test_requests_outside_v1_keep_the_queue(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """A request outside /v1 gets a 404 and leaves the scripted replies for /v1 operations."""
        up.push(Reply.error(500))
        root = up.base_url.removesuffix("/v1")

        assert http.get(f"{root}/health").status_code == 404
        assert http.get(f"{up.base_url}/models").status_code == 500

    def test_default_status_reply_keeps_default_body(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """Reply() with no body is a normal answer, only shaped by its delays and faults."""
        up.push(Reply())

        assert client.responses.create(model="m", input="x").output_text == "Hello from primary via m."

    def test_latency_delays_every_answer(self, http: httpx2.Client) -> None:
        """latency_s holds each answer for at least that long."""
        with FakeUpstream(latency_s=0.03) as slow:
            started = time.monotonic()
            response = http.get(f"{slow.base_url}/models")
            elapsed = time.monotonic() - started

        assert response.status_code == 200
        assert elapsed >= 0.03
        assert int(response.headers["openai-processing-ms"]) >= 30

    def test_chunk_delay_spaces_events(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """chunk_delay_s waits between SSE events (7 gaps for 8 events here), not before the first."""
        up.push(Reply(chunk_delay_s=0.004))

        started = time.monotonic()
        with http.stream("POST", f"{up.base_url}/chat/completions", json={**CHAT, "stream": True}) as response:
            payloads = sse_data(response.iter_lines())

        assert len(payloads) == 8
        assert time.monotonic() - started >= 7 * 0.004

    def test_head_gets_headers_only(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """HEAD answers with the GET answer's headers and no body."""
        response = http.head(f"{up.base_url}/models")

        assert (response.status_code, response.content) == (200, b"")
        assert int(response.headers["content-length"]) > 0

    async def test_a_held_answer_does_not_block_others(self, up: FakeUpstream, ahttp: httpx2.AsyncClient) -> None:
        """While one answer waits on its gate, other connections are answered."""
        gate = threading.Event()
        up.push(Reply(gate=gate))
        held = asyncio.create_task(ahttp.post(f"{up.base_url}/chat/completions", json=CHAT))
        await wait_for_requests(up, 1)

        other = await ahttp.post(f"{up.base_url}/chat/completions", json=CHAT)
        assert other.status_code == 200
        assert not held.done()

        gate.set()
        assert (await held).status_code == 200
        assert up.gate_log == ["set"]


class TestFailFor:
    def test_fails_until_the_deadline(self, http: httpx2.Client) -> None:
        """fail_for answers every request with its reply until the deadline, then defaults resume."""
        now = [100.0]
        with FakeUpstream(clock=lambda: now[0]) as up:
            up.push(Reply.error(500))
            up.fail_for(10, Reply.error(503))
            url = f"{up.base_url}/chat/completions"

            during = [http.post(url, json=CHAT).status_code for _ in range(3)]
            now[0] = 110.0
            after = [http.post(url, json=CHAT).status_code for _ in range(2)]

        assert during == [503, 503, 503]
        assert after == [500, 200]

    def test_sdk_sees_the_outage(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """Through the SDK, a fail_for 429 is a RateLimitError on every call."""
        up.fail_for(60, Reply.rate_limited())

        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]


class TestTornStreams:
    def test_torn_stream_raises_after_the_sent_events(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """tear_after sends that many events, then closes without the chunked terminator."""
        up.push(Reply(tear_after=2))
        received: list[str] = []

        with (
            http.stream("POST", f"{up.base_url}/chat/completions", json=STREAM_CHAT) as response,
            pytest.raises(httpx2.RemoteProtocolError),
        ):
            # extend() keeps the lines that arrived before the tear raised.
            received.extend(line for line in response.iter_lines() if line.startswith("data: "))

        assert len(received) == 2

    def test_sdk_stream_raises(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """Iterating a torn stream through the SDK raises its connection error instead of ending quietly."""
        up.push(Reply(tear_after=3))
        stream = client.chat.completions.create(**STREAM_CHAT)  # type: ignore[call-overload]

        with pytest.raises(openai.APIConnectionError):
            list(stream)
        stream.close()

    def test_torn_non_stream_body(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """On a JSON answer, tear_after sends that many body bytes, then closes."""
        up.push(Reply(tear_after=10))

        with pytest.raises(httpx2.RemoteProtocolError):
            http.post(f"{up.base_url}/chat/completions", json=CHAT)

    async def test_async_torn_stream(self, up: FakeUpstream, ahttp: httpx2.AsyncClient) -> None:
        """The async client sees the same tear."""
        up.push(Reply(tear_after=1))

        async with ahttp.stream(
            "POST", f"{up.base_url}/responses", json={"model": "m", "input": "x", "stream": True}
        ) as r:
            with pytest.raises(httpx2.RemoteProtocolError):
                [line async for line in r.aiter_lines()]


class TestDroppedConnections:
    def test_drop_is_a_transport_error(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """drop closes the connection without a response; the next request is answered on a new one."""
        up.push(Reply(drop=True))
        url = f"{up.base_url}/chat/completions"

        with pytest.raises(httpx2.TransportError):
            http.post(url, json=CHAT)
        assert http.post(url, json=CHAT).status_code == 200

    def test_sdk_connection_error(self, up: FakeUpstream, client: openai.OpenAI) -> None:
        """The SDK reports a dropped connection as APIConnectionError."""
        up.push(Reply(drop=True))

        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

    async def test_async_sdk_connection_error(self, up: FakeUpstream, aclient: openai.AsyncOpenAI) -> None:
        """The async SDK reports it the same way."""
        up.push(Reply(drop=True))

        with pytest.raises(openai.APIConnectionError):
            await aclient.embeddings.create(model="e", input="x")


class TestGates:
    def test_first_event_arrives_while_paused(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """Events before gate_after are flushed at once; the rest follow when the gate is set."""
        gate = threading.Event()
        up.push(Reply(gate=gate, gate_after=1))

        with http.stream("POST", f"{up.base_url}/chat/completions", json=STREAM_CHAT) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines).removeprefix("data: "))
            assert (first["choices"][0]["delta"]["role"], up.gate_log) == ("assistant", [])
            gate.set()
            rest = sse_data(lines)

        assert rest[-1] == "[DONE]"
        assert up.gate_log == ["set"]

    def test_gate_timeout_is_logged(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """A gate never set releases after gate_timeout_s, and the log says so."""
        up.push(Reply(gate=threading.Event(), gate_after=0, gate_timeout_s=0.02))

        with http.stream("POST", f"{up.base_url}/chat/completions", json=STREAM_CHAT) as response:
            payloads = sse_data(response.iter_lines())

        assert payloads[-1] == "[DONE]"
        assert up.gate_log == ["timeout"]

    async def test_async_sdk_stream_waits_on_gate(self, up: FakeUpstream, aclient: openai.AsyncOpenAI) -> None:
        """The async SDK receives the first chunk while the upstream is paused."""
        gate = threading.Event()
        up.push(Reply(gate=gate, gate_after=2))
        stream = await aclient.chat.completions.create(**STREAM_CHAT)  # type: ignore[call-overload]
        iterator = stream.__aiter__()

        first = await iterator.__anext__()
        second = await iterator.__anext__()
        assert (first.choices[0].delta.content, second.choices[0].delta.content, up.gate_log) == ("", "Hello", [])
        gate.set()
        rest = [chunk async for chunk in iterator]

        assert rest[-1].usage is not None
        assert up.gate_log == ["set"]


class TestRecording:
    def test_records_every_request(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """Each request is recorded with method, path, query, lower-case headers and body."""
        http.post(f"{up.base_url}/chat/completions?trace=1", json=CHAT, headers={"X-Trace-Id": "abc"})
        http.get(f"{up.base_url}/models")

        first, second = up.requests
        assert (first.method, first.path, first.query) == ("POST", "/v1/chat/completions", "trace=1")
        assert first.headers["x-trace-id"] == "abc"
        assert (first.json, first.model) == (CHAT, "gpt-4o-mini")
        assert (second.method, second.body, second.json, second.model) == ("GET", b"", None, None)

    def test_clear_forgets_everything(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """clear() drops recorded requests, queued replies and fail_for."""
        http.get(f"{up.base_url}/models")
        up.push(Reply.error(500))
        up.fail_for(60, Reply.error(503))

        up.clear()

        assert up.requests == []
        assert http.get(f"{up.base_url}/models").status_code == 200

    def test_recorded_request_parsing(self) -> None:
        """json and model are None when the body is not a JSON object with a string model."""
        assert (RecordedRequest("POST", "/", "", {}, b"{x").json, None) == (None, None)
        assert RecordedRequest("POST", "/", "", {}, b"[1]").model is None


class TestConnections:
    def test_keep_alive(self, up: FakeUpstream, http: httpx2.Client) -> None:
        """Sequential requests from one client reuse one connection."""
        for _ in range(3):
            http.post(f"{up.base_url}/chat/completions", json=CHAT)

        assert up.connections == 1

    async def test_many_concurrent_requests(self, up: FakeUpstream, ahttp: httpx2.AsyncClient) -> None:
        """Concurrent requests on many connections are all answered."""
        responses = await asyncio.gather(*(ahttp.post(f"{up.base_url}/chat/completions", json=CHAT) for _ in range(40)))

        assert [response.status_code for response in responses] == [200] * 40
        assert len(up.requests) == 40
