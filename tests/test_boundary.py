"""The boundary's parsers are total: any header, body, stream or coding gives a bounded value or None, never raises.

Property tests (Hypothesis) state the invariants for any input; the classes after them pin each symptom of issue 12
that the boundary fixes, first on the core with a fake clock, then end to end through both transports.
"""

from __future__ import annotations

import asyncio
import doctest
import gzip
import itertools
import json
import math
import zlib
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import holyroute
from holyroute import Router, load_config
from holyroute.boundary.parse import (
    MAX_CHOICES,
    MAX_DECODED_BYTES,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_TOKENS,
    RequestView,
    SSEScanner,
    Usage,
    content_codings,
    decode_content,
    header_count,
    header_seconds,
    header_text,
    named_alias,
    parse_request,
    read_request,
    requested_output_tokens,
    token_count,
    usage_from_body,
    usage_from_mapping,
)
from holyroute.config.prices import PriceRow
from holyroute.core.health import Debit, HealthBook, server_delay
from holyroute.core.steps import Accepted, Respond
from holyroute.core.usage import cost_usd

from .conftest import Events, FakeClock, Harness, base_config, drive, ok, status

PRIMARY = {"x-holyroute-arm": "gpt-4.1"}
PINNED = {"x-holyroute-arm": "acme-large"}
WALL = 1_700_000_000.0
YEAR_10000 = "Fri, 01 Jan 10000 00:00:00 GMT"
RATE_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
)
#: Header values upstreams send, well-formed and not.
HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "inf",
            "-inf",
            "nan",
            "Infinity",
            "1e400",
            "-1e400",
            "99999999h",
            "1m30s",
            "6ms",
            "0.5s",
            "1h2m3.5s",
            "-5",
            "0",
            "0.0",
            "12",
            YEAR_10000,
            "Mon, 01 Jan 1900 00:00:00 GMT",
            "Fri, 31 Feb 2026 99:99:99 +9999",
            "2026-12-05T04:44:32Z",
            "9999-12-31T23:59:59Z",
            "1" * 400,
            "",
            " ",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
MAX_S = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
#: Go-style durations as rate-limit resets say them: ``6ms``, ``1.49s``, ``1m30s``.
DURATIONS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 10**6).map(str), st.floats(0, 1e4, allow_nan=False).map(lambda f: f"{f:.3f}")),
        st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h", "d"]),
    ),
    min_size=1,
    max_size=3,
).map(lambda parts: "".join(number + unit for number, unit in parts))


# ---- property tests --------------------------------------------------------------------------------------------


class TestHeaderProperties:
    """Durations and counts from upstream headers: any string gives None or a value within bounds."""

    @given(HEADER_VALUES, MAX_S, st.floats(min_value=0, max_value=4e9), st.sampled_from([1.0, 0.001]))
    @example("inf", 600.0, WALL, 1.0)
    @example(YEAR_10000, 600.0, WALL, 1.0)
    @example("99999999h", 600.0, WALL, 1.0)
    def test_duration_within_bounds(self, value: str, max_s: float, wall: float, scale: float) -> None:
        seconds = header_seconds(value, max_s=max_s, now_wall=wall, scale=scale)
        assert seconds is None or (isinstance(seconds, float) and 0.0 <= seconds <= max_s)

    @given(st.text(max_size=200), MAX_S)
    def test_any_text_is_a_bounded_duration_or_none(self, value: str, max_s: float) -> None:
        seconds = header_seconds(value, max_s=max_s, now_wall=WALL)
        assert seconds is None or 0.0 <= seconds <= max_s

    @given(
        st.one_of(HEADER_VALUES, DURATIONS),
        MAX_S,
        MAX_S,
        st.sampled_from([1.0, 0.001]),
        st.sampled_from([None, WALL]),
    )
    @example("6ms", 0.001, 600.0, 1.0, None)
    @example("1500", 600.0, 600.0, 0.001, None)  # a bare number is scaled, read after as before
    @example(YEAR_10000, 600.0, 600.0, 1.0, WALL)  # a date counts from the wall clock, when there is one
    def test_a_duration_read_again_reads_the_same(
        self, value: str, first_max: float, max_s: float, scale: float, wall: float | None
    ) -> None:
        # Durations already read are kept as seconds before clamping: a second read, under another bound, scale
        # or wall clock, says what a read with an empty memory says.
        from holyroute.boundary import parse

        parse._DURATIONS_SEEN.clear()
        fresh = header_seconds(value, max_s=max_s, now_wall=wall, scale=scale)
        parse._DURATIONS_SEEN.clear()
        header_seconds(value, max_s=first_max, now_wall=WALL, scale=1.0)
        header_seconds(value, max_s=first_max)
        assert header_seconds(value, max_s=max_s, now_wall=wall, scale=scale) == fresh

    @given(HEADER_VALUES)
    def test_count_within_bounds(self, value: str) -> None:
        count = header_count(value)
        assert count is None or (isinstance(count, int) and 0 <= count <= MAX_TOKENS)

    @given(st.dictionaries(st.sampled_from(RATE_HEADERS), HEADER_VALUES), MAX_S)
    def test_server_delay_within_bounds(self, headers: dict[str, str], max_s: float) -> None:
        found = server_delay(headers, WALL, max_s)
        if found is not None:
            seconds, said = found
            assert 0.0 <= seconds <= max_s
            assert len(said) <= 80
            assert said.isprintable()

    @given(st.dictionaries(st.sampled_from(RATE_HEADERS), HEADER_VALUES), MAX_S, st.integers(0, 10**13))
    def test_headroom_never_reaches_past_the_bound(self, headers: dict[str, str], max_s: float, tokens: int) -> None:
        """Whatever the headers said, the pair is blocked for at most max_cooldown_s."""
        book = HealthBook(lambda: 0.0, max_cooldown_s=max_s)
        book.record_headroom("e", "m", headers, 100.0)
        blocked = book.blocked("e", "m", 100.0, tokens)
        assert blocked is None or 100.0 <= blocked[1] <= 100.0 + max_s
        change = book.headroom_change("e", "m", 100.0, WALL)
        assert change is None or WALL <= change.until <= WALL + max_s

    @given(st.text(max_size=300))
    def test_shown_values_are_short_and_printable(self, value: str) -> None:
        shown = header_text(value)
        assert len(shown) <= 40
        assert all(" " <= c <= "~" for c in shown)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
OUTPUT_KEYS = st.sampled_from(["max_tokens", "max_completion_tokens", "max_output_tokens", "n", "stream", "user"])


def nested(depth: int) -> bytes:
    return b'{"model": "chat-default", "messages": ' + b"[" * depth + b"]" * depth + b"}"


