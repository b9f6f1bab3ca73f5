"""The structure that keeps a routed call cheap, checked without timing anything (issue 14).

A call's cost may grow with the size of its prompt and of its answer only at scanning speed: holyroute never decodes
a whole request body into Python objects unless a configured feature asks for a field beyond those it routes on, never
re-encodes it to swap the model in, and never decodes a whole answer to find its ``usage``. Features that are not
configured do no work. The scanned view of a body must say exactly what decoding it would say.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import holyroute
from holyroute.boundary.parse import (
    MAX_DEPTH,
    RequestBody,
    RequestView,
    SSEScanner,
    _deeper_than,
    read_request,
    requested_choices,
    requested_output_tokens,
)
from holyroute.core.steps import Send

from .conftest import Events

CONFIG = {
    "endpoints": {"a": {"base_url": "https://a.example/v1", "api_key": "key-a"}},
    "routes": {
        "chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["a"]}]},
        "embed": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["a"]}]},
    },
}
#: No JSON text holyroute decodes on a call may be longer than this (a usage object, a model name, an error).
SMALL = 4096


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text ``json.loads`` or ``JSONDecoder.raw_decode`` is given while the test runs."""
    sizes: list[int] = []
    loads, raw_decode = json.loads, json.JSONDecoder.raw_decode

    def spy_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(text))
        return loads(text, *args, **kwargs)

    def spy_raw_decode(self: json.JSONDecoder, text: str, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(text))
        return raw_decode(self, text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", spy_loads)
    monkeypatch.setattr(json.JSONDecoder, "raw_decode", spy_raw_decode)
    return sizes


def transport(handler: Callable[[httpx2.Request], httpx2.Response], events: Events) -> holyroute.Transport:
    return holyroute.Transport(CONFIG, transport=httpx2.MockTransport(handler), sinks=[events])


def embeddings_answer(count: int) -> bytes:
    vector = [i / 7919 for i in range(1536)]
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)]
    usage = {"prompt_tokens": 8 * count, "total_tokens": 8 * count}
    return json.dumps({"object": "list", "data": data, "model": "text-embedding-3-small", "usage": usage}).encode()


class TestNothingIsDecodedWhole:
    """Large bodies are scanned, never turned into Python objects."""

    def test_a_large_answer_is_costed_without_decoding_it(self, decoded: list[int]) -> None:
        answer = embeddings_answer(40)  # about 1.3 MB of floats
        assert len(answer) > 1_000_000
        events = Events()
        handler = lambda _: httpx2.Response(200, headers={"content-type": "application/json"}, content=answer)  # noqa: E731
        with httpx2.Client(transport=transport(handler, events)) as client:
            response = client.post("https://sdk.example/v1/embeddings", json={"model": "embed", "input": ["a"]})
            assert response.content == answer
        assert max(decoded, default=0) <= SMALL
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["prompt_tokens"], event["upstream_model"]) == (
            "ok",
            320,
            "text-embedding-3-small",
        )

    def test_a_large_prompt_is_routed_without_decoding_or_re_encoding_it(self, decoded: list[int]) -> None:
        turn = "The quick brown fox jumps over the lazy dog, and then it reads a chapter of Hamlet. " * 12
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(300)]
        body = json.dumps({"model": "chat", "messages": messages, "max_tokens": 64, "user": "u-1"}).encode()
        assert len(body) > 256_000
        sent: list[bytes] = []

        def upstream(request: httpx2.Request) -> httpx2.Response:
            sent.append(request.content)
            usage = {"prompt_tokens": 9, "completion_tokens": 1}
            return httpx2.Response(200, json={"model": "gpt-4.1", "choices": [], "usage": usage})

        events = Events()
        with httpx2.Client(transport=transport(upstream, events)) as client:
            response = client.post("https://sdk.example/v1/chat/completions", content=body)
            assert response.status_code == 200
        assert sent == [body.replace(b'"model": "chat"', b'"model": "gpt-4.1"')]  # only the model changed
        assert max(decoded, default=0) <= SMALL

    def test_a_stream_asks_for_usage_without_re_encoding(self, decoded: list[int]) -> None:
        body = json.dumps({"model": "chat", "stream": True, "messages": [{"role": "user", "content": "x" * 50_000}]})
        sent: list[bytes] = []

        def upstream(request: httpx2.Request) -> httpx2.Response:
            sent.append(request.content)
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=b"data: [DONE]\n\n")

        with httpx2.Client(transport=transport(upstream, Events())) as client:
            client.post("https://sdk.example/v1/chat/completions", content=body.encode()).read()
        routed = body.replace('"model": "chat"', '"model": "gpt-4.1"').encode()
        assert sent == [b'{"stream_options":{"include_usage":true},' + routed[1:]]
        assert max(decoded, default=0) <= SMALL
        assert json.loads(sent[0])["stream_options"] == {"include_usage": True}


