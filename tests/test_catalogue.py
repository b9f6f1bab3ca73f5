"""Costs from the genai-prices catalogue: service tiers, cache reads and writes, reasoning, audio, prompt-size tiers,
price history, overrides and unknown models, on answers in OpenAI's documented wire format.

Every expected figure is worked out here from the provider's published rate (USD per one million tokens, named in a
comment), never read back from the catalogue.
"""

from __future__ import annotations

import datetime
import io
import json
import random
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from holyroute.boundary.parse import MAX_TOKENS, SSEScanner, usage_from_body, usage_from_mapping
from holyroute.cli import run_prices
from holyroute.config import load_config
from holyroute.config.catalogue import CatalogueCost, catalogue_cost, catalogue_model
from holyroute.core.call import Router
from holyroute.exceptions import ConfigError

from .conftest import Events, FakeClock, drive

OPENAI = "https://api.openai.com/v1"
SOURCE = f"catalogue@{version('genai-prices')}"
M = 1_000_000


def at(day: str) -> float:
    """Unix time of noon UTC on ``day`` (YYYY-MM-DD)."""
    return datetime.datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()


#: After OpenAI's flex and priority rates as the catalogue dates them (verified 2026-10-12).
NOW = at("2026-11-02")


def config(model: str, base_url: str = OPENAI, **endpoint: Any) -> dict[str, Any]:
    return {
        "endpoints": {"up": {"base_url": base_url, "api_key": "key-up", **endpoint}},
        "routes": {"r": {"targets": [{"model": model, "endpoints": ["up"]}]}},
        "retry": {"max_attempts": 1, "backoff_jitter_s": 0},
    }


