"""Realistic wire traffic replayed from vcrpy cassettes: OpenAI's headers, SSE framing and usage blocks.

Replay only (``record_mode="none"``): a request the cassette does not hold fails the test instead of reaching the
network. See ``cassettes/README.md`` for how each cassette was produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import vcr
from structlog.testing import capture_logs

import holyroute

CASSETTES = Path(__file__).parent.parent / "cassettes"
CONFIG = {
    "endpoints": {
        "openai": {"base_url": "https://api.openai.com/v1", "api_key": "sk-test-openai"},
        "backup": {"base_url": "https://backup.example.com/v1", "api_key": "sk-test-backup"},
    },
    "routes": {
        "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["openai", "backup"]}]},
        "embed": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["openai"]}]},
    },
}
replay = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="none",
    match_on=["method", "scheme", "host", "port", "path", "body"],
)


def requests(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "holyroute.request"]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Runs an SDK call on the sync or the async client; the same assertions hold for both."""
    if request.param == "sync":
        sdk = openai.OpenAI(api_key="sk-caller", max_retries=0, http_client=holyroute.client(CONFIG))
        yield lambda fn: fn(sdk)
        sdk.close()
        return
    runner = asyncio.Runner()
    asdk = openai.AsyncOpenAI(api_key="sk-caller", max_retries=0, http_client=holyroute.async_client(CONFIG))

    def run(fn: Any) -> Any:
        async def go() -> Any:
            result = await fn(asdk)
            if hasattr(result, "__aiter__"):
                return [item async for item in result]
            return result

        return runner.run(go())

    yield run
    runner.run(asdk.close())
    runner.close()


class TestChat:
    def test_completion_usage_and_cost(self, call: Any) -> None:
        """Cached prompt tokens from prompt_tokens_details are priced at the cached rate (gpt-4.1: $2/$0.50/$8)."""
        with replay.use_cassette("chat_completion.yaml"), capture_logs() as logs:
            answer = call(
                lambda sdk: sdk.chat.completions.create(
                    model="chat-default", messages=[{"role": "user", "content": "What is the capital of France?"}]
                )
            )
        assert answer.choices[0].message.content.startswith("Paris")
        (event,) = requests(logs)
        assert (event["prompt_tokens"], event["cached_tokens"], event["completion_tokens"]) == (1187, 1024, 46)
        assert event["cost_usd"] == pytest.approx((163 * 2.00 + 1024 * 0.50 + 46 * 8.00) / 1e6)
        assert event["request_id"] == "req_8f2c7d1e4b6a49f0a3c5e7d9b1f3a5c7"
        assert event["endpoint"] == "openai"

    def test_stream_usage_hidden_and_costed(self, call: Any) -> None:
        """OpenAI's SSE framing: the injected usage chunk is read for cost and hidden from the caller."""
        with replay.use_cassette("chat_stream.yaml"), capture_logs() as logs:
            chunks = call(
                lambda sdk: sdk.chat.completions.create(
                    model="chat-default",
                    messages=[{"role": "user", "content": "What is the capital of France?"}],
                    stream=True,
                )
            )
            if not isinstance(chunks, list):
                chunks = list(chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.startswith("Paris is the capital of France")
        assert all(c.choices for c in chunks), "the usage-only chunk is not shown to a caller who did not ask"
        (event,) = requests(logs)
        assert (event["stream"], event["outcome"], event["prompt_tokens"], event["cached_tokens"]) == (
            True,
            "ok",
            1187,
            1024,
        )

    def test_rate_limit_headers_drive_failover(self, call: Any) -> None:
        """A real-format 429 (tokens exhausted, reset 1.49s) cools api.openai.com and the backup answers."""
        with replay.use_cassette("rate_limited_failover.yaml"), capture_logs() as logs:
            answer = call(
                lambda sdk: sdk.chat.completions.create(
                    model="chat-default", messages=[{"role": "user", "content": "rate limit me"}]
                )
            )
        assert answer.model.startswith("gpt-4.1")
        cooldown = next(e for e in logs if e["event"] == "holyroute.cooldown")
        assert cooldown["cooldown_s"] == pytest.approx(1.49)
        assert cooldown["reason"] == "429 x-ratelimit-reset-tokens 1.49s"
        (event,) = requests(logs)
        assert (event["endpoint"], event["attempts"]) == ("backup", 2)


class TestOtherApis:
    def test_responses_stream(self, call: Any) -> None:
        """Responses usage arrives in response.completed; reasoning and cached tokens are normalised."""
        with replay.use_cassette("responses_stream.yaml"), capture_logs() as logs:
            events = call(
                lambda sdk: sdk.responses.create(model="chat-default", input="Name three primes.", stream=True)
            )
            if not isinstance(events, list):
                events = list(events)
        assert events[-1].type == "response.completed"
        (event,) = requests(logs)
        assert (event["api"], event["prompt_tokens"], event["cached_tokens"]) == ("responses", 2048, 1920)
        assert (event["completion_tokens"], event["reasoning_tokens"]) == (312, 256)

    def test_embeddings_base64(self, call: Any) -> None:
        with replay.use_cassette("embeddings.yaml"), capture_logs() as logs:
            result = call(lambda sdk: sdk.embeddings.create(model="embed", input="The food was delicious."))
        assert result.data[0].embedding[:2] == [0.125, -0.25]
        (event,) = requests(logs)
        assert event["cost_usd"] == pytest.approx(9 * 0.02 / 1e6)


def test_cassettes_hold_no_credentials() -> None:
    """No cassette carries an Authorization header, a key, or an organisation id."""
    for path in CASSETTES.glob("*.yaml"):
        text = path.read_text().lower()
        for needle in ("authorization", "bearer", "sk-", "api-key:", "openai-organization", "set-cookie"):
            assert needle not in text, f"{path.name} contains {needle!r}"
