"""Event streams an upstream compresses although holyroute asked for ``accept-encoding: identity``.

Before, the usage scanner read the compressed bytes, found no final event and raised "ended without its final
event" in the caller: a good answer failed because of the router. Now the stream is decoded chunk by chunk (gzip,
deflate zlib-wrapped or raw, any letter case, stacked), the caller gets the events decoded, and the call is costed.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from holyroute.boundary.parse import StreamDecoder

from .test_boundary import Wire, chat, mode  # noqa: F401  (mode is a fixture)

EVENTS = (
    b'data: {"choices": [{"delta": {"content": "hel"}, "finish_reason": null}]}\n\n'
    b'data: {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)


def deflate(data: bytes, *, raw: bool) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def encode(data: bytes, header: str) -> bytes:
    for coding in (c.strip().lower() for c in header.split(",")):
        if coding in ("gzip", "x-gzip"):
            data = gzip.compress(data)
        elif coding == "deflate":
            data = deflate(data, raw=False)
        elif coding == "deflate-raw":
            data = deflate(data, raw=True)
    return data


class Pieces(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A body that arrives in the given pieces, sync or async."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(("header", "wire_coding"), [("gzip", "gzip"), ("GZIP", "gzip"), ("deflate", "deflate")])
def test_compressed_stream_is_decoded_and_costed(mode: str, header: str, wire_coding: str) -> None:  # noqa: F811
    body = encode(EVENTS, wire_coding)

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": header}
        return httpx2.Response(200, headers=headers, stream=Pieces(split(body, 7)))

    wire = Wire(mode, handler)
    response = wire.send(chat(stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.content == EVENTS
    (event,) = wire.events.named("holyroute.request")
    assert (event["outcome"], event["prompt_tokens"], event["completion_tokens"]) == ("ok", 7, 2)
    assert event["finish_reason"] == "stop"


def test_raw_deflate_stream(mode: str) -> None:  # noqa: F811
    """Some servers send deflate without the zlib wrapper; httpx2 accepts both, so does holyroute."""
    body = deflate(EVENTS, raw=True)

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "Deflate"}
        return httpx2.Response(200, headers=headers, stream=Pieces(split(body, 1)))

    wire = Wire(mode, handler)
    assert wire.send(chat(stream=True)).status_code == 200
    (event,) = wire.events.named("holyroute.request")
    assert (event["outcome"], event["prompt_tokens"]) == ("ok", 7)


def test_corrupt_compressed_stream_is_a_broken_stream(mode: str) -> None:  # noqa: F811
    """Corrupt data is the upstream's broken stream: the caller gets httpx2's DecodingError, the event says error."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx2.Response(200, headers=headers, stream=Pieces([b"\x1f\x8b\x08\x00", b"not gzip at all"]))

    wire = Wire(mode, handler)
    with pytest.raises(httpx2.DecodingError):
        wire.send(chat(stream=True))
    (event,) = wire.events.named("holyroute.request")
    assert event["outcome"] == "error"
    assert "DecodingError" in event["error"]


class TestStreamDecoder:
    @given(st.binary(max_size=4000), st.sampled_from(["gzip", "deflate", "deflate-raw", "gzip, deflate"]), st.data())
    def test_any_split_decodes_to_the_original(self, data: bytes, coding: str, draw: st.DataObject) -> None:
        body = encode(data, coding)
        cuts = sorted(draw.draw(st.lists(st.integers(0, len(body)), max_size=8)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        decoder = StreamDecoder.build(coding.replace("deflate-raw", "deflate"))
        assert decoder is not None
        assert b"".join(decoder.decode(piece) for piece in pieces) + decoder.flush() == data

    @given(st.binary(max_size=400), st.sampled_from(["gzip", "deflate", "x-gzip, deflate"]))
    def test_garbage_raises_value_error_or_decodes(self, data: bytes, coding: str) -> None:
        decoder = StreamDecoder.build(coding)
        assert decoder is not None
        try:
            decoder.decode(data)
            decoder.flush()
        except ValueError:
            pass

    @pytest.mark.parametrize("header", [None, "", "identity", "br", "compress", "gzip, zstd"])
    def test_nothing_to_undo_incrementally(self, header: str | None) -> None:
        assert StreamDecoder.build(header) is None


def test_json_body_unchanged_by_the_stream_path(mode: str) -> None:  # noqa: F811
    """A compressed non-stream answer is still decoded whole (the stream decoder is only for event streams)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        payload = json.dumps({"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
        headers = {"content-type": "application/json", "content-encoding": "GZIP"}
        return httpx2.Response(200, headers=headers, stream=Pieces(split(gzip.compress(payload), 5)))

    wire = Wire(mode, handler)
    assert wire.send(chat()).json()["usage"]["prompt_tokens"] == 3