def chat_answer(model: str, usage: dict[str, Any], service_tier: str | None = None) -> bytes:
    """A Chat Completions answer as OpenAI documents it: usage, then service_tier, after the choices."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_763_802_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    if service_tier is not None:
        body["service_tier"] = service_tier
    return json.dumps(body).encode()


def priced(
    cfg: dict[str, Any], body: bytes, *, when: float = NOW, path: str = "/v1/chat/completions", **extra: Any
) -> dict[str, Any]:
    """The request event of one call answered with ``body`` at Unix time ``when``."""
    events = Events()
    clock = FakeClock()
    router = Router(
        load_config(cfg), clock=clock, wall_clock=lambda: when, rng=random.Random(1), log=False, sinks=[events]
    )
    payload = {"model": "r", "messages": [{"role": "user", "content": "hi"}], **extra}
    call = router.begin("POST", path, "", {}, json.dumps(payload).encode())
    assert call is not None
    drive(call, [(200, {"content-type": "application/json"}, body)])
    (event,) = events.named("holyroute.request")
    return event


def streamed(cfg: dict[str, Any], stream: bytes, *, path: str, when: float = NOW, **extra: Any) -> dict[str, Any]:
    """The request event of one streamed call whose SSE body is ``stream``, read as the stream tap reads it."""
    events = Events()
    router = Router(
        load_config(cfg), clock=FakeClock(), wall_clock=lambda: when, rng=random.Random(1), log=False, sinks=[events]
    )
    payload = {"model": "r", "stream": True, **extra}
    call = router.begin("POST", path, "", {}, json.dumps(payload).encode())
    assert call is not None
    outcome = drive(call, [(200, {"content-type": "text/event-stream"}, b"")])
    assert getattr(outcome.final, "event_stream", False)
    scanner = SSEScanner()
    scanner.feed(stream)
    scanner.end()
    call.on_complete(scanner.usage, finish_reason=scanner.finish_reason)
    (event,) = events.named("holyroute.request")
    return event


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class TestServiceTier:
    USAGE: ClassVar[dict[str, Any]] = {
        "prompt_tokens": 10_000,
        "completion_tokens": 1_000,
        "total_tokens": 11_000,
        "prompt_tokens_details": {"cached_tokens": 2_000},
    }

    def test_flex_is_billed_at_the_flex_rates(self) -> None:
        """gpt-5, Flex: $0.625 input, $0.0625 cached input, $5 output per 1M (standard: $1.25 / $0.125 / $10)."""
        event = priced(config("gpt-5"), chat_answer("gpt-5-2025-08-07", self.USAGE, "flex"))
        assert event["cost_usd"] == pytest.approx((8_000 * 0.625 + 2_000 * 0.0625 + 1_000 * 5) / M)
        assert (event["service_tier"], event["price_tier"], event["price_source"]) == ("flex", "flex", SOURCE)

    def test_priority_is_billed_at_the_priority_rates(self) -> None:
        """gpt-5, Priority: $2.50 input, $0.25 cached input, $20 output per 1M."""
        event = priced(config("gpt-5"), chat_answer("gpt-5-2025-08-07", self.USAGE, "priority"))
        assert event["cost_usd"] == pytest.approx((8_000 * 2.5 + 2_000 * 0.25 + 1_000 * 20) / M)
        assert event["price_tier"] == "priority"

    def test_default_is_the_standard_rate(self) -> None:
        """gpt-5, Standard: $1.25 input, $0.125 cached input, $10 output per 1M; no tier applied."""
        event = priced(config("gpt-5"), chat_answer("gpt-5-2025-08-07", self.USAGE, "default"))
        assert event["cost_usd"] == pytest.approx((8_000 * 1.25 + 2_000 * 0.125 + 1_000 * 10) / M)
        assert (event["service_tier"], event.get("price_tier")) == ("default", None)

    def test_streamed_chat_reads_the_tier_from_the_usage_chunk(self) -> None:
        """The same flex figures when the usage arrives in the stream's last chunk."""
        chunk = {"object": "chat.completion.chunk", "model": "gpt-5-2025-08-07", "service_tier": "flex"}
        stream = sse(
            {**chunk, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}], "usage": None},
            {**chunk, "choices": [], "usage": self.USAGE},
        )
        event = streamed(config("gpt-5"), stream, path="/v1/chat/completions", messages=[])
        assert event["cost_usd"] == pytest.approx((8_000 * 0.625 + 2_000 * 0.0625 + 1_000 * 5) / M)
        assert event["price_tier"] == "flex"

    def test_streamed_responses_read_the_completed_response(self) -> None:
        """Responses API, priority: gpt-5 at $2.50 / $0.25 / $20 per 1M, from ``response.completed``."""
        usage = {
            "input_tokens": 10_000,
            "input_tokens_details": {"cached_tokens": 2_000},
            "output_tokens": 1_000,
            "output_tokens_details": {"reasoning_tokens": 400},
            "total_tokens": 11_000,
        }
        response = {"id": "resp_1", "model": "gpt-5-2025-08-07", "service_tier": "priority", "usage": usage}
        stream = sse(
            {"type": "response.created", "response": {**response, "usage": None, "service_tier": "auto"}},
            {"type": "response.completed", "response": response},
        )
        event = streamed(config("gpt-5"), stream, path="/v1/responses", input="hi")
        assert event["cost_usd"] == pytest.approx((8_000 * 2.5 + 2_000 * 0.25 + 1_000 * 20) / M)
        assert (event["reasoning_tokens"], event["price_tier"]) == (400, "priority")


