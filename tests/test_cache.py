"""The response cache end to end, through the official OpenAI SDK (sync and async) against a fake upstream.

A second identical call is answered without reaching the upstream, with the same parsed object (the fake upstream
gives every answer a new id, so equal objects can only come from the cache) and ``saved_usd`` equal to what the first
call cost; tenants are kept apart; every case the cache must not serve reaches the upstream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

import holyroute
from holyroute import Router
from holyroute.testing import FakeUpstream, Reply
from tests.conftest import Events, FakeClock

PRICE = {"input": 2.0, "output": 8.0}


class SDK:
    """Both SDK clients behind one face: each method makes one call and returns what the SDK parsed."""

    def __init__(self, mode: str, config: dict[str, Any], events: Events, router: Router | None = None) -> None:
        self.mode = mode
        if mode == "sync":
            http: Any = (
                holyroute.client(config, sinks=[events], log=False)
                if router is None
                else httpx2.Client(transport=holyroute.Transport(router=router))
            )
            self.client: Any = openai.OpenAI(http_client=http, api_key="own", base_url=_UNUSED)
        else:
            self._runner = asyncio.Runner()
            http = (
                holyroute.async_client(config, sinks=[events], log=False)
                if router is None
                else httpx2.AsyncClient(transport=holyroute.AsyncTransport(router=router))
            )
            self.client = openai.AsyncOpenAI(http_client=http, api_key="own", base_url=_UNUSED)

    @property
    def transport(self) -> Any:
        """holyroute's transport: the OpenAI client's httpx2 client's."""
        return self.client._client._transport

    def wait_until(self, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Let background work (shadow copies: threads, or tasks of this client's event loop) run until ``done()``."""
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            if self.mode == "sync":
                time.sleep(0.005)
            else:
                self._runner.run(asyncio.sleep(0.005))
        assert done(), "timed out"

    def _run(self, make: Callable[[], Any]) -> Any:
        if self.mode == "sync":
            return make()

        async def awaited() -> Any:
            return await make()

        return self._runner.run(awaited())

    def call(self, resource: str, **kwargs: Any) -> Any:
        target = self.client
        for part in resource.split("."):
            target = getattr(target, part)
        return self._run(lambda: target(**kwargs))

    def chat(self, **kwargs: Any) -> Any:
        kwargs.setdefault("model", "chat")
        kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
        kwargs.setdefault("temperature", 0)
        return self.call("chat.completions.create", **kwargs)

    def stream(self, resource: str, **kwargs: Any) -> list[Any]:
        """Every event of a streamed call, as the SDK parsed it."""
        target = self.client
        for part in resource.split("."):
            target = getattr(target, part)
        if self.mode == "sync":
            with target(stream=True, **kwargs) as stream:
                return list(stream)

        async def consume() -> list[Any]:
            async with await target(stream=True, **kwargs) as stream:
                return [event async for event in stream]

        return self._runner.run(consume())

    def chat_stream(self, **kwargs: Any) -> list[Any]:
        kwargs.setdefault("model", "chat")
        kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
        kwargs.setdefault("temperature", 0)
        return self.stream("chat.completions.create", **kwargs)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.mode == "sync":
            self.client.close()
        else:
            self._runner.run(self.client.close())
            self._runner.close()


_UNUSED = "http://127.0.0.1:9/v1"  # the SDK's own base_url: holyroute routes every call, none goes there


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("main") as up:
        yield up


def cache_config(up: FakeUpstream, **route_cache: Any) -> dict[str, Any]:
    return {
        "endpoints": {"main": {"base_url": up.base_url, "api_key": "key-main"}},
        "prices": {"gpt-4.1": PRICE, "text-embedding-3-small": {"input": 0.02}},
        "routes": {
            "chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}], "cache": {"ttl": "1h", **route_cache}},
            "embed": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["main"]}], "cache": {}},
            "plain": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]},
        },
        "state": {"backend": "memory"},
    }


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_sdk(mode: str) -> Iterator[Callable[[dict[str, Any]], tuple[SDK, Events]]]:
    made: list[SDK] = []

    def make(config: dict[str, Any], router: Router | None = None) -> tuple[SDK, Events]:
        events = Events()
        sdk = SDK(mode, config, events, router)
        made.append(sdk)
        return sdk, events

    yield make
    for sdk in made:
        sdk.close()