class TestRequestProperties:
    """Caller bodies: any bytes give a validated view or None (pass through); nothing escapes."""

    @given(st.binary(max_size=300))
    @example(nested(10**5))
    @example(b"\xef\xbb\xbf" + b'{"model": "m"}')
    @example(b'{"model": "m", "max_tokens": ' + b"9" * 400 + b"}")
    @example(b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b"}")
    @example('{"model": "m"}'.encode("utf-16"))
    @example(b'\n\t {"model": "\xff"}')
    @example(b'{"model": "chat", "n": ' + b"9" * 5000 + b"}")
    @example(b'{"model":"ch\\u0061t","x":' + b"[" * 300 + b"]" * 300 + b"}")
    def test_any_bytes(self, body: bytes) -> None:
        view = parse_request(body)
        assert view is None or isinstance(view, RequestView)
        read = read_request(body)
        assert read == view or (view is None and isinstance(read, str))
        alias = named_alias(body, {"chat", "m"})
        assert alias is None or (alias in {"chat", "m"} and b'"model"' in body)

    @given(
        st.dictionaries(
            OUTPUT_KEYS
            | st.sampled_from(["metadata", "safety_identifier", "stream_options", "temperature", "service_tier"]),
            JSON_VALUES | st.booleans(),
            max_size=3,
        )
    )
    def test_the_scanned_view_is_the_decoded_view(self, fields: dict[str, Any]) -> None:
        """What the scan reads of a body (one whose read fields are only the model, the stream flag and fields read
        for nothing else takes a shortcut) is what the whole decoded body says."""
        from holyroute.boundary.parse import _view

        data = {"model": "chat-default", **fields, "messages": [{"role": "user", "content": "hi"}]}
        view = parse_request(json.dumps(data).encode())
        assert view is not None
        reference = _view(data, data)
        assert reference is not None
        assert tuple(view[1:]) == tuple(reference[1:])
        assert type(view) is RequestView

    @given(
        st.dictionaries(OUTPUT_KEYS, JSON_VALUES, max_size=4),
        JSON_VALUES,
        st.sampled_from([b"", b" \r\n", b"\xef\xbb\xbf"]),
    )
    def test_views_are_bounded(self, fields: dict[str, Any], extra: Any, prefix: bytes) -> None:
        """A body naming a model is routable, and every count in its view is within bounds."""
        body = prefix + json.dumps({"model": "chat-default", **fields, "extra": extra}).encode()
        view = parse_request(body)
        assert view is not None
        assert view.model == "chat-default"
        assert view.max_output_tokens is None or 1 <= view.max_output_tokens <= MAX_TOKENS
        assert 1 <= view.choices <= MAX_CHOICES
        assert view.stream is (fields.get("stream") is True)

    @given(st.integers(min_value=1, max_value=3 * MAX_DEPTH))
    def test_depth_bound(self, depth: int) -> None:
        view = parse_request(nested(depth))
        assert (view is not None) == (depth + 1 <= MAX_DEPTH)

    @given(
        depth=st.integers(min_value=1, max_value=3 * MAX_DEPTH),
        digits=st.integers(min_value=1, max_value=6000),
        alias=st.sampled_from(["chat-default", "chat-cheap", "gpt-4o"]),
        spaced=st.booleans(),
    )
    def test_a_body_naming_a_routed_alias_is_routed_or_answered_never_passed_through(
        self, *, depth: int, digits: int, alias: str, spaced: bool
    ) -> None:
        """Too deep or a number too long to read: a body naming a routed alias is answered 400 here, with one
        event; one naming no routed alias passes through; a readable one is routed."""
        events = Events()
        router = Router(
            load_config(base_config()), clock=FakeClock(), wall_clock=lambda: WALL, log=False, sinks=[events]
        )
        named = f'"model"{" : " if spaced else ":"}"{alias}"'.encode()
        body = b"{" + named + b',"messages":' + b"[" * depth + b"]" * depth + b',"seed":' + b"7" * digits + b"}"
        call = router.begin("POST", "/v1/chat/completions", "", {}, body)
        readable = depth + 1 <= MAX_DEPTH and digits <= 4300
        if alias not in router.routes:
            assert call is None
            return
        assert call is not None
        outcome = drive(call, [ok()])
        assert isinstance(outcome.final, Respond if not readable else Accepted)
        assert len(outcome.sent) == (1 if readable else 0)
        if not readable:
            assert len(events.named("holyroute.request")) == 1

    @given(
        content=st.text(st.characters() | st.sampled_from(["\ud83d", "\udc00", "\udfff", "\x00"]), max_size=20),
        stream=st.booleans(),
        alias_twice=st.booleans(),
        ascii_only=st.booleans(),
    )
    @example(content="truncated emoji \ud83d", stream=True, alias_twice=False, ascii_only=True)
    @example(content="x \ud83d", stream=False, alias_twice=True, ascii_only=True)
    def test_any_string_content_routes_without_raising(
        self, *, content: str, stream: bool, alias_twice: bool, ascii_only: bool
    ) -> None:
        """Any JSON string in the messages or the sticky user (an escaped lone surrogate too) is routed and sent,
        re-encoded or not, as the same JSON: a stream whose usage is asked for, or a body naming the alias twice, is
        re-encoded."""
        messages = [{"role": "user", "content": content}]
        if alias_twice:
            messages.append({"role": "user", "content": "chat-default"})
        payload = {
            "model": "chat-default",
            "messages": messages,
            "user": content,
            **({"stream": True} if stream else {}),
        }
        if not ascii_only and any("\ud800" <= c <= "\udfff" for c in content):
            ascii_only = True  # only JSON's \u escapes can carry a lone surrogate
        body = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8")
        config = base_config()
        config["routes"]["chat-default"]["sticky"] = "user"  # the user's string is hashed to pick the arm
        router = Router(load_config(config), clock=FakeClock(), wall_clock=lambda: WALL, log=False, sinks=[Events()])
        call = router.begin("POST", "/v1/chat/completions", "", {}, body)
        assert call is not None
        answer = (200, {"content-type": "text/event-stream"}, b"") if stream else ok()
        outcome = drive(call, [answer])
        [sent] = outcome.sent
        assert json.loads(sent.body)["messages"] == messages
        assert json.loads(sent.body).get("stream_options") == ({"include_usage": True} if stream else None)

    @given(st.dictionaries(OUTPUT_KEYS, JSON_VALUES, max_size=5), st.booleans())
    def test_the_core_never_raises_on_a_routable_body(self, fields: dict[str, Any], ceiling: bool) -> None:
        """Whatever numbers the caller wrote, the call plans, sends and ends without an exception."""
        clock = FakeClock()
        config = base_config()
        config["endpoints"]["main"]["tpm"] = 1000
        router = Router(load_config(config), clock=clock, wall_clock=lambda: WALL, log=False, sinks=[Events()])
        headers = {**PRIMARY, **({"x-holyroute-max-cost": "0.01"} if ceiling else {})}
        body = json.dumps({"model": "chat-default", "messages": [{"role": "user", "content": "hi"}], **fields})
        call = router.begin("POST", "/v1/chat/completions", "", headers, body.encode())
        assert call is not None
        outcome = drive(call, [status(400)] * 10, clock)
        assert isinstance(outcome.final, Respond | holyroute.core.call.Accepted)