class TestTokenParts:
    def test_cached_reads(self) -> None:
        """gpt-4.1: $2.00 input, $0.50 cached input, $8.00 output per 1M."""
        usage = {"prompt_tokens": 3_000, "completion_tokens": 200, "prompt_tokens_details": {"cached_tokens": 1_024}}
        event = priced(config("gpt-4.1"), chat_answer("gpt-4.1-2025-04-14", usage))
        assert event["cost_usd"] == pytest.approx((1_976 * 2 + 1_024 * 0.5 + 200 * 8) / M)
        assert event["cached_tokens"] == 1_024

    def test_cache_writes_in_prompt_tokens_details(self) -> None:
        """Claude Haiku 4.5 through an OpenAI-compatible reseller that says so: $1 input, $0.10 cache reads, $1.25
        cache writes (5-minute), $5 output per 1M (Anthropic's pricing page)."""
        usage = {
            "prompt_tokens": 10_000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 3_000, "cache_write_tokens": 4_000},
        }
        cfg = config("claude-haiku-4-5", "https://llm.reseller.example/v1", provider="anthropic")
        event = priced(cfg, chat_answer("claude-haiku-4-5-20251001", usage))
        assert event["cost_usd"] == pytest.approx((3_000 * 1 + 3_000 * 0.10 + 4_000 * 1.25 + 500 * 5) / M)
        assert event["cache_write_tokens"] == 4_000

    def test_cache_writes_in_anthropic_fields(self) -> None:
        """Anthropic's own names: ``input_tokens`` leaves out ``cache_read_input_tokens`` and
        ``cache_creation_input_tokens``; Claude Haiku 4.5 at $1 / $0.10 / $1.25 / $5 per 1M."""
        usage = usage_from_mapping(
            {
                "input_tokens": 3_000,
                "cache_read_input_tokens": 3_000,
                "cache_creation_input_tokens": 4_000,
                "output_tokens": 500,
            },
            model="claude-haiku-4-5-20251001",
        )
        assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens) == (10_000, 3_000, 4_000)
        found = catalogue_cost(
            usage, ("claude-haiku-4-5-20251001",), provider=None, base_url="https://api.anthropic.com/v1", when=NOW
        )
        assert found is not None
        assert found.cost_usd == pytest.approx((3_000 * 1 + 3_000 * 0.10 + 4_000 * 1.25 + 500 * 5) / M)

    def test_reasoning_tokens_are_output_once(self) -> None:
        """o3: $2 input, $8 output per 1M; reasoning tokens are part of the completion and billed as output, once."""
        usage = {
            "prompt_tokens": 1_000,
            "completion_tokens": 1_000,
            "completion_tokens_details": {"reasoning_tokens": 600},
        }
        event = priced(config("o3"), chat_answer("o3-2025-04-16", usage))
        assert event["cost_usd"] == pytest.approx((1_000 * 2 + 1_000 * 8) / M)
        assert event["reasoning_tokens"] == 600

    def test_audio_tokens(self) -> None:
        """gpt-audio: text $2.50 in / $10 out, audio $32 in / $64 out per 1M."""
        usage = {
            "prompt_tokens": 1_000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 400},
            "completion_tokens_details": {"audio_tokens": 300, "reasoning_tokens": 0},
        }
        event = priced(config("gpt-audio"), chat_answer("gpt-audio-2025-08-28", usage))
        assert event["cost_usd"] == pytest.approx((600 * 2.5 + 400 * 32 + 200 * 10 + 300 * 64) / M)
        assert event["audio_tokens"] == 700

    @pytest.mark.parametrize(
        ("prompt", "input_rate", "output_rate"),
        [(150_000, 1.25, 10.0), (250_000, 2.50, 15.0)],
        ids=["up-to-200k", "above-200k"],
    )
    def test_gemini_prompt_size_tier(self, prompt: int, input_rate: float, output_rate: float) -> None:
        """Gemini 2.5 Pro: $1.25 in / $10 out per 1M for prompts up to 200k tokens, $2.50 / $15 above, on every
        token of the call (Google's pricing page)."""
        cfg = config("gemini-2.5-pro", "https://generativelanguage.googleapis.com/v1beta/openai/")
        usage = {"prompt_tokens": prompt, "completion_tokens": 1_000, "total_tokens": prompt + 1_000}
        event = priced(cfg, chat_answer("gemini-2.5-pro", usage))
        assert event["cost_usd"] == pytest.approx((prompt * input_rate + 1_000 * output_rate) / M)
        assert event.get("price_tier") == (None if prompt <= 200_000 else "prompt>200000")

    def test_embeddings(self) -> None:
        """text-embedding-3-small: $0.02 per 1M input tokens."""
        body = json.dumps(
            {
                "object": "list",
                "data": [],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 9_000, "total_tokens": 9_000},
            }
        ).encode()
        event = priced(config("text-embedding-3-small"), body, path="/v1/embeddings", input="x")
        assert event["cost_usd"] == pytest.approx(9_000 * 0.02 / M)

    def test_legacy_completions(self) -> None:
        """gpt-3.5-turbo-instruct: $1.50 input, $2.00 output per 1M."""
        body = json.dumps(
            {
                "object": "text_completion",
                "model": "gpt-3.5-turbo-instruct",
                "choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2_000, "completion_tokens": 1_000, "total_tokens": 3_000},
            }
        ).encode()
        event = priced(config("gpt-3.5-turbo-instruct"), body, path="/v1/completions", prompt="x")
        assert event["cost_usd"] == pytest.approx((2_000 * 1.5 + 1_000 * 2) / M)