def chat_stream(words: int) -> list[bytes]:
    """A chat stream as providers send it, one event per chunk: content, the finish, the usage chunk, ``[DONE]``."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}
    delta = [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]
    chunks = [{**head, "choices": delta}] * words
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": words}})
    return [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


class StreamOf(httpx2.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Any:
        return iter(self._chunks)


class TestAStreamIsPassedOnFirst:
    """What a stream's chunks say is found by byte searches, after the caller has each chunk."""

    def stream(self, chunks: list[bytes], events: Events) -> httpx2.Client:
        def upstream(_: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=StreamOf(chunks))

        return httpx2.Client(transport=transport(upstream, events))

    @pytest.mark.parametrize("words", [3, 60])
    def test_only_the_usage_chunk_is_decoded(self, words: int, decoded: list[int]) -> None:
        events = Events()
        chunks = chat_stream(words)
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with (
            self.stream(chunks, events) as client,
            client.stream("POST", "https://sdk.example/v1/chat/completions", json=body) as response,
        ):
            seen = list(response.iter_raw())
        assert seen == [c for c in chunks if b'"usage"' not in c]  # the injected usage chunk is hidden again
        usage_event = len(chunks[-2]) - len(b"data: \n\n")
        assert set(decoded) == {usage_event}  # the usage chunk alone is decoded, whatever the number of words
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["completion_tokens"], event["finish_reason"]) == ("ok", words, "stop")

    def test_the_first_chunk_reaches_the_caller_before_it_is_scanned(self, monkeypatch: pytest.MonkeyPatch) -> None:
        scanned: list[bytes] = []
        feed = SSEScanner.feed

        def spy(self: SSEScanner, data: bytes) -> bytes:
            scanned.append(data)
            return feed(self, data)

        monkeypatch.setattr(SSEScanner, "feed", spy)
        events = Events()
        chunks = chat_stream(3)
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with (
            self.stream(chunks, events) as client,
            client.stream("POST", "https://sdk.example/v1/chat/completions", json=body) as response,
        ):
            raw = response.iter_raw()
            assert next(raw) == chunks[0]
            assert scanned == []  # nothing of the stream was scanned before the caller had its first chunk
            assert next(raw) == chunks[1]
            assert scanned == chunks[:1]
            rest = list(raw)
        assert rest == chunks[2:-2] + chunks[-1:]
        assert scanned == chunks  # every chunk scanned once, in order
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["prompt_tokens"], event["completion_tokens"]) == ("ok", 9, 3)

    def test_a_caller_closing_after_done_ends_the_call_normally(self) -> None:
        """The SDK closes straight after ``[DONE]``, before that chunk's scan would run: closing scans it first."""
        events = Events()
        chunks = chat_stream(2)
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with (
            self.stream(chunks, events) as client,
            client.stream("POST", "https://sdk.example/v1/chat/completions", json=body) as response,
        ):
            for chunk in response.iter_raw():
                if chunk == b"data: [DONE]\n\n":
                    break
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["completion_tokens"]) == ("ok", 2)


