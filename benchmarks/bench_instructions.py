"""CPU instructions per non-streaming call, raw OpenAI SDK vs. the same SDK through holyroute, counted by callgrind.

Timings on a shared machine drift by tens of percent; an instruction count does not move from run to run, so this is
the benchmark that shows what holyroute itself costs per call, and whether that cost grows with the size of the
prompt or of the answer. Each case runs in its own process under ``valgrind --tool=callgrind``: the process builds
its client over an in-memory upstream (an ``httpx2.MockTransport`` answering from bytes built once, under holyroute's
transport for the routed client), makes warm-up calls, then makes ``--calls`` calls inside a ctypes callback (the one
comparison of a ``qsort`` of two numbers). Callgrind counts only what runs inside that callback
(``--toggle-collect=_CallPythonObject``, ctypes' entry into a Python callback, which the call path never enters).
Everything else (start-up, imports, client construction, first-call caches) is outside the count. Holyroute's events
are rendered by structlog's ``JSONRenderer`` to ``/dev/null``, as a user piping JSON logs would.

Cases: a chat call with a 0.1 KB prompt, with 32 KB and 128 KB of messages, an embeddings call whose answer is
1.6 MB, a chat stream counted from the call to its first chunk (``stream-ttft``: each stream's rest is read
between the counted parts, so only what precedes the first chunk counts), and the small chat call at temperature 0
on a route with a memory response cache (``chat-cache-hit``: the first warm-up call stores the answer, every
measured call is a hit that never reaches the in-memory upstream; the raw SDK makes the same call to the upstream).
``chat-orjson`` is the small chat call with the event rendered by orjson through structlog's ``BytesLogger`` (what
structlog advises for speed), ``chat-no-event`` the same call with the event filtered out by level: together they
split "chat" into the JSON line and the routing. ``chat-recorded`` is the small chat call answered with the answer
``cassettes/chat_completion.yaml`` holds, in OpenAI's format: 16 headers (the ``x-ratelimit-*`` ones holyroute reads
for its rate-limit headroom among them) and usage details, where the other cases' answer has two headers. That is
closer to a call to OpenAI, though not the same: the cassette keeps no ``set-cookie``, ``cf-ray`` or ``date``
header, and its body is not compressed. "added" is holyroute's instructions minus
the raw SDK's, per call; the per-KB columns divide what holyroute adds beyond the small chat call by the request's
(or the answer's) extra size.

"own" counts holyroute's own work alone, in a third process for the small chat call and the sized cases: callgrind
collects inside holyroute's transport and stops inside its inner transport (a toggle around each,
:class:`_Toggled`), so neither the SDK's work nor the upstream's is in it (each run that counts the chat call's own work
counts it again against an upstream spending tens of millions of instructions per answer, and stops unless the two
agree within 5%). The sized cases' per-KB figures are
judged on it: "added", a difference of whole calls, also carries the SDK's own work on the larger request (about
190 M instructions a call at 128 KB of messages), which moves with where the allocator puts the SDK's objects.

"floor" counts, as "own" is counted, the same small chat call (with and without the event) through
``_floor.py``'s transport instead of holyroute's: the call written as plainly as we know how, sending the same
request and emitting the same event, without holyroute's failover and limit bookkeeping. It is what this call's
work costs at the least, against which holyroute's own count (and the targets) can be read.

``--cache-sim`` adds two runs under callgrind's cache simulation, of the chat case's own work and of the floor's,
and shows their first-level cache misses per call (instructions, data read, data written): work that touches more
code and more objects per call misses more. On a loop of calls alone the core's caches hold most of it; between
an SDK's calls, a local upstream's and other processes', each miss costs more, so a difference in misses shows
where a call's time can grow by more than its instructions (the loopback and async benchmarks).

    python benchmarks/bench_instructions.py               # all cases, 40 measured calls each (the largest fewer)
    python benchmarks/bench_instructions.py --cases chat --calls 20 --cache-sim
    python benchmarks/bench_instructions.py --calls 100 --cases chat,chat-128k --json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import operator
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
from _common import conversation  # benchmarks/_common.py

#: Instructions per microsecond on the machine the README's figures come from (about 4 G instructions/s in CPython).
_NOMINAL_PER_US = 4000

CHAT_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4.1",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "A prince avenges."}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 4,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 0},
    },
}

#: name -> (operation, request size in KB (approximate), answer size in KB (approximate))
CASES: dict[str, tuple[str, float, float]] = {
    "chat": ("chat", 0.1, 0.3),
    "chat-32k": ("chat", 32, 0.3),
    "chat-128k": ("chat", 128, 0.3),
    "embeddings-1.6m": ("embeddings", 0.8, 1600),
    # Counted from the call to the stream's first chunk only; the rest of each stream is read outside the count.
    "stream-ttft": ("stream", 0.1, 0.3),
    # The "chat" call at temperature 0 on a route with a response cache: every measured call is a hit.
    "chat-cache-hit": ("cache-hit", 0.1, 0.3),
    # The "chat" call with the event rendered by orjson through structlog's BytesLogger (structlog's own advice for
    # speed), and with the event filtered out by level: how much of "chat" is the JSON line, and how much routing.
    "chat-orjson": ("chat", 0.1, 0.3),
    "chat-no-event": ("chat", 0.1, 0.3),
    # The "chat" call answered with the answer cassettes/chat_completion.yaml holds, in OpenAI's format: 16 headers
    # (the x-ratelimit-* ones holyroute reads among them) and usage details, where the other cases' answer has 2.
    "chat-recorded": ("chat", 0.1, 0.9),
}
#: The cases whose size the per-KB columns are about (the others differ from "chat" in kind, not in size).
_SIZED = ("chat-32k", "chat-128k", "embeddings-1.6m")
#: ... and the ones counted a third time, for holyroute's own work alone ("own": the instructions inside holyroute's
#: transport, less its inner transport's). The SDK's own work on 128 KB of messages is about 190 M instructions a
#: call, and where the allocator happens to put its objects (which holyroute's allocations move) changes that (two
#: checkouts of the same code once gave 519,560 and 569,008 added at 32 KB): a difference of whole calls ("added")
#: carries that noise, the own count does not.
_OWN = ("chat", "chat-no-event", "chat-orjson", *_SIZED)
#: ... and the cases counted a fourth time, for the floor's own work (``_floor.py``: the same call written as plainly
#: as we know how, without holyroute's failover and limit bookkeeping), counted as "own" is.
_FLOORED = ("chat", "chat-no-event", "chat-orjson")
_CASSETTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cassettes", "chat_completion.yaml")


def _recorded_answer() -> tuple[bytes, list[tuple[str, str]]]:
    """The body and headers of the one answer in cassettes/chat_completion.yaml, as the upstream sent them."""
    import yaml

    with open(_CASSETTE, encoding="utf-8") as file:
        response = yaml.safe_load(file)["interactions"][0]["response"]
    headers = [(name, str(value)) for name, values in response["headers"].items() for value in values]
    return response["body"]["string"].encode(), headers


def _embeddings_answer(kilobytes: float) -> bytes:
    """An embeddings answer of about ``kilobytes`` KB: vectors of 1536 floats written as providers write them."""
    vector = [((i * 7919) % 2000 - 1000) / 65536.123 for i in range(1536)]
    one = len(json.dumps(vector))
    count = max(1, round(kilobytes * 1024 / one))
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8 * count, "total_tokens": 8 * count},
    }
    return json.dumps(body).encode()


def _stream_events() -> list[bytes]:
    """A short chat stream as providers send it: content chunks, the finish, the usage chunk, ``[DONE]``."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        for word in ("A ", "prince ", "avenges.")
    ]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 19, "completion_tokens": 4, "total_tokens": 23}})
    return [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


def _worker(client_kind: str, case: str, calls: int, warmup: int) -> None:
    """Build one client, warm it up, then make ``calls`` calls inside a ctypes callback (all callgrind counts)."""
    import openai
    import structlog

    import holyroute

    operation, request_kb, answer_kb = CASES[case]
    toggled = client_kind in ("own", "floor")  # counted inside the outer transport, less its inner one
    if client_kind == "own" and operation not in ("chat", "embeddings"):
        # A stream's tap reads its body after handle_request has returned, and a cache hit has no inner transport.
        raise SystemExit(f"own: only the chat and embeddings cases, not {case}")
    if client_kind == "floor" and case not in _FLOORED:
        raise SystemExit(f"floor: only {', '.join(_FLOORED)}, not {case}")
    answer = _embeddings_answer(answer_kb) if operation == "embeddings" else json.dumps(CHAT_ANSWER).encode()
    headers = [("content-type", "application/json"), ("x-request-id", "req_bench")]
    if case == "chat-recorded":
        answer, headers = _recorded_answer()
    events = _stream_events()

    class Events(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            return iter(events)  # one event at a time, as a connection would hand them over

    upstream_calls = [0]

    burn = int(os.environ.get("BENCH_INNER_BURN", "0"))  # the own count's check: work own must not see

    def canned(request: httpx2.Request) -> httpx2.Response:
        upstream_calls[0] += 1
        if burn:
            sum(range(burn))
        if operation == "stream":
            return httpx2.Response(200, headers=[("content-type", "text/event-stream")], stream=Events())
        return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(answer))

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole process
    if case == "chat-orjson":
        import orjson

        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer(serializer=orjson.dumps)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.BytesLoggerFactory(file=open(os.devnull, "wb")),  # noqa: SIM115
            cache_logger_on_first_use=True,
        )
    else:
        level = logging.WARNING if case == "chat-no-event" else logging.INFO  # holyroute.request is at info
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.WriteLoggerFactory(file=devnull),
            cache_logger_on_first_use=True,
        )
    base_url = "http://127.0.0.1:9/v1"
    mock: Any = httpx2.MockTransport(canned)
    counting = [False]  # "own", "floor": the two toggles below count only the measured calls, not the warm-up
    if toggled:
        mock = _Toggled(mock, counting, "call")
    # Both clients are built in both processes, so the imports and the set-up are the same outside the count.
    config = {
        "endpoints": {"bench": {"base_url": base_url, "api_key": "bench-key"}},
        "routes": {
            "chat-default": {"targets": [{"model": "gpt-4.1", "endpoints": ["bench"]}]},
            "embed-default": {"targets": [{"model": "text-embedding-3-small", "endpoints": ["bench"]}]},
        },
    }
    if operation == "cache-hit":  # only in this case: a route with a cache makes the client hold one
        config["routes"]["chat-cached"] = {"targets": [{"model": "gpt-4.1", "endpoints": ["bench"]}], "cache": {}}
    transport: Any = holyroute.Transport(config, transport=mock)
    if client_kind == "floor":
        from _floor import floor_for  # this script's directory is on sys.path

        transport = floor_for(mock, base_url)
    if toggled:
        transport = _Toggled(transport, counting, "qsort")
    routed = httpx2.Client(transport=transport)
    raw = httpx2.Client(transport=mock)
    sdk = openai.OpenAI(base_url=base_url, api_key="bench-key", http_client=raw if client_kind == "raw" else routed)
    model = "text-embedding-3-small" if operation == "embeddings" else "gpt-4.1"
    if client_kind != "raw":
        model = {"embeddings": "embed-default", "cache-hit": "chat-cached"}.get(operation, "chat-default")
    call: Callable[[], Any]
    messages: Any = conversation(request_kb)
    rest: list[Iterator[Any]] = []
    if operation == "chat":

        def call() -> Any:
            return sdk.chat.completions.create(model=model, messages=messages)
    elif operation == "cache-hit":

        def call() -> Any:
            return sdk.chat.completions.create(model=model, messages=messages, temperature=0)
    elif operation == "stream":

        def call() -> Any:
            stream = iter(sdk.chat.completions.create(model=model, messages=messages, stream=True))
            first = next(stream)
            rest.append(stream)
            return first
    else:
        inputs = [f"sentence number {i} to embed" for i in range(24)]

        def call() -> Any:
            return sdk.embeddings.create(model=model, input=inputs, encoding_format="float")

    def drain() -> None:
        while rest:
            for _ in rest.pop():
                pass

    for _ in range(warmup):
        call()
        drain()

    def measured(_a: int, _b: int) -> int:
        for _ in range(1 if operation == "stream" else calls):
            call()
        return 0

    if toggled:  # the toggles in the two transports count; the calls themselves run outside any
        counting[0] = True
        measured(0, 0)
        counting[0] = False
    else:
        compare = _CALLBACK(measured)
        # Two elements: exactly one comparison. A stream's rest is read between comparisons, outside the count.
        for _ in range(calls if operation == "stream" else 1):
            _LIBC.qsort(_PAIR, 2, ctypes.sizeof(ctypes.c_int), compare)
            drain()
    if operation == "cache-hit" and client_kind == "holyroute" and upstream_calls[0] != 1:
        raise RuntimeError(f"chat-cache-hit: the upstream was called {upstream_calls[0]} times, not once: not all hits")
    sdk.close()
    routed.close()
    raw.close()
    devnull.close()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_PAIR = (ctypes.c_int * 2)(1, 2)