class TestHistory:
    def test_the_same_usage_at_two_times(self) -> None:
        """o3 cost $10 in / $40 out per 1M until OpenAI cut it to $2 / $8 on 2025-06-10."""
        usage = {"prompt_tokens": 10_000, "completion_tokens": 2_000}
        before = priced(config("o3"), chat_answer("o3", usage), when=at("2025-05-01"))
        after = priced(config("o3"), chat_answer("o3", usage), when=at("2025-07-01"))
        assert before["cost_usd"] == pytest.approx((10_000 * 10 + 2_000 * 40) / M)
        assert after["cost_usd"] == pytest.approx((10_000 * 2 + 2_000 * 8) / M)


class TestWhichPrice:
    USAGE: ClassVar[dict[str, Any]] = {"prompt_tokens": 1_000, "completion_tokens": 1_000}

    def test_configured_prices_win(self) -> None:
        """``prices:`` beats the catalogue and ignores the tier: $3 in, $9 out per 1M as configured."""
        cfg = {**config("gpt-4.1"), "prices": {"gpt-4.1": {"input": 3.0, "output": 9.0}}}
        event = priced(cfg, chat_answer("gpt-4.1-2025-04-14", self.USAGE, "flex"))
        assert event["cost_usd"] == pytest.approx((1_000 * 3 + 1_000 * 9) / M)
        assert (event["price_source"], event.get("price_tier")) == ("config", None)

    def test_endpoint_prices_win_over_configured(self) -> None:
        """An endpoint's ``prices:`` beats both: $1 in, $2 out per 1M."""
        cfg = config("gpt-4.1", prices={"gpt-4.1": {"input": 1.0, "output": 2.0}})
        cfg["prices"] = {"gpt-4.1": {"input": 3.0, "output": 9.0}}
        event = priced(cfg, chat_answer("gpt-4.1-2025-04-14", self.USAGE))
        assert event["cost_usd"] == pytest.approx((1_000 * 1 + 1_000 * 2) / M)
        assert event["price_source"] == "endpoint"

    def test_unknown_model_is_unpriced(self) -> None:
        """A local server's own model: no cost, never a guess."""
        event = priced(config("my-llama", "http://127.0.0.1:8000/v1"), chat_answer("my-llama", self.USAGE))
        assert (event.get("cost_usd"), event["priced"], event["price_source"]) == (None, False, "none")
        assert catalogue_model("my-llama", base_url="http://127.0.0.1:8000/v1") is None

    def test_the_answered_model_is_priced(self) -> None:
        """The upstream answered with gpt-4.1-mini ($0.40 in, $1.60 out per 1M) although gpt-4.1 was configured."""
        event = priced(config("gpt-4.1"), chat_answer("gpt-4.1-mini-2025-04-14", self.USAGE))
        assert event["cost_usd"] == pytest.approx((1_000 * 0.4 + 1_000 * 1.6) / M)

    def test_configured_provider_for_a_reseller(self) -> None:
        """A host the catalogue cannot place, told it serves OpenAI's prices: gpt-4.1 at $2 in, $8 out per 1M."""
        cfg = config("gpt-4.1", "https://llm.reseller.example/v1", provider="openai")
        event = priced(cfg, chat_answer("gpt-4.1", self.USAGE))
        assert event["cost_usd"] == pytest.approx((1_000 * 2 + 1_000 * 8) / M)

    def test_an_application_update_of_the_catalogue_is_ignored(self) -> None:
        """holyroute prices from the bundled data even when the application installs another snapshot (as
        ``genai_prices.UpdatePrices`` does with downloaded prices)."""
        from genai_prices import data_snapshot

        data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
        try:
            event = priced(config("gpt-4.1"), chat_answer("gpt-4.1", self.USAGE))
        finally:
            data_snapshot.set_custom_snapshot(None)
        assert event["cost_usd"] == pytest.approx((1_000 * 2 + 1_000 * 8) / M)


