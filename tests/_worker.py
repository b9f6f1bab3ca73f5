"""One worker process for tests/test_workers.py: calls a routed alias through the official SDK until told to stop.

Run as ``python -m tests._worker CONFIG RUN_DIR N [options]`` from the repository root. The worker builds
``openai.OpenAI(http_client=holyroute.client(CONFIG))``, writes ``RUN_DIR/ready-N``, waits for ``RUN_DIR/go`` (JSON:
``{"until": <Unix time or null>}``), then calls in a loop, each call with ``x-worker: N`` and ``x-call: N-<i>``
headers, until ``RUN_DIR/stop`` exists, ``until`` passes, ``--calls`` are made or ``--max-s`` seconds are up. It then
closes the client (which flushes what holyroute holds for Redis) and writes ``RUN_DIR/result-N.json``: every call's
start and end (``time.time()``), the model that served it or the error, and a count of holyroute's events (rollout
changes also by action, as ``holyroute.rollout:<action>``).

Like any application, it configures structlog: holyroute's events are counted, not printed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import openai
import structlog

import holyroute

POLL_S = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests._worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("worker", type=int)
    parser.add_argument("--model", default="chat", help="the routed alias to call")
    parser.add_argument("--sleep", type=float, default=0.005, help="seconds between calls")
    parser.add_argument("--calls", type=int, default=100_000, help="stop after this many calls")
    parser.add_argument("--max-s", type=float, default=45.0, help="hard cap on the whole run, in seconds")
    args = parser.parse_args()
    hard_stop = time.monotonic() + args.max_s

    events: Counter[str] = Counter()

    def count(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
        name = str(event_dict.get("event"))
        events[name] += 1
        if name == "holyroute.rollout":
            events[f"{name}:{event_dict.get('action')}"] += 1
        raise structlog.DropEvent

    structlog.configure(processors=[count])

    run_dir: Path = args.run_dir
    calls: list[dict[str, Any]] = []
    sdk = openai.OpenAI(
        api_key="x", base_url="http://unused.invalid/v1", http_client=holyroute.client(args.config), max_retries=0
    )
    with sdk:
        (run_dir / f"ready-{args.worker}").touch()
        go = run_dir / "go"
        while not go.exists() and time.monotonic() < hard_stop:
            time.sleep(POLL_S)
        until = json.loads(go.read_text())["until"] if go.exists() else None
        stop = run_dir / "stop"
        for n in range(args.calls):
            if stop.exists() or time.monotonic() >= hard_stop or (until is not None and time.time() >= until):
                break
            started = time.time()
            record: dict[str, Any] = {"start": started}
            try:
                answer = sdk.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": f"call {n}"}],
                    extra_headers={"x-worker": str(args.worker), "x-call": f"{args.worker}-{n}"},
                )
            except openai.APIError as error:
                record["error"] = f"{type(error).__name__}: {error}"[:300]
            else:
                record["model"] = answer.model
            record["end"] = time.time()
            calls.append(record)
            if args.sleep:
                time.sleep(args.sleep)
    result = {"worker": args.worker, "calls": calls, "events": dict(events)}
    partial = run_dir / f".result-{args.worker}.json"
    partial.write_text(json.dumps(result))
    partial.replace(run_dir / f"result-{args.worker}.json")


if __name__ == "__main__":
    main()
