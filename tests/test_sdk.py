"""End to end with the official OpenAI SDK as the client, against local fake upstreams on 127.0.0.1.

Every test runs twice, through ``OpenAI`` + ``holyroute.client`` and ``AsyncOpenAI`` + ``holyroute.async_client``,
with the same assertions: the two transports must behave the same.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from structlog.testing import capture_logs

import holyroute
from holyroute.testing import FakeUpstream, Reply


class SDK:
    """One face over both SDK clients: each method makes one call and returns plain results."""

    def __init__(self, mode: str, config: dict[str, Any], *, base_url: str | None = None, **options: Any) -> None:
        self.mode = mode
        options.setdefault("api_key", "sdk-own-key")
        if base_url is not None:
            options["base_url"] = base_url
        if mode == "sync":
            self._client: Any = openai.OpenAI(http_client=holyroute.client(config), **options)
        else:
            self._runner = asyncio.Runner()
            self._client = openai.AsyncOpenAI(http_client=holyroute.async_client(config), **options)

    def _run(self, make: Callable[[], Any]) -> Any:
        if self.mode == "sync":
            return make()

        async def awaited() -> Any:
            return await make()  # paginators are awaitable, not coroutines

        return self._runner.run(awaited())

    def chat(self, **kwargs: Any) -> Any:
        kwargs.setdefault("model", "chat-default")
        kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
        return self._run(lambda: self._client.chat.completions.create(**kwargs))

    def stream(self, on_chunk: Callable[[Any], None] | None = None, **kwargs: Any) -> list[Any]:
        """All chunks of a streamed chat call; ``on_chunk`` sees each as it arrives."""
        kwargs.setdefault("model", "chat-default")
        kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
        client = self._client

        def note(chunk: Any) -> Any:
            if on_chunk is not None:
                on_chunk(chunk)
            return chunk

        if self.mode == "sync":
            with client.chat.completions.create(stream=True, **kwargs) as stream:
                return [note(chunk) for chunk in stream]

        async def consume() -> list[Any]:
            async with await client.chat.completions.create(stream=True, **kwargs) as stream:
                return [note(chunk) async for chunk in stream]

        return self._runner.run(consume())

    def call(self, resource: str, **kwargs: Any) -> Any:
        """Any SDK method by dotted path, e.g. ``responses.create``."""
        target = self._client
        for part in resource.split("."):
            target = getattr(target, part)
        return self._run(lambda: target(**kwargs))

    def close(self) -> None:
        if self.mode == "sync":
            self._client.close()
        else:
            self._runner.run(self._client.close())
            self._runner.close()


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    names = ("main", "backup", "deep", "cheap", "direct")
    ups = {name: FakeUpstream(name) for name in names}
    for up in ups.values():
        up.start()
    try:
        yield ups
    finally:
        for up in ups.values():
            up.stop()


def config_for(ups: dict[str, FakeUpstream], **retry: Any) -> dict[str, Any]:
    return {
        "endpoints": {
            name: {"base_url": ups[name].base_url, "api_key": f"key-{name}"}
            for name in ("main", "backup", "deep", "cheap")
        },
        "routes": {
            "chat-default": {
                "targets": [
                    {"model": "gpt-4.1", "endpoints": ["main", "backup"], "weight": 90},
                    {"model": "deepseek-chat", "endpoints": ["deep"], "weight": 10},
                ],
                "fallbacks": ["chat-cheap"],
            },
            "chat-cheap": {"targets": [{"model": "gemini-2.5-flash", "endpoints": ["cheap"]}]},
            "embed": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["main"]}]},
        },
        "retry": {"max_attempts": 3, "backoff_initial_s": 0.001, "backoff_jitter_s": 0, **retry},
    }


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_sdk(mode: str, upstreams: dict[str, FakeUpstream]) -> Iterator[Callable[..., SDK]]:
    made: list[SDK] = []

    def make(config: dict[str, Any] | None = None, **options: Any) -> SDK:
        options.setdefault("base_url", upstreams["direct"].base_url)
        sdk = SDK(mode, config or config_for(upstreams), **options)
        made.append(sdk)
        return sdk

    yield make
    for sdk in made:
        sdk.close()


PIN_MAIN = {"x-holyroute-arm": "gpt-4.1"}


def requests_to(up: FakeUpstream) -> int:
    return len(up.requests)


def request_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in logs if event["event"] == "holyroute.request"]


class TestRouting:
    """An alias is rewritten onto the chosen endpoint: URL, key and model."""

    def test_rewrite(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        sdk = make_sdk()
        answer = sdk.chat(extra_headers=PIN_MAIN)
        (seen,) = upstreams["main"].requests
        assert seen.path == "/v1/chat/completions"
        assert seen.model == "gpt-4.1"
        assert answer.model == "gpt-4.1"
        assert seen.headers["authorization"] == "Bearer key-main"
        assert seen.headers["host"] == upstreams["main"].base_url.split("/")[2]
        assert "x-holyroute-arm" not in seen.headers
        assert requests_to(upstreams["direct"]) == 0

    def test_keys_stay_with_their_hosts(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """Each upstream only ever sees its own key; none sees the SDK's own key or another endpoint's."""
        sdk = make_sdk()
        upstreams["main"].push(Reply.error(503))
        sdk.chat(extra_headers=PIN_MAIN)  # main -> backup
        sdk.chat(extra_headers={"x-holyroute-arm": "deepseek-chat"})
        upstreams["deep"].push(Reply.error(500))
        sdk.chat(extra_headers={"x-holyroute-arm": "deepseek-chat"})  # deep -> cheap
        for name in ("main", "backup", "deep", "cheap"):
            keys = {r.headers.get("authorization") for r in upstreams[name].requests}
            assert keys == {f"Bearer key-{name}"}, name

    def test_pass_through(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """Unknown models and non-model calls go to the SDK's own base_url with its own key, untouched."""
        sdk = make_sdk()
        sdk.chat(model="gpt-4o-mini")
        sdk.call("models.list")
        direct = upstreams["direct"].requests
        assert [(r.method, r.path, r.model) for r in direct] == [
            ("POST", "/v1/chat/completions", "gpt-4o-mini"),
            ("GET", "/v1/models", None),
        ]
        assert {r.headers["authorization"] for r in direct} == {"Bearer sdk-own-key"}
        assert "stream_options" not in direct[0].json

    def test_weighted_share(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """400 calls on a 90/10 split land about 90/10 (4-sigma band)."""
        sdk = make_sdk()
        for _ in range(400):
            sdk.chat()
        assert 336 <= requests_to(upstreams["main"]) <= 384
        assert requests_to(upstreams["main"]) + requests_to(upstreams["deep"]) == 400

    def test_sticky_users(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """With `sticky: user`, each user's calls all land on one arm."""
        config = config_for(upstreams)
        config["routes"]["chat-default"]["sticky"] = "user"
        config["routes"]["chat-default"]["targets"][1]["weight"] = 90
        sdk = make_sdk(config)
        for round_ in range(3):
            for n in range(20):
                sdk.chat(user=f"user-{n}", messages=[{"role": "user", "content": f"{round_}"}])
        arms: dict[str, set[str]] = {}
        for name in ("main", "deep"):
            for r in upstreams[name].requests:
                arms.setdefault(r.json["user"], set()).add(name)
        assert all(len(found) == 1 for found in arms.values())
        assert {next(iter(found)) for found in arms.values()} == {"main", "deep"}


class TestFailover:
    """429s, 5xx, timeouts and dropped connections move on; the SDK never multiplies attempts."""

    def test_429_fails_over_and_cools(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        sdk = make_sdk()
        upstreams["main"].push(Reply.rate_limited(retry_after_s=30))
        with capture_logs() as logs:
            sdk.chat(extra_headers=PIN_MAIN)
            sdk.chat(extra_headers=PIN_MAIN)
        assert requests_to(upstreams["main"]) == 1, "the cooling endpoint is skipped by the second call"
        assert requests_to(upstreams["backup"]) == 2
        names = [event["event"] for event in logs]
        assert names == ["holyroute.cooldown", "holyroute.failover", "holyroute.request", "holyroute.request"]
        assert logs[1]["reason"] == "429 from upstream; cooldown 30s (retry-after 30s)"

    def test_fallback_alias(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        sdk = make_sdk()
        upstreams["main"].push(Reply.error(500))
        upstreams["backup"].push(Reply.error(502))
        with capture_logs() as logs:
            answer = sdk.chat(extra_headers=PIN_MAIN)
        assert answer.model == "gemini-2.5-flash"
        (event,) = request_events(logs)
        assert (event["fallback"], event["endpoint"], event["attempts"]) == ("chat-cheap", "cheap", 3)

    def test_exhausted_hands_back_real_error(
        self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream], instant_sdk_retries: None
    ) -> None:
        """All endpoints rate limited: RateLimitError with the last upstream body; 3 attempts, not 9."""
        sdk = make_sdk()  # the SDK keeps its default max_retries=2
        for name in ("main", "backup", "cheap"):
            upstreams[name].push(Reply.rate_limited(retry_after_s=None, code=f"limit_{name}"))
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat(extra_headers=PIN_MAIN)
        assert caught.value.code == "limit_cheap"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert sum(requests_to(upstreams[n]) for n in ("main", "backup", "cheap")) == 3

    def test_dropped_connections(
        self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream], instant_sdk_retries: None
    ) -> None:
        """Connections dropped everywhere: APIConnectionError after holyroute's 3 attempts; the SDK adds none."""
        sdk = make_sdk()
        for name in ("main", "backup", "cheap"):
            upstreams[name].push(*[Reply(drop=True)] * 3)
        with pytest.raises(openai.APIConnectionError) as caught:
            sdk.chat(extra_headers=PIN_MAIN)
        assert "3 attempt(s) for 'chat-default' failed" in str(caught.value)
        assert sum(requests_to(upstreams[n]) for n in ("main", "backup", "cheap")) == 3

    def test_timeout_fails_over(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """An endpoint slower than its configured timeout is abandoned for the next one."""
        config = config_for(upstreams)
        config["endpoints"]["main"]["timeout"] = 0.1
        hold = threading.Event()
        upstreams["main"].push(Reply(gate=hold, gate_after=0, gate_timeout_s=5))
        sdk = make_sdk(config)
        try:
            with capture_logs() as logs:
                sdk.chat(extra_headers=PIN_MAIN)
        finally:
            hold.set()
        failover = next(e for e in logs if e["event"] == "holyroute.failover")
        assert failover["reason"] == "timeout: ReadTimeout"
        assert request_events(logs)[0]["endpoint"] == "backup"

    def test_all_timeouts_raise_timeout_error(
        self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream], instant_sdk_retries: None
    ) -> None:
        """Every endpoint too slow: APITimeoutError after 3 attempts, none added by the SDK."""
        config = config_for(upstreams)
        for name in ("main", "backup", "cheap"):
            config["endpoints"][name]["timeout"] = 0.05
        hold = threading.Event()
        for name in ("main", "backup", "cheap"):
            upstreams[name].push(*[Reply(gate=hold, gate_after=0, gate_timeout_s=5)] * 3)
        sdk = make_sdk(config)
        try:
            with pytest.raises(openai.APITimeoutError):
                sdk.chat(extra_headers=PIN_MAIN)
        finally:
            hold.set()
        assert sum(requests_to(upstreams[n]) for n in ("main", "backup", "cheap")) == 3

    def test_caller_error_returned_at_once(
        self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]
    ) -> None:
        """A 400 is the caller's mistake: raised as BadRequestError after one attempt."""
        sdk = make_sdk()
        upstreams["main"].push(Reply.error(400, "bad messages", type="invalid_request_error"))
        with pytest.raises(openai.BadRequestError, match="bad messages"):
            sdk.chat(extra_headers=PIN_MAIN)
        assert requests_to(upstreams["backup"]) == 0


class TestStreaming:
    """Streams pass through chunk by chunk, are costed, and never end quietly when torn."""

    def test_first_chunk_before_upstream_resumes(
        self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]
    ) -> None:
        """The upstream pauses after its first event until the caller has seen a chunk: nothing is buffered."""
        gate = threading.Event()
        upstreams["main"].push(Reply(gate=gate, gate_after=1, gate_timeout_s=5))
        sdk = make_sdk()
        seen_while_paused: list[bool] = []

        def on_chunk(_: Any) -> None:
            if not gate.is_set():
                seen_while_paused.append(not upstreams["main"].gate_log)
                gate.set()

        chunks = sdk.stream(on_chunk, extra_headers=PIN_MAIN)
        assert seen_while_paused == [True]
        assert upstreams["main"].gate_log == ["set"]
        assert len(chunks) > 2

    def test_usage_injected_and_hidden(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """Without include_usage the caller sees no usage chunk, but the event has the tokens and cost."""
        sdk = make_sdk()
        with capture_logs() as logs:
            chunks = sdk.stream(extra_headers=PIN_MAIN)
        assert all(chunk.usage is None and chunk.choices for chunk in chunks)
        assert upstreams["main"].requests[0].json["stream_options"] == {"include_usage": True}
        (event,) = request_events(logs)
        assert event["stream"] is True
        assert event["outcome"] == "ok"
        assert event["prompt_tokens"] > 0
        assert event["completion_tokens"] > 0
        assert event["cost_usd"] > 0
        assert event["ttft_ms"] is not None

    def test_usage_kept_when_asked(self, make_sdk: Callable[..., SDK]) -> None:
        """A caller that asked for usage gets its usage chunk as usual."""
        sdk = make_sdk()
        chunks = sdk.stream(extra_headers=PIN_MAIN, stream_options={"include_usage": True})
        assert chunks[-1].choices == []
        assert chunks[-1].usage.total_tokens > 0

    def test_torn_stream_raises(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """A connection lost mid-stream raises in the caller, and the event says error."""
        sdk = make_sdk()
        upstreams["main"].push(Reply(tear_after=2))
        with capture_logs() as logs, pytest.raises(openai.APIConnectionError):
            sdk.stream(extra_headers=PIN_MAIN)
        (event,) = request_events(logs)
        assert event["outcome"] == "error"
        assert event["error"].startswith("stream broken")

    def test_clean_close_without_final_event_raises(
        self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]
    ) -> None:
        """An upstream that closes the body properly but before the final event is still an error."""
        events = [
            b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1",'
            b'"choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}\n\n'
        ]
        upstreams["main"].push(Reply(headers={"content-type": "text/event-stream"}, body=b"".join(events)))
        sdk = make_sdk()
        with capture_logs() as logs, pytest.raises(openai.APIConnectionError) as caught:
            sdk.stream(extra_headers=PIN_MAIN)
        assert "ended without its final event after 1 events" in str(caught.value.__cause__)
        assert request_events(logs)[0]["outcome"] == "error"


class TestUsageAndCost:
    """Every routed API is costed from its own usage shape."""

    def test_chat_with_cached_tokens(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        config = config_for(upstreams)
        cached = FakeUpstream("main-cached", cached_tokens=4, reasoning_tokens=2).start()
        config["endpoints"]["main"]["base_url"] = cached.base_url
        config["prices"] = {"gpt-4.1": {"input": 2.0, "cached_input": 0.5, "output": 8.0}}
        try:
            sdk = make_sdk(config)
            with capture_logs() as logs:
                answer = sdk.chat(extra_headers=PIN_MAIN)
        finally:
            cached.stop()
        (event,) = request_events(logs)
        usage = answer.usage
        assert (event["prompt_tokens"], event["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
        assert (event["cached_tokens"], event["reasoning_tokens"]) == (4, 2)
        expected = ((usage.prompt_tokens - 4) * 2.0 + 4 * 0.5 + usage.completion_tokens * 8.0) / 1e6
        assert event["cost_usd"] == pytest.approx(expected)
        assert event["request_id"].startswith("req_")
        assert event["priced"] is True

    @pytest.mark.parametrize(
        ("resource", "kwargs", "model"),
        [
            ("responses.create", {"model": "chat-default", "input": "hello"}, "gpt-4.1"),
            ("embeddings.create", {"model": "embed", "input": ["a", "b"]}, "text-embedding-3-small"),
            ("completions.create", {"model": "chat-default", "prompt": "hello"}, "gpt-4.1"),
        ],
    )
    def test_other_apis(
        self,
        make_sdk: Callable[..., SDK],
        upstreams: dict[str, FakeUpstream],
        resource: str,
        kwargs: dict[str, Any],
        model: str,
    ) -> None:
        sdk = make_sdk()
        with capture_logs() as logs:
            sdk.call(resource, extra_headers=PIN_MAIN if kwargs["model"] == "chat-default" else None, **kwargs)
        (event,) = request_events(logs)
        assert event["upstream_model"] == model
        assert event["prompt_tokens"] > 0
        assert event["cost_usd"] > 0

    def test_responses_stream(self, make_sdk: Callable[..., SDK]) -> None:
        """Responses streams are costed from response.completed; nothing is injected."""
        sdk = make_sdk()
        with capture_logs() as logs:
            stream = sdk.call("responses.create", model="chat-default", input="hi", stream=True, extra_headers=PIN_MAIN)
            if sdk.mode == "sync":
                kinds = [event.type for event in stream]
            else:

                async def consume() -> list[str]:
                    return [event.type async for event in stream]

                kinds = sdk._runner.run(consume())
        assert kinds[-1] == "response.completed"
        (event,) = request_events(logs)
        assert event["api"] == "responses"
        assert event["completion_tokens"] > 0

    def test_legacy_completions_stream(self, make_sdk: Callable[..., SDK], upstreams: dict[str, FakeUpstream]) -> None:
        """Legacy Completions streams get usage injected and hidden like chat streams."""
        sdk = make_sdk()
        with capture_logs() as logs:
            stream = sdk.call(
                "completions.create", model="chat-default", prompt="hi", stream=True, extra_headers=PIN_MAIN
            )
            if sdk.mode == "sync":
                chunks = list(stream)
            else:

                async def consume() -> list[Any]:
                    return [chunk async for chunk in stream]

                chunks = sdk._runner.run(consume())
        assert upstreams["main"].requests[0].json["stream_options"] == {"include_usage": True}
        assert all(chunk.choices for chunk in chunks)
        (event,) = request_events(logs)
        assert (event["api"], event["outcome"]) == ("completions", "ok")
        assert event["completion_tokens"] > 0

    def test_event_has_no_secrets_or_prompt(self, make_sdk: Callable[..., SDK]) -> None:
        sdk = make_sdk()
        with capture_logs() as logs:
            sdk.chat(messages=[{"role": "user", "content": "my secret prompt"}])
        text = json.dumps(logs)
        assert "secret prompt" not in text
        assert "key-" not in text
        assert "sdk-own-key" not in text
