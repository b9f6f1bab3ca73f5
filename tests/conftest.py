from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings

from holyroute import Router, load_config
from holyroute.core.call import Call
from holyroute.core.steps import Accepted, Acquire, GiveUp, Respond, Send, Wait

# Property tests: no deadline (the machine is shared and noisy); a bounded number of examples keeps the suite short.
settings.register_profile(
    "holyroute", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("holyroute")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Events:
    """Collects every event a router emits."""

    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        self.items.append((name, dict(fields)))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.items if event == name]


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "endpoints": {
            "main": {"base_url": "https://main.example/v1", "api_key": "key-main"},
            "backup": {"base_url": "https://backup.example/v1", "api_key": "key-backup"},
            "deep": {"base_url": "https://deep.example/v1", "api_key": "key-deep"},
            "cheap": {"base_url": "https://cheap.example/v1", "api_key": "key-cheap"},
        },
        "routes": {
            "chat-default": {
                "targets": [
                    {"model": "gpt-4.1", "endpoints": ["main", "backup"], "weight": 90},
                    {"model": "deepseek-chat", "endpoints": ["deep"], "weight": 10},
                ],
                "fallbacks": ["chat-cheap"],
            },
            "chat-cheap": {"targets": [{"model": "gemini-2.5-flash", "endpoints": ["cheap"]}]},
        },
        "retry": {"max_attempts": 3, "backoff_jitter_s": 0},
    }
    config.update(overrides)
    return config


@dataclass
class Harness:
    router: Router
    clock: FakeClock
    events: Events

    def call(
        self,
        body: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        path: str = "/v1/chat/completions",
        timeout: float | None = None,
    ) -> Call:
        payload = {"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]}
        payload.update(body or {})
        call = self.router.begin("POST", path, "", dict(headers or {}), json.dumps(payload).encode(), timeout=timeout)
        assert call is not None, "expected a routed call"
        return call


Answer = tuple[int, dict[str, str], bytes] | BaseException


@dataclass
class Outcome:
    sent: list[Send]
    waits: list[float]
    final: Accepted | Respond | GiveUp

    @property
    def endpoints(self) -> list[str]:
        return [send.endpoint for send in self.sent]


def drive(
    call: Call,
    answers: Sequence[Answer],
    clock: FakeClock | None = None,
    grants: Callable[[Acquire], float | None] | None = None,
) -> Outcome:
    """Play a call against scripted answers, as a transport would; waits advance the fake clock, ``grants``
    answers the state backend's :class:`Acquire` steps."""
    queue = list(answers)
    sent: list[Send] = []
    waits: list[float] = []
    while True:
        step = call.next_step()
        if isinstance(step, Acquire):
            assert grants is not None, f"unexpected {step}"
            call.on_acquired(grants(step))
        elif isinstance(step, Send):
            sent.append(step)
            answer = queue.pop(0)
            if isinstance(answer, BaseException):
                call.on_error(answer, timeout=isinstance(answer, TimeoutError))
                continue
            status, headers, body = answer
            accepted = call.on_response(status, {k.lower(): v for k, v in headers.items()})
            if accepted is None:
                call.on_rejected_body(body)
            elif accepted.event_stream or call.on_body(body):
                return Outcome(sent, waits, accepted)
        elif isinstance(step, Wait):
            waits.append(step.seconds)
            if clock is not None:
                clock.advance(step.seconds)
        else:
            return Outcome(sent, waits, step)


def ok(headers: dict[str, str] | None = None) -> Answer:
    return (200, {"content-type": "application/json", **(headers or {})}, b"{}")


def status(code: int, headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    payload = body or json.dumps({"error": {"message": f"status {code}", "type": "x", "code": None}}).encode()
    return (code, {"content-type": "application/json", **(headers or {})}, payload)


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    def make(config: dict[str, Any] | None = None, *, seed: int = 7, state: Any = None) -> Harness:
        import random

        clock = FakeClock()
        events = Events()
        router = Router(
            load_config(config or base_config()),
            clock=clock,
            wall_clock=lambda: 1_700_000_000.0 + clock.now,
            rng=random.Random(seed),
            log=False,
            sinks=[events],
            state=state,
        )
        return Harness(router, clock, events)

    return make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def instant_sdk_retries() -> Iterator[None]:
    """The SDK's own retry sleeps made instant, as openai-python's tests do."""
    with mock.patch("openai._base_client.BaseClient._calculate_retry_timeout", return_value=0.0):
        yield


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a directory of its own: the CLI reads ./holyroute.yaml when no --config is given, and the
    README's first command (holyroute demo) leaves one in the checkout the second command runs the suite from."""
    monkeypatch.chdir(tmp_path)


@contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` (a lock, or a condition) held by a thread of this process for the duration of the block, so across
    a fork made in it: the state a forked child inherits a lock in when its holder was busy."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join(5)


def forked(target: Callable[..., None], *args: Any, within_s: float = 10) -> tuple[dict[str, Any], int, float]:
    """Fork, run ``target(*args, pipe)`` in the child, and give what it sent through the pipe, its pid and how long
    the fork took (``Process.start``). It must report within ``within_s`` (a child that hangs on an inherited lock
    does not) and exit 0; one still running after that is killed."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, sender), daemon=True)
    started = time.monotonic()
    try:
        child.start()
        forked_s = time.monotonic() - started
        sender.close()
        assert receiver.poll(within_s), f"the forked child did not report within {within_s:g} s: it hung"
        report: dict[str, Any] = receiver.recv()
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)
    assert child.exitcode == 0, report
    assert child.pid is not None
    return report, child.pid, forked_s
