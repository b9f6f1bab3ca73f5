"""Usage is read from every API's shape, streamed or not, and priced once."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from holyroute.config.prices import BUILTIN_PRICES, PriceRow, normalise_model_name
from holyroute.core.usage import SSEScanner, Usage, cost_usd, find_price, usage_from_body, usage_from_mapping

CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
}
RESPONSES_USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 1500,
}
EXPECTED = Usage(prompt_tokens=1200, completion_tokens=300, cached_tokens=1024, reasoning_tokens=128)


class TestShapes:
    """Every API's usage becomes the same four numbers."""

    def test_chat(self) -> None:
        assert usage_from_mapping(CHAT_USAGE) == EXPECTED

    def test_responses(self) -> None:
        assert usage_from_mapping(RESPONSES_USAGE) == EXPECTED

    def test_embeddings(self) -> None:
        assert usage_from_mapping({"prompt_tokens": 8, "total_tokens": 8}) == Usage(8, 0, 0, 0)

    def test_deepseek_cache_fields(self) -> None:
        usage = {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64}
        assert usage_from_mapping(usage).cached_tokens == 64

    def test_nonsense_is_zero(self) -> None:
        assert usage_from_mapping({"prompt_tokens": "many", "completion_tokens": -1}) == Usage()


class TestJsonBody:
    """Usage from a whole JSON answer, without parsing it twice."""

    def test_chat_completion(self) -> None:
        body = json.dumps(
            {"id": "c", "choices": [{"message": {"content": 'say "usage": {"x": 1}'}}], "usage": CHAT_USAGE}
        ).encode()
        assert usage_from_body(body) == EXPECTED

    def test_usage_not_last(self) -> None:
        """Providers that put fields after usage, or a null usage, still work."""
        body = json.dumps({"usage": RESPONSES_USAGE, "metadata": {}, "user": None}).encode()
        assert usage_from_body(body) == EXPECTED
        assert usage_from_body(b'{"usage": null}') is None

    def test_compressed(self) -> None:
        body = json.dumps({"usage": CHAT_USAGE}).encode()
        assert usage_from_body(gzip.compress(body), "gzip") == EXPECTED
        assert usage_from_body(zlib.compress(body), "deflate") == EXPECTED
        assert usage_from_body(body, "br") is None

    def test_not_json(self) -> None:
        assert usage_from_body(b"<html>") is None


def chunk(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


DELTA = chunk({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}], "usage": None})
FINISH = chunk({"object": "chat.completion.chunk", "choices": [{"delta": {}, "finish_reason": "stop"}], "usage": None})
USAGE_ONLY = chunk({"object": "chat.completion.chunk", "choices": [], "usage": CHAT_USAGE})
DONE = b"data: [DONE]\n\n"


class TestSSEScanner:
    """The scanner reads usage and the stream's end from events as they pass."""

    def test_pass_through_untouched(self) -> None:
        """Without hiding, every chunk is handed on as the same bytes, immediately."""
        scanner = SSEScanner()
        stream = [DELTA, FINISH, USAGE_ONLY, DONE]
        assert [scanner.feed(part) for part in stream] == stream
        assert scanner.usage == EXPECTED
        assert scanner.complete

    def test_hides_injected_usage_chunk(self) -> None:
        """With hiding, the usage-only chunk is left out and everything else arrives in order."""
        scanner = SSEScanner(hide_usage_chunk=True)
        out = b"".join(scanner.feed(part) for part in [DELTA, FINISH, USAGE_ONLY, DONE]) + scanner.end()
        assert out == DELTA + FINISH + DONE
        assert scanner.usage == EXPECTED

    def test_events_split_anywhere(self) -> None:
        """Events cut at arbitrary byte boundaries are reassembled; nothing is lost or duplicated."""
        whole = DELTA + FINISH + USAGE_ONLY + DONE
        for size in (1, 3, 7, 50):
            scanner = SSEScanner(hide_usage_chunk=True)
            parts = [whole[i : i + size] for i in range(0, len(whole), size)]
            out = b"".join(scanner.feed(part) for part in parts) + scanner.end()
            assert out == DELTA + FINISH + DONE
            assert scanner.usage == EXPECTED

    def test_crlf_framing(self) -> None:
        scanner = SSEScanner()
        scanner.feed(USAGE_ONLY.replace(b"\n\n", b"\r\n\r\n") + b"data: [DONE]\r\n\r\n")
        assert scanner.usage == EXPECTED
        assert scanner.done

    def test_responses_stream(self) -> None:
        """Responses streams end with response.completed, which carries usage."""
        scanner = SSEScanner()
        scanner.feed(b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n')
        assert not scanner.complete
        completed = {"type": "response.completed", "response": {"status": "completed", "usage": RESPONSES_USAGE}}
        scanner.feed(b"event: response.completed\n" + chunk(completed))
        assert scanner.done
        assert scanner.usage == EXPECTED

    def test_failed_response_is_an_error(self) -> None:
        scanner = SSEScanner()
        failed = {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}}
        scanner.feed(chunk(failed))
        assert scanner.done
        assert scanner.error == "server_error"

    def test_error_event_in_chat_stream(self) -> None:
        scanner = SSEScanner()
        scanner.feed(DELTA + chunk({"error": {"message": "overloaded", "type": "server_error"}}))
        assert scanner.error == "server_error"
        assert not scanner.complete

    def test_torn_stream_is_incomplete(self) -> None:
        """A stream that stops mid-answer is not complete, even though bytes arrived."""
        scanner = SSEScanner()
        scanner.feed(DELTA + DELTA[:10])
        scanner.end()
        assert not scanner.complete
        assert scanner.events == 1

    def test_finish_without_done_is_complete(self) -> None:
        """Providers that omit [DONE] but finish the choice are complete."""
        scanner = SSEScanner()
        scanner.feed(DELTA + FINISH)
        assert scanner.complete


class TestPrices:
    """Prices: configured first, then built in, dated snapshots resolved to their base model."""

    def test_cached_priced_once(self) -> None:
        """1200 prompt tokens with 1024 cached: 176 at the input rate, 1024 at the cached rate."""
        price = PriceRow(input=2.0, cached_input=0.5, output=8.0)
        expected = (176 * 2.0 + 1024 * 0.5 + 300 * 8.0) / 1_000_000
        assert cost_usd(EXPECTED, price) == pytest.approx(expected)

    def test_snapshot_and_prefix(self) -> None:
        assert find_price("gpt-4.1-2025-04-14", {}) == BUILTIN_PRICES["gpt-4.1"]
        assert find_price("openai/gpt-4.1-mini", {}) == BUILTIN_PRICES["gpt-4.1-mini"]
        assert find_price("claude-sonnet-4-5-20250929", {}) == BUILTIN_PRICES["claude-sonnet-4-5"]
        assert normalise_model_name("m") == ("m",)

    def test_override_and_unknown(self) -> None:
        mine = PriceRow(1.0, 1.0, 1.0)
        assert find_price("gpt-4.1", {"gpt-4.1": mine}) is mine
        assert find_price("my-finetune", {}) is None