USAGE_NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
USAGE_KEYS = st.sampled_from(
    ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "prompt_cache_hit_tokens", "total_tokens"]
)
DETAILS = st.dictionaries(st.sampled_from(["cached_tokens", "reasoning_tokens"]), USAGE_NUMBERS, max_size=2)
USAGE_OBJECTS = st.builds(
    lambda main, details: {**main, **details},
    st.dictionaries(USAGE_KEYS, USAGE_NUMBERS, max_size=5),
    st.dictionaries(
        st.sampled_from(
            ["prompt_tokens_details", "completion_tokens_details", "input_tokens_details", "output_tokens_details"]
        ),
        DETAILS | USAGE_NUMBERS,
        max_size=2,
    ),
)


def bounded(usage: Usage) -> bool:
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens)
    return all(isinstance(n, int) and 0 <= n <= MAX_TOKENS for n in counts)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


class TestUsageProperties:
    """Usage objects: absurd numbers and wrong types give clamped or absent counts and a finite cost."""

    @given(USAGE_OBJECTS)
    @example({"prompt_tokens": 10**400, "completion_tokens": 1e400})
    @example({"prompt_tokens": -5, "completion_tokens": "7", "prompt_tokens_details": {"cached_tokens": 10**50}})
    def test_mapping(self, usage: dict[str, Any]) -> None:
        found = usage_from_mapping(usage)
        assert bounded(found)
        assert found.cached_tokens <= found.prompt_tokens
        assert math.isfinite(cost_usd(found, PriceRow(2.0, 0.5, 8.0, 12.0)))

    @given(st.one_of(st.binary(max_size=200), USAGE_OBJECTS.map(lambda u: json_bytes({"id": "x", "usage": u}))))
    @example(b'{"usage": {"prompt_tokens": 1e400}}')
    @example(b'{"usage": ' + b"[" * 10**5 + b"}")
    @example(b'{"x": 1, "usage": {"a": ' + b"[" * 10**5)
    def test_body(self, body: bytes) -> None:
        found = usage_from_body(body)
        assert found is None or bounded(found)
        assert usage_from_body(body, "GZIP") is None or usage_from_body(body, "gzip") is not None


def sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode()


SSE_EVENTS = st.one_of(
    st.just(b"data: [DONE]"),
    st.just(b": keep-alive"),
    st.just(sse({"choices": [{"delta": {"content": "hi"}}]})),
    st.just(sse({"choices": [{"delta": {}, "finish_reason": "stop"}]})),
    USAGE_OBJECTS.map(lambda u: sse({"choices": [], "usage": u})),
    USAGE_OBJECTS.map(lambda u: sse({"type": "response.completed", "response": {"usage": u}})),
    st.just(sse({"type": "error", "error": {"code": [[[]]]}})),
    st.just(sse({"error": {"code": 10**30}})),
    st.just(b'data: {"usage": ' + b"[" * 5000 + b"}"),
    st.just(b'data: {"usage": {"prompt_tokens": 1e400}}'),
    st.binary(max_size=30),
)
SEPARATORS = st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r", b"\n", b"\r\n", b""])


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(SSE_EVENTS, SEPARATORS), max_size=8))
    return b"".join(event + separator for event, separator in parts)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


def scan(chunks: list[bytes], *, hide: bool) -> tuple[Any, ...]:
    scanner = SSEScanner(hide_usage_chunk=hide)
    out = b"".join(scanner.feed(chunk) for chunk in chunks) + scanner.end()
    return (out, scanner.usage, scanner.done, scanner.finished, scanner.finish_reason, scanner.error, scanner.events)


class TestSSEProperties:
    """The SSE scanner: any byte stream in any split gives the same findings and never raises."""

    @given(sse_streams(), st.lists(st.integers(min_value=0), max_size=12), st.booleans())
    def test_split_never_matters(self, stream: bytes, points: list[int], hide: bool) -> None:
        whole = scan([stream], hide=hide)
        assert scan(cut(stream, points), hide=hide) == whole
        if not hide:
            assert whole[0] == stream  # handed on untouched
        assert whole[1] is None or bounded(whole[1])

    @given(sse_streams(), st.booleans())
    def test_byte_by_byte(self, stream: bytes, hide: bool) -> None:
        assert scan([stream[i : i + 1] for i in range(len(stream))], hide=hide) == scan([stream], hide=hide)

    @given(st.lists(st.binary(max_size=64), max_size=10), st.booleans())
    def test_any_bytes(self, chunks: list[bytes], hide: bool) -> None:
        found = scan(chunks, hide=hide)
        assert found[1] is None or bounded(found[1])
        if not hide:
            assert found[0] == b"".join(chunks)

    def test_an_oversize_event_is_handed_on_unparsed_in_any_split(self) -> None:
        big = b'data: {"usage": {"prompt_tokens": 5}, "pad": "' + b"x" * MAX_EVENT_BYTES + b'"}\n\n'
        stream = big + sse({"choices": [], "usage": {"prompt_tokens": 7}}) + b"\n\n" + b"data: [DONE]\n\n"
        whole = scan([stream], hide=True)
        assert whole[0] == stream.replace(sse({"choices": [], "usage": {"prompt_tokens": 7}}) + b"\n\n", b"")
        assert whole[1] == Usage(7, 0, 0, 0)
        assert scan(cut(stream, [1000, 2**20, 2**24 + 10, 2**24 + 60]), hide=True) == whole


CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "identity": lambda data: data,
}


def case_mix(name: str, pattern: list[bool]) -> str:
    return "".join(c.upper() if pattern[i % len(pattern)] else c for i, c in enumerate(name)) if pattern else name