def test_import_does_not_load_the_catalogue() -> None:
    """``import holyroute`` leaves the catalogue unloaded; building a router loads it, off the calls' path."""
    code = (
        "import sys, holyroute\n"
        "print('genai_prices.data' in sys.modules)\n"
        "from holyroute.core.call import Router\n"
        "from holyroute.config import load_config\n"
        f"Router(load_config({config('gpt-4.1')!r}), log=False, sinks=[])\n"
        "print('genai_prices.data' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_body_names_are_read_from_the_answer() -> None:
    """The answer's model and service_tier are read with its usage (not compared as counts)."""
    found = usage_from_body(chat_answer("gpt-5-2025-08-07", {"prompt_tokens": 1, "completion_tokens": 1}, "flex"))
    assert found is not None
    assert (found.model, found.service_tier) == ("gpt-5-2025-08-07", "flex")


COUNTS = st.one_of(st.none(), st.integers(-5, 2 * MAX_TOKENS), st.floats(allow_nan=True), st.text(max_size=5))


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": COUNTS,
            "completion_tokens": COUNTS,
            "input_tokens": COUNTS,
            "cache_read_input_tokens": COUNTS,
            "cache_creation_input_tokens": COUNTS,
            "prompt_tokens_details": st.dictionaries(
                st.sampled_from(["cached_tokens", "cache_write_tokens", "audio_tokens", "image_tokens"]), COUNTS
            ),
            "completion_tokens_details": st.dictionaries(
                st.sampled_from(["reasoning_tokens", "audio_tokens", "image_tokens"]), COUNTS
            ),
        },
    ),
    st.one_of(st.none(), st.text(max_size=200), st.integers()),
)
def test_every_part_fits_its_whole(usage: dict[str, Any], name: Any) -> None:
    """Whatever the counts, each part is within its whole and every count within [0, MAX_TOKENS]; names that are
    not plain model names are dropped."""
    found = usage_from_mapping(usage, model=name, service_tier=name)
    assert 0 <= found.prompt_tokens <= MAX_TOKENS
    assert 0 <= found.completion_tokens <= MAX_TOKENS
    assert found.cached_tokens + found.cache_write_tokens <= found.prompt_tokens
    assert max(found.input_audio_tokens, found.input_image_tokens) <= found.prompt_tokens
    assert max(found.reasoning_tokens, found.output_audio_tokens, found.output_image_tokens) <= found.completion_tokens
    assert found.model is None or (isinstance(name, str) and found.model == name and len(name) <= 128)


class TestTimeOfDay:
    @pytest.mark.parametrize(
        ("hour", "rates"),
        [("12:00", (0.27, 0.07, 1.10)), ("20:00", (0.135, 0.035, 0.55))],
        ids=["standard", "off-peak"],
    )
    def test_deepseek_off_peak(self, hour: str, rates: tuple[float, float, float]) -> None:
        """deepseek-chat: $0.27 cache miss, $0.07 cache hit, $1.10 output per 1M from 00:30 to 16:30 UTC, half that
        off-peak (DeepSeek's pricing page); its cache hits come as ``prompt_cache_hit_tokens``."""
        usage = {"prompt_tokens": 10_000, "completion_tokens": 1_000, "prompt_cache_hit_tokens": 4_000}
        when = datetime.datetime.fromisoformat(f"2025-08-01T{hour}:00+00:00").timestamp()
        event = priced(
            config("deepseek-chat", "https://api.deepseek.com/v1"), chat_answer("deepseek-chat", usage), when=when
        )
        miss, hit, output = rates
        assert event["cost_usd"] == pytest.approx((6_000 * miss + 4_000 * hit + 1_000 * output) / M)


