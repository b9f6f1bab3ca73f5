"""One worker process for tests/test_workers.py: calls a routed alias through the official SDK until told to stop.

Run as ``python -m tests._worker CONFIG RUN_DIR N [options]`` from the repository root. The worker builds
``openai.OpenAI(http_client=holyroute.client(CONFIG))``, writes ``RUN_DIR/ready-N``, waits for ``RUN_DIR/go`` (JSON:
``{"until": <Unix time or null>}``), then calls in a loop, each call with ``x-worker: N`` and ``x-call: N-<i>``
headers, until ``RUN_DIR/stop`` exists, ``until`` passes, ``--calls`` are made or ``--max-s`` seconds are up. It then
closes the client (which flushes what holyroute holds for Redis) and writes ``RUN_DIR/result-N.json``: every call's
start and end (``time.time()``), the alias called, the model that served it or the error, a count of holyroute's
events (rollout changes also by action, as ``holyroute.rollout:<action>``) and the cost of its calls per route.

``--models a,b`` calls each alias from a thread of its own (the same stop conditions). ``--abort ROUTE``: once
``RUN_DIR/abort`` exists, this worker aborts that rollout itself (as an operator's script in it would) and notes when.
``--watch ROUTE``: notes when this worker's router first follows that rollout to aborted.

Like any application, it configures structlog: holyroute's events are counted, not printed.
"""

from __future__ import annotations

import argparse
import json
import threading
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
    parser.add_argument("--models", default="", help="comma-separated aliases, each called from its own thread")
    parser.add_argument("--abort", default="", help="abort this rollout once RUN_DIR/abort exists")
    parser.add_argument("--watch", default="", help="note when this rollout is first seen aborted here")
    args = parser.parse_args()
    hard_stop = time.monotonic() + args.max_s

    events: Counter[str] = Counter()
    spend: dict[str, float] = {}
    first: dict[str, float] = {}  # when each kind of event was first seen (time.time())
    counting = threading.Lock()  # events come from every calling thread

    def count(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
        name = str(event_dict.get("event"))
        with counting:
            events[name] += 1
            first.setdefault(name, time.time())
            if name == "holyroute.rollout":
                events[f"{name}:{event_dict.get('action')}"] += 1
            if name == "holyroute.request" and isinstance(event_dict.get("cost_usd"), float):
                route = str(event_dict.get("route"))
                spend[route] = spend.get(route, 0.0) + event_dict["cost_usd"]
        raise structlog.DropEvent

    structlog.configure(processors=[count])

    run_dir: Path = args.run_dir
    calls: list[dict[str, Any]] = []
    http = holyroute.client(args.config)
    sdk = openai.OpenAI(api_key="x", base_url="http://unused.invalid/v1", http_client=http, max_retries=0)
    aborted: list[float] = []
    followed: list[float] = []
    with sdk:
        (run_dir / f"ready-{args.worker}").touch()
        go = run_dir / "go"
        while not go.exists() and time.monotonic() < hard_stop:
            time.sleep(POLL_S)
        until = json.loads(go.read_text())["until"] if go.exists() else None
        stop = run_dir / "stop"

        def done() -> bool:
            return stop.exists() or time.monotonic() >= hard_stop or (until is not None and time.time() >= until)

        def loop(model: str) -> None:
            for n in range(args.calls):
                if done():
                    break
                started = time.time()
                record: dict[str, Any] = {"start": started, "alias": model}
                try:
                    answer = sdk.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": f"call {n}"}],
                        extra_headers={"x-worker": str(args.worker), "x-call": f"{args.worker}-{model}-{n}"},
                    )
                except openai.APIError as error:
                    record["error"] = f"{type(error).__name__}: {error}"[:300]
                else:
                    record["model"] = answer.model
                record["end"] = time.time()
                calls.append(record)
                if args.sleep:
                    time.sleep(args.sleep)

        def watcher() -> None:
            """When this worker's own engine first shows the rollout aborted (polled every 5 ms)."""
            transport = http._transport
            assert isinstance(transport, holyroute.Transport)
            assert transport.router.rollouts is not None
            engine = transport.router.rollouts[args.watch]
            while not done():
                if engine.state.status == "aborted":
                    followed.append(time.time())
                    return
                time.sleep(POLL_S)

        def aborter() -> None:
            signal = run_dir / "abort"
            while not done():
                if signal.exists():
                    transport = http._transport
                    assert isinstance(transport, holyroute.Transport)
                    assert transport.router.rollouts is not None
                    transport.router.rollouts.abort(args.abort, "aborted during the failover")
                    aborted.append(time.time())
                    return
                time.sleep(POLL_S)

        models = [m for m in args.models.split(",") if m] or [args.model]
        threads = [threading.Thread(target=loop, args=(model,)) for model in models]
        if args.abort:
            threads.append(threading.Thread(target=aborter))
        if args.watch:
            threads.append(threading.Thread(target=watcher))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    result = {
        "worker": args.worker,
        "calls": calls,
        "events": dict(events),
        "spend": spend,
        "aborted": aborted,
        "followed": followed,
        "first": first,
    }
    partial = run_dir / f".result-{args.worker}.json"
    partial.write_text(json.dumps(result))
    partial.replace(run_dir / f"result-{args.worker}.json")


if __name__ == "__main__":
    main()