class _Toggled(httpx2.BaseTransport):
    """A transport whose ``handle_request`` runs inside a C function callgrind toggles its collection on (named by
    ``--toggle-collect``: toggled as it is entered and as it returns), while ``counting[0]`` is set. Callgrind
    toggles on a function's outermost entry only, not on an entry nested in another's, so the two transports of the
    "own" count go through different functions: holyroute's through ``qsort``'s callback (ctypes'
    ``_CallPythonObject``, as every other count: collection on), its inner transport's through ``operator.call``
    (``_operator_call``: off until the inner transport has answered, then on again). Neither is entered anywhere
    else on the call path. (libc's ``qsort`` and ``lfind`` would not do as toggles: callgrind does not see the first
    entered, as it jumps to ``qsort_r``, nor the second by name, and ``qsort_r`` also runs at Python's start.)"""

    def __init__(self, transport: Any, counting: list[bool], via: str) -> None:
        self._transport, self._counting, self._via = transport, counting, via
        self._call: list[Any] = []
        self._compare = _CALLBACK(self._inside) if via == "qsort" else None

    def _inside(self, _a: int, _b: int) -> int:
        # ctypes prints and drops what a callback raises: it is carried out and raised where it belongs.
        request = self._call.pop()
        try:
            self._call.append((self._transport.handle_request(request), None))
        except BaseException as error:
            self._call.append((None, error))
        return 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self._counting[0]:
            return self._transport.handle_request(request)
        if self._via == "call":
            called: httpx2.Response = operator.call(self._transport.handle_request, request)
            return called
        self._call.append(request)
        _LIBC.qsort(_PAIR, 2, ctypes.sizeof(ctypes.c_int), self._compare)
        response, error = self._call.pop()
        if error is not None:
            raise error
        result: httpx2.Response = response
        return result

    def close(self) -> None:
        self._transport.close()