class TestContentDecodingProperties:
    """Content codings: any body and header give the decoded body or None; codings are case-insensitive."""

    @given(
        st.binary(max_size=300),
        st.lists(st.sampled_from(sorted(CODINGS)), min_size=1, max_size=4),
        st.lists(st.booleans(), max_size=6),
    )
    def test_round_trip_in_any_case(self, body: bytes, stack: list[str], pattern: list[bool]) -> None:
        encoded = body
        for coding in stack:
            encoded = CODINGS[coding](encoded)
        header = ", ".join(case_mix(coding, pattern) for coding in stack)
        assert decode_content(encoded, header) == body

    @given(st.binary(max_size=300), st.text(max_size=40))
    @example(b"junk", "GZIP")
    @example(gzip.compress(b"{}")[:-3], "gzip")
    @example(b"", "gzip, gzip, gzip, gzip, gzip, gzip")
    def test_any_body_any_header(self, body: bytes, header: str) -> None:
        decoded = decode_content(body, header)
        assert decoded is None or isinstance(decoded, bytes)

    def test_raw_deflate_and_concatenated_gzip(self) -> None:
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        assert decode_content(raw.compress(b"{}") + raw.flush(), "Deflate") == b"{}"
        assert decode_content(gzip.compress(b"{") + gzip.compress(b"}"), "gzip") == b"{}"

    def test_bomb_refused(self) -> None:
        assert decode_content(gzip.compress(b"\0" * 2048), "gzip", max_bytes=1024) is None
        assert decode_content(gzip.compress(b"\0" * 1024), "gzip", max_bytes=1024) == b"\0" * 1024
        assert MAX_DECODED_BYTES >= 64 * 1024 * 1024

    def test_unknown_and_too_many_codings(self) -> None:
        assert decode_content(b"{}", "compress") is None
        assert content_codings("gzip," * 6) is None
        assert content_codings(" Identity ") == []
        assert decode_content(b"{}", "IDENTITY") == b"{}"


# ---- what each parser says -------------------------------------------------------------------------------------


class TestDurations:
    """The forms upstreams write, and the decisions for what is not a duration (see the module docstring)."""

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("1m30s", 90.0),
            ("6ms", 0.006),
            ("0.5s", 0.5),
            ("2m3.5s", 123.5),
            ("7", 7.0),
            (" 2.5 ", 2.5),
            ("99999999h", 600.0),  # clamped to max_cooldown_s
            ("inf", 600.0),  # as long as allowed
            ("1e400", 600.0),
            ("-5", 0.0),  # a reset in the past: now
            ("-inf", 0.0),
            ("nan", None),  # not a duration
            ("soon", None),
            ("1m30", None),
            ("", None),
            ("1" * 400, None),  # longer than any header that means a duration
        ],
    )
    def test_forms(self, value: str, seconds: float | None) -> None:
        assert header_seconds(value, max_s=600.0) == (pytest.approx(seconds) if seconds is not None else None)

    def test_dates(self) -> None:
        assert header_seconds(formatdate(WALL + 30, usegmt=True), max_s=600, now_wall=WALL) == 30.0
        assert header_seconds(YEAR_10000, max_s=600, now_wall=WALL) == 600.0
        assert header_seconds("Mon, 01 Jan 1900 00:00:00 GMT", max_s=600, now_wall=WALL) == 0.0
        assert header_seconds("2023-11-14T22:13:50Z", max_s=600, now_wall=WALL) == 30.0
        assert header_seconds(formatdate(WALL + 30, usegmt=True), max_s=600) is None  # no wall clock: no date

    def test_milliseconds(self) -> None:
        assert header_seconds("1500", max_s=600, scale=0.001) == 1.5
        assert server_delay({"retry-after-ms": "1e400"}, WALL, 60.0) == (60.0, "retry-after-ms 1e400")

    def test_counts(self) -> None:
        assert [header_count(v) for v in ("0", "1200", "-3", "12.9", "1e400", "inf", "nan", "x", None)] == [
            0,
            1200,
            0,
            12,
            MAX_TOKENS,
            MAX_TOKENS,
            None,
            None,
            None,
        ]

    def test_token_counts(self) -> None:
        assert [token_count(v) for v in (4096, 4096.0, 10**400, 1e400, 0, -1, True, "5", math.nan)] == [
            4096,
            4096,
            MAX_TOKENS,
            MAX_TOKENS,
            None,
            None,
            None,
            None,
            None,
        ]
        assert requested_output_tokens({"max_tokens": "lots", "max_output_tokens": 10**400}) == MAX_TOKENS


# ---- symptoms, on the core with a fake clock ---------------------------------------------------------------------


