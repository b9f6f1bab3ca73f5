"""What the benchmarks share: the fake upstream in its own process, percentiles, and conversations of a given size."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

from holyroute.testing import FakeUpstream


def conversation(kilobytes: float) -> list[dict[str, str]]:
    """A conversation of about ``kilobytes`` KB: alternating turns of about 1 KB (or one short question)."""
    if kilobytes < 1:
        return [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]
    turn = "The quick brown fox jumps over the lazy dog, and then it reads a chapter of Hamlet. " * 12
    count = round(kilobytes * 1024 / (len(turn) + 30))
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _serve(conn: Any, record: bool, cpu: int | None = None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with FakeUpstream("bench", record=record) as upstream:
        conn.send(upstream.base_url)
        conn.recv()  # until the parent says stop


@contextlib.contextmanager
def upstream_process(*, record: bool = True, cpu: int | None = None) -> Iterator[str]:
    """The fake upstream in its own process, as a real provider would be: no GIL shared with the client.
    Yields its base URL; ``record=False`` keeps it from remembering every request (long runs); ``cpu`` pins it."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, record, cpu), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the fake upstream process did not start within 30 s")
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