class TestCommand:
    def test_lists_catalogue_rates_and_unknown_models(self, tmp_path: Path) -> None:
        """``holyroute prices`` shows the catalogue's standard rates for a routed model (gpt-4.1: $2 / $0.50 / $8 per
        1M) with their source, and flags a model the catalogue does not know as unpriced."""
        cfg = config("gpt-4.1")
        cfg["endpoints"]["local"] = {"base_url": "http://127.0.0.1:8000/v1"}
        cfg["routes"]["local"] = {"targets": [{"model": "my-llama", "endpoints": ["local"]}]}
        path = tmp_path / "holyroute.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = io.StringIO()
        assert run_prices(path, out, io.StringIO()) == 0
        lines = out.getvalue().splitlines()
        (catalogue,) = [line for line in lines if f"{SOURCE} openai/gpt-4.1 on endpoint up" in line]
        assert catalogue.split()[:4] == ["gpt-4.1", "2", "0.5", "8"]
        (unpriced,) = [line for line in lines if line.startswith("my-llama")]
        assert f"UNPRICED on endpoint local (not in {SOURCE})" in unpriced
        rows = io.StringIO()
        assert run_prices(path, rows, io.StringIO(), as_json=True) == 0
        by_source = {row["source"]: row for row in json.loads(rows.getvalue())}
        assert (
            by_source[
                f"{SOURCE} openai/gpt-4.1 on endpoint up (variants processing=batch service_tier=default "
                "service_tier=fast service_tier=priority)"
            ]["cached_input"]
            == 0.5
        )


FAST_PATH_MODELS = [
    ("gpt-4.1", OPENAI),
    ("gpt-5", OPENAI),
    ("o3", OPENAI),
    ("gpt-audio", OPENAI),
    ("text-embedding-3-small", OPENAI),
    ("gemini-2.5-pro", "https://generativelanguage.googleapis.com/v1beta/openai/"),
    ("claude-haiku-4-5", "https://api.anthropic.com/v1"),
    ("deepseek-chat", "https://api.deepseek.com/v1"),
]
PART = st.integers(0, 300_000)


@given(
    st.sampled_from(FAST_PATH_MODELS),
    st.tuples(PART, PART, PART, PART, PART, PART),
    st.sampled_from([None, "default", "flex", "priority", "scale"]),
    st.sampled_from([at("2025-05-01"), NOW, NOW + 8 * 3600]),
)
def test_the_cached_fast_path_agrees_with_the_catalogue(
    target: tuple[str, str], counts: tuple[int, ...], tier: str | None, when: float
) -> None:
    """The hot path's flattened rates give the catalogue's own figure for every usage shape it takes on."""
    from holyroute.config.catalogue import _general_cost, _lookup

    model, base_url = target
    prompt, completion, cached, written, audio, reasoning = counts
    usage = usage_from_mapping(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written, "audio_tokens": audio},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
        service_tier=tier,
    )
    fast = catalogue_cost(usage, (model,), provider=None, base_url=base_url, when=when)
    found = _lookup(None, base_url, model)
    assert found is not None
    general = _general_cost(usage, found, tier, when)
    if general is None:  # the catalogue refuses overlapping parts it cannot split: so does holyroute
        assert fast is None
        return
    assert fast is not None
    assert fast.cost_usd == pytest.approx(general.cost_usd, rel=1e-9, abs=1e-10)
    assert fast.service_tier == general.service_tier