#: Cases whose one call costs hundreds of millions of instructions run a share of ``--calls`` (at least 3) after
#: fewer warm-up calls: a garbage collection falling inside the count moves them by a fraction of a percent, where
#: it moves a small call by tens of thousands of instructions (which is why small calls want many).
_CALLS_SHARE: dict[str, float] = {"embeddings-1.6m": 0.1, "chat-128k": 0.5}
#: ... and at most this many warm-up calls (a warm-up of the 1.6 MB answer costs about 1.8 G instructions).
_WARMUP_CAP: dict[str, int] = {"embeddings-1.6m": 3, "chat-128k": 10}
#: CPython 3.11 quickens a function (its specialising, adaptive instructions) at its 8th call, and each adaptive
#: instruction settles after a few more: a process measured earlier counts the warming of holyroute's ~100 functions,
#: about 25k instructions per call at 5 warm-ups, more at fewer. A server makes thousands of calls, so the default
#: warm-up reaches the steady state.
_DEFAULT_WARMUP = 20


def _calls_for(case: str, calls: int) -> int:
    share = _CALLS_SHARE.get(case)
    return calls if share is None else max(3, min(calls, round(calls * share)))


def _count(client_kind: str, case: str, calls: int, warmup: int, *, burn: int = 0) -> int:
    """Instructions callgrind counted inside the ctypes callback for one worker process (for "own", inside
    holyroute's transport and outside its inner one: :class:`_Toggled`)."""
    return _callgrind(client_kind, case, calls, warmup, burn=burn)["Ir"]


