"""Record the cassettes in this folder with vcrpy, through holyroute, with every credential scrubbed.

Two sources, the same recording code:

* default (``python cassettes/record.py``): a scripted stand-in for api.openai.com answers each request with the
  wire format OpenAI documents and returns (its headers, SSE framing, usage blocks with ``*_tokens_details``). This is
  how the committed cassettes were produced: the machines this project is built on cannot reach api.openai.com.
* live (``python cassettes/record.py --live https://api.openai.com/v1`` with ``OPENAI_API_KEY`` set): the same calls
  against a real OpenAI-compatible provider; ``--live`` with a local ``holyroute.testing`` upstream exercises the path.

Requests are recorded as holyroute sends them upstream (endpoint URL, rewritten model, injected stream usage), which
is what the replay tests match on. ``authorization``, ``api-key``, organisation/project ids and cookies are removed
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import vcr

import holyroute

HERE = Path(__file__).parent
PRIMARY = "https://api.openai.com/v1"
BACKUP = "https://backup.example.com/v1"
SCRUBBED_REQUEST_HEADERS = ["authorization", "api-key", "openai-organization", "openai-project", "cookie"]
SCRUBBED_RESPONSE_HEADERS = ("set-cookie", "openai-organization", "openai-project", "cf-ray")


def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    for name in list(response["headers"]):
        if name.lower() in SCRUBBED_RESPONSE_HEADERS:
            del response["headers"][name]
    return response


def recorder() -> vcr.VCR:
    return vcr.VCR(
        cassette_library_dir=str(HERE),
        record_mode="all",
        filter_headers=SCRUBBED_REQUEST_HEADERS,
        before_record_response=_scrub_response,
        decode_compressed_response=True,
    )


# ---- the scripted stand-in: OpenAI's documented wire format -------------------------------------------------------

OPENAI_HEADERS = {
    "openai-version": "2020-10-01",
    "openai-processing-ms": "412",
    "x-envoy-upstream-service-time": "415",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29998764",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "x-content-type-options": "nosniff",
    "cf-cache-status": "DYNAMIC",
    "server": "cloudflare",
    "alt-svc": 'h3=":443"; ma=86400',
}

CHAT_USAGE = {
    "prompt_tokens": 1187,
    "completion_tokens": 46,
    "total_tokens": 1233,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
ANSWER = "Paris is the capital of France; it sits on the Seine and has been the seat of government since 987."


def _json(status: int, body: Any, request_id: str, **extra: str) -> httpx2.Response:
    headers = {"content-type": "application/json", **OPENAI_HEADERS, "x-request-id": request_id, **extra}
    return httpx2.Response(status, headers=headers, stream=httpx2.ByteStream(json.dumps(body, indent=2).encode()))


def _sse(events: list[bytes], request_id: str) -> httpx2.Response:
    headers = {"content-type": "text/event-stream; charset=utf-8", **OPENAI_HEADERS, "x-request-id": request_id}
    return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(b"".join(events)))


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat_completion(model: str) -> httpx2.Response:
    return _json(
        200,
        {
            "id": "chatcmpl-CkZ2v3mR8Qw1YpLx0aT7bN4eHs9Ud",
            "object": "chat.completion",
            "created": 1763802000,
            "model": f"{model}-2025-04-14",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": CHAT_USAGE,
            "service_tier": "default",
            "system_fingerprint": "fp_799e4ca3f1",
        },
        "req_8f2c7d1e4b6a49f0a3c5e7d9b1f3a5c7",
    )


def chat_stream(model: str) -> httpx2.Response:
    base = {"id": "chatcmpl-CkZ31kGm7XbN2rTq5vYw8zLp0QsAe", "object": "chat.completion.chunk", "created": 1763802003}
    base |= {"model": f"{model}-2025-04-14", "service_tier": "default", "system_fingerprint": "fp_799e4ca3f1"}
    words = ANSWER.split(" ")
    events = [
        _data(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": "", "refusal": None},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
                "usage": None,
                "obfuscation": "q7Zk",
            }
        )
    ]
    for i, word in enumerate(words):
        piece = word if i == 0 else f" {word}"
        events.append(
            _data(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}],
                    "usage": None,
                    "obfuscation": "x" * (i % 5 + 1),
                }
            )
        )
    events.append(
        _data(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                "usage": None,
                "obfuscation": "Jk",
            }
        )
    )
    events.append(_data({**base, "choices": [], "usage": CHAT_USAGE, "obfuscation": "b2E"}))
    events.append(b"data: [DONE]\n\n")
    return _sse(events, "req_3a9d5f7b1c2e4a6d8f0b2c4e6a8d0f1b")


def responses_stream(model: str) -> httpx2.Response:
    usage = {
        "input_tokens": 2048,
        "input_tokens_details": {"cached_tokens": 1920},
        "output_tokens": 312,
        "output_tokens_details": {"reasoning_tokens": 256},
        "total_tokens": 2360,
    }
    response = {
        "id": "resp_68f1c2a9d4e08190b3a5c7e9f1d3b5a70c2e4f6a8b0d1c3e",
        "object": "response",
        "created_at": 1763802010,
        "status": "in_progress",
        "model": f"{model}-2025-04-14",
        "output": [],
        "usage": None,
    }
    text = "Three primes: 2, 3, 5."
    item = {
        "id": "msg_68f1c2ab1e6c8190a2c4e6f8b0d2f4a6",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    events: list[bytes] = []
    seq = 0

    def event(kind: str, **payload: Any) -> None:
        nonlocal seq
        events.append(f"event: {kind}\n".encode() + _data({"type": kind, "sequence_number": seq, **payload}))
        seq += 1

    event("response.created", response=response)
    event("response.in_progress", response=response)
    event("response.output_item.added", output_index=0, item=item)
    event(
        "response.content_part.added",
        item_id=item["id"],
        output_index=0,
        content_index=0,
        part={"type": "output_text", "annotations": [], "text": ""},
    )
    for piece in ("Three primes", ": 2, 3", ", 5."):
        event(
            "response.output_text.delta", item_id=item["id"], output_index=0, content_index=0, delta=piece, logprobs=[]
        )
    part = {"type": "output_text", "annotations": [], "text": text}
    event("response.output_text.done", item_id=item["id"], output_index=0, content_index=0, text=text, logprobs=[])
    event("response.content_part.done", item_id=item["id"], output_index=0, content_index=0, part=part)
    done_item = {**item, "status": "completed", "content": [part]}
    event("response.output_item.done", output_index=0, item=done_item)
    event("response.completed", response={**response, "status": "completed", "output": [done_item], "usage": usage})
    return _sse(events, "req_5c1e3a7f9b2d4e6a8c0f2b4d6e8a0c2f")


def rate_limited() -> httpx2.Response:
    body = {
        "error": {
            "message": "Rate limit reached for gpt-4.1 in organization org-REDACTED on tokens per min (TPM): "
            "Limit 30000, Used 29512, Requested 1233. Please try again in 1.49s.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    extra = {
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-reset-tokens": "1.49s",
    }
    return _json(429, body, "req_0d2f4b6a8c1e3a5c7e9b1d3f5a7c9e1b", **extra)


def embeddings(model: str) -> httpx2.Response:
    import base64
    import struct

    vector = base64.b64encode(struct.pack("<8f", 0.125, -0.25, 0.5, 0.0625, -0.5, 0.25, 0.375, -0.125)).decode()
    return _json(
        200,
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": model,
            "usage": {"prompt_tokens": 9, "total_tokens": 9},
        },
        "req_7e9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e",
    )


def stand_in(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    path = request.url.path
    model = body["model"]
    if path.endswith("/embeddings"):
        return embeddings(model)
    if path.endswith("/responses"):
        return responses_stream(model)
    if body.get("messages", [{}])[-1].get("content") == "rate limit me":
        return rate_limited() if request.url.host == "api.openai.com" else chat_completion(model)
    return chat_stream(model) if body.get("stream") else chat_completion(model)


# ---- the calls ------------------------------------------------------------------------------------------------------


def config(primary: str, backup: str, key: str) -> dict[str, Any]:
    return {
        "endpoints": {
            "openai": {"base_url": primary, "api_key": key},
            "backup": {"base_url": backup, "api_key": key},
        },
        "routes": {
            "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["openai", "backup"]}]},
            "embed": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["openai"]}]},
        },
    }


CALLS: dict[str, Callable[[openai.OpenAI], Any]] = {
    "chat_completion": lambda sdk: sdk.chat.completions.create(
        model="chat-default", messages=[{"role": "user", "content": "What is the capital of France?"}]
    ),
    "chat_stream": lambda sdk: list(
        sdk.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "What is the capital of France?"}], stream=True
        )
    ),
    "responses_stream": lambda sdk: list(
        sdk.responses.create(model="chat-default", input="Name three primes.", stream=True)
    ),
    "rate_limited_failover": lambda sdk: sdk.chat.completions.create(
        model="chat-default", messages=[{"role": "user", "content": "rate limit me"}]
    ),
    "embeddings": lambda sdk: sdk.embeddings.create(model="embed", input="The food was delicious."),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--live", metavar="BASE_URL", help="record from this OpenAI-compatible provider instead")
    parser.add_argument("--backup", metavar="BASE_URL", help="with --live: the second endpoint (default: the same)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the cassettes")
    parser.add_argument("--only", nargs="*", choices=sorted(CALLS), help="record only these")
    args = parser.parse_args(argv)
    if args.live:
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            parser.error("--live needs OPENAI_API_KEY in the environment (it is scrubbed from the cassettes)")
        cfg = config(args.live, args.backup or args.live, key)
        inner: httpx2.BaseTransport = httpx2.HTTPTransport()
    else:
        cfg = config(PRIMARY, BACKUP, "sk-recording-placeholder")
        inner = httpx2.MockTransport(stand_in)
    rec = recorder()
    rec.cassette_library_dir = str(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(CALLS):
        path = args.out / f"{name}.yaml"
        path.unlink(missing_ok=True)
        transport = holyroute.Transport(cfg, transport=inner, sinks=[])
        with (
            rec.use_cassette(path.name),
            openai.OpenAI(
                api_key="sk-caller-placeholder", max_retries=0, http_client=httpx2.Client(transport=transport)
            ) as sdk,
        ):
            CALLS[name](sdk)
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
