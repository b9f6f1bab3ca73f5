"""The response cache's decisions without sockets: the caller's headers, the key, when a call is cached, what is
kept, the stream put back together and replayed, and the in-process store's bounds."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holyroute.boundary.cache import (
    MAX_CACHE_TTL_S,
    CacheDirectives,
    StoredAnswer,
    parse_cache_directives,
    parse_cache_ttl,
    parse_stored,
    reassemble_stream,
    stored_bytes,
)
from holyroute.config.schema import RouteCache
from holyroute.core.cache import LEFT_OUT_FIELDS, CachePolicy, cache_key, deterministic, replay
from holyroute.state.cache.memory import ENTRY_OVERHEAD, MemoryCache
from tests.conftest import FakeClock

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
bodies = st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=6)


class Headers(dict[str, str]):
    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key, default)


class TestHeaderParsers:
    @given(st.text(max_size=300))
    def test_directives_are_total(self, value: str) -> None:
        assert isinstance(parse_cache_directives(value), CacheDirectives)

    @given(st.lists(st.sampled_from(["on", "no-cache", "refresh", "no-store", "junk", " ON "]), max_size=5))
    def test_directives_combine(self, words: list[str]) -> None:
        found = parse_cache_directives(",".join(words))
        lowered = {w.strip().lower() for w in words}
        assert found.mark == ("on" in lowered)
        assert found.read == ("no-cache" not in lowered and "refresh" not in lowered)
        assert found.write == ("no-cache" not in lowered and "no-store" not in lowered)

    def test_no_header_lets_the_route_decide(self) -> None:
        assert parse_cache_directives(None) == CacheDirectives(mark=False, read=True, write=True)

    @given(st.text(max_size=300))
    def test_ttl_is_total_and_bounded(self, value: str) -> None:
        found = parse_cache_ttl(value)
        assert found is None or 0 <= found <= MAX_CACHE_TTL_S

    @given(st.integers(0, 10**9))
    def test_ttl_seconds(self, seconds: int) -> None:
        assert parse_cache_ttl(str(seconds)) == min(float(seconds), MAX_CACHE_TTL_S)

    def test_ttl_durations(self) -> None:
        found = [parse_cache_ttl(v) for v in ("90s", "10m", "1h30m", "-5", "", None)]
        assert found == [90, 600, 5400, None, None, None]


class TestStoredEntries:
    @given(st.binary(max_size=200))
    def test_parse_is_total(self, raw: bytes) -> None:
        found = parse_stored(raw)
        assert found is None or isinstance(found, StoredAnswer)

    @given(st.text(max_size=20), st.none() | st.floats(0, 100), st.floats(0, 2e9))
    def test_round_trip(self, model: str, cost: float | None, at: float) -> None:
        answer = StoredAnswer(b'{"a": 1}', model, cost, at)
        assert parse_stored(stored_bytes(answer)) == answer

    def test_other_types_are_not_entries(self) -> None:
        assert parse_stored("text") is None
        assert parse_stored(None) is None


class TestKey:
    @given(bodies, st.randoms())
    def test_independent_of_field_order(self, body: dict[str, Any], rng: random.Random) -> None:
        items = list(body.items())
        rng.shuffle(items)
        shuffled = dict(items)
        key = {"route": "r", "models": ["m"], "api": "chat", "tenant": None}
        assert cache_key(**key, data=body) == cache_key(**key, data=shuffled)

    @given(bodies, st.dictionaries(st.sampled_from([*LEFT_OUT_FIELDS, "seed_note"]), json_values, max_size=5))
    def test_independent_of_left_out_fields(self, body: dict[str, Any], noise: dict[str, Any]) -> None:
        body = {k: v for k, v in body.items() if k not in LEFT_OUT_FIELDS and k != "seed_note"}
        key = {"route": "r", "models": ["m"], "api": "chat", "tenant": None, "ignored": frozenset({"seed_note"})}
        assert cache_key(**key, data=body) == cache_key(**key, data={**body, **noise})

    @given(bodies)
    def test_json_numbers_are_one_type(self, body: dict[str, Any]) -> None:
        key = {"route": "r", "models": ["m"], "api": "chat", "tenant": None}
        assert cache_key(**key, data={**body, "temperature": 0}) == cache_key(**key, data={**body, "temperature": 0.0})

    def test_scope_changes_the_key(self) -> None:
        base: dict[str, Any] = {"route": "r", "models": ["m"], "api": "chat", "tenant": None, "data": {"x": 1}}
        keys = {
            cache_key(**base),
            cache_key(**{**base, "route": "r2"}),
            cache_key(**{**base, "models": ["m2"]}),
            cache_key(**{**base, "tenant": "t"}),
            cache_key(**{**base, "api": "responses"}),
            cache_key(**{**base, "data": {"x": 2}}),
        }
        assert len(keys) == 6
        assert cache_key(**{**base, "models": ["b", "a", "a"]}) == cache_key(**{**base, "models": ["a", "b"]})


def policy(**cache: Any) -> CachePolicy:
    return CachePolicy.of("r", RouteCache(**cache), 1000)


class TestWhen:
    def test_deterministic(self) -> None:
        assert deterministic("embeddings", {})
        assert deterministic("chat", {"temperature": 0, "n": 1})
        assert not deterministic("chat", {"temperature": 0, "n": 3})
        assert not deterministic("chat", {"temperature": False})
        assert not deterministic("responses", {})

    def test_tickets(self) -> None:
        none = Headers()
        zero = {"temperature": 0}
        assert policy().ticket("chat", zero, none, ["m"]).key is not None
        assert policy().ticket("chat", {}, none, ["m"]).reason == "not deterministic"
        assert policy(when="marked").ticket("chat", zero, none, ["m"]).key is None
        assert policy(when="marked").ticket("chat", {}, Headers({"x-holyroute-cache": "on"}), ["m"]).key is not None
        assert policy(when="always").ticket("chat", {}, none, ["m"]).key is not None
        assert policy(exclude=["tools"]).ticket("chat", {**zero, "tools": [1]}, none, ["m"]).key is None
        assert policy(exclude=["tools"]).ticket("chat", {**zero, "tools": []}, none, ["m"]).key is not None
        assert policy().ticket("chat", zero, Headers({"x-holyroute-cache-ttl": "5m"}), ["m"]).ttl_s == 300
        assert not policy().ticket("chat", zero, Headers({"x-holyroute-cache-ttl": "0"}), ["m"]).write

    def test_a_repeated_body_is_keyed_from_memory_with_the_same_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The key of a body seen before is remembered by the body's digest (with the api, tenant and models), so a
        hit does not decode and canonicalise the body again; the remembered key is the one computing it gives."""
        from holyroute.core import cache as core_cache

        computed: list[str] = []
        real = core_cache.cache_key

        def counting(**kwargs: Any) -> str:
            computed.append(real(**kwargs))
            return computed[-1]

        monkeypatch.setattr(core_cache, "cache_key", counting)
        data = {"model": "r", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
        body = json.dumps(data).encode()
        one = policy(tenant="header:x-tenant")
        tenant_a, tenant_b = Headers({"x-tenant": "a"}), Headers({"x-tenant": "b"})
        first = one.ticket("chat", data, tenant_a, ["m"], body=body).key
        again = one.ticket("chat", data, tenant_a, ["m"], body=body).key
        assert first == again == real(route="r", models=["m"], api="chat", tenant="a", data=data)
        assert len(computed) == 1  # the second was remembered
        other_tenant = one.ticket("chat", data, tenant_b, ["m"], body=body).key
        other_model = one.ticket("chat", data, tenant_a, ["m2"], body=body).key
        changed = {**data, "temperature": 0.0, "seed": 1}
        other_body = one.ticket("chat", changed, tenant_a, ["m"], body=json.dumps(changed).encode()).key
        assert len({first, other_tenant, other_model, other_body}) == 4
        assert len(computed) == 4


class TestSettle:
    def settle(self, **overrides: Any) -> str:
        ticket = policy().ticket("chat", {"temperature": 0}, Headers(), ["m"])
        ticket.body = b'{"choices": []}'
        fields: dict[str, Any] = {"ok": True, "status": 200, "api": "chat", "finish_reason": "stop", "quality": None,
                                  "primary": True, "upstream_model": "m", "cost_usd": 0.01, "now": 1.0}  # fmt: skip
        return ticket.settle(**{**fields, **overrides})

    def test_a_good_answer_is_stored(self) -> None:
        assert self.settle() == "stored"

    def test_what_is_never_stored(self) -> None:
        assert self.settle(ok=False) == "miss"
        assert self.settle(status=500) == "miss"
        assert self.settle(quality=False) == "miss"  # the quality check rejected it
        assert self.settle(primary=False) == "miss"  # a fallback's answer
        assert self.settle(finish_reason="length") == "miss"


def chat_stream(pieces: list[str], *, usage: bool) -> bytes:
    common = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    out = [{**common, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    out += [{**common, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    out.append({**common, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        out.append({**common, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in out) + b"data: [DONE]\n\n"


class TestStreams:
    @given(st.lists(st.text(max_size=5), max_size=6), st.booleans())
    def test_chat_put_together_then_replayed(self, pieces: list[str], usage: bool) -> None:
        body = reassemble_stream("chat", chat_stream(pieces, usage=usage))
        assert body is not None
        data = json.loads(body)
        assert data["choices"][0]["message"]["content"] == "".join(pieces)
        again = replay("chat", body, stream=True, include_usage=usage)
        assert again is not None
        assert reassemble_stream("chat", again) == body

    def test_a_chunk_with_nothing_of_the_answer_is_skipped(self) -> None:
        filters = b'data: {"object":"","id":"","created":0,"model":"","choices":[],"prompt_filter_results":[]}\n\n'
        body = reassemble_stream("chat", filters + chat_stream(["a", "b"], usage=True))
        assert body is not None
        assert json.loads(body)["id"] == "c1"
        assert json.loads(body)["choices"][0]["message"]["content"] == "ab"

    def test_a_stream_without_its_end_is_not_put_together(self) -> None:
        raw = chat_stream(["a"], usage=False)
        cut = raw[: raw.index(b'"finish_reason": "stop"')]
        assert reassemble_stream("chat", cut) is None

    @given(st.lists(st.lists(st.text(max_size=5), max_size=4), min_size=1, max_size=3), st.booleans())
    def test_completions_put_together_then_replayed(self, choices: list[list[str]], usage: bool) -> None:
        """Legacy completions, any number of choices: the pieces joined per choice, the stream replayed from the
        body puts the same body together again."""
        common = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
        events = [
            {**common, "choices": [{"text": piece, "index": i, "logprobs": None, "finish_reason": None}]}
            for i, pieces in enumerate(choices)
            for piece in pieces
        ]
        events += [
            {**common, "choices": [{"text": "", "index": i, "logprobs": None, "finish_reason": "stop"}]}
            for i in range(len(choices))
        ]
        if usage:
            events.append({**common, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
        raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        body = reassemble_stream("completions", raw)
        assert body is not None
        data = json.loads(body)
        assert [c["text"] for c in data["choices"]] == ["".join(pieces) for pieces in choices]
        assert ("usage" in data) is usage
        again = replay("completions", body, stream=True, include_usage=usage)
        assert again is not None
        assert reassemble_stream("completions", again) == body
        assert reassemble_stream("completions", raw[: raw.index(b'"stop"')]) is None  # a choice without its end

    def test_answers_with_token_logprobs_are_not_replayed_as_streams(self) -> None:
        token = {"token": "a", "logprob": -0.1, "bytes": None, "top_logprobs": []}
        message = {"role": "assistant", "content": "a"}
        chat = {
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": {"content": [token]}}],
        }  # fmt: skip
        logprobs = {"tokens": ["a"], "token_logprobs": [-0.1]}
        text = {
            "id": "t", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"text": "a", "index": 0, "finish_reason": "stop", "logprobs": logprobs}],
        }  # fmt: skip
        for api, body in (("chat", chat), ("completions", text)):
            raw = json.dumps(body).encode()
            assert replay(api, raw, stream=True, include_usage=False) is None
            assert replay(api, raw, stream=False, include_usage=False) == raw

    @given(st.binary(max_size=300), st.sampled_from(["chat", "completions", "responses", "embeddings"]))
    def test_total(self, raw: bytes, api: str) -> None:
        found = reassemble_stream(api, raw)
        assert found is None or isinstance(found, bytes)
        assert replay(api, raw, stream=True, include_usage=True) is None or api != "embeddings"


class TestMemoryCache:
    @given(st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=300)), max_size=60))
    def test_never_over_its_bounds(self, puts: list[tuple[str, bytes]]) -> None:
        cache = MemoryCache(max_entries=5, max_bytes=1500)
        for key, value in puts:
            cache.put(key, value, 60)
            assert len(cache) <= 5
            assert cache.size <= 1500
        assert cache.size == sum(len(k) + len(v) + ENTRY_OVERHEAD for k, (v, _) in cache._entries.items())

    def test_least_recently_used_goes_first(self) -> None:
        cache = MemoryCache(max_entries=2, max_bytes=10_000)
        cache.put("a", b"1", 60)
        cache.put("b", b"2", 60)
        cache.get("a")
        cache.put("c", b"3", 60)
        assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1", None, b"3")

    def test_entries_expire(self) -> None:
        clock = FakeClock()
        cache = MemoryCache(max_entries=2, max_bytes=10_000, clock=clock)
        cache.put("a", b"1", 10)
        clock.advance(10)
        assert cache.get("a") is None
        assert cache.size == 0


class TestConfiguration:
    def base(self, **cache: Any) -> dict[str, Any]:
        return {
            "endpoints": {"main": {"base_url": "http://127.0.0.1:1/v1"}},
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["main"]}], "cache": cache}},
        }

    def test_off_by_default(self) -> None:
        from holyroute import load_config

        config = load_config({**self.base(), "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["main"]}]}}})
        assert config.routes["chat"].cache is None
        assert config.cache.backend == "memory"

    def test_defaults_and_durations(self) -> None:
        from holyroute import load_config

        cache = load_config(self.base(ttl="10m", tenant="body:metadata.team")).routes["chat"].cache
        assert cache is not None
        assert (cache.ttl, cache.when, cache.tenant) == (600.0, "deterministic", "body:metadata.team")

    def test_mistakes_name_their_key_path(self) -> None:
        import pytest

        from holyroute import load_config
        from holyroute.exceptions import ConfigError

        with pytest.raises(ConfigError) as raised:
            load_config({**self.base(tenant="cookie:x", ignore_fields=["model"], when="sometimes"),
                         "cache": {"backend": "disk", "max_bytes": 0}})  # fmt: skip
        message = str(raised.value)
        for where in ("routes.chat.cache.tenant", "routes.chat.cache.ignore_fields", "routes.chat.cache.when",
                      "cache.backend", "cache.max_bytes"):  # fmt: skip
            assert where in message