def one_endpoint(**retry: Any) -> dict[str, Any]:
    return base_config(
        routes={"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}]}},
        retry={"max_attempts": 3, "backoff_jitter_s": 0, "max_wait_s": 1, **retry},
    )


class TestHeaderSymptoms:
    """Upstream headers can no longer make a call raise or keep an endpoint out past max_cooldown_s."""

    def test_retry_after_in_year_10000_fails_over(self, harness: Harness) -> None:
        """It used to raise ValueError in the caller; now the pair cools for max_cooldown_s and the call fails over."""
        outcome = drive(harness.call(headers=PRIMARY), [status(429, {"retry-after": YEAR_10000}), ok()])
        assert outcome.endpoints == ["main", "backup"]
        (cooldown,) = harness.events.named("holyroute.cooldown")
        assert cooldown["cooldown_s"] == 600

    def test_reset_inf_keeps_later_calls_working(self, make_harness: Callable[..., Harness]) -> None:
        """x-ratelimit-reset-requests: inf made every later call raise OverflowError.

        With ``min_attempts: 0`` a blocked endpoint is answered locally, which shows the bound (120 s, not inf); by
        default the persistence floor still tries it after a backoff.
        """
        h = make_harness(one_endpoint(max_cooldown_s=120, min_attempts=0))
        drive(h.call(), [ok({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "inf"})])
        later = drive(h.call(), [], h.clock)
        assert isinstance(later.final, Respond)
        assert later.final.status == 429
        assert dict(later.final.headers)["retry-after"] == "120"
        h.clock.advance(120.01)
        assert drive(h.call(), [ok()], h.clock).endpoints == ["main"]

    def test_reset_inf_is_still_tried_below_the_floor(self, make_harness: Callable[..., Harness]) -> None:
        """By default (min_attempts 3) a call never gives up on an endpoint only because its headroom is spent."""
        h = make_harness(one_endpoint(max_cooldown_s=120))
        drive(h.call(), [ok({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "inf"})])
        assert drive(h.call(), [ok()], h.clock).endpoints == ["main"]

    @pytest.mark.parametrize("header", ["x-ratelimit-reset-requests", "retry-after"])
    def test_absurd_reset_blocks_at_most_max_cooldown(self, make_harness: Callable[..., Harness], header: str) -> None:
        """99999999h used to block an endpoint for thousands of years although max_cooldown_s is 600."""
        h = make_harness(base_config(retry={"max_attempts": 3, "backoff_jitter_s": 0}))
        answer = status(429, {header: "99999999h", "x-ratelimit-remaining-requests": "0"})
        assert drive(h.call(headers=PRIMARY), [answer, ok()]).endpoints == ["main", "backup"]
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["backup"]
        h.clock.advance(600.01)
        assert drive(h.call(headers=PRIMARY), [ok()]).endpoints == ["main"]

    @given(st.dictionaries(st.sampled_from(RATE_HEADERS), HEADER_VALUES), st.sampled_from([200, 429, 503]))
    def test_any_rate_limit_headers(self, headers: dict[str, str], code: int) -> None:
        """Any junk in any rate-limit header: the call ends normally, and the next one is never kept out longer."""
        clock = FakeClock()
        router = Router(
            load_config(base_config()), clock=clock, wall_clock=lambda: WALL + clock.now, log=False, sinks=[]
        )
        answer = (code, {"content-type": "application/json", **headers}, b"{}")
        call = router.begin("POST", "/v1/chat/completions", "", PRIMARY, nested(1))
        assert call is not None
        drive(call, [answer, ok(), ok()], clock)
        clock.advance(600.01)
        again = router.begin("POST", "/v1/chat/completions", "", PRIMARY, nested(1))
        assert again is not None
        assert drive(again, [ok()], clock).endpoints == ["main"]


#: A model no limits table knows (so any max_tokens reaches the upstream), with a configured price.
UNKNOWN_MODEL = "acme-large"


def tpm_config(tpm: int = 1000) -> dict[str, Any]:
    """main (with a tpm limit) and backup serve a model whose window nobody knows: the upstream judges the size."""
    config = base_config(
        retry={"max_attempts": 3, "backoff_jitter_s": 0}, prices={UNKNOWN_MODEL: {"input": 1, "output": 2}}
    )
    config["routes"]["chat-default"]["targets"][0]["model"] = UNKNOWN_MODEL
    config["endpoints"]["main"]["tpm"] = tpm
    return config


def assert_unroutable(harness: Harness, body: bytes, reason: str) -> None:
    """``body`` names a routed alias but cannot be read: a local 400 that says why, never sent, one event."""
    before = len(harness.events.named("holyroute.request"))
    call = harness.router.begin("POST", "/v1/chat/completions", "", PRIMARY, body)
    assert call is not None, "passed through"
    outcome = drive(call, [])
    assert outcome.sent == []
    assert isinstance(outcome.final, Respond)
    assert outcome.final.status == 400
    assert ("x-should-retry", "false") in outcome.final.headers
    error = json.loads(outcome.final.body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "holyroute_unroutable_body")
    assert reason in error["message"]
    assert len(outcome.final.body) < 1000  # the body is never echoed
    events = harness.events.named("holyroute.request")
    assert len(events) == before + 1
    assert (events[-1]["status"], events[-1]["outcome"]) == (400, "error")
    assert reason in events[-1]["error"]


class TestRequestSymptoms:
    """Caller bodies are parsed once, totally, with their counts clamped."""

    def test_max_tokens_10_12_answered_400_does_not_drain_the_bucket(
        self, make_harness: Callable[..., Harness]
    ) -> None:
        """The debit is capped at the bucket's capacity and credited back when the upstream answered 400."""
        h = make_harness(tpm_config())
        outcome = drive(h.call({"max_tokens": 10**12}, headers=PINNED), [status(400)])
        assert outcome.endpoints == ["main"]
        for _ in range(5):
            assert drive(h.call({"max_tokens": 50}, headers=PINNED), [ok()], h.clock).endpoints == ["main"]

    def test_400_digit_max_tokens_with_a_ceiling(self, make_harness: Callable[..., Harness]) -> None:
        """It used to raise OverflowError; the ceiling now refuses the request as any too costly one."""
        harness = make_harness(tpm_config())
        body = b'{"model": "chat-default", "messages": [], "max_tokens": ' + b"9" * 400 + b', "n": ' + b"9" * 50 + b"}"
        headers = {**PINNED, "x-holyroute-max-cost": "0.05"}
        call = harness.router.begin("POST", "/v1/chat/completions", "", headers, body)
        assert call is not None
        outcome = drive(call, [])
        assert isinstance(outcome.final, Respond)
        assert outcome.final.status == 400
        assert json.loads(outcome.final.body)["error"]["code"] == "holyroute_cost_ceiling"

    def test_deeply_nested_body_naming_a_routed_alias_is_answered_locally(self, harness: Harness) -> None:
        """Nesting depth 10**5 used to raise RecursionError out of the transport, then passed through (to the SDK's
        own base_url, with the caller's key); a body naming a routed alias is now answered 400 here, unsent."""
        for depth in (10**5, MAX_DEPTH + 1):
            assert_unroutable(harness, nested(depth), f"nested deeper than {MAX_DEPTH}")
        assert harness.router.begin("POST", "/v1/chat/completions", "", {}, nested(MAX_DEPTH - 1)) is not None

    def test_an_integer_too_long_to_read_naming_a_routed_alias_is_answered_locally(self, harness: Harness) -> None:
        body = b'{"model": "chat-default", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}"
        assert_unroutable(harness, body, "a number too long to read")

    @pytest.mark.parametrize(
        "named",
        [b'"model":"chat-default"', b'"model" :\n "chat-default"', b'"model": "chat\\u002ddefault"'],
        ids=["compact", "spaced", "escaped"],
    )
    def test_the_alias_is_found_however_it_is_written(self, harness: Harness, named: bytes) -> None:
        body = b"{" + named + b', "messages": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
        assert_unroutable(harness, body, f"nested deeper than {MAX_DEPTH}")

    @pytest.mark.parametrize(
        "body",
        [
            b'{"model": "gpt-4o", "messages": ' + b"[" * 200 + b"]" * 200 + b"}",
            b'{"model": "gpt-4o", "max_tokens": ' + b"9" * 5000 + b"}",
            b'{"messages": ["chat-default"], "x": ' + b"[" * 200 + b"]" * 200 + b"}",  # the alias, not as a model
            b'{"model": "chat-default", "messages": [' + b"9" * 20 + b", }",  # not JSON: the upstream says so
        ],
        ids=["deep", "long-number", "alias-elsewhere", "not-json"],
    )
    def test_a_body_naming_no_routed_alias_still_passes_through(self, harness: Harness, body: bytes) -> None:
        assert harness.router.begin("POST", "/v1/chat/completions", "", {}, body) is None
        assert harness.events.named("holyroute.request") == []

    @pytest.mark.parametrize("prefix", [b" ", b"\n\t\r ", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n"])
    def test_leading_whitespace_or_bom_is_routed(self, harness: Harness, prefix: bytes) -> None:
        body = prefix + json.dumps({"model": "chat-default", "messages": []}).encode()
        call = harness.router.begin("POST", "/v1/chat/completions", "", PRIMARY, body)
        assert call is not None
        assert drive(call, [ok()]).endpoints == ["main"]


class TestSettlement:
    """A call's tpm debits are corrected to what it used when it ends."""

    def level(self, h: Harness) -> float:
        bucket = h.router.health.rate_limits._endpoints["main"].tpm
        assert bucket is not None
        bucket.wait_for(0, h.clock.now)  # refill up to now
        return bucket.level

    def answer(self, prompt: int, completion: int) -> Any:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        return (200, {"content-type": "application/json"}, json.dumps({"usage": usage}).encode())

    def test_less_used_than_estimated_is_credited_back(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        drive(h.call({"max_tokens": 500}, headers=PINNED), [self.answer(10, 20)])
        assert self.level(h) == pytest.approx(1000 - 30)

    def test_more_used_than_estimated_is_taken(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        drive(h.call({"max_tokens": 5}, headers=PINNED), [self.answer(300, 200)])
        assert self.level(h) == pytest.approx(500)

    def test_usage_past_capacity_takes_at_most_the_capacity(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        drive(h.call({"max_tokens": 5}, headers=PINNED), [self.answer(10**12, 10**12)])
        assert self.level(h) == pytest.approx(0)

    def test_failed_attempts_are_credited_back(self, make_harness: Callable[..., Harness]) -> None:
        """A 503 from main then an answer from backup: main's debit comes back in full."""
        h = make_harness(tpm_config())
        drive(h.call({"max_tokens": 500}, headers=PINNED), [status(503), self.answer(10, 20)])
        assert self.level(h) == pytest.approx(1000)

    def test_unknown_usage_keeps_the_estimate(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        call = h.call({"max_tokens": 500}, headers=PINNED)
        drive(call, [ok()])
        assert self.level(h) == pytest.approx(1000 - call._tokens)

    def test_a_stream_is_settled_with_its_usage(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        call = h.call({"max_tokens": 500, "stream": True}, headers=PINNED)
        outcome = drive(call, [(200, {"content-type": "text/event-stream"}, b"")])
        assert isinstance(outcome.final, holyroute.core.call.Accepted)
        call.on_complete(Usage(10, 20, 0, 0))
        assert self.level(h) == pytest.approx(1000 - 30)

    def test_a_call_given_up_credits_everything_back(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        drive(h.call({"max_tokens": 500}, headers=PINNED), [ConnectionError(), status(503), status(503)], h.clock)
        assert self.level(h) == pytest.approx(1000)

    def test_shared_store_is_asked_for_at_most_the_limit(self, make_harness: Callable[..., Harness]) -> None:
        h = make_harness(tpm_config())
        h.router.health.shared_limits = True
        asked: list[int] = []

        def grant(step: Any) -> float:
            asked.append(step.tokens)
            return 0.0

        drive(h.call({"max_tokens": 10**12}, headers=PINNED), [ok()], grants=grant)
        assert asked == [1000]


# ---- end to end through the transports ---------------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "endpoints": {
        "a": {"base_url": "https://a.example/v1", "api_key": "key-a", "tpm": 1000},
        "b": {"base_url": "https://b.example/v1", "api_key": "key-b"},
    },
    "routes": {"chat": {"targets": [{"model": UNKNOWN_MODEL, "endpoints": ["a", "b"]}]}},
    "prices": {UNKNOWN_MODEL: {"input": 1, "output": 2}},
    "retry": {"max_attempts": 3, "backoff_jitter_s": 0, "max_wait_s": 1},
}
USAGE = {"prompt_tokens": 10, "completion_tokens": 5}
Handler = Callable[[httpx2.Request], httpx2.Response]


class Wire:
    """A router on a fake clock behind the sync or async transport, over a mock inner transport."""

    def __init__(self, mode: str, handler: Handler, config: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.clock = FakeClock()
        self.events = Events()
        self.hosts: list[str] = []

        def record(request: httpx2.Request) -> httpx2.Response:
            self.hosts.append(request.url.host)
            return handler(request)

        self.router = Router(
            load_config(config or CONFIG),
            clock=self.clock,
            wall_clock=lambda: WALL + self.clock.now,
            log=False,
            sinks=[self.events],
        )
        self.inner = httpx2.MockTransport(record)

    def send(self, body: bytes, **headers: str) -> httpx2.Response:
        request = httpx2.Request("POST", "https://sdk.example/v1/chat/completions", headers=headers, content=body)
        if self.mode == "sync":
            transport = holyroute.Transport(transport=self.inner, router=self.router, sleep=self.clock.advance)
            with httpx2.Client(transport=transport) as client:
                response = client.send(request)
                response.read()
                return response

        async def sleep(seconds: float) -> None:
            self.clock.advance(seconds)

        async def go() -> httpx2.Response:
            transport = holyroute.AsyncTransport(transport=self.inner, router=self.router, sleep=sleep)
            async with httpx2.AsyncClient(transport=transport) as client:
                response = await client.send(request)
                await response.aread()
                return response

        return asyncio.run(go())


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def answer_json(status_code: int = 200, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status_code, headers=headers, json={"id": "x", "usage": USAGE})


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestEndToEnd:
    """Each symptom through the transport: the call fails over or succeeds instead of raising."""

    def test_retry_after_year_10000(self, mode: str) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            if request.url.host == "a.example":
                return answer_json(429, {"retry-after": YEAR_10000})
            return answer_json()

        wire = Wire(mode, handler)
        assert wire.send(chat()).status_code == 200
        assert wire.hosts == ["a.example", "b.example"]

    def test_reset_inf_then_more_calls(self, mode: str) -> None:
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "inf"}
        wire = Wire(mode, lambda request: answer_json(200, headers if request.url.host == "a.example" else None))
        for _ in range(3):
            assert wire.send(chat()).status_code == 200
        assert wire.hosts == ["a.example", "b.example", "b.example"]  # a waits for max_cooldown_s, not forever

    def test_99999999h_blocks_at_most_max_cooldown(self, mode: str) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            if request.url.host == "a.example" and len(wire.hosts) == 1:
                return answer_json(429, {"x-ratelimit-reset-requests": "99999999h"})
            return answer_json()

        wire = Wire(mode, handler)
        assert wire.send(chat()).status_code == 200
        wire.clock.advance(600.01)
        assert wire.send(chat()).status_code == 200
        assert wire.hosts == ["a.example", "b.example", "a.example"]

    def test_max_tokens_10_12_answered_400(self, mode: str) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            if json.loads(request.content).get("max_tokens") == 10**12:
                return httpx2.Response(400, json={"error": {"message": "max_tokens is too large"}})
            return answer_json()

        wire = Wire(mode, handler)
        assert wire.send(chat(max_tokens=10**12)).status_code == 400
        for _ in range(5):
            assert wire.send(chat(max_tokens=100)).status_code == 200
        assert wire.hosts == ["a.example"] * 6  # a's tpm bucket is not drained

    def test_400_digit_max_tokens_with_a_ceiling(self, mode: str) -> None:
        wire = Wire(mode, lambda request: answer_json())
        body = chat()[:-1] + b', "max_tokens": ' + b"7" * 400 + b"}"
        response = wire.send(body, **{"x-holyroute-max-cost": "0.05"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "holyroute_cost_ceiling"
        assert wire.hosts == []

    def test_deeply_nested_body(self, mode: str) -> None:
        """Naming a routed alias: answered here, sent nowhere (it used to go to the SDK's own base_url)."""
        wire = Wire(mode, lambda request: httpx2.Response(400, json={"error": {"message": "bad json"}}))
        body = b'{"model": "chat", "messages": ' + b"[" * 10**5 + b"]" * 10**5 + b"}"
        response = wire.send(body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "holyroute_unroutable_body"
        assert response.headers["x-should-retry"] == "false"
        assert wire.hosts == []
        assert [e["status"] for e in wire.events.named("holyroute.request")] == [400]
        # Naming no routed alias: passed through untouched, as before.
        assert wire.send(body.replace(b'"chat"', b'"gpt-4o"')).status_code == 400
        assert wire.hosts == ["sdk.example"]
        assert len(wire.events.named("holyroute.request")) == 1

    def test_integer_too_long_to_read(self, mode: str) -> None:
        wire = Wire(mode, lambda request: answer_json())
        response = wire.send(chat()[:-1] + b', "seed": ' + b"1" * 4301 + b"}")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "holyroute_unroutable_body"
        assert wire.hosts == []

    def test_leading_whitespace(self, mode: str) -> None:
        wire = Wire(mode, lambda request: answer_json())
        assert wire.send(b"\n  " + chat()).status_code == 200
        assert wire.hosts == ["a.example"]
        assert wire.events.named("holyroute.request")[0]["prompt_tokens"] == 10

    @pytest.mark.parametrize("coding", ["GZIP", "Gzip", "deflate, GZIP", "x-gzip", " gzip ", "identity, gzip"])
    def test_content_coding_any_case(self, mode: str, coding: str) -> None:
        body = json.dumps({"id": "x", "usage": USAGE}).encode()
        for name in [c.strip().lower() for c in coding.split(",")]:  # in the order they were applied
            body = CODINGS[name](body)

        def handler(request: httpx2.Request) -> httpx2.Response:
            headers = {"content-type": "application/json", "content-encoding": coding}
            return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(body))

        wire = Wire(mode, handler)
        response = wire.send(chat())
        assert response.json()["usage"] == USAGE
        assert wire.hosts == ["a.example"]
        assert wire.events.named("holyroute.request")[0]["completion_tokens"] == 5

    @pytest.mark.parametrize("coding", ["gzip", "br-unknown", "compress", "gzip, gzip, gzip, gzip, gzip, gzip"])
    def test_undecodable_body_fails_over(self, mode: str, coding: str) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            if request.url.host == "a.example":
                headers = {"content-type": "application/json", "content-encoding": coding}
                return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(b"\x1f\x8b junk"))
            return answer_json()

        wire = Wire(mode, handler)
        assert wire.send(chat()).json()["usage"] == USAGE
        assert wire.hosts == ["a.example", "b.example"]
        (failover,) = wire.events.named("holyroute.failover")
        assert failover["error"] == "malformed body"

    @pytest.mark.parametrize("stream", [True, False], ids=["stream-usage-injected", "alias-twice"])
    def test_escaped_lone_surrogate_is_sent(self, mode: str, stream: bool) -> None:
        """It raised UnicodeEncodeError re-encoding the body, sending nothing; now the body goes, \\u-escaped."""
        events = b'data: {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}\n\ndata: [DONE]\n\n'
        sent: list[bytes] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            sent.append(request.content)
            if stream:
                headers = {"content-type": "text/event-stream"}
                return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(events))
            return answer_json()

        wire = Wire(mode, handler)
        messages = [{"role": "user", "content": "truncated emoji \ud83d"}]
        if not stream:
            messages.append({"role": "user", "content": "chat"})  # the alias twice: the model is not swapped in place
        response = wire.send(chat(messages=messages, stream=stream))
        assert response.status_code == 200
        assert json.loads(sent[0])["messages"] == messages
        assert [e["outcome"] for e in wire.events.named("holyroute.request")] == ["ok"]

    def test_absurd_stream_usage(self, mode: str) -> None:
        stream = (
            b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n'
            b'data: {"choices": [], "usage": {"prompt_tokens": ' + b"9" * 400 + b', "completion_tokens": 1e400}}\n\n'
            b"data: [DONE]\n\n"
        )

        def handler(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=httpx2.ByteStream(stream))

        wire = Wire(mode, handler)
        response = wire.send(chat(stream=True))
        assert response.status_code == 200
        (event,) = wire.events.named("holyroute.request")
        assert event["prompt_tokens"] == MAX_TOKENS
        assert event["completion_tokens"] == MAX_TOKENS
        assert event["cost_usd"] is not None
        assert math.isfinite(event["cost_usd"])


class TestHealthBookBounds:
    """The health book keeps its own bounds whoever asks it (a header, another process)."""

    @given(st.floats(allow_nan=True, allow_infinity=True))
    def test_a_cooldown_never_outlasts_max_cooldown(self, seconds: float) -> None:
        book = HealthBook(lambda: 0.0, max_cooldown_s=60.0)
        cooldown = book.cool("e", "m", seconds, "test", 10.0)
        assert cooldown is None or 10.0 <= cooldown.until <= 70.0
        assert book.blocked("e", "m", 10.0, 1) is None or book.blocked("e", "m", 70.0, 1) is None

    @given(st.lists(st.tuples(st.integers(-(10**15), 10**15), st.integers(-(10**15), 10**15)), max_size=6))
    def test_buckets_stay_within_capacity(self, calls: list[tuple[int, int]]) -> None:
        """Any estimates and any usage: a local tpm bucket stays within [-capacity, capacity]."""
        book = HealthBook(lambda: 0.0, limits={"e": (None, 1000)})
        bucket = book.rate_limits._endpoints["e"].tpm
        assert bucket is not None
        for estimate, used in calls:
            debits: list[Any] = []
            book.begin_attempt("e", 0.0, estimate, debits)
            assert all(0 <= debit.tokens <= 1000 for debit in debits)
            book.end_attempt("e", trial=False)
            book.settle(debits, 0.0, endpoint="e", used=used)
            assert debits == []
            assert -1000 <= bucket.level <= 1000

    @given(st.lists(st.integers(-(10**15), 10**15), min_size=1, max_size=4), st.integers(-(10**15), 10**15))
    def test_shared_settlements_are_bounded(self, estimates: list[int], used: int) -> None:
        """Any shared grants and any usage: what goes back to a shared bucket is at most each grant (``tpm`` at
        most), and what more is taken is at most the capacity."""
        book = HealthBook(lambda: 0.0)
        debits = [Debit("e", None, min(max(estimate, 0), 1000), 1000) for estimate in estimates]
        granted = sum(debit.tokens for debit in debits)
        [(endpoint, tpm, tokens)] = book.settle(debits, 0.0, endpoint="e", used=used) or [("e", 1000, 0)]
        assert (endpoint, tpm) == ("e", 1000)
        assert -1000 <= tokens <= granted
        assert debits == []

    @given(
        st.sampled_from(["cooldown", "headroom", "ejected", "quota", "restored"]),
        st.sampled_from(["requests", "tokens"]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.one_of(st.none(), st.integers(-(10**30), 10**30)),
    )
    def test_a_change_from_another_process_is_bounded(
        self, kind: Any, reason: str, until: float, tokens: int | None
    ) -> None:
        """Whatever another process published, this one keeps a pair or an endpoint out no longer than it would."""
        from holyroute.config import Health
        from holyroute.state.base import HealthChange

        book = HealthBook(lambda: 0.0, Health(max_ejection_s=300, quota_ejection_s=3600), max_cooldown_s=60.0)
        book.apply(HealthChange(kind, "e", "m", until, reason, tokens), 10.0, WALL)
        blocked = book.blocked("e", "m", 10.0, 5)
        assert blocked is None or 10.0 <= blocked[1] <= 70.0
        trial = "half-open: its trial request is in flight"
        assert book.ejected("e", 10.0 + 3600.01) in (None, trial)  # quota_ejection_s
        if kind != "quota":
            assert book.ejected("e", 10.0 + 300.01) in (None, trial)  # max_ejection_s


def test_doctests() -> None:
    """The examples in the boundary's docstrings hold."""
    from holyroute.boundary import parse as _boundary

    failures, tried = doctest.testmod(_boundary)
    assert tried >= 6
    assert failures == 0


class TestProbeAnswers:
    """An active health check's answer is an upstream body and headers too: any of them gives a verdict."""

    @given(
        st.integers(100, 599),
        st.dictionaries(st.sampled_from(RATE_HEADERS), HEADER_VALUES),
        st.binary(max_size=200),
    )
    @example(500, {}, b'{"error": ' + b"[" * 10**5)
    @example(429, {"x-ratelimit-remaining-requests": "nan"}, b'[{"error": {"code": "x"}}]')
    def test_classify_never_raises(self, code: int, headers: dict[str, str], body: bytes) -> None:
        from holyroute.drivers.probe import classify

        result = classify("e", http_status=code, headers=headers, latency_ms=1.0, error=None, body=body, slow_ms=2000)
        assert result.status in ("healthy", "degraded", "unhealthy", "unknown")


_ROUTER: list[Router] = []


@given(st.binary(max_size=200), st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]))
@example(nested(10**5), "/v1/chat/completions")
@example(b"\xef\xbb\xbf" + nested(3), "/v1/responses")
def test_router_begin_on_any_bytes(body: bytes, path: str) -> None:
    """The transport's first question (is this a routed call?) has an answer for any body."""
    if not _ROUTER:
        _ROUTER.append(Router(load_config(base_config()), log=False, sinks=[]))
    call = _ROUTER[0].begin("POST", path, "", {}, body)
    assert call is None or isinstance(call, holyroute.core.call.Call)


# ---- the answer's finish reason and JSON shape, read without a regular expression's search ------------------------

_FINISH_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            b'"finish_reason"',
            b":",
            b": ",
            b" : ",
            b'"',
            b'"stop"',
            b'"length"',
            b'"tool_calls"',
            b'"end_turn"',
            b'"weird_reason"',
            b'"st op"',
            b'"' + b"a" * 70 + b'"',
            b'"\xc3\xa9"',
            b"null",
            b"{",
            b"}",
            b"\\",
            b"x",
        ]
    ),
    max_size=12,
).map(b"".join)


@given(_FINISH_FRAGMENTS)
@example(b'{"finish_reason":"stop"}')
@example(b'{"finish_reason": "stop"}')
@example(b'{"finish_reason":"stopped"}')
@example(b'{"finish_reason":"stop')
@example(b'"finish_reason": "length", "finish_reason":"stop"')
@example(b'"finish_reason":"' + b"a" * 64 + b'"')
@example(b'"finish_reason":"' + b"a" * 65 + b'"')
@example(b'"finish_reason":"stop')
@example(b'"finish_reason": null, "finish_reason": "stop"')
def test_finish_reason_reads_what_the_pattern_finds(body: bytes) -> None:
    """The key found by ``bytes.find`` and the usual shape read directly give exactly what a search with the full
    pattern gives (the first ``"finish_reason": "<name>"``), for any arrangement of the pieces."""
    from holyroute.boundary.parse import _FINISH, finish_reason

    found = _FINISH.search(body)
    expected = found.group(1).decode("ascii") if found is not None else None
    assert finish_reason(body) == expected
    assert finish_reason(bytearray(body)) == finish_reason(memoryview(body)) == expected


@given(st.binary(max_size=8) | st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b" ", b"\n", b"x"])).map(b"".join))
def test_the_json_shape_check_agrees_with_stripping(body: bytes) -> None:
    """The check without a copy for a body with no surrounding whitespace says what the stripping check says."""
    from holyroute.core.attempts import _looks_like_json

    text = body.strip()
    assert _looks_like_json(body) == (bool(text) and text[:1] in b"{[" and text[-1:] in b"}]")
