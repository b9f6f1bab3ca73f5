"""What holyroute adds to a stream: time to the first chunk, and memory over a long stream.

Time to first chunk: the official SDK streams a chat completion from an in-memory upstream (an ``httpx2.MockTransport``
whose body is a generator of server-sent events, so nothing is read ahead), raw vs. through holyroute's transport,
calls alternated (the order flips every pair). Each sample is the time from ``create(stream=True)`` to the first
chunk the SDK yields; the report is the median (and p99) of the paired differences. The rest of each stream is read
and closed outside the timing, so every call also emits its ``holyroute.request`` event, rendered as a JSON line to
``/dev/null``.

Memory: ``tracemalloc``'s peak while one stream of ``--chunks`` events is read through holyroute, against the same
for a stream ten times shorter: a stream's memory must not grow with its length.

    python benchmarks/bench_stream.py                 # 2000 pairs, 20000-chunk stream for memory
    python benchmarks/bench_stream.py --pairs 500 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import structlog
from _common import percentile  # benchmarks/_common.py

import holyroute

BASE_URL = "http://127.0.0.1:9/v1"
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]


def _chunk(content: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}
    body["choices"] = choices
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _events(chunks: int) -> Iterator[bytes]:
    piece = _chunk("word ")
    for _ in range(chunks):
        yield piece
    yield _chunk(None, "stop")
    yield _chunk(None, usage={"prompt_tokens": 19, "completion_tokens": chunks, "total_tokens": 19 + chunks})
    yield b"data: [DONE]\n\n"


class _Events(httpx2.SyncByteStream):
    def __init__(self, chunks: int) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return _events(self._chunks)


def _upstream(chunks: int) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=_Events(chunks))

    return handler


def _clients(chunks: int) -> tuple[openai.OpenAI, openai.OpenAI]:
    mock = httpx2.MockTransport(_upstream(chunks))
    config = {
        "endpoints": {"bench": {"base_url": BASE_URL, "api_key": "bench-key"}},
        "routes": {"chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["bench"]}]}},
    }
    raw = openai.OpenAI(base_url=BASE_URL, api_key="k", http_client=httpx2.Client(transport=mock))
    routed = openai.OpenAI(
        base_url=BASE_URL, api_key="k", http_client=httpx2.Client(transport=holyroute.Transport(config, transport=mock))
    )
    return raw, routed


def _ttft(client: openai.OpenAI, model: str) -> float:
    """Seconds from the call to its first chunk; the rest of the stream is read untimed."""
    start = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)  # type: ignore[call-overload]
    iterator = iter(stream)
    next(iterator)
    took = time.perf_counter() - start
    for _ in iterator:
        pass
    return took


def ttft(pairs: int, warmup: int) -> dict[str, Any]:
    raw, routed = _clients(8)
    with raw, routed:
        for _ in range(warmup):
            _ttft(raw, "gpt-4.1")
            _ttft(routed, "chat-default")
        diffs: list[float] = []
        raw_t: list[float] = []
        routed_t: list[float] = []
        for i in range(pairs):
            if i % 2 == 0:
                a = _ttft(raw, "gpt-4.1")
                b = _ttft(routed, "chat-default")
            else:
                b = _ttft(routed, "chat-default")
                a = _ttft(raw, "gpt-4.1")
            raw_t.append(a)
            routed_t.append(b)
            diffs.append((b - a) * 1e6)
    return {
        "pairs": pairs,
        "raw_ttft_p50_us": percentile(raw_t, 50) * 1e6,
        "holyroute_ttft_p50_us": percentile(routed_t, 50) * 1e6,
        "added_ttft_p50_us": statistics.median(diffs),
        "added_ttft_p99_us": percentile(diffs, 99),
    }


def _peak(chunks: int) -> int:
    _, routed = _clients(chunks)
    with routed:
        list(routed.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True))  # warm
        tracemalloc.start()
        try:
            for _ in routed.chat.completions.create(model="chat-default", messages=MESSAGES, stream=True):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def memory(chunks: int) -> dict[str, Any]:
    short, long = max(1, chunks // 10), chunks
    return {
        "short_chunks": short,
        "short_peak_kb": _peak(short) / 1024,
        "long_chunks": long,
        "long_peak_kb": _peak(long) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20_000, help="events in the long stream (memory)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=devnull),
        cache_logger_on_first_use=True,
    )
    results = {"ttft": ttft(args.pairs, args.warmup), "memory": memory(args.chunks)}
    devnull.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    t, m = results["ttft"], results["memory"]
    print(f"holyroute {holyroute.__version__}, openai {openai.__version__}, python {sys.version.split()[0]}")
    print(
        f"time to first chunk, {t['pairs']} pairs: raw p50 {t['raw_ttft_p50_us']:.0f} µs, holyroute p50 "
        f"{t['holyroute_ttft_p50_us']:.0f} µs; added p50 {t['added_ttft_p50_us']:.0f} µs, "
        f"p99 {t['added_ttft_p99_us']:.0f} µs"
    )
    print(
        f"peak memory while reading one stream through holyroute: {m['short_peak_kb']:.0f} KB at {m['short_chunks']} "
        f"chunks, {m['long_peak_kb']:.0f} KB at {m['long_chunks']} chunks"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