class TestUnconfiguredFeaturesDoNothing:
    """A plain configuration builds none of the optional machinery, and a call never decodes its body."""

    def test_nothing_optional_is_built(self) -> None:
        router = holyroute.Router(holyroute.load_config(CONFIG))
        try:
            assert (router.rollouts, router.spend, router.alerts, router.token_encoder) == (None, None, None, None)
            assert not router.probing
            assert not router.tracks_latency
            assert not router.health.shared_limits
            assert all(
                plan.rules is None and plan.shadow is None and not plan.sticky for plan in router.routes.values()
            )
        finally:
            router.close()

    def test_a_plain_call_reads_only_the_scanned_fields(self) -> None:
        router = holyroute.Router(holyroute.load_config(CONFIG), sinks=[Events()])
        try:
            body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
            call = router.begin("POST", "/v1/chat/completions", "", {}, body)
            assert call is not None
            step = call.next_step()
            assert isinstance(step, Send)
            assert call.on_response(200, {"content-type": "application/json"}) is not None
            assert call.on_body(b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}')
            data = call._data
            assert isinstance(data, RequestBody)
            assert data._whole is None  # rules, stickiness, size checks, re-encoding: none asked for the body
        finally:
            router.close()

    def test_a_plain_call_asks_nothing_unconfigured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No rate limit, cooldown, spend budget, tpm settlement or rollout is asked about on a call
        whose configuration has none: each would be a Python call (about 500 instructions) that answers "nothing"."""
        from holyroute.core import accounting, cooldowns, planning, rate_limits

        def never(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("asked about a feature that is not configured")

        for owner, name in (
            (rate_limits.RateLimits, "blocked"),
            (rate_limits.RateLimits, "charge"),
            (cooldowns.Cooldowns, "cooldown"),
            (planning.Planning, "_check_spend"),
            (accounting.Accounting, "_settle"),
            (accounting.Accounting, "_observe_rollout"),
        ):
            monkeypatch.setattr(owner, name, never)
        events = Events()
        router = holyroute.Router(holyroute.load_config(CONFIG), sinks=[events])
        try:
            body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
            call = router.begin("POST", "/v1/chat/completions", "", {}, body)
            assert call is not None
            assert isinstance(call.next_step(), Send)
            assert call.on_response(200, {"content-type": "application/json"}) is not None
            assert call.on_body(b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}')
        finally:
            router.close()
        (event,) = events.named("holyroute.request")
        assert (event["outcome"], event["prompt_tokens"]) == ("ok", 3)

    def test_a_plain_call_makes_few_calls_of_its_own(self) -> None:
        """The layers a plain call goes through, counted: each Python-level call costs about 500-800 instructions,
        so a new layer on this path shows here before it shows in a benchmark. 75 calls before issue 14's stop 16,
        56 after; the bound leaves a little room for a change that needs one."""
        import os
        import sys

        router = holyroute.Router(holyroute.load_config(CONFIG), log=False)
        body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
        answer = b'{"choices": [{"finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
        root = os.path.dirname(holyroute.__file__)
        calls: list[str] = []

        def one() -> None:
            call = router.begin("POST", "/v1/chat/completions", "", {}, body)
            assert call is not None
            assert isinstance(call.next_step(), Send)
            assert call.on_response(200, {"content-type": "application/json"}) is not None
            assert call.on_body(answer)

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.startswith(root):
                calls.append(frame.f_code.co_qualname)

        try:
            one()  # first-call caches (the scanner, the catalogue's rates) filled outside the count
            sys.setprofile(profile)
            try:
                one()
            finally:
                sys.setprofile(None)
        finally:
            router.close()
        assert 0 < len(calls) <= 60, calls

    def test_a_random_pick_shares_its_arms_leg(self) -> None:
        """A non-sticky pick builds nothing: it is the plan's leg for the arm the split chose, the same object on
        every call; a sticky pick still gets a leg of its own that says so."""
        import random

        config = {
            "endpoints": CONFIG["endpoints"],
            "routes": {
                "split": {
                    "targets": [
                        {"model": "gpt-4.1", "endpoints": ["a"], "weight": 30},
                        {"model": "gpt-4.1-mini", "endpoints": ["a"], "weight": 70},
                    ],
                    "sticky": "user",
                },
            },
        }
        router = holyroute.Router(holyroute.load_config(config), rng=random.Random(5))
        try:
            plan = router.routes["split"]
            chooser = random.Random(5)
            for _ in range(40):
                index = plan.picker.random(chooser)  # the draw the router's own rng makes next
                leg = router.pick(plan, {}, {})
                assert leg is plan.legs[index]
                assert (leg.route, leg.arm, leg.fallback, leg.sticky) == ("split", plan.arms[index], None, False)
            assert {id(router.pick(plan, {}, {}).arm) for _ in range(40)} == {id(arm) for arm in plan.arms}
            sticky = router.pick(plan, {"user": "u-1"}, {})
            assert sticky.sticky
            assert all(sticky is not leg for leg in plan.legs)
        finally:
            router.close()

    def test_an_answer_without_a_count_keeps_no_headroom(self) -> None:
        """A remaining-requests header that is no number, and no tokens header: nothing is kept for the pair, so the
        health book's walk never looks for headroom (its guard: no headroom known at all)."""
        router = holyroute.Router(holyroute.load_config(CONFIG))
        try:
            cooldowns = router.health.cooldowns
            assert not cooldowns.record_headroom("a", "gpt-4.1", {"x-ratelimit-remaining-requests": "lots"}, 1.0)
            assert not cooldowns._headroom
            assert cooldowns.blocked("a", "gpt-4.1", 1.0, 10) is None
        finally:
            router.close()


LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
READ = st.sampled_from(
    ["stream", "stream_options", "user", "safety_identifier", "metadata", "n", "max_tokens", "max_output_tokens"]
)


class TestTheScanSaysWhatDecodingSays:
    """The scanned view of a body equals the view of the decoded body, field by field."""

    @given(st.dictionaries(READ | st.text(max_size=6), VALUES, max_size=6), st.booleans())
    @example({"model": 7}, False)
    @example({"stream": True, "x": [1, {"model": "other"}]}, False)
    def test_views_agree(self, fields: dict[str, Any], spaced: bool) -> None:
        whole = {"model": "chat", **fields}
        body = json.dumps(whole, indent=1 if spaced else None).encode()
        view = read_request(body)
        model = whole.get("model")
        if not isinstance(model, str):
            assert view is None
            return
        assert isinstance(view, RequestView)
        user = whole.get("user") or whole.get("safety_identifier")
        metadata = whole.get("metadata")
        assert (view.model, view.stream, view.max_output_tokens, view.choices, view.user, view.metadata) == (
            model,
            whole.get("stream") is True,
            requested_output_tokens(whole),
            requested_choices(whole),
            user if isinstance(user, str) else None,
            metadata if isinstance(metadata, dict) else None,
        )
        for key in (*fields, "model", "absent"):
            assert (key in view.data, view.data.get(key)) == (key in whole, whole.get(key))
        assert dict(view.data) == whole

    @given(
        st.integers(min_value=1, max_value=2 * MAX_DEPTH),
        st.sampled_from(["", "[[[", "]]]", '\\"[', "\\\\", "}{", '\\\\"']),
        st.integers(min_value=0, max_value=200),
    )
    def test_nesting_is_measured_exactly(self, depth: int, text: str, siblings: int) -> None:
        """Brackets and escaped quotes inside strings do not count; only real nesting does."""
        inner = "[" * depth + json.dumps(text) + "]" * depth
        body = (
            '{"model": "chat", "s": ' + json.dumps(text) + ', "x": ' + inner + ', "y": [' + "[],{}," * siblings + "1]}"
        ).encode()
        assert _deeper_than(body, MAX_DEPTH) == (depth + 1 > MAX_DEPTH)

    def test_a_body_the_scanner_accepts_is_not_measured_again(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """pydantic-core's reader refuses what nests deeper than MAX_DEPTH, so an accepted body is never walked for
        its depth (a walk costs more than the scan on a long conversation); what it refuses is still judged."""
        from holyroute.boundary import parse

        assert parse._scanner_bounds_depth()
        monkeypatch.setattr(parse, "_deeper_than", lambda body, limit: pytest.fail("measured again"))
        turns = [{"role": "user", "content": "[{" * 50}] * 300  # 300 objects, brackets inside strings
        assert isinstance(read_request(json.dumps({"model": "chat", "messages": turns}).encode()), RequestView)
        deep = b'{"model": "chat", "x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
        assert read_request(deep) == f"is nested deeper than {MAX_DEPTH} levels"
        fits = b'{"model": "chat", "x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
        assert isinstance(read_request(fits), RequestView)  # refused by the scanner, read by json.loads: routed


class TestTheAttemptRequest:
    """The attempt's request is built without httpx2's constructor (which re-parses the URL and copies the headers
    again) only while that builds the very same request; otherwise the constructor is used."""

    def _sent(self, monkeypatch: pytest.MonkeyPatch, fast: bool) -> httpx2.Request:
        from holyroute.core.plan import DROPPED_HEADERS
        from holyroute.drivers import compat

        monkeypatch.setattr(compat, "_FAST_REQUEST", fast)
        caller = httpx2.Request(
            "POST", "http://caller.example/v1/chat/completions", headers={"x-keep": "1"}, content=b"{}"
        )
        return compat.attempt_request(
            caller,
            "http://up.example:8080/v1/chat/completions?api-version=1",
            drop=DROPPED_HEADERS,
            add=(("authorization", "Bearer k"),),
            body=b'{"model":"m"}',
            extensions={"timeout": {"read": 5.0}},
        )

    def test_fast_and_constructed_requests_are_the_same(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from holyroute.drivers import compat

        assert compat._FAST_REQUEST  # the installed httpx2 sets exactly these attributes
        fast, built = self._sent(monkeypatch, True), self._sent(monkeypatch, False)
        assert set(vars(fast)) == set(vars(built))
        for one in (fast, built):
            assert one.method == "POST"
            assert str(one.url) == "http://up.example:8080/v1/chat/completions?api-version=1"
            assert one.headers.get_list("content-length") == ["13"]  # the caller's (2) replaced by the body's
            assert one.headers["host"] == "up.example:8080"
            assert one.headers["content-length"] == str(len(b'{"model":"m"}'))
            assert one.headers["authorization"] == "Bearer k"
            assert one.read() == b'{"model":"m"}'
            assert one.extensions == {"timeout": {"read": 5.0}}
        assert fast.headers.raw == built.headers.raw


class TestTheCopiedHeaders:
    """An attempt copies the caller's headers through a getter built once per list of names: it keeps exactly what
    a filter of the list keeps, in order, and each attempt gets per-phase timeouts of its own."""

    lowers = st.sampled_from([b"a", b"b", b"authorization", b"x-api-key", b"host", b"x-c"])

    @given(st.lists(lowers, max_size=8), st.frozensets(lowers))
    def test_it_keeps_what_a_filter_keeps(self, names: list[bytes], dropped: frozenset[bytes]) -> None:
        from holyroute.drivers.compat import _kept

        items = [(name.upper(), name, b"v%d" % at) for at, name in enumerate(names)]
        twice = [tuple(_kept(tuple(names), dropped)(items)) for _ in range(2)]  # built, then found again
        assert twice[0] == twice[1] == tuple(item for item in items if item[1] not in dropped)

    @given(st.lists(st.tuples(st.lists(lowers, max_size=6), st.frozensets(lowers)), min_size=1, max_size=6))
    def test_interleaved_lists_each_get_their_own(self, calls: list[tuple[list[bytes], frozenset[bytes]]]) -> None:
        """Calls whose names or dropped sets alternate (two clients, two endpoints) each get their own getter: the
        last one given is found by comparing names, any other by the dict."""
        from holyroute.drivers.compat import _kept

        for names, dropped in calls + calls[::-1]:
            items = [(name.upper(), name, b"v%d" % at) for at, name in enumerate(names)]
            got = tuple(_kept(tuple(names), dropped)(items))
            assert got == tuple(item for item in items if item[1] not in dropped)

    def test_an_attempt_reuses_the_names_the_request_view_listed(self) -> None:
        """The request's view lists its names once and lends them to the attempts that copy the same headers; it
        lends none for a list that is not (or no longer) what it saw."""
        from holyroute.drivers import compat

        request = httpx2.Request("POST", "http://caller.example/v1/x", headers={"X-A": "1", "Authorization": "k"})
        view = compat.header_view(request.headers)
        assert isinstance(view, compat.HeaderView)
        assert view.names_for(request.headers._list) is None  # nothing listed yet
        assert view.get("x-holyroute-arm") is None
        listed = request.headers._list
        names = view.names_for(listed)
        assert names == tuple(lower for _, lower, _ in listed)
        assert view.names_for(list(listed)) is names  # the same triples, in another list
        assert view.names_for(httpx2.Headers({"X-A": "1"})._list) is None

    @pytest.mark.parametrize("change", ["delete and add", "replace a value", "reorder"])
    def test_headers_changed_after_the_view_are_copied_as_they_are_now(self, change: str) -> None:
        """A caller that changes its request's headers in place after the call began (a shadow copy sends later)
        gets an attempt built from the headers as they are then: never the caller's credential, never an index into
        a list that moved."""
        from holyroute.drivers import compat

        request = httpx2.Request(
            "POST",
            "http://caller.example/v1/x",
            headers=[("X-A", "a"), ("X-B", "b"), ("Authorization", "Bearer CALLER-KEY"), ("X-C", "c"), ("X-D", "d")],
            content=b"{}",
        )
        view = compat.header_view(request.headers)
        assert isinstance(view, compat.HeaderView)
        assert view.get("x-holyroute-pin") is None  # the names are listed
        if change == "delete and add":
            del request.headers["X-A"]
            request.headers["X-E"] = "e"
        elif change == "replace a value":
            request.headers["X-B"] = "b2"
        else:
            request.headers._list.append(request.headers._list.pop(0))  # the first header moved to the end
        sent = compat.attempt_request(
            request,
            "http://up.example/v1/x",
            drop=frozenset({"authorization", "host", "content-length"}),
            add=(("Authorization", "Bearer ENDPOINT-KEY"),),
            body=b"{}",
            extensions={},
            listed_by=view,
        )
        kept = [
            (lower, value)
            for _, lower, value in request.headers._list
            if lower not in (b"authorization", b"host", b"content-length")
        ]
        assert sent.headers.get_list("authorization") == ["Bearer ENDPOINT-KEY"]
        assert [(lower, value) for _, lower, value in sent.headers._list][1:-2] == kept
        # The view still says what came when the call began.
        assert view.get("x-a") == "a"
        assert view.get("x-b") == "b"

    phases = st.none() | st.floats(min_value=0.001, max_value=1000)

    @given(
        st.dictionaries(st.sampled_from(["connect", "read", "write", "pool"]), phases),
        phases,
        phases,
    )
    def test_each_attempt_gets_timeouts_of_its_own(
        self, timeout: dict[str, float | None], bound: float | None, headers_bound: float | None
    ) -> None:
        from holyroute.drivers.transport import _attempt

        request = httpx2.Request(
            "POST", "http://caller.example/v1/chat/completions", content=b"{}", extensions={"timeout": timeout}
        )
        step = Send("http://up.example/v1/chat/completions", (), b"{}", bound, "a", headers_bound)
        first, read = _attempt(request, step, None)
        expected = dict(timeout)
        if bound is not None:
            for phase in ("connect", "read", "write", "pool"):
                current = expected.get(phase)
                expected[phase] = bound if current is None or current > bound else current
        expected_read = None
        if headers_bound is not None:
            expected_read = current = expected.get("read")
            expected["read"] = headers_bound if current is None or current > headers_bound else current
        if bound is None and headers_bound is None:
            assert first.extensions == request.extensions
            assert first.extensions is not request.extensions  # the attempt's own dict
            return
        assert (first.extensions["timeout"], read) == (expected, expected_read)
        first.extensions["timeout"]["read"] = -1.0  # what restore_read_timeout does to one attempt's dict
        second, _ = _attempt(request, step, None)
        assert second.extensions is not first.extensions
        assert second.extensions["timeout"] == expected
        assert request.extensions["timeout"] == timeout  # the caller's own timeouts are never changed


class TestTheHeaderView:
    """The core reads a few headers of many: the view decodes only those, and says what a dict of all would say."""

    names = st.sampled_from(["x-a", "X-A", "content-type", "x-ratelimit-remaining-requests", "x-é", "Host"])
    values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=8)

    @given(st.lists(st.tuples(names, values), max_size=20), st.sampled_from(["x-a", "content-type", "x-é", "absent"]))
    def test_it_agrees_with_decoding_everything(self, pairs: list[tuple[str, str]], key: str) -> None:
        from holyroute.drivers.compat import HeaderView, header_view

        headers = httpx2.Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs])
        whole: dict[str, str] = {}
        for name, value in pairs:
            lower = name.lower()
            whole[lower] = f"{whole[lower]}, {value}" if lower in whole else value
        view = header_view(headers)
        assert isinstance(view, HeaderView)
        assert view.get(key) == whole.get(key)
        assert (key in view) == (key in whole)
        # Every name, one repeated or not, in one view: a repeated name is joined, the others are found by index.
        for name in ("x-a", "content-type", "x-ratelimit-remaining-requests", "host", "x-é", "absent"):
            assert view.get(name) == whole.get(name)
        assert dict(view.items()) == whole
        assert len(view) == len(whole)
        # The driver deletes headers from the answer it hands on (a decoded body's content-encoding): the view,
        # looked up before and after, still says what came.
        for name in list(whole)[:2]:
            del headers[name]
        for name, value in whole.items():
            assert view.get(name) == value

    def test_its_repr_names_no_value(self) -> None:
        from holyroute.drivers.compat import header_view

        view = header_view(httpx2.Headers({"Authorization": "Bearer sk-secret-1"}))
        assert repr(view) == "HeaderView(['authorization'])"