class TestConfiguration:
    def test_an_unknown_provider_is_refused_at_load(self) -> None:
        """``provider:`` must name a catalogue provider; the message names the key and the choices."""
        with pytest.raises(ConfigError) as caught:
            load_config(config("gpt-4.1", "https://llm.reseller.example/v1", provider="open-ai"))
        message = str(caught.value)
        assert "endpoints.up.provider" in message
        assert "'open-ai' is not a genai-prices provider" in message
        assert "openai" in message

    def test_each_model_is_looked_up_once(self) -> None:
        """Pricing the same model again reuses the flattened rates: one cached read, and no lookup of the model (the
        rates exist only for a model the catalogue knows)."""
        from holyroute.config.catalogue import _lookup, _rates

        usage = usage_from_mapping({"prompt_tokens": 10, "completion_tokens": 10}, model="gpt-4.1")
        catalogue_cost(usage, ("gpt-4.1",), provider="openai", base_url="https://x.example", when=NOW)
        lookups, rates = _lookup.cache_info(), _rates.cache_info().hits
        catalogue_cost(usage, ("gpt-4.1",), provider="openai", base_url="https://x.example", when=NOW)
        assert _lookup.cache_info() == lookups
        assert _rates.cache_info().hits == rates + 1

    def test_the_first_model_the_catalogue_knows_prices_the_call(self) -> None:
        """An answered model the catalogue does not know falls through to the configured one; none known: unpriced."""
        usage = usage_from_mapping({"prompt_tokens": 1_000_000, "completion_tokens": 0})
        found = catalogue_cost(usage, ("no-such-model-xyz", "gpt-4.1"), provider=None, base_url=OPENAI, when=NOW)
        assert found is not None
        assert found.cost_usd == pytest.approx(2.0)  # gpt-4.1: $2 per 1M input tokens
        assert catalogue_cost(usage, ("no-such-model-xyz",), provider=None, base_url=OPENAI, when=NOW) is None