def requests(events: Events) -> list[dict[str, Any]]:
    return events.named("holyroute.request")


class TestSecondCallIsAHit:
    def test_chat(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """A chat answer at temperature 0 is kept; the same call again gets it without reaching the upstream."""
        sdk, events = make_sdk(cache_config(upstream))
        first = sdk.chat()
        second = sdk.chat(user="someone-else", metadata={"run": "2"})  # left out of the key
        assert upstream.received == 1
        assert second.model_dump() == first.model_dump()
        stored, hit = requests(events)
        assert (stored["cache"], hit["cache"]) == ("stored", "hit")
        assert stored["cost_usd"] > 0
        assert (hit["cost_usd"], hit["saved_usd"]) == (0.0, stored["cost_usd"])
        assert (hit["attempts"], hit.get("endpoint")) == (0, None)
        assert hit["upstream_model"] == "gpt-4.1"

    def test_chat_streamed_then_replayed(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """A streamed answer is kept once complete and replayed as a stream the SDK parses the same way; an unstreamed
        call gets the same answer whole."""
        sdk, events = make_sdk(cache_config(upstream))
        options = {"stream_options": {"include_usage": True}}
        first = sdk.chat_stream(**options)
        second = sdk.chat_stream(**options)
        whole = sdk.chat()
        assert upstream.received == 1
        text = "".join(c.choices[0].delta.content or "" for c in first if c.choices)
        assert text
        assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == text
        assert [c.usage for c in second if c.usage is not None] == [c.usage for c in first if c.usage is not None]
        assert {c.id for c in second} == {c.id for c in first}
        finish = [c.choices[0].finish_reason for c in second if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"]
        assert whole.choices[0].message.content == text
        assert whole.id == first[0].id
        assert [e["cache"] for e in requests(events)] == ["stored", "hit", "hit"]
        assert requests(events)[1]["saved_usd"] == requests(events)[0]["cost_usd"] > 0

    def test_replayed_stream_has_no_usage_chunk_unless_asked(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, _ = make_sdk(cache_config(upstream))
        sdk.chat()
        replayed = sdk.chat_stream()
        assert upstream.received == 1
        assert all(chunk.usage is None for chunk in replayed)
        assert all(chunk.choices for chunk in replayed)

    def test_responses(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """The Responses API: whole, then streamed from the kept answer, then a stream kept and given whole."""
        sdk, events = make_sdk(cache_config(upstream))
        first = sdk.call("responses.create", model="chat", input="hi", temperature=0)
        second = sdk.call("responses.create", model="chat", input="hi", temperature=0)
        assert second.model_dump() == first.model_dump()
        streamed = sdk.stream("responses.create", model="chat", input="hi", temperature=0)
        assert upstream.received == 1
        completed = [e for e in streamed if e.type == "response.completed"]
        assert completed[0].response.model_dump() == first.model_dump()
        deltas = "".join(e.delta for e in streamed if e.type == "response.output_text.delta")
        assert deltas == first.output_text
        kept = sdk.stream("responses.create", model="chat", input="other", temperature=0)
        whole = sdk.call("responses.create", model="chat", input="other", temperature=0)
        assert upstream.received == 2
        assert whole.model_dump() == next(e for e in kept if e.type == "response.completed").response.model_dump()
        assert [e["cache"] for e in requests(events)] == ["stored", "hit", "hit", "stored", "hit"]

    def test_completions_streamed_then_replayed(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """Legacy completions: a streamed answer is kept once complete and replayed as a stream the SDK parses into
        the same text, id and finish reason (the usage chunk only when asked for); an unstreamed call gets it whole,
        and an answer kept whole is replayed as a stream."""
        sdk, events = make_sdk(cache_config(upstream))
        ask = {"model": "chat", "prompt": "Say hi", "temperature": 0}
        usage = {"stream_options": {"include_usage": True}}
        first = sdk.stream("completions.create", **ask, **usage)
        second = sdk.stream("completions.create", **ask, **usage)
        plain = sdk.stream("completions.create", **ask)
        whole = sdk.call("completions.create", **ask)
        assert upstream.received == 1

        def text(chunks: list[Any]) -> str:
            return "".join(choice.text for chunk in chunks for choice in chunk.choices)

        assert text(first)
        assert text(second) == text(first) == text(plain) == whole.choices[0].text
        assert {c.id for c in second} == {c.id for c in first} == {whole.id}
        assert [c.usage for c in second if c.usage is not None] == [c.usage for c in first if c.usage is not None]
        assert [c.usage for c in first if c.usage is not None] == [whole.usage]
        assert all(c.usage is None for c in plain)
        finish = [choice.finish_reason for c in second for choice in c.choices if choice.finish_reason]
        assert finish == ["stop"] == [whole.choices[0].finish_reason]
        other = {**ask, "prompt": "Say bye"}
        kept = sdk.call("completions.create", **other)
        replayed = sdk.stream("completions.create", **other)
        assert upstream.received == 2
        assert text(replayed) == kept.choices[0].text
        cache = [e["cache"] for e in requests(events)]
        assert cache == ["stored", "hit", "hit", "hit", "stored", "hit"]
        assert requests(events)[1]["saved_usd"] == requests(events)[0]["cost_usd"] > 0
        assert requests(events)[1]["finish_reason"] == "stop"

    def test_embeddings(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """Embeddings are cached whatever their parameters; another input is another key."""
        sdk, events = make_sdk(cache_config(upstream))
        first = sdk.call("embeddings.create", model="embed", input="a text")
        second = sdk.call("embeddings.create", model="embed", input="a text")
        sdk.call("embeddings.create", model="embed", input="another text")
        assert upstream.received == 2
        assert second.model_dump() == first.model_dump()
        assert [e["cache"] for e in requests(events)] == ["stored", "hit", "stored"]
        assert requests(events)[1]["saved_usd"] == requests(events)[0]["cost_usd"] > 0


class TestScope:
    def test_tenants_are_kept_apart(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, events = make_sdk(cache_config(upstream, tenant="header:x-tenant"))
        a = sdk.chat(extra_headers={"x-tenant": "a"})
        b = sdk.chat(extra_headers={"x-tenant": "b"})
        again = sdk.chat(extra_headers={"x-tenant": "a"})
        assert upstream.received == 2
        assert a.id != b.id
        assert again.model_dump() == a.model_dump()
        sdk.chat()  # no tenant: never cached
        sdk.chat()
        assert upstream.received == 4
        assert [e["cache"] for e in requests(events)] == ["stored", "stored", "hit", "bypass", "bypass"]

    def test_tenant_from_a_body_path(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, _ = make_sdk(cache_config(upstream, tenant="body:metadata.team"))
        sdk.chat(metadata={"team": "x"})
        sdk.chat(metadata={"team": "y"})
        sdk.chat(metadata={"team": "x"})
        assert upstream.received == 2

    def test_a_different_body_is_a_different_key(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, _ = make_sdk(cache_config(upstream))
        sdk.chat()
        sdk.chat(messages=[{"role": "user", "content": "hello!"}])
        sdk.chat(max_tokens=5)
        assert upstream.received == 3

    def test_routes_without_a_cache_never_look(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, events = make_sdk(cache_config(upstream))
        sdk.chat(model="plain")
        sdk.chat(model="plain")
        assert upstream.received == 2
        assert [e.get("cache") for e in requests(events)] == [None, None]


class TestExcluded:
    """Each of these reaches the upstream every time."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"temperature": 0.7},
            {},
            {"temperature": 0, "n": 2},
            {"temperature": 0, "extra_headers": {"x-holyroute-cache": "no-cache"}},
            {"temperature": 0, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        ],
        ids=["warm", "no-temperature", "n=2", "no-cache", "tools"],
    )
    def test_not_cached(self, make_sdk: Any, upstream: FakeUpstream, kwargs: dict[str, Any]) -> None:
        sdk, events = make_sdk(cache_config(upstream, exclude=["tools"]))
        for _ in range(2):
            sdk.call("chat.completions.create", model="chat", messages=[{"role": "user", "content": "x"}], **kwargs)
        assert upstream.received == 2
        assert [e["cache"] for e in requests(events)] == ["bypass", "bypass"]

    def test_marked_by_the_caller(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """``x-holyroute-cache: on`` caches a call the route's rule would not."""
        sdk, _ = make_sdk(cache_config(upstream))
        marked = {"extra_headers": {"x-holyroute-cache": "on"}, "temperature": 0.9}
        first = sdk.chat(**marked)
        assert sdk.chat(**marked).model_dump() == first.model_dump()
        assert upstream.received == 1

    def test_refresh_and_no_store(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, events = make_sdk(cache_config(upstream))
        sdk.chat(extra_headers={"x-holyroute-cache": "no-store"})
        refreshed = sdk.chat(extra_headers={"x-holyroute-cache": "refresh"})
        again = sdk.chat()
        assert upstream.received == 2
        assert again.id == refreshed.id
        assert [e["cache"] for e in requests(events)] == ["miss", "stored", "hit"]
        assert all("x-holyroute-cache" not in r.headers for r in upstream.requests)

    def test_ttl_zero_stores_nothing(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, _ = make_sdk(cache_config(upstream))
        sdk.chat(extra_headers={"x-holyroute-cache-ttl": "0"})
        sdk.chat()
        assert upstream.received == 2
        assert all("x-holyroute-cache-ttl" not in r.headers for r in upstream.requests)

    def test_an_error_is_never_kept(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, events = make_sdk({**cache_config(upstream), "retry": {"max_attempts": 1, "min_attempts": 0}})
        upstream.push(Reply.error(400, "bad"))
        with pytest.raises(openai.BadRequestError):
            sdk.chat()
        sdk.chat()
        assert upstream.received == 2
        assert [e["cache"] for e in requests(events)] == ["miss", "stored"]

    def test_a_torn_stream_is_never_kept(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, events = make_sdk(cache_config(upstream))
        upstream.push(Reply(tear_after=2))
        with pytest.raises(openai.APIError):
            sdk.chat_stream()
        sdk.chat_stream()
        assert upstream.received == 2
        assert [e["cache"] for e in requests(events)] == ["miss", "stored"]

    def test_cut_off_by_length_is_kept_only_when_configured(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, _ = make_sdk(cache_config(upstream))
        cut = _chat_body("cut", "length")
        upstream.push(Reply(body=cut), Reply(body=cut))
        sdk.chat()
        sdk.chat()
        assert upstream.received == 2
        kept, kept_events = make_sdk(cache_config(upstream, store_truncated=True))
        upstream.push(Reply(body=cut))
        kept.chat()
        kept.chat()
        assert upstream.received == 3
        assert [e["cache"] for e in requests(kept_events)] == ["stored", "hit"]


def _chat_body(content: str, finish: str) -> bytes:
    body = {
        "id": "chatcmpl-cut",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return json.dumps(body).encode()


class TestFailingCache:
    def test_redis_down_is_a_miss_with_one_event(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        config = cache_config(upstream)
        config["cache"] = {"backend": "redis", "timeout_ms": 50}
        config["state"] = {"backend": "memory", "url": "redis://127.0.0.1:1/0"}
        sdk, events = make_sdk(config)
        for _ in range(3):
            assert sdk.chat().choices[0].message.content
        assert upstream.received == 3
        failed = events.named("holyroute.cache_failed")
        assert len(failed) == 1
        assert failed[0]["backend"] == "redis"
        assert "127.0.0.1" not in json.dumps(failed)

    def test_a_corrupt_entry_is_a_miss_with_one_event(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        sdk, events = make_sdk(cache_config(upstream))
        sdk.chat()
        transport = sdk.client._client._transport  # the OpenAI client's httpx2 client, then holyroute's transport
        entries = transport._cache.store._entries
        (key,) = list(entries)
        entries[key] = (b"not an entry", entries[key][1])
        sdk.chat()
        sdk.chat()
        assert upstream.received == 2
        assert len(events.named("holyroute.cache_failed")) == 1
        assert [e["cache"] for e in requests(events)] == ["stored", "stored", "hit"]


class TestHitsTouchNothing:
    def test_hits_spend_no_rate_limit(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """With rpm 2, one stored call and five hits leave room for one more routed call."""
        config = cache_config(upstream)
        config["endpoints"]["main"]["rpm"] = 2
        config["retry"] = {"max_attempts": 1, "min_attempts": 0, "max_wait_s": 0}
        sdk, events = make_sdk(config)
        for _ in range(6):
            sdk.chat()
        sdk.chat(messages=[{"role": "user", "content": "another"}])
        assert upstream.received == 2
        assert [e["status"] for e in requests(events)] == [200] * 7

    def test_hits_are_not_rollout_measurements(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        config = cache_config(upstream)
        config["routes"]["chat"] = {
            "rollout": {
                "stable": {"model": "gpt-4.1", "endpoints": ["main"]},
                "candidate": {"model": "gpt-4.1-mini", "endpoints": ["main"]},
                "steps": [{"set_weight": 50}, {"pause": {}}],
            },
            "cache": {},
        }
        sdk, events = make_sdk(config)
        for _ in range(10):
            sdk.chat()
        assert upstream.received <= 2  # one per arm at most: each arm's models are in its key
        engine = holyroute.router_of(sdk.client._client).rollouts.get("chat")
        measured = sum(m.calls for m in engine.window_measurements().values())
        assert measured == upstream.received
        assert sum(e["cache"] == "hit" for e in requests(events)) == 10 - upstream.received


class TestMetrics:
    def test_hits_misses_and_savings_are_counted(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        import prometheus_client

        from holyroute.metrics import Metrics

        sdk, events = make_sdk(cache_config(upstream))
        sdk.chat()
        sdk.chat()
        sdk.chat()
        sdk.chat(temperature=1)
        registry = prometheus_client.CollectorRegistry()
        metrics = Metrics(registry)
        for name, fields in events.items:
            metrics(name, fields)
        count = {
            result: registry.get_sample_value("holyroute_cache_lookups_total", {"route": "chat", "result": result})
            for result in ("stored", "hit", "bypass")
        }
        assert count == {"stored": 1.0, "hit": 2.0, "bypass": 1.0}
        saved = registry.get_sample_value("holyroute_cache_saved_usd_total", {"route": "chat"})
        assert saved == pytest.approx(2 * requests(events)[0]["cost_usd"])


class TestNotKeptEither:
    def test_a_fallbacks_answer_is_not_kept(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """The key holds the planned arm's models: an answer another route's model gave is not stored under it."""
        with FakeUpstream("backup") as backup:
            config = cache_config(upstream)
            config["endpoints"]["backup"] = {"base_url": backup.base_url, "api_key": "key-backup"}
            config["routes"]["cheap"] = {"targets": [{"model": "gpt-4.1-mini", "endpoints": ["backup"]}]}
            config["routes"]["chat"]["fallbacks"] = ["cheap"]
            config["retry"] = {"max_attempts": 2, "min_attempts": 0, "backoff_initial_s": 0, "backoff_jitter_s": 0}
            sdk, events = make_sdk(config)
            upstream.push(Reply.error(500))
            assert sdk.chat().model == "gpt-4.1-mini"
            sdk.chat()
            assert (upstream.received, backup.received) == (2, 1)
            assert [e["cache"] for e in requests(events)] == ["miss", "stored"]

    def test_a_stream_closed_early_is_not_kept(self, make_sdk: Any, upstream: FakeUpstream, mode: str) -> None:
        sdk, events = make_sdk(cache_config(upstream))
        kwargs = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}
        if mode == "sync":
            with sdk.client.chat.completions.create(stream=True, **kwargs) as stream:
                next(iter(stream))
        else:

            async def first() -> None:
                async with await sdk.client.chat.completions.create(stream=True, **kwargs) as stream:
                    async for _ in stream:
                        break

            sdk._runner.run(first())
        sdk.chat()
        assert upstream.received == 2
        assert [e["cache"] for e in requests(events)] == ["miss", "stored"]


class TestRedisBackend:
    def test_hits_from_redis(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """Both clients read and write the Redis store (the async one from a worker thread), streamed or not."""
        import uuid

        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2, socket_connect_timeout=1)
        try:
            client.ping()
        except redis.RedisError:
            client.close()
            pytest.skip("no Redis at 127.0.0.1:6379")
        prefix = f"holyroute-test-{uuid.uuid4().hex[:12]}"
        config = cache_config(upstream)
        config["cache"] = {"backend": "redis", "timeout_ms": 2000}
        config["state"] = {"backend": "memory", "url": "redis://127.0.0.1:6379/0", "prefix": prefix}
        try:
            sdk, events = make_sdk(config)
            first = sdk.chat()
            assert sdk.chat().model_dump() == first.model_dump()
            streamed = sdk.chat_stream(messages=[{"role": "user", "content": "streamed"}])
            whole = sdk.chat(messages=[{"role": "user", "content": "streamed"}])
            assert whole.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in streamed)
            assert upstream.received == 2
            assert [e["cache"] for e in requests(events)] == ["stored", "hit", "stored", "hit"]
            assert events.named("holyroute.cache_failed") == []
        finally:
            keys = [*client.scan_iter(match=f"{prefix}:*", count=1000), *client.scan_iter(match="{" + prefix + ":*")]
            if keys:
                client.delete(*keys)
            client.close()


class TestReaders:
    def test_report_and_dashboard_show_hits_and_savings(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """The report and the dashboard count hits per route (not per arm: a hit measures no arm) and the money
        saved."""
        from holyroute.config.schema import load_config
        from holyroute.readers.aggregate import aggregate_events
        from holyroute.readers.dashboard import config_view, page_state
        from holyroute.readers.report import build_report, render_report, report_json

        config = cache_config(upstream)
        sdk, events = make_sdk(config)
        for _ in range(3):
            sdk.chat()
        sdk.chat(temperature=1)  # bypass
        cost = requests(events)[0]["cost_usd"]
        source = aggregate_events({"event": name, **fields} for name, fields in events.items)
        report = build_report(source, load_config(config))
        (route,) = [r for r in report_json(report)["routes"] if r["route"] == "chat"]
        assert route["cache"] == {"hits": 2, "lookups": 3, "hit_ratio": 2 / 3, "saved_usd": pytest.approx(2 * cost)}
        assert sum(arm["calls"] for arm in route["arms"]) == 2  # the stored call and the bypass
        assert "response cache: 2 hits of 3 lookups" in render_report(report)
        state = page_state(source, config_view(load_config(config)), now=0.0)
        (row,) = [r for r in state["routes"] if r["route"] == "chat"]
        assert (row["calls"], row["cache_hits"], row["cache_lookups"]) == (4, 2, 3)
        assert row["saved_usd"] == pytest.approx(2 * cost)
        assert state["totals"]["saved_usd"] == pytest.approx(2 * cost)


class TestQuality:
    def test_an_answer_the_quality_check_rejects_is_never_kept(self, upstream: FakeUpstream) -> None:
        import httpx2

        config = cache_config(upstream)
        config["routes"]["chat"] = {
            "rollout": {
                "stable": {"model": "gpt-4.1", "endpoints": ["main"]},
                "candidate": {"model": "gpt-4.1-mini", "endpoints": ["main"]},
                "steps": [{"set_weight": 0}, {"pause": {}}],
            },
            "cache": {},
        }
        events = Events()
        verdicts = iter([False, True])
        transport = holyroute.Transport(config, sinks=[events], log=False, quality=lambda *_: next(verdicts))
        with openai.OpenAI(http_client=httpx2.Client(transport=transport), api_key="own", base_url=_UNUSED) as sdk:
            for _ in range(3):
                sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "q"}], temperature=0)
        assert upstream.received == 2
        found = [(e.get("quality"), e["cache"]) for e in requests(events)]
        assert found == [(False, "miss"), (True, "stored"), (None, "hit")]


class TestShadowOfAHit:
    def test_a_hit_sends_nothing_upstream_shadow_included(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """The route mirrors every call; the stored call has its one shadow copy, the hits none (and no shadow
        call is left without its event)."""
        with FakeUpstream("shadow") as shadow:
            config = cache_config(upstream)
            config["endpoints"]["shadow"] = {"base_url": shadow.base_url, "api_key": "key-shadow"}
            config["routes"]["chat"]["shadow"] = {"model": "gpt-4.1-mini", "endpoints": ["shadow"], "sample": 1.0}
            sdk, events = make_sdk(config)
            first = sdk.chat()
            sdk.wait_until(lambda: any(e["shadow"] for e in requests(events)))
            for _ in range(3):
                assert sdk.chat().model_dump() == first.model_dump()
            sdk.chat(temperature=1)  # a bypass is routed: mirrored
            sdk.wait_until(lambda: sum(e["shadow"] for e in requests(events)) == 2)
            sdk.close()
            assert (upstream.received, shadow.received) == (2, 2)
            served = [e["cache"] for e in requests(events) if not e["shadow"]]
            assert served == ["stored", "hit", "hit", "hit", "bypass"]
            copies = [e for e in requests(events) if e["shadow"]]
            assert [(e["outcome"], e.get("cache")) for e in copies] == [("ok", None), ("ok", None)]


class TestRetryBudget:
    def test_a_burst_of_hits_touches_no_budget_limit_health_or_rollout(
        self, make_sdk: Any, upstream: FakeUpstream
    ) -> None:
        """On a frozen clock: one stored call, then twenty hits. The route's retry budget counts the one routed call
        (a hit loads no upstream, so it funds no retry), the endpoint's rpm/tpm buckets gave out one request, health
        saw one attempt, the rollout measured one call."""
        config = cache_config(upstream)
        config["endpoints"]["main"].update(rpm=1000, tpm=1_000_000)
        config["routes"]["chat"] = {
            "rollout": {
                "stable": {"model": "gpt-4.1", "endpoints": ["main"]},
                "candidate": {"model": "gpt-4.1-mini", "endpoints": ["main"]},
                "steps": [{"set_weight": 0}, {"pause": {}}],
            },
            "cache": {},
        }
        clock = FakeClock()
        events = Events()
        router = Router(holyroute.load_config(config), clock=clock, sinks=[events], log=False)
        sdk, _ = make_sdk(config, router)
        engine = router.rollouts.get("chat") if router.rollouts is not None else None
        assert engine is not None

        def snapshot() -> dict[str, Any]:
            return {
                "budget": router.budgets["chat"].state(clock()),
                "taken": router.health.rate_limits.taken(),
                "in_flight": router.health.in_flight("main"),
                "latency": router.health.latency("main"),
                "ejected": router.health.ejected("main", clock()),
                "measured": {arm: m.calls for arm, m in engine.window_measurements().items()},
            }

        sdk.chat()
        after_one = snapshot()
        assert after_one["budget"] == (1, 0)
        assert after_one["measured"] == {"gpt-4.1": 1, "gpt-4.1-mini": 0}
        assert after_one["taken"]["main"][0] == 1
        for _ in range(20):
            sdk.chat()
        assert snapshot() == after_one
        assert upstream.received == 1
        assert [e["cache"] for e in requests(events)] == ["stored"] + ["hit"] * 20


class _FailingPut:
    """A store whose reads work and whose writes fail."""

    blocking = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)  # type: ignore[no-any-return]

    def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        raise ConnectionError("the store is down")

    def close(self) -> None:
        self.inner.close()


class TestTheEventIsTruthful:
    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    def test_stored_is_said_once_the_store_has_it(self, make_sdk: Any, upstream: FakeUpstream, stream: bool) -> None:
        sdk, _ = make_sdk(cache_config(upstream))
        store = sdk.transport._cache.store
        seen: list[tuple[str | None, int]] = []
        holyroute.router_of(sdk.client._client).add_sink(
            lambda name, fields: seen.append((fields.get("cache"), len(store))) if name == "holyroute.request" else None
        )
        if stream:
            sdk.chat_stream()
        else:
            sdk.chat()
        sdk.chat()
        assert seen == [("stored", 1), ("hit", 1)]

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    def test_a_failed_write_says_miss_after_one_failure_event(
        self, make_sdk: Any, upstream: FakeUpstream, stream: bool
    ) -> None:
        sdk, events = make_sdk(cache_config(upstream))
        transport = sdk.transport
        transport._cache.store = _FailingPut(transport._cache.store)
        for _ in range(2):
            sdk.chat_stream() if stream else sdk.chat()
        assert upstream.received == 2
        names = [name for name, _ in events.items]
        # Each write fails after a read that worked: each starts a spell of failures, reported before the call's event.
        assert names == ["holyroute.cache_failed", "holyroute.request"] * 2
        assert events.named("holyroute.cache_failed")[0]["operation"] == "put"
        assert [e["cache"] for e in requests(events)] == ["miss", "miss"]

    def test_an_answer_larger_than_the_whole_store_says_miss(self, make_sdk: Any, upstream: FakeUpstream) -> None:
        """The store refuses an entry larger than its cap (within the route's max_entry_bytes): not stored."""
        config = cache_config(upstream)
        config["cache"] = {"max_bytes": 1024, "max_entry_bytes": 1024}
        sdk, events = make_sdk(config)
        sdk.chat()
        sdk.chat()
        assert upstream.received == 2
        assert [e["cache"] for e in requests(events)] == ["miss", "miss"]
        assert events.named("holyroute.cache_failed") == []

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
    def test_a_write_stopped_midway_still_ends_the_call_once(
        self, make_sdk: Any, upstream: FakeUpstream, stream: bool
    ) -> None:
        """Something that is not an error (a cancel, an interrupt) stops the write: the call's held event is emitted
        once, saying ``miss``, and the stop reaches the caller unchanged."""

        class Stopped(BaseException):
            pass

        class StoppedPut(_FailingPut):
            def put(self, key: str, value: bytes, ttl_s: float) -> bool:
                raise Stopped

        sdk, events = make_sdk(cache_config(upstream))
        sdk.transport._cache.store = StoppedPut(sdk.transport._cache.store)
        with pytest.raises(Stopped):
            sdk.chat_stream() if stream else sdk.chat()
        (event,) = requests(events)
        assert (event["outcome"], event["cache"]) == ("ok", "miss")