class TestASmallAnswerIsReadInOnePass:
    """An answer up to 8 KB is read by pydantic-core in one pass; what it finds is what the searches that keep a large
    answer flat find."""

    counts = st.one_of(
        st.none(), st.integers(-5, 10**13), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)
    )
    cached = st.fixed_dictionaries({}, optional={"cached_tokens": counts})
    usage = st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": counts,
            "completion_tokens": counts,
            "input_tokens": counts,
            "output_tokens": counts,
            "prompt_tokens_details": st.one_of(st.none(), cached),
            "completion_tokens_details": st.fixed_dictionaries({}, optional={"reasoning_tokens": counts}),
            "prompt_cache_hit_tokens": counts,
            "cache_read_input_tokens": counts,
        },
    )
    answers = st.fixed_dictionaries(
        {"id": st.just("chatcmpl-1")},
        optional={
            "model": st.one_of(st.sampled_from(["gpt-4.1", "gpt-4.1-2025-04-14", "bad model!"]), st.integers()),
            "service_tier": st.sampled_from(["default", "flex", "?!"]),
            "usage": st.one_of(st.none(), usage),
            "choices": st.just([{"index": 0, "finish_reason": "stop", "message": {"content": '"usage": {}'}}]),
        },
    )

    @given(answers, st.booleans())
    def test_one_pass_finds_what_the_searches_find(self, answer: dict[str, Any], spaced: bool) -> None:
        from holyroute.boundary import parse

        body = json.dumps(answer, indent=1 if spaced else None).encode()
        one_pass = parse.usage_from_body(body)
        searched = parse._SMALL_ANSWER
        try:
            parse._SMALL_ANSWER = -1  # type: ignore[misc]
            by_search = parse.usage_from_body(body)
        finally:
            parse._SMALL_ANSWER = searched  # type: ignore[misc]
        assert one_pass == by_search
        if one_pass is not None and by_search is not None:
            assert (one_pass.model, one_pass.service_tier) == (by_search.model, by_search.service_tier)