@given(st.integers(0, 400), st.integers(0, 3))
def test_a_cost_is_rounded_exactly_to_ten_decimal_places(prompt: int, cached: int) -> None:
    """The fast path rounds as ``round(cost, 10)`` does, also where the exact cost ends in a 5 past the tenth place
    (a rate with five decimals: integer rounding of the float would land on the other side for some counts)."""
    from holyroute.config.catalogue import _fast_cost, _rates

    usage = usage_from_mapping(
        {"prompt_tokens": prompt + cached, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": cached}}
    )
    found = catalogue_cost(usage, ("xiaomi/mimo-v2.5-pro",), provider="avian", base_url="", when=NOW)
    rates = _rates("avian", "", "xiaomi/mimo-v2.5-pro", None, int(NOW // 60))
    assert found is not None
    assert rates is not None
    assert isinstance(rates.input, float)
    assert round(rates.input, 4) != rates.input  # a rate with five decimals: else this test could not fail
    exact = _fast_cost(usage, rates)
    assert exact is not None
    assert found.cost_usd == round(exact, 10)
    assert type(found) is CatalogueCost


def test_a_known_model_without_flattened_rates_takes_the_general_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first model the catalogue knows but whose rates need its own arithmetic is priced by that arithmetic, not
    passed over for the next model."""
    from holyroute.config import catalogue

    monkeypatch.setattr(catalogue, "_rates", lambda *args: None)
    usage = usage_from_mapping({"prompt_tokens": 1_000_000, "completion_tokens": 0})
    found = catalogue_cost(usage, ("gpt-4.1-mini", "gpt-4.1"), provider=None, base_url=OPENAI, when=NOW)
    assert found is not None
    assert found.cost_usd == pytest.approx(0.4)  # gpt-4.1-mini's $0.40 per 1M input tokens, not gpt-4.1's $2


def test_pricing_starts_no_updater_and_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A priced call reads the bundled data only: no socket is opened and genai-prices' updater thread never runs."""
    import socket
    import threading

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalogue tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    usage = usage_from_mapping({"prompt_tokens": 1_000, "completion_tokens": 1_000}, model="gpt-4.1-mini")
    found = catalogue_cost(usage, ("gpt-4.1-mini",), provider=None, base_url=OPENAI, when=NOW)
    assert found is not None
    assert found.cost_usd == pytest.approx((1_000 * 0.4 + 1_000 * 1.6) / M)  # gpt-4.1-mini: $0.40 in, $1.60 out
    assert not [t for t in threading.enumerate() if t.name.startswith("genai_prices")]


@pytest.mark.parametrize(
    ("model", "base_url", "provider", "expected"),
    [
        ("gpt-4.1", OPENAI, None, "openai/gpt-4.1"),
        (
            "gemini-2.5-flash",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            None,
            "google/gemini-2.5-flash",
        ),
        ("claude-sonnet-4-5", "https://api.anthropic.com/v1/", None, "anthropic/claude-sonnet-4-5"),
        ("deepseek-chat", "https://api.deepseek.com", None, "deepseek/deepseek-chat"),
        ("openai/gpt-4.1", "https://openrouter.ai/api/v1", None, "openrouter/openai/gpt-4.1"),
        ("claude-sonnet-4-5", "http://127.0.0.1:4000/v1", None, "anthropic/claude-sonnet-4-5"),  # by its name
        ("text-embedding-3-small", "http://127.0.0.1:4000/v1", None, "openai/text-embedding-3-small"),  # OpenAI's
        ("gpt-4.1", "https://llm.reseller.example/v1", "anthropic", None),  # the configured provider only
        ("llama3.1:8b", "http://localhost:11434/v1", None, None),
    ],
)
def test_which_provider_prices_a_host(model: str, base_url: str, provider: str | None, expected: str | None) -> None:
    """The configured provider, else the one the URL names, else the model's name, then OpenAI; else unpriced."""
    assert catalogue_model(model, provider=provider, base_url=base_url) == expected


class TestCostCeiling:
    """A call's worst case under a cost ceiling is bounded at the catalogue's highest rates for the request."""

    def send(self, cfg: dict[str, Any], ceiling: str, **body: Any) -> Any:
        router = Router(
            load_config(cfg), clock=FakeClock(), wall_clock=lambda: NOW, rng=random.Random(1), log=False, sinks=[]
        )
        payload = {"model": "r", "messages": [{"role": "user", "content": "hi"}], **body}
        call = router.begin(
            "POST", "/v1/chat/completions", "", {"x-holyroute-max-cost": ceiling}, json.dumps(payload).encode()
        )
        assert call is not None
        return drive(call, [(200, {"content-type": "application/json"}, chat_answer("x", {"prompt_tokens": 1}))])

    def test_prompt_size_tiers_bound_at_the_highest_tier(self) -> None:
        """Gemini 2.5 Pro bills output at $15 per 1M above 200k prompt tokens: 1,000 output tokens may cost
        $0.015, over a $0.012 ceiling (the base $10 rate would have said $0.010)."""
        cfg = config("gemini-2.5-pro", "https://generativelanguage.googleapis.com/v1beta/openai/")
        outcome = self.send(cfg, "0.012", max_tokens=1_000)
        assert outcome.sent == []
        assert "over the $0.012 ceiling" in json.loads(outcome.final.body)["error"]["message"]
        assert len(self.send(cfg, "0.016", max_tokens=1_000).sent) == 1

    def test_the_requested_service_tier_bounds_the_call(self) -> None:
        """gpt-5 output: $10 per 1M standard, $20 priority; 1,000 tokens under a $0.015 ceiling."""
        assert len(self.send(config("gpt-5"), "0.015", max_tokens=1_000).sent) == 1
        assert self.send(config("gpt-5"), "0.015", max_tokens=1_000, service_tier="priority").sent == []

    def test_a_model_only_the_catalogue_prices_is_bounded(self) -> None:
        """gpt-audio ($2.50 in, $10 out per 1M) is not in the built-in table but can be bounded: 1,000 output
        tokens at most about $0.010."""
        assert len(self.send(config("gpt-audio"), "0.02", max_tokens=1_000).sent) == 1
        assert self.send(config("gpt-audio"), "0.005", max_tokens=1_000).sent == []