def _l1_misses(client_kind: str, case: str, calls: int, warmup: int) -> dict[str, int]:
    """What callgrind's cache simulation counts in the same part (``--cache-sim=yes``): first-level cache misses,
    for instructions (``I1mr``), data read (``D1mr``) and data written (``D1mw``), with the instructions (``Ir``).
    Each is an access the core's own cache did not hold; none is a count of time."""
    found = _callgrind(client_kind, case, calls, warmup, cache_sim=True)
    return {event: found[event] for event in ("Ir", "I1mr", "D1mr", "D1mw")}


def _callgrind(
    client_kind: str, case: str, calls: int, warmup: int, *, burn: int = 0, cache_sim: bool = False
) -> dict[str, int]:
    command = [
        "valgrind",
        "--tool=callgrind",
        *(["--cache-sim=yes"] if cache_sim else []),
        "--collect-atstart=no",
        "--toggle-collect=_CallPythonObject",
        # "own": off again inside its inner transport (_Toggled).
        *(["--toggle-collect=_operator_call"] if client_kind in ("own", "floor") else []),
        "--callgrind-out-file=/dev/null",
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        client_kind,
        case,
        str(calls),
        str(warmup),
    ]
    # A fixed hash seed: with a random one, dict and set layouts (so probes and collisions) change from process to
    # process, and the same call's count moves by about 5k instructions; with this one it moves by under 100.
    env = {**os.environ, "PYTHONHASHSEED": "0", "BENCH_INNER_BURN": str(burn)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False, env=env)
    found = collected(done.stderr)
    if done.returncode != 0 or "Ir" not in found:
        raise RuntimeError(f"callgrind run failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return found


def collected(report: str) -> dict[str, int]:
    """Callgrind's totals from its closing report (``Events : Ir ...`` then ``Collected : 123 ...``), by event
    name; empty when the report has none or they do not pair up."""
    events = re.search(r"^==\d+== Events\s*:\s*([A-Za-z0-9 ]+?)\s*$", report, re.MULTILINE)
    counts = re.search(r"^==\d+== Collected\s*:\s*([0-9 ]+?)\s*$", report, re.MULTILINE)
    if events is None or counts is None:
        return {}
    names, values = events.group(1).split(), counts.group(1).split()
    return dict(zip(names, map(int, values), strict=True)) if len(names) == len(values) else {}


#: The busy upstream of the own count's check: ``sum(range(n))`` per answer, tens of millions of instructions.
_CHECK_BURN = 200_000


def _own_holds(plain: float, busy: float) -> bool:
    """The own count with a busy upstream within 5% of the one with a plain upstream: the busy upstream's tens of
    millions of instructions per answer (some thirty times the own count) are out of it. The two are not equal: a
    garbage collection falls in one run's counted part and not in the other's (362,094 against 376,414 per call,
    4%, in one run of 20 calls on 2026-12-06; 362,412 against 364,072 in the next)."""
    return abs(busy - plain) <= 0.05 * plain


def add_per_kb(results: list[dict[str, Any]]) -> None:
    """Give each case of :data:`_SIZED` its ``added_per_kb``: what it adds beyond the small chat call, per KB of
    extra request (or answer). Only with a "chat" result to subtract; every other case differs in kind, not size."""
    base = next((r["added"] for r in results if r["case"] == "chat"), None)
    own = next((r.get("own") for r in results if r["case"] == "chat"), None)
    for r in results:
        _, request_kb, answer_kb = CASES[r["case"]]
        extra_kb = max(request_kb - CASES["chat"][1], answer_kb - CASES["chat"][2])
        if base is not None and r["case"] in _SIZED and extra_kb > 0:
            r["added_per_kb"] = round((r["added"] - base) / extra_kb)
            if own is not None and "own" in r:
                r["own_per_kb"] = round((r["own"] - own) / extra_kb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="measured calls per process")
    parser.add_argument("--warmup", type=int, default=_DEFAULT_WARMUP)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also count first-level cache misses of the chat case's own work and the floor's (two more runs)",
    )
    parser.add_argument("--worker", nargs=4, metavar=("CLIENT", "CASE", "CALLS", "WARMUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, case, calls, warmup = args.worker
        _worker(kind, case, int(calls), int(warmup))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    results: list[dict[str, Any]] = []
    for case in cases:
        calls = _calls_for(case, args.calls)
        warmup = min(args.warmup, _WARMUP_CAP.get(case, args.warmup))
        raw = _count("raw", case, calls, warmup) / calls
        routed = _count("holyroute", case, calls, warmup) / calls
        result = {
            "case": case,
            "calls": calls,
            "raw": round(raw),
            "holyroute": round(routed),
            "added": round(routed - raw),
        }
        if case in _OWN:
            result["own"] = round(_count("own", case, calls, warmup) / calls)
            if case == "chat":  # checked against a busy upstream on every run: or the per-KB rows mean nothing
                busy = round(_count("own", case, calls, warmup, burn=_CHECK_BURN) / calls)
                result["own_busy_upstream"] = busy
                if not _own_holds(result["own"], busy):
                    raise RuntimeError(
                        f"the own count includes the upstream's work ({result['own']:,} with a plain upstream, "
                        f"{busy:,} with a busy one): callgrind no longer toggles on _operator_call"
                    )
        if case in _FLOORED:
            result["floor"] = round(_count("floor", case, calls, warmup) / calls)
        if args.cache_sim and case == "chat":
            result["l1_misses"] = {
                kind: {event: round(n / calls) for event, n in _l1_misses(kind, case, calls, warmup).items()}
                for kind in ("own", "floor")
            }
        results.append(result)
    add_per_kb(results)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    import openai

    import holyroute

    print(f"holyroute {holyroute.__version__}, openai {openai.__version__}, python {sys.version.split()[0]}")
    print(
        f"instructions per call, {args.calls} calls per process under callgrind (fewer for the largest cases: "
        f"{', '.join(f'{c} {_calls_for(c, args.calls)}' for c in _CALLS_SHARE)}); added = holyroute - raw\n"
    )
    print(
        f"{'case':<18}{'raw':>12}{'holyroute':>12}{'added':>10}{'added %':>9}{'per extra KB':>14}{'~µs/KB':>8}"
        f"{'own/KB':>8}{'~µs/KB':>8}"
    )
    for r in results:
        per_kb, own_kb = r.get("added_per_kb"), r.get("own_per_kb")
        print(
            f"{r['case']:<18}{r['raw']:>12,}{r['holyroute']:>12,}{r['added']:>10,}{100 * r['added'] / r['raw']:>8.1f}%"
            + (f"{per_kb:>14,}{per_kb / _NOMINAL_PER_US:>8.2f}" if per_kb is not None else "")
            + (f"{own_kb:>8,}{own_kb / _NOMINAL_PER_US:>8.2f}" if own_kb is not None else "")
        )
    for r in results:
        if "floor" in r:
            print(f"{r['case']}: own work {r['own']:,} instructions per call, the floor's {r['floor']:,}")
        misses = r.get("l1_misses")
        if misses is not None:
            own, floor = misses["own"], misses["floor"]
            print(
                f"{r['case']}: first-level cache misses per call (instructions / data read / data written): own work "
                f"{own['I1mr']:,} / {own['D1mr']:,} / {own['D1mw']:,}, the floor's "
                f"{floor['I1mr']:,} / {floor['D1mr']:,} / {floor['D1mw']:,}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