class TestTheModelSwap:
    """The model is swapped into the caller's body without re-encoding it. A large body is searched once and copied
    once, from views of the old; it gives what splitting at the alias gives."""

    @staticmethod
    def _split(body: bytes, alias: bytes, model: bytes) -> bytes | None:
        parts = body.split(alias, 2)
        return model.join(parts) if len(parts) == 2 else None

    @given(
        st.lists(st.sampled_from([b'"chat"', b'"cha', b't"', b"\\", b'"', b"x" * 40, b'{"model":']), max_size=12),
        st.sampled_from([b'"chat"', b'"t"']),
        st.sampled_from([b'"gpt-4.1"', b'""']),
        st.sampled_from([0, 8, 4096]),
    )
    def test_any_size_gives_what_a_split_gives(
        self, pieces: list[bytes], alias: bytes, model: bytes, split_at_most: int
    ) -> None:
        from holyroute.core import sending

        body = b"".join(pieces)
        previous = sending._SPLIT_AT_MOST
        sending._SPLIT_AT_MOST = split_at_most  # type: ignore[misc]
        try:
            assert sending._swap_model(body, alias, model) == self._split(body, alias, model)
        finally:
            sending._SPLIT_AT_MOST = previous  # type: ignore[misc]

    def test_a_large_body_gets_the_model_once(self) -> None:
        from holyroute.core.sending import _SPLIT_AT_MOST, _swap_model

        turn = {"role": "user", "content": "chat-default, said nobody " * 40}
        body = json.dumps({"messages": [turn] * 20, "model": "chat-default"}).encode()
        assert len(body) > _SPLIT_AT_MOST
        swapped = _swap_model(body, b'"chat-default"', b'"gpt-4.1"')
        assert swapped is not None
        assert json.loads(swapped) == {"messages": [turn] * 20, "model": "gpt-4.1"}
        assert _swap_model(body + b' "chat-default"', b'"chat-default"', b'"gpt-4.1"') is None  # twice: re-encoded


class TestThePathAndQuery:
    """The request's path and query are read from httpx2's parsed parts, as its properties would decode them."""

    segments = st.text(alphabet="abc/-_.~%20é?=&", max_size=12)

    @given(segments, segments)
    def test_they_are_what_the_properties_say(self, path: str, query: str) -> None:
        from holyroute.drivers.compat import _FAST_URL, path_and_query

        assert _FAST_URL  # the installed httpx2 keeps the parts this reads
        try:
            url = httpx2.URL(f"http://host.example/{path}?{query}")
        except httpx2.InvalidURL:
            return
        assert path_and_query(url) == (url.path, url.query.decode("ascii"))
