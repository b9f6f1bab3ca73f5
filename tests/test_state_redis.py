"""The Redis state backend, in one process: several routers sharing the real Redis at 127.0.0.1:6379.

Each router is one ``holyroute.client`` under the official SDK, as one worker process of a deployment would hold it;
the routers of a test share a key prefix of the test's own (its keys are deleted afterwards) and call fake upstreams
on 127.0.0.1. What one router learns (a 429, an ejection, spend, a rollout change from the CLI) must reach the others;
what they take from a shared rpm/tpm bucket must add up to the limit; when Redis is away or goes away, no call may
fail and the password in its URL must never show. The tests that stop and restart Redis run a ``redis-server`` of
their own on a free port.

Propagation is real time here, so every wait polls with a deadline and the delays are printed (shown without ``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, cast

import openai
import pytest
import redis
import yaml
from structlog.testing import capture_logs

import holyroute
from holyroute import cli, load_config
from holyroute.core.call import Router
from holyroute.core.rate_limits import RateLimits
from holyroute.rollout.engine import RolloutEngine
from holyroute.state.base import HealthChange, period_key
from holyroute.state.redis.backend import RedisBackend
from holyroute.state.redis.payloads import Keys
from holyroute.testing import FakeUpstream, Reply

from .conftest import forked, held_by_another_thread

REDIS_URL = "redis://127.0.0.1:6379/0"
NOWHERE = "http://127.0.0.1:9/v1"  # the SDK's own base_url: routed calls never go there
MODEL = "gpt-4o-mini"
STABLE, CANDIDATE = "stable-model", "candidate-model"
PASSWORD = "s3cret-pw"
REDIS_SERVER = shutil.which("redis-server")

Logs = list[MutableMapping[str, Any]]


def _redis_answers() -> bool:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


if not _redis_answers():
    pytest.skip(
        "no Redis at 127.0.0.1:6379 (start one: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "
        '--save "" --appendonly no)',
        allow_module_level=True,
    )


# ---- helpers --------------------------------------------------------------------------------------------------


def wait_until(done: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll ``done`` every 5 ms for at most ``timeout_s``; the seconds it took, or fail saying ``what`` did not
    happen."""
    started = time.monotonic()
    deadline = started + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - started


class Watch:
    """Polls ``done`` every millisecond in a thread of its own (for at most ``timeout_s``) and notes the wall-clock
    time it first held: how long something took to spread, measured while the test's thread is busy in a call."""

    def __init__(self, done: Callable[[], object], timeout_s: float) -> None:
        self.at: float | None = None
        self._timeout_s = timeout_s
        self._thread = threading.Thread(target=self._poll, args=(done,), daemon=True)
        self._thread.start()

    def _poll(self, done: Callable[[], object]) -> None:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if done():
                self.at = time.time()
                return
            time.sleep(0.001)

    def seen(self, what: str) -> float:
        """When ``done`` first held (``time.time()``); fails saying ``what`` did not happen in time."""
        self._thread.join(self._timeout_s + 1.0)
        if self.at is None:
            pytest.fail(f"timed out after {self._timeout_s:g}s waiting for {what}")
        return self.at


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (just released by the OS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def config(
    prefix: str,
    endpoints: dict[str, dict[str, Any]],
    routes: dict[str, Any],
    *,
    url: str = REDIS_URL,
    **extra: Any,
) -> dict[str, Any]:
    """A configuration on the Redis state backend under ``prefix``.

    A Redis answer slower than ``timeout_ms`` counts as Redis down: the default 10 ms would measure this two-core
    machine's scheduler, not the sharing. The retry budget is raised so that failovers are never refused by it.
    """
    return {
        "endpoints": endpoints,
        "routes": routes,
        "retry": {"budget_min_per_s": 100, "backoff_initial_s": 0.001, "backoff_jitter_s": 0},
        "state": {"backend": "redis", "url": url, "prefix": prefix, "timeout_ms": 1000, "sync_interval_s": 0.05},
        **extra,
    }


def ordered(*endpoints: str) -> dict[str, Any]:
    """Route ``chat``: one target on ``endpoints``, tried in order."""
    return {"chat": {"targets": [{"model": MODEL, "endpoints": list(endpoints)}]}}


def rollout_route(endpoint: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rollout": {
            "stable": {"model": STABLE, "endpoints": [endpoint]},
            "candidate": {"model": CANDIDATE, "endpoints": [endpoint]},
            "steps": steps,
        }
    }


def write_config(directory: Path, configuration: dict[str, Any]) -> Path:
    path = directory / "holyroute.yaml"
    path.write_text(yaml.safe_dump(configuration, sort_keys=False))
    return path


def named(logs: Logs, event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in list(logs) if entry.get("event") == event]


def sent_by(up: FakeUpstream) -> Counter[str]:
    """Requests ``up`` received, by the client that sent them."""
    return Counter(request.headers.get("x-client", "?") for request in list(up.requests))


class Client:
    """One router as one worker process holds it: the official SDK over ``holyroute.client``."""

    def __init__(self, configuration: dict[str, Any] | Path, name: str) -> None:
        self.name = name
        self.http = holyroute.client(configuration)
        transport = self.http._transport
        assert isinstance(transport, holyroute.Transport)
        self.router: Router = transport.router
        self.sdk = openai.OpenAI(api_key="unused", base_url=NOWHERE, http_client=self.http, max_retries=0)
        self.closed = False

    def chat(self, model: str = "chat", **options: Any) -> str:
        """One call; the model that served it."""
        answer = self.sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-client": self.name},
            **options,
        )
        served: str = answer.model
        return served

    def now(self) -> float:
        return self.router.clock()

    def engine(self, route: str = "chat") -> RolloutEngine:
        assert self.router.rollouts is not None
        return self.router.rollouts[route]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sdk.close()


class Deployment:
    """The fake upstreams and the routers of one test; everything is stopped and closed at its end."""

    def __init__(self) -> None:
        self.upstreams: list[FakeUpstream] = []
        self.clients: list[Client] = []

    def upstream(self, name: str) -> FakeUpstream:
        up = FakeUpstream(name).start()
        self.upstreams.append(up)
        return up

    def client(self, configuration: dict[str, Any] | Path, name: str) -> Client:
        made = Client(configuration, name)
        self.clients.append(made)
        return made

    def close(self) -> None:
        # Routers first, all at once: each close waits up to half a second for its Redis listener to notice.
        closing = [threading.Thread(target=client.close) for client in self.clients]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(10)
        for up in self.upstreams:
            up.stop()


class RedisServer:
    """A ``redis-server`` of one test's own on a free port, to stop and start again on the same port."""

    def __init__(self, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self._command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        probe = self.client()

        def answers() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                pytest.fail(f"redis-server on port {self.port} exited with {self._proc.returncode}")
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(answers, 5.0, f"redis-server on port {self.port} to answer")
        finally:
            probe.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    """The test's own connection to the shared Redis, to look at what the routers wrote."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def prefix(store: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"hrtest-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        keys = list(store.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            store.delete(*keys)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    made = Deployment()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- the behaviours -------------------------------------------------------------------------------------------


class TestSharedCooldown:
    """A 429 seen by one router cools the endpoint down in every router sharing the prefix."""

    def test_other_routers_and_a_late_joiner_avoid_the_cooled_endpoint(
        self, prefix: str, store: redis.Redis, deployment: Deployment, measured: Callable[[str], None]
    ) -> None:
        """After A's 429 from `a` (retry-after 5), B and a router built later send to `b` only."""
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(prefix, {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}}, ordered("a", "b"))
        one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        assert two.chat() == MODEL
        assert sent_by(a) == {"B": 1}, "before the 429, `a` serves first"
        a.push(Reply.rate_limited(retry_after_s=5))

        watch = Watch(lambda: two.router.health.cooldown("a", MODEL, two.now()) is not None, 2.0)
        one.chat()
        assert (sent_by(a), sent_by(b)) == ({"A": 1, "B": 1}, {"A": 1}), "A's call got the 429 and failed over"
        propagated = watch.seen("B to learn of the cooldown") - a.requests[-1].received_at
        for _ in range(3):
            one.chat()
            two.chat()

        assert store.hexists(Keys(prefix).health, f"c|a|{MODEL}"), "the cooldown is in the shared health hash"

        late = deployment.client(cfg, "C")
        learnt = wait_until(
            lambda: late.router.health.cooldown("a", MODEL, late.now()) is not None,
            2.0,
            "the late joiner to read the cooldown",
        )
        for _ in range(3):
            late.chat()
        # One process, one monotonic clock: every router's cooldown must end when A's does (the wall-clock deadline
        # travels, not a fresh 5 s from whenever a router heard of it).
        deadlines = [c.router.health.cooldown("a", MODEL, c.now()) for c in (one, two, late)]
        assert None not in deadlines
        ends = [cooldown.until for cooldown in deadlines if cooldown is not None]
        assert max(ends) - min(ends) < 0.05, ends
        measured(
            f"shared cooldown (in process): B knew of A's 429 {1000 * propagated:.1f} ms after `a` received the "
            f"request it answered with it; a router built afterwards knew {1000 * learnt:.1f} ms after construction"
        )
        assert sent_by(a) == {"A": 1, "B": 1}, "nothing more reached `a` while it cooled down"
        assert sent_by(b) == {"A": 4, "B": 3, "C": 3}

    def test_a_late_joiners_first_call_avoids_the_cooled_endpoint(
        self, redis_server: RedisServer, deployment: Deployment
    ) -> None:
        """A router built after a cooldown was published sends even its first call elsewhere.

        Redis is paused for one second (a private server: CLIENT PAUSE holds every client's commands) while the router
        is built and makes its first call, so the outcome does not depend on whether its sync thread wins a race with
        that call. The pause is shorter than ``timeout_ms``: a router that waited for its first snapshot would get it.
        """
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(
            "late",
            {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}},
            ordered("a", "b"),
            url=redis_server.url,
        )
        cfg["state"]["timeout_ms"] = 2000
        first = deployment.client(cfg, "A")
        a.push(Reply.rate_limited(retry_after_s=30))
        first.chat()
        inspect = redis_server.client()
        try:
            wait_until(lambda: inspect.hexists(Keys("late").health, f"c|a|{MODEL}"), 2.0, "the cooldown in Redis")
            inspect.client_pause(1000, all=True)
        finally:
            inspect.close()
        late = deployment.client(cfg, "C")
        late.chat()
        assert sent_by(a) == {"A": 1}, "the late joiner's first call went to the cooled endpoint"


class TestSharedEjection:
    """Ejections, restorations and exhausted quota made by one router hold in every router."""

    def test_ejection_then_restoration(
        self, prefix: str, store: redis.Redis, deployment: Deployment, measured: Callable[[str], None]
    ) -> None:
        """A ejects `a` after two 503s; B stops sending to it; A's successful trial restores it in B too."""
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(
            prefix,
            {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}},
            ordered("a", "b"),
            health={"consecutive_failures": 2, "base_ejection_s": 1.5},
        )
        one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        a.push(Reply.error(503), Reply.error(503))
        one.chat()
        watch = Watch(lambda: two.router.health.ejected("a", two.now()) is not None, 1.0)
        one.chat()
        assert one.router.health.ejected("a", one.now()) is not None, "two 503s in a row eject `a` in A"
        propagated = watch.seen("B to learn of the ejection") - a.requests[-1].received_at
        for _ in range(3):
            two.chat()
        assert sent_by(a) == {"A": 2}
        assert sent_by(b) == {"A": 2, "B": 3}
        health = Keys(prefix).health
        assert store.hexists(health, "e|a")
        assert store.pttl(health) > 0

        wait_until(lambda: one.router.health.ejected("a", one.now()) is None, 3.0, "A's ejection of `a` to end")
        # B's ejection ended at the same moment; without A's word it would still be half-open (its next request a
        # trial whose failure ejects again at once). Its half-open flag is the only place this shows before a call.
        assert two.router.health.ejections._endpoints["a"].half_open
        watch = Watch(lambda: not two.router.health.ejections._endpoints["a"].half_open, 1.0)
        one.chat()  # the half-open trial: `a` answers, A restores it
        assert sent_by(a) == {"A": 3}
        restored = watch.seen("B to apply the restoration") - a.requests[-1].received_at
        assert not store.hexists(health, "e|a"), "the restoration deleted the shared entry"
        a.push(Reply.error(503))
        two.chat()
        assert sent_by(a) == {"A": 3, "B": 1}
        assert two.router.health.ejected("a", two.now()) is None, "one 503 after a restoration does not eject"
        measured(
            f"shared ejection: B knew of it {1000 * propagated:.1f} ms after `a` received the second failing "
            f"request; B applied A's restoration {1000 * restored:.1f} ms after `a` received the trial"
        )

    def test_insufficient_quota(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        """A's `insufficient_quota` takes `a` out of B's rotation; the hash lives as long as the quota ejection."""
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(prefix, {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}}, ordered("a", "b"))
        one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        a.push(Reply.rate_limited(retry_after_s=1, code="insufficient_quota"))
        one.chat()
        wait_until(lambda: two.router.health.out_of_quota("a", two.now()), 2.0, "B to learn of the quota")
        for _ in range(3):
            two.chat()
        assert sent_by(a) == {"A": 1}
        assert sent_by(b) == {"A": 1, "B": 3}
        assert store.hexists(Keys(prefix).health, "q|a")
        assert store.pttl(Keys(prefix).health) > 3600 * 1000, "expires after the quota ejection (3600 s), not before"


def rpm_6_then_backup(prefix: str, deployment: Deployment) -> tuple[FakeUpstream, FakeUpstream, dict[str, Any]]:
    """Upstreams ``limited`` (rpm 6) and ``backup``, and the configuration of route ``chat`` trying them in order."""
    limited, backup = deployment.upstream("limited"), deployment.upstream("backup")
    endpoints = {"limited": {"base_url": limited.base_url, "rpm": 6}, "backup": {"base_url": backup.base_url}}
    return limited, backup, config(prefix, endpoints, ordered("limited", "backup"))


@contextlib.contextmanager
def redis_away(backend: RedisBackend) -> Iterator[None]:
    """Within, ``backend``'s pings are refused as by a Redis that is away: its sync thread cannot recover (a fork's
    child inherits that too)."""
    ping = backend.redis.ping

    def refused(**_: Any) -> bool:
        raise redis.ConnectionError("Connection refused")

    backend.redis.ping = refused  # type: ignore[method-assign]
    try:
        yield
    finally:
        backend.redis.ping = ping  # type: ignore[method-assign]


def one_limited_router(prefix: str, deployment: Deployment, name: str = "A") -> tuple[Client, RedisBackend]:
    """Router ``name`` over one endpoint limited to 600 rpm, after one call, and its Redis backend."""
    limited = deployment.upstream("limited")
    client = deployment.client(
        config(prefix, {"limited": {"base_url": limited.base_url, "rpm": 600}}, ordered("limited")), name
    )
    client.chat()
    backend = client.router.state
    assert isinstance(backend, RedisBackend)
    return client, backend


def events_of(backend: RedisBackend) -> list[dict[str, Any]]:
    """Every event ``backend`` emits from now on, as ``{"event": name, **fields}``, in order (still emitted)."""
    seen: list[dict[str, Any]] = []
    emit = backend._emit

    def recording(event: str, fields: dict[str, Any]) -> None:
        seen.append({"event": event, **fields})
        emit(event, fields)

    backend._emit = recording
    return seen


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in events]


class TestSharedLimits:
    """Client-side rpm / tpm limits are one token bucket in Redis for every router."""

    def test_rpm(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        """rpm 6 across two routers: of 10 alternating calls, exactly 6 reach `limited`, the rest fail over."""
        limited, backup, cfg = rpm_6_then_backup(prefix, deployment)
        pair = [deployment.client(cfg, "A"), deployment.client(cfg, "B")]
        for n in range(10):
            pair[n % 2].chat()
        # Each router alone would have sent all 5 of its calls to `limited` (5 < 6).
        assert sent_by(limited) == {"A": 3, "B": 3}
        assert sent_by(backup) == {"A": 2, "B": 2}
        bucket = Keys(prefix).limits("limited")
        assert float(store.hget(bucket, "r") or -1) < 1, "the shared bucket is empty"
        assert 0 < store.pttl(bucket) <= 120_000

    def test_a_failed_grant_request_before_degrading_keeps_to_the_share_of_the_last_level(
        self, prefix: str, store: redis.Redis, deployment: Deployment
    ) -> None:
        """One grant request times out, too few to degrade: the call is decided on this process's share of what the
        shared bucket last held, not on the full-size local bucket (idle while shared, so always full), which let
        each such failure send one more request over the shared limit, never charged."""
        limited, backup, cfg = rpm_6_then_backup(prefix, deployment)
        client = deployment.client(cfg, "A")
        for _ in range(6):
            client.chat()
        assert sent_by(limited) == {"A": 6}, "the shared bucket is empty"
        backend = client.router.state
        assert isinstance(backend, RedisBackend)
        granting = backend.grants.script

        def timing_out(**_: Any) -> Any:
            raise redis.TimeoutError("Timeout reading from socket")  # as a Redis slow for one command

        backend.grants.script = timing_out
        try:
            for _ in range(2):
                assert client.chat() == MODEL
                backend.failures = 0  # as the sync thread's next flush would: never degraded here
            assert backend.live
        finally:
            backend.grants.script = granting
        assert sent_by(limited) == {"A": 6}, "nothing more on the empty shared limit"
        assert sent_by(backup) == {"A": 2}
        assert float(store.hget(Keys(prefix).limits("limited"), "r") or -1) < 1

    def test_redis_lost_again_while_switching_back_leaves_the_limits_on_local_buckets(
        self, prefix: str, deployment: Deployment
    ) -> None:
        """Redis answers the recovery's ping and its first flush, then fails again while the backend is switching
        back onto it (as the listener's command or a charge would, after that flush and before the limits are handed
        back; a call asks for a grant only after). The switch goes on to hand the limits back, then the backend
        takes them back to its own buckets, on the processes it counts now, and says so: ``state_degraded`` after
        ``state_restored``. Before, that failure was swallowed: the backend ended down with its limits still granted
        by Redis, so its calls were limited by the local buckets as the first outage had left them (full-size for
        one process of two here, and no event said so) until Redis came back."""
        limited, backup, cfg = rpm_6_then_backup(prefix, deployment)
        client = deployment.client(cfg, "A")
        assert client.chat() == MODEL
        backend = client.router.state
        assert isinstance(backend, RedisBackend)
        limits = client.router.health.rate_limits
        seen = events_of(backend)
        ping, reconcile = backend.redis.ping, backend.grants.reconcile
        lost_again = threading.Event()

        def down(**_: Any) -> bool:
            raise redis.ConnectionError("Connection refused")

        def failing_midway(processes: int = 1) -> int:
            found = reconcile(processes)
            backend.sync.members = 2  # a second process counted by the flush back: each takes half a limit now
            backend.redis.ping = down  # type: ignore[method-assign]  # away again: no recovery after this one
            backend.failed(redis.ConnectionError("Connection refused"))
            lost_again.set()
            return found

        backend.redis.ping = down  # type: ignore[method-assign]
        try:
            backend.failed(redis.ConnectionError("Connection refused"))
            assert not backend.live
            assert not limits.shared
            backend.grants.reconcile = failing_midway  # type: ignore[method-assign]
            backend.redis.ping = ping  # type: ignore[method-assign]  # back: the sync thread recovers
            assert lost_again.wait(5.0), "the sync thread to recover and lose Redis again"
            wait_until(lambda: not backend._recovering and not limits.shared, 5.0, "the limits back on local buckets")
            assert not backend.live
            wait_until(lambda: names(seen)[-1:] == ["holyroute.state_degraded"], 5.0, "the second state_degraded")
            assert names(seen) == ["holyroute.state_degraded", "holyroute.state_restored", "holyroute.state_degraded"]
            for _ in range(8):
                client.chat()
        finally:
            backend.redis.ping = ping  # type: ignore[method-assign]
            backend.grants.reconcile = reconcile  # type: ignore[method-assign]
        assert sent_by(limited)["A"] <= 1 + 3, "half of rpm 6 on this process's bucket (1 + 5 before: all of it)"
        assert sent_by(backup)["A"] >= 5

    def test_a_recovery_waits_for_the_switch_to_local_buckets_to_end(
        self, prefix: str, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A call's failing command switches the backend to local buckets while Redis is back already: the sync
        thread's recovery waits until that switch is over. Before, it could run in the middle of it (the backend is
        marked down first, its limits switched after): back on Redis, the limits were then switched to local
        buckets behind it, and the backend stayed live with each limit cut to this process's share on top of the
        shared one, and its ``state_degraded`` after its ``state_restored``."""
        client, backend = one_limited_router(prefix, deployment)
        seen = events_of(backend)
        share = RateLimits.share

        def slow_to_switch(self: RateLimits, shared: bool, *args: Any) -> dict[str, tuple[int, int]]:
            if not shared:  # the degrading thread, between marking the backend down and switching its limits
                backend.wake.set()  # as a health change another call publishes meanwhile: the sync thread runs
                deadline = time.monotonic() + 0.5  # time enough for it to recover (it tries every 50 ms)
                while not backend.live and time.monotonic() < deadline:
                    time.sleep(0.01)
            return share(self, shared, *args)

        monkeypatch.setattr(RateLimits, "share", slow_to_switch)
        backend.failures = 3
        backend.failed(redis.ConnectionError("Connection refused"))  # Redis itself answers: back at once
        wait_until(lambda: backend.live and not backend._recovering, 5.0, "A to be back on Redis")
        assert client.router.health.rate_limits.shared, "back on Redis, the limits are the shared ones"
        assert names(seen) == ["holyroute.state_degraded", "holyroute.state_restored"]

    def test_redis_lost_again_at_the_first_flush_back_stays_down_without_another_event(
        self, prefix: str, deployment: Deployment
    ) -> None:
        """The first flush of a switch back fails: the limits were never handed back, the backend stays down as it
        said, and the next recovery gets it back. One ``state_degraded`` and one ``state_restored`` in all."""
        client, backend = one_limited_router(prefix, deployment)
        seen = events_of(backend)
        flush = backend.sync.flush
        failed_once = threading.Event()

        def failing_once() -> bool:
            if backend._recovering and not failed_once.is_set():
                failed_once.set()
                backend.failed(redis.ConnectionError("Connection refused"))
                return False
            return flush()

        backend.sync.flush = failing_once  # type: ignore[method-assign]
        try:
            backend.failures = 3
            backend.failed(redis.ConnectionError("Connection refused"))  # Redis itself answers: back at once
            assert failed_once.wait(5.0), "the sync thread to try to switch back"
            wait_until(lambda: backend.live and client.router.health.rate_limits.shared, 5.0, "A back on Redis")
        finally:
            backend.sync.flush = flush  # type: ignore[method-assign]
        assert names(seen) == ["holyroute.state_degraded", "holyroute.state_restored"]

    def test_a_switch_back_that_raises_before_the_hand_back_leaves_the_backend_down_to_try_again(
        self, prefix: str, deployment: Deployment
    ) -> None:
        """Something other than Redis fails while switching back, before the limits are handed back (a bug, say):
        the backend stays down, and the sync thread's next recovery gets it back. Before, it was left live with its
        limits on local buckets, for good: a live backend is never recovered."""
        client, backend = one_limited_router(prefix, deployment)
        limits = client.router.health.rate_limits
        reconcile = backend.grants.reconcile
        raised = threading.Event()

        def broken_once(processes: int = 1) -> int:
            if not raised.is_set():
                raised.set()
                raise RuntimeError("a bug in the switch back")
            return reconcile(processes)

        backend.grants.reconcile = broken_once  # type: ignore[method-assign]
        try:
            backend.failures = 3
            backend.failed(redis.ConnectionError("Connection refused"))  # Redis itself answers: back at once
            assert raised.wait(5.0), "the sync thread to try to switch back"
            wait_until(lambda: backend.live and limits.shared, 5.0, "A back on Redis, its limits granted there")
        finally:
            backend.grants.reconcile = reconcile  # type: ignore[method-assign]

    def test_an_interrupted_switch_to_local_buckets_is_ended_by_the_sync_thread(
        self, prefix: str, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A KeyboardInterrupt in the thread switching to local state, before the limits moved: the backend is down
        with its limits still granted by Redis. The sync thread ends that switch (with its event), Redis still away.
        """
        client, backend = one_limited_router(prefix, deployment)
        limits = client.router.health.rate_limits
        seen = events_of(backend)
        share = RateLimits.share
        interrupted = [False]

        def interrupting(self: RateLimits, shared: bool, *args: Any) -> dict[str, tuple[int, int]]:
            if not shared and not interrupted[0]:
                interrupted[0] = True
                raise KeyboardInterrupt
            return share(self, shared, *args)

        def down(**_: Any) -> bool:
            raise redis.ConnectionError("Connection refused")

        monkeypatch.setattr(RateLimits, "share", interrupting)
        monkeypatch.setattr(backend.redis, "ping", down)  # Redis stays away: only the switch is ended
        backend.failures = 3
        with pytest.raises(KeyboardInterrupt):
            backend.failed(redis.ConnectionError("Connection refused"))
        assert not backend.live
        assert backend._degrading is None, "the interrupted switch is not left marked under way"
        backend.wake.set()
        wait_until(lambda: not limits.shared, 5.0, "the sync thread to end the switch")
        assert not backend.live
        assert names(seen) == ["holyroute.state_degraded"]
        assert seen[0]["reason"].startswith("_Stranded: the switch to this process's own state was not finished")

    def _back_after_two_seconds(
        self, prefix: str, store: redis.Redis, deployment: Deployment, meanwhile: Callable[[RedisBackend], None]
    ) -> tuple[float, float]:
        """Two processes share rpm 600; A loses Redis for 2 s, with the bucket empty as it last saw it, while B is
        presumed away as long. ``meanwhile`` sets up what else A carries back; A comes back on its own. The bucket's
        hold for B and its level once A is back."""
        limited = deployment.upstream("limited")
        cfg = config(prefix, {"limited": {"base_url": limited.base_url, "rpm": 600}}, ordered("limited"))
        a, b = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        a.chat()
        b.chat()
        backend = a.router.state
        assert isinstance(backend, RedisBackend)
        wait_until(lambda: backend.sync.members == 2, 2.0, "both processes to be counted")
        bucket = Keys(prefix).limits("limited")
        with redis_away(backend):  # no recovery until it is back
            backend.failures = 3
            backend.failed(redis.ConnectionError("Connection refused"))
            assert not backend.live
            # The outage began 2 s ago with an empty bucket, as A last saw it, last granted from then (Redis's clock
            # and A's).
            seconds, micros = store.time()
            ago = f"{seconds + micros / 1e6 - 2.0:.6f}"
            store.hset(bucket, mapping={"r": "0", "rt": ago, "gs": ago})
            backend.grants.levels["limited"] = (0, 0, backend.clock() - 2.0)
            backend._down_since = backend.clock() - 2.0
            meanwhile(backend)
        wait_until(lambda: backend.live and not backend._recovering, 5.0, "A to be back on Redis")
        return float(store.hget(bucket, "h") or 0), float(store.hget(bucket, "r") or 0)

    def test_requests_spared_as_the_backend_degraded_do_not_cost_the_first_one_back_its_hold(
        self, prefix: str, store: redis.Redis, deployment: Deployment
    ) -> None:
        """A grant request fails in one thread while another degrades the backend: the request is given out on this
        process's share (``Grants.spare``) after the degrading thread took what was spared so far. Charged by the
        first flush back, before the charge that holds the other processes' presumed use, it wrote the bucket just
        then, which read as "some process never left" (the bucket was judged by its last write, not its last grant):
        no hold was made, and the first process back could take again what the others had given out (the Sentinel
        failover test's excursions above the line)."""

        def spared(backend: RedisBackend) -> None:
            backend.grants.spared["limited"] = (600, 1)  # the racing thread's request, after failed() took the rest

        held, level = self._back_after_two_seconds(prefix, store, deployment, spared)
        assert held >= 9, "B's share of the 20 or so the bucket refilled is held for B (nothing was, before)"
        assert level <= 14, "A's own request charged and B's share held, not left in the bucket for A to take"

    def test_a_new_master_is_reconciled_after_the_way_back_charge(
        self, prefix: str, store: redis.Redis, deployment: Deployment
    ) -> None:
        """Back after a failover, A tells the new master what its old one granted A and never passed on. The first
        flush back does so as soon as it sees the new master, writing the bucket before the charge that holds the
        other processes' presumed use; that write is no grant, so the charge still holds their share."""

        def granted_elsewhere(backend: RedisBackend) -> None:
            rpm, total = backend.grants.granted["limited"]
            backend.grants.granted["limited"] = (rpm, total + 3)  # 3 more, granted by a master since replaced
            backend.sync._master = "the old master"

        held, level = self._back_after_two_seconds(prefix, store, deployment, granted_elsewhere)
        assert held >= 9, "B's share is held for B (nothing was, before)"
        assert level <= 14 - 3, "and the 3 the new master did not know of are taken too"

    def test_tpm(self, prefix: str, deployment: Deployment) -> None:
        """tpm 3500 across two routers, calls of about 1020 estimated tokens that use 1100: 3 fit, the rest fail
        over."""
        limited, backup = deployment.upstream("limited"), deployment.upstream("backup")
        cfg = config(
            prefix,
            {"limited": {"base_url": limited.base_url, "tpm": 3500}, "backup": {"base_url": backup.base_url}},
            ordered("limited", "backup"),
        )
        limited.push(*[used(100, 1000, MODEL)] * 3)  # settled with this usage: each call takes 1100 in the end
        pair = [deployment.client(cfg, "A"), deployment.client(cfg, "B")]
        for n in range(8):
            pair[n % 2].chat(max_tokens=1000)
        assert sent_by(limited) == {"A": 2, "B": 1}
        assert sent_by(backup) == {"A": 2, "B": 3}


IN_HOUSE = "in-house-model"  # a model with no known context window: any max_tokens reaches the upstream


def settling(prefix: str, endpoint: str) -> dict[str, Any]:
    """One route on ``endpoint`` (tpm 10000, model :data:`IN_HOUSE`), alone and with no wait for a limit: a call
    it cannot take is a local 429 at once."""
    made = config(
        prefix,
        {"limited": {"base_url": endpoint, "tpm": 10_000}},
        {"chat": {"targets": [{"model": IN_HOUSE, "endpoints": ["limited"]}]}},
    )
    made["retry"]["max_wait_s"] = 0
    return made


def used(prompt: int, completion: int, model: str = IN_HOUSE) -> Reply:
    """A chat completion by ``model`` that used ``prompt`` + ``completion`` tokens."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    message = {"role": "assistant", "content": "hi"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    )


def tpm_level(store: redis.Redis, prefix: str) -> float:
    """What the shared tpm bucket of `limited` held when it was last written."""
    return float(store.hget(Keys(prefix).limits("limited"), "t") or 10_000)


class TestSharedTpmSettlement:
    """A call's shared tpm grant is settled with what it used when it ends, for every router sharing the bucket."""

    def test_a_rejected_call_takes_nothing_for_the_next_calls(self, prefix: str, deployment: Deployment) -> None:
        """max_tokens 10**12 answered 400 took the whole bucket; the next calls, here and in another router, are
        sent (none is a local 429)."""
        limited = deployment.upstream("limited")
        cfg = settling(prefix, limited.base_url)
        a, b = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        limited.push(Reply.error(400, "max_tokens is too large"))
        with pytest.raises(openai.BadRequestError):
            a.chat(max_tokens=10**12)
        assert a.chat(max_tokens=1000) == IN_HOUSE, "the same router's next call, at once"
        assert b.chat(max_tokens=1000) == IN_HOUSE, "another router's"
        assert sent_by(limited) == {"A": 2, "B": 1}

    def test_the_credit_reaches_the_other_routers_without_another_call(
        self, prefix: str, store: redis.Redis, deployment: Deployment
    ) -> None:
        """The sync thread carries the credit to Redis (no round trip of its own on the request path)."""
        limited = deployment.upstream("limited")
        cfg = settling(prefix, limited.base_url)
        a, b = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        limited.push(Reply.error(400, "max_tokens is too large"))
        with pytest.raises(openai.BadRequestError):
            a.chat(max_tokens=10**12)
        wait_until(lambda: tpm_level(store, prefix) >= 9_000, 2.0, "the 400's tokens back in the shared bucket")
        assert b.chat(max_tokens=8_000) == IN_HOUSE
        assert sent_by(limited) == {"A": 1, "B": 1}

    def test_a_debit_is_corrected_to_the_usage(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        """More used than estimated is taken from the shared bucket; less is given back."""
        limited = deployment.upstream("limited")
        a = deployment.client(settling(prefix, limited.base_url), "A")
        limited.push(used(3000, 1000))
        a.chat(max_tokens=5)  # estimated a few dozen tokens, used 4000
        # Refill only raises the bucket (10000 / 60 a second): below 7000 only if the 4000 were taken.
        wait_until(lambda: tpm_level(store, prefix) < 7_000, 2.0, "the extra usage taken from the shared bucket")
        before = tpm_level(store, prefix)
        limited.push(used(10, 20))
        a.chat(max_tokens=3000)  # estimated over 3000 tokens, used 30
        wait_until(lambda: tpm_level(store, prefix) > before - 100, 2.0, "the unused estimate given back")

    def test_the_bucket_stays_within_its_capacity(self, prefix: str, store: redis.Redis) -> None:
        """Whatever is owed, the shared bucket stays within [-tpm, tpm], and so does what one process keeps owing
        (twice the limit at most); a credit to a missing bucket (a full one) writes nothing."""
        backend = RedisBackend(load_config(settling(prefix, NOWHERE)).state, emit=lambda name, fields: None)
        key = Keys(prefix).limits("limited")
        try:
            backend.sync.settle_script(keys=[key], args=[10_000, 10**15, 120_000])
            assert not store.exists(key)
            for owed in (-(10**15), 10**15, -(10**15), -5, 3, 10**15):
                backend.sync.settle_script(keys=[key], args=[10_000, owed, 120_000])
                assert -10_000 <= float(store.hget(key, "t") or "nan") <= 10_000
            assert 0 < store.pttl(key) <= 120_000
            for tokens in (10_000, 10_000, 10_000, -10_000):
                backend.settle("limited", 10_000, tokens)
            assert backend.grants.owed == {"limited": (10_000, 10_000)}, "20000 at most, then 10000 taken"
        finally:
            backend.redis.close()

    def test_async(self, prefix: str, deployment: Deployment) -> None:
        """The async transport settles the same way."""
        limited = deployment.upstream("limited")
        cfg = settling(prefix, limited.base_url)
        limited.push(Reply.error(400, "max_tokens is too large"))

        async def run() -> str:
            http = holyroute.async_client(cfg)
            sdk = openai.AsyncOpenAI(api_key="unused", base_url=NOWHERE, http_client=http, max_retries=0)
            try:
                messages: Any = [{"role": "user", "content": "hi"}]
                with pytest.raises(openai.BadRequestError):
                    await sdk.chat.completions.create(model="chat", messages=messages, max_tokens=10**12)
                answer = await sdk.chat.completions.create(model="chat", messages=messages, max_tokens=8_000)
                return answer.model
            finally:
                await sdk.close()

        assert asyncio.run(asyncio.wait_for(run(), timeout=20)) == IN_HOUSE
        assert len(limited.requests) == 2


class TestRollout:
    """Rollout state changed from the CLI is followed by every router; the status merges every router's calls."""

    def test_status_merges_and_every_router_follows_the_cli(
        self,
        prefix: str,
        store: redis.Redis,
        tmp_path: Path,
        deployment: Deployment,
        capsys: pytest.CaptureFixture[str],
        *,
        measured: Callable[[str], None],
    ) -> None:
        """24 calls at 50% counted once each in `status --json`; promote then abort reach both routers in 1 s."""
        main = deployment.upstream("main")
        path = write_config(
            tmp_path,
            config(
                prefix,
                {"main": {"base_url": main.base_url}},
                {"chat": rollout_route("main", [{"set_weight": 50}, {"pause": {}}])},
            ),
        )
        # The routers' events would go to stdout, where the CLI writes its JSON: capture them.
        with capture_logs():
            pair = [deployment.client(path, "A"), deployment.client(path, "B")]
            assert [(c.engine().state.weight, c.engine().state.status) for c in pair] == [(50.0, "paused")] * 2
            for n in range(24):
                pair[n % 2].chat()

            served = Counter(request.model for request in main.requests)
            assert set(served) == {STABLE, CANDIDATE}, "at 50% both arms serve"

            def shared_calls() -> int:
                keys = store.scan_iter(match=f"{prefix}:{{rollout:chat}}:m:*")
                return sum(int(store.hget(key, "calls") or 0) for key in keys)

            wait_until(lambda: shared_calls() == 24, 2.0, "every router's measurements in Redis")
            assert cli.main(["rollout", "status", "--config", str(path), "--json"]) == 0
            [row] = json.loads(capsys.readouterr().out)
            assert (row["route"], row["status"], row["weight"]) == ("chat", "paused", 50.0)
            assert {arm: numbers["calls"] for arm, numbers in row["arms"].items()} == {
                STABLE: served[STABLE],
                CANDIDATE: served[CANDIDATE],
            }

            def followed(weight: float, status: str) -> Callable[[], bool]:
                return lambda: all((c.engine().state.weight, c.engine().state.status) == (weight, status) for c in pair)

            lags = {}
            for command, weight, status, model in (
                ("promote", 100.0, "completed", CANDIDATE),
                ("abort", 0.0, "aborted", STABLE),
            ):
                watch = Watch(followed(weight, status), 1.5)
                launched = time.time()
                assert cli.main(["rollout", command, "chat", "--config", str(path)]) == 0
                returned = time.time()
                lags[command] = (returned - launched, watch.seen(f"both routers to follow {command}") - launched)
                assert lags[command][1] < 1.0, f"both routers followed {command} within 1 s of the CLI starting"
                assert {c.chat() for c in pair for _ in range(3)} == {model}
        capsys.readouterr()
        measured(
            f"rollout (in process): status counted {dict(served)} from two routers; "
            + "; ".join(
                f"{command}: the CLI ran {1000 * ran:.0f} ms, both routers followed {1000 * lag:.0f} ms after it "
                "started"
                for command, (ran, lag) in lags.items()
            )
        )


class TestSharedSpend:
    """Spend counters are summed in Redis: every router sees every router's spend."""

    def test_add_spend(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        up = deployment.upstream("a")
        cfg = config(prefix, {"a": {"base_url": up.base_url}}, ordered("a"))
        one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        one.router.state.add_spend("route:chat", 0.25)
        two.router.state.add_spend("route:chat", 0.5)
        two.router.state.add_spend("route:chat", 0.125)

        def everyone_sees(total: float) -> bool:
            return all(
                c.router.state.spent("route:chat", period) == pytest.approx(total)
                for c in (one, two)
                for period in ("hour", "day", "month")
            )

        wait_until(lambda: everyone_sees(0.875), 2.0, "both routers to see 0.875 USD")
        spend_keys = list(store.scan_iter(match=f"{prefix}:{{spend}}:*"))
        assert len(spend_keys) == 3, "one hash per period"
        assert {float(store.hget(key, "route:chat") or 0) for key in spend_keys} == {0.875}

    def test_shadow_cap_reached_by_one_router_stops_the_other(self, prefix: str, deployment: Deployment) -> None:
        """A's first shadow copy spends past the day's cap; B then mirrors nothing."""
        served, shadow = deployment.upstream("served"), deployment.upstream("shadow")
        routes = {
            "chat": {
                "targets": [{"model": "gpt-4o", "endpoints": ["served"]}],
                "shadow": {"model": "gpt-4.1", "endpoints": ["shadow"], "sample": 1.0, "max_cost_usd_per_day": 1e-9},
            }
        }
        cfg = config(prefix, {"served": {"base_url": served.base_url}, "shadow": {"base_url": shadow.base_url}}, routes)
        one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
        with capture_logs() as logs:
            one.chat()
            wait_until(lambda: named(logs, "holyroute.request")[1:], 2.0, "A's shadow copy to finish")
            [copy] = [e for e in named(logs, "holyroute.request") if e["shadow"]]
            assert copy["cost_usd"] > 1e-9
            wait_until(
                lambda: two.router.state.spent("shadow:chat", "day") == pytest.approx(copy["cost_usd"]),
                2.0,
                "B to see A's shadow spend",
            )
            body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
            call = two.router.begin("POST", "/v1/chat/completions", "", {}, body)
            assert call is not None
            assert call.shadow is None, "B decides not to mirror"
            for _ in range(3):
                two.chat()
        assert len(shadow.requests) == 1
        assert sent_by(served) == {"A": 1, "B": 3}


class TestKeys:
    """Every key is under the prefix, carries a Redis Cluster hash tag, and expires, except a rollout's state."""

    def test_every_key(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        a, b, main = deployment.upstream("a"), deployment.upstream("b"), deployment.upstream("main")
        cfg = config(
            prefix,
            {
                "a": {"base_url": a.base_url, "rpm": 100},
                "b": {"base_url": b.base_url},
                "main": {"base_url": main.base_url},
            },
            {**ordered("a", "b"), "canary": rollout_route("main", [{"set_weight": 50}, {"pause": {}}])},
        )
        client = deployment.client(cfg, "A")
        a.push(Reply.rate_limited(retry_after_s=5))
        for _ in range(3):
            client.chat()
            client.chat("canary")
        client.router.state.add_spend("route:chat", 0.01)
        keys = Keys(prefix)
        assert keys.members == f"{prefix}:{{members}}"
        assert store.pttl(keys.members) > 0, "a live process's heartbeat expires if it dies without closing"
        client.close()  # flushes what is pending

        found = sorted(key.decode() for key in store.scan_iter(match=f"{prefix}*", count=1000))
        tags = set()
        persistent = []
        for key in found:
            assert key.startswith(f"{prefix}:"), key
            tag = re.search(r"\{([^{}]+)\}", key)
            assert tag is not None, f"{key} has no hash tag"
            tags.add(tag.group(1))
            ttl = store.pttl(key)
            if ttl == -1:
                persistent.append(key)
            else:
                assert ttl > 0, key
        # The members set is gone: the only process closed, and a closed process leaves it at once.
        assert tags == {"health", "limits:a", "rollout:canary", "spend"}
        assert persistent == [keys.rollout("canary")], "only the rollout's state never expires"
        assert keys.health in found
        assert keys.members not in found
        assert keys.limits("a") in found
        assert len([k for k in found if k.startswith(f"{prefix}:{{spend}}:")]) == 3
        assert any(k.startswith(f"{prefix}:{{rollout:canary}}:m:") for k in found), "measurements"


class TestUnreachable:
    """Redis not there at all: every call still succeeds on local state, with one event and no password shown."""

    @pytest.mark.parametrize("password", [False, True], ids=["no-password", "password"])
    def test_calls_succeed(
        self,
        password: bool,
        prefix: str,
        deployment: Deployment,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        port = free_port()
        auth = f":{PASSWORD}@" if password else ""
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(
            prefix,
            {"a": {"base_url": a.base_url, "rpm": 600}, "b": {"base_url": b.base_url}},
            ordered("a", "b"),
            url=f"redis://{auth}127.0.0.1:{port}/0",
        )
        with capture_logs() as logs:
            client = deployment.client(cfg, "A")
            served = [client.chat() for _ in range(6)]
            wait_until(lambda: named(logs, "holyroute.state_degraded"), 2.0, "the degraded event")
            client.close()
        assert served == [MODEL] * 6
        assert len(a.requests) + len(b.requests) == 6
        [degraded] = named(logs, "holyroute.state_degraded")
        assert degraded["redis"] == f"redis://127.0.0.1:{port}/0"
        assert "ConnectionError" in degraded["reason"]
        assert [e["outcome"] for e in named(logs, "holyroute.request")] == ["ok"] * 6
        assert named(logs, "holyroute.state_restored") == []
        assert PASSWORD not in repr(logs)
        assert PASSWORD not in caplog.text

    def test_a_degraded_process_serves_at_once(self, prefix: str, deployment: Deployment) -> None:
        """With Redis away from the start, this process's share of tpm 10000 starts full: a call of 8000 max_tokens
        is sent, not answered with a local 429."""
        limited = deployment.upstream("limited")
        cfg = settling(prefix, limited.base_url)
        cfg["state"]["url"] = f"redis://127.0.0.1:{free_port()}/0"
        with capture_logs() as logs:
            client = deployment.client(cfg, "A")
            assert client.chat(max_tokens=8_000) == IN_HOUSE
            client.close()
        assert len(named(logs, "holyroute.state_degraded")) == 1
        assert len(limited.requests) == 1


class TestRedisRestart:
    """Redis goes away mid-run and comes back on the same port, empty."""

    def test_outage_and_recovery(
        self,
        redis_server: RedisServer,
        deployment: Deployment,
        measured: Callable[[str], None],
    ) -> None:
        """No call fails; one degraded and one restored event; what was learnt meanwhile is pushed on return."""
        limited, backup, main = (
            deployment.upstream("limited"),
            deployment.upstream("backup"),
            deployment.upstream("main"),
        )
        prefix = "restart"
        keys = Keys(prefix)
        cfg = config(
            prefix,
            {
                "limited": {"base_url": limited.base_url, "rpm": 600},
                "backup": {"base_url": backup.base_url},
                "main": {"base_url": main.base_url},
            },
            {**ordered("limited", "backup"), "canary": rollout_route("main", [{"set_weight": 50}, {"pause": {}}])},
            url=redis_server.url,
        )
        outage_canary = 8
        with capture_logs() as logs:
            client = deployment.client(cfg, "A")
            engine = client.engine("canary")
            calls = 0
            for _ in range(5):
                client.chat()
                client.chat("canary")
                calls += 2
            inspect = redis_server.client()
            try:
                assert inspect.exists(keys.limits("limited")), "the rpm bucket is shared while Redis is up"
                window = engine.state.window
                measurement_keys = [keys.measurements("canary", window, arm) for arm in (STABLE, CANDIDATE)]
                wait_until(
                    lambda: sum(int(inspect.hget(key, "calls") or 0) for key in measurement_keys) == 5,
                    2.0,
                    "the canary's measurements in Redis",
                )
            finally:
                inspect.close()

            redis_server.stop()
            killed = time.monotonic()
            deadline = time.monotonic() + 3.0
            while not named(logs, "holyroute.state_degraded"):
                assert time.monotonic() < deadline, "no holyroute.state_degraded within 3 s of the kill"
                client.chat()
                calls += 1
            degraded_after = time.monotonic() - killed

            limited.push(Reply.rate_limited(retry_after_s=30))
            deadline = time.monotonic() + 3.0
            while client.router.health.cooldown("limited", MODEL, client.now()) is None:
                assert time.monotonic() < deadline, "`limited` never got a call (its local share) during the outage"
                client.chat()
                calls += 1
            for _ in range(outage_canary):
                client.chat("canary")
                calls += 1
            client.router.state.add_spend("route:chat", 0.125)
            assert client.router.state.spent("route:chat", "day") == pytest.approx(0.125), "pending, counted here"
            assert named(logs, "holyroute.state_restored") == []

            redis_server.start()
            restarted = time.monotonic()
            wait_until(lambda: named(logs, "holyroute.state_restored"), 5.0, "holyroute.state_restored")
            restored_after = time.monotonic() - restarted
            for _ in range(3):
                client.chat()
                calls += 1
            client.close()

        inspect = redis_server.client()
        try:
            cooldown = inspect.hget(keys.health, f"c|limited|{MODEL}")
            spend = [float(inspect.hget(key, "route:chat") or 0) for key in inspect.scan_iter(f"{prefix}:{{spend}}:*")]
            outage_measured = sum(int(inspect.hget(key, "calls") or 0) for key in measurement_keys)
        finally:
            inspect.close()
        assert cooldown is not None, "the cooldown made during the outage was pushed to Redis"
        assert float(cooldown.split()[0]) == pytest.approx(time.time() + 30, abs=10)
        assert spend == [0.125] * 3, "the spend counted during the outage was flushed (hour, day, month)"
        assert outage_measured == outage_canary, (
            "the canary's calls during the outage were flushed (Redis came back empty)"
        )
        assert len(named(logs, "holyroute.state_degraded")) == 1
        [restored] = named(logs, "holyroute.state_restored")
        assert [e["outcome"] for e in named(logs, "holyroute.request")] == ["ok"] * calls
        assert client.router.health.shared_limits, "back on the shared rpm bucket"
        measured(
            f"redis restart: {calls} calls, none failed; degraded {1000 * degraded_after:.0f} ms after "
            "redis-server exited, "
            f"restored {1000 * restored_after:.0f} ms after the restart (down_s {restored['down_s']}); "
            f"{restored['reason']}"
        )

    def test_rollout_state_survives_an_empty_restart(
        self, redis_server: RedisServer, tmp_path: Path, deployment: Deployment
    ) -> None:
        """After a completed rollout and a restart of an empty Redis, the CLI reports what the routers serve."""
        main = deployment.upstream("main")
        cfg = config(
            "lost",
            {"main": {"base_url": main.base_url}},
            {"chat": rollout_route("main", [{"set_weight": 50}, {"pause": {}}])},
            url=redis_server.url,
        )
        path = write_config(tmp_path, cfg)
        with capture_logs() as logs:
            client = deployment.client(path, "A")
            assert cli.main(["rollout", "promote", "chat", "--config", str(path), "--full"]) == 0
            wait_until(lambda: client.engine().state.status == "completed", 1.0, "the router to follow promote")
            redis_server.stop()
            wait_until(lambda: named(logs, "holyroute.state_degraded"), 3.0, "holyroute.state_degraded")
            redis_server.start()
            wait_until(lambda: named(logs, "holyroute.state_restored"), 5.0, "holyroute.state_restored")
            assert client.chat() == CANDIDATE, "the router still serves the candidate at 100%"
            rollouts = holyroute.Rollouts(path, emit=lambda event, fields: None)
            try:
                [status] = rollouts.status()
            finally:
                rollouts.close()
        assert (status["status"], status["weight"]) == ("completed", 100.0)


class TestAsync:
    """The async transport takes from the same shared buckets, through Redis's asyncio client."""

    def test_two_async_routers_share_rpm(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        """rpm 4 across two AsyncOpenAI clients: of 10 alternating calls, exactly 4 reach `limited`."""
        limited, backup = deployment.upstream("limited"), deployment.upstream("backup")
        cfg = config(
            prefix,
            {"limited": {"base_url": limited.base_url, "rpm": 4}, "backup": {"base_url": backup.base_url}},
            ordered("limited", "backup"),
        )

        async def run() -> list[str]:
            sdks = [
                openai.AsyncOpenAI(
                    api_key="unused", base_url=NOWHERE, http_client=holyroute.async_client(cfg), max_retries=0
                )
                for _ in range(2)
            ]
            try:
                served = []
                for n in range(10):
                    answer = await sdks[n % 2].chat.completions.create(
                        model="chat",
                        messages=[{"role": "user", "content": "hi"}],
                        extra_headers={"x-client": "AB"[n % 2]},
                    )
                    served.append(answer.model)
                return served
            finally:
                for sdk in sdks:
                    await sdk.close()

        assert asyncio.run(asyncio.wait_for(run(), timeout=20)) == [MODEL] * 10
        assert sent_by(limited) == {"A": 2, "B": 2}
        assert sent_by(backup) == {"A": 3, "B": 3}
        assert 0 < store.pttl(Keys(prefix).limits("limited")) <= 120_000


class TestAsyncGrantsUnderLoad:
    """64 calls in flight on one event loop: one grant request per endpoint at a time, and a loop too busy to read a
    fast reply on time does not make a healthy Redis look slow.

    ``timeout_ms`` is 100 here, not the default 10: what is shown is that the loop's lag (a quarter of a second, far
    past any timeout here) is not counted as Redis's, and a shared CI machine's Redis does stall for tens of
    milliseconds at times (once a loop's first request, which also connects and loads the script, found no reply
    within 50 ms, and this test failed on a healthy Redis: the backend did what it should for a slow one)."""

    TIMEOUT_MS = 100

    @staticmethod
    def busy_acquires(prefix: str, calls: int, busy_s: float) -> tuple[list[float | None], int, RedisBackend]:
        state = load_config(
            {
                "endpoints": {"limited": {"base_url": NOWHERE}},
                "routes": {"chat": {"targets": [{"model": MODEL, "endpoints": ["limited"]}]}},
                "state": {
                    "backend": "redis",
                    "url": REDIS_URL,
                    "prefix": prefix,
                    "timeout_ms": TestAsyncGrantsUnderLoad.TIMEOUT_MS,
                },
            }
        ).state
        backend = RedisBackend(state, emit=lambda event, fields: None)
        asked = 0
        aask = backend.grants.aask

        async def counted(*args: Any) -> float | None:
            nonlocal asked
            asked += 1
            return await aask(*args)

        backend.grants.aask = counted  # type: ignore[method-assign]

        async def call() -> float | None:
            time.sleep(busy_s)  # the work of a call between two awaits, holding the loop as real work would
            return await backend.aacquire("limited", 1_000_000, None, 10)

        async def run() -> list[float | None]:
            try:
                return await asyncio.gather(*(call() for _ in range(calls)))
            finally:
                await backend.grants.aclose()

        try:
            return asyncio.run(asyncio.wait_for(run(), timeout=20)), asked, backend
        finally:
            backend.close()

    def test_one_grant_request_at_a_time(self, prefix: str) -> None:
        granted, asked, backend = self.busy_acquires(prefix, calls=64, busy_s=0.0)
        assert granted == [0.0] * 64
        assert asked < 8  # each answer's lease covers the demand seen so far; 64 without coalescing
        assert backend.live
        assert backend.failures == 0

    def test_a_busy_loop_is_not_a_slow_redis(self, prefix: str) -> None:
        """Each call holds the loop 4 ms: the first reply is read some 250 ms late, long after the 100 ms timeout."""
        granted, asked, backend = self.busy_acquires(prefix, calls=64, busy_s=0.004)
        assert backend.grants._timeout == self.TIMEOUT_MS / 1000
        assert granted == [0.0] * 64
        assert backend.live
        assert backend.failures == 0
        assert asked < 8


class TestCli:
    """`holyroute rollout` and `holyroute check` read the shared state, and never print its password."""

    def test_rollout_cannot_reach_redis(
        self, prefix: str, tmp_path: Path, deployment: Deployment, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Exit 2 with a message that says nothing was changed, for reads and changes alike."""
        main = deployment.upstream("main")
        port = free_port()
        path = write_config(
            tmp_path,
            config(
                prefix,
                {"main": {"base_url": main.base_url}},
                {"chat": rollout_route("main", [{"set_weight": 50}, {"pause": {}}])},
                url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
            ),
        )
        for command in (["status", "--json"], ["promote", "chat"], ["abort", "chat"]):
            assert cli.main(["rollout", *command, "--config", str(path)]) == 2, command
            out, err = capsys.readouterr()
            assert out == ""
            assert f"the shared state at redis://127.0.0.1:{port}/0 cannot be reached" in err
            assert "(nothing was changed)" in err
            assert PASSWORD not in out + err

    def test_check_shows_shared_state(
        self,
        prefix: str,
        store: redis.Redis,
        tmp_path: Path,
        deployment: Deployment,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """One router alive, `a` cooling down after its 429: `check` lists both."""
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(prefix, {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}}, ordered("a", "b"))
        path = write_config(tmp_path, cfg)
        client = deployment.client(path, "A")
        a.push(Reply.rate_limited(retry_after_s=30))
        client.chat()
        wait_until(lambda: store.hexists(Keys(prefix).health, f"c|a|{MODEL}"), 2.0, "the cooldown in Redis")
        assert cli.main(["check", "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert "shared state redis://127.0.0.1:6379/0: 1 process(es) alive in the last 10s" in out
        cooling = re.search(rf"a/{MODEL}\s+cooldown\s+(\d+\.\d)s left\s+429 retry-after 30s", out)
        assert cooling is not None, out
        assert 20 < float(cooling.group(1)) <= 30
        assert "route chat: ok" in out

    def test_check_cannot_reach_redis(
        self, prefix: str, tmp_path: Path, deployment: Deployment, capsys: pytest.CaptureFixture[str]
    ) -> None:
        a = deployment.upstream("a")
        port = free_port()
        path = write_config(
            tmp_path,
            config(
                prefix, {"a": {"base_url": a.base_url}}, ordered("a"), url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
            ),
        )
        assert cli.main(["check", "--config", str(path)]) == 0, "the endpoints answer: Redis being away breaks no route"
        out, err = capsys.readouterr()
        assert f"shared state redis://127.0.0.1:{port}/0: UNREACHABLE (ConnectionError)" in out
        assert PASSWORD not in out + err


def _forked_worker(client: Client, results: Any) -> None:
    """Runs in a forked child: six calls through the client its parent built, then what its backend looks like."""
    backend = client.router.state
    served = [client.chat() for _ in range(6)]
    threads = [t.name for t in getattr(backend, "threads", []) if t.is_alive()]
    results.send({"served": served, "pid_seen": getattr(backend, "_pid", None), "threads": threads})
    results.close()


def _forked_mid_switch(client: Client, results: Any) -> None:
    """Runs in a forked child whose parent was switching between Redis and local state: one call, then whether
    it gets back on Redis (live, with its limits granted there) within 5 s."""
    backend = client.router.state
    vars(backend.redis).pop("ping", None)  # the parent's test may have kept its own sync thread away: not here
    limits = client.router.health.rate_limits
    client.chat()
    deadline = time.monotonic() + 5
    while not (getattr(backend, "live", False) and limits.shared) and time.monotonic() < deadline:
        time.sleep(0.01)
    results.send({"live": getattr(backend, "live", None), "shared": limits.shared})
    results.close()


def _forked_after_hand_back(client: Client, results: Any) -> None:
    """Runs in a forked child whose parent had just handed its limits back to Redis: the events of its first half
    second of routing, and whether it is on Redis."""
    backend = client.router.state
    assert isinstance(backend, RedisBackend)
    seen = events_of(backend)
    client.chat()
    time.sleep(0.3)
    results.send({"events": names(seen), "live": backend.live, "shared": client.router.health.rate_limits.shared})
    results.close()


def _what_the_child_holds(client: Client, results: Any) -> None:
    """Runs in a forked child: after one call, what it would charge the shared buckets with for its own local
    takes, and the rollout changes it would push."""
    backend = client.router.state
    assert isinstance(backend, RedisBackend)
    client.chat()
    results.send({"taken": client.router.health.taken_local(), "unsynced": sorted(backend.store._unsynced)})
    results.close()


def _idle_child(client: Client, results: Any) -> None:
    """Runs in a forked child that never routes (a multiprocessing worker doing other work): half a second."""
    time.sleep(0.5)
    results.send({"threads": [t.name for t in getattr(client.router.state, "threads", []) if t.is_alive()]})
    results.close()


def _routing_child(client: Client, results: Any) -> None:
    """Runs in a forked child that routes one call, then lets its sync thread run a few times."""
    client.chat()
    time.sleep(0.3)
    results.send({"threads": [t.name for t in getattr(client.router.state, "threads", []) if t.is_alive()]})
    results.close()


def _publishing_child(client: Client, results: Any) -> None:
    """Runs in a forked child: publishes a health change (what a cooldown or an ejection does), then routes one call
    and lets its sync thread run a few times."""
    backend = client.router.state
    backend.publish(HealthChange("cooldown", "other", "m", time.time() + 1, "429 no retry header"))
    client.chat()
    time.sleep(0.3)
    results.send({"threads": [t.name for t in getattr(backend, "threads", []) if t.is_alive()]})
    results.close()


def in_a_forked_child(client: Client, target: Callable[[Client, Any], None]) -> tuple[dict[str, Any], int, float]:
    """Fork, run ``target(client, pipe)`` in the child (:func:`tests.conftest.forked`, within 20 s)."""
    return forked(target, client, within_s=20)


class TestFork:
    """A client built before a fork (gunicorn --preload) still shares state from the child."""

    # Python 3.12+ warns that forking a threaded process may deadlock; that is the scenario under test.
    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_child_shares_the_parents_bucket(self, prefix: str, deployment: Deployment) -> None:
        limited, backup, cfg = rpm_6_then_backup(prefix, deployment)
        parent = deployment.client(cfg, "P")
        assert parent.chat() == MODEL  # the parent takes one of the six
        report, pid, _ = in_a_forked_child(parent, _forked_worker)
        assert report["pid_seen"] == pid != os.getpid(), "the backend noticed the fork"
        assert sorted(report["threads"]) == ["holyroute-state-listen", "holyroute-state-sync"]
        # One bucket for both processes: five more reach `limited`, the sixth call of the child fails over.
        assert sent_by(limited) == {"P": 6}
        assert sent_by(backup) == {"P": 1}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_child_forked_mid_switch_gets_back_on_redis(self, prefix: str, deployment: Deployment) -> None:
        """Forked while a thread of the parent was switching to local state (which a recovery waits for): that
        thread did not come along to end the switch, and the child's own sync thread still gets it back on Redis."""
        parent, backend = one_limited_router(prefix, deployment, "P")
        with backend._lock:  # as failed() leaves it while its thread switches the limits
            backend.live, backend._degrading = False, redis.ConnectionError("Connection refused")
        try:
            report, _, _ = in_a_forked_child(parent, _forked_mid_switch)
        finally:
            with backend._lock:
                backend._degrading = None  # the parent's own (imagined) switch ends: it recovers too
        assert report == {"live": True, "shared": True}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_child_forked_mid_recovery_gets_its_limits_back_on_redis(
        self, prefix: str, deployment: Deployment
    ) -> None:
        """Forked while the parent's sync thread was switching back onto Redis: marked live, its limits not handed
        back yet. The child is down until its own sync thread has switched back. Before, it stayed live with its
        limits on local buckets for good: no thread of its own ever recovers a live backend."""
        parent, backend = one_limited_router(prefix, deployment, "P")
        with redis_away(backend):  # the parent's own sync thread stays out of it
            backend.failed(redis.ConnectionError("Connection refused"))
            assert not parent.router.health.rate_limits.shared
            with backend._lock:  # as _resync leaves it before the hand-back
                backend.live, backend._recovering = True, True
            try:
                report, _, _ = in_a_forked_child(parent, _forked_mid_switch)
            finally:
                with backend._lock:
                    backend.live, backend._recovering = False, False
        assert report == {"live": True, "shared": True}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_child_forked_just_after_the_hand_back_stays_on_redis(self, prefix: str, deployment: Deployment) -> None:
        """Forked after the parent's switch back handed the limits to Redis, before that switch ended: the child is
        as consistent as a recovered backend, and stays on Redis. Before, it was marked down, switched to its own
        state and back (a state_degraded and a state_restored for nothing)."""
        client, backend = one_limited_router(prefix, deployment)
        with backend._lock:  # as _resync leaves it between the hand-back and recover()'s end
            backend._recovering = True
        try:
            report, _, _ = in_a_forked_child(client, _forked_after_hand_back)
        finally:
            with backend._lock:
                backend._recovering = False
        assert report == {"events": [], "live": True, "shared": True}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_child_without_rate_limits_gets_its_own_threads(self, prefix: str, deployment: Deployment) -> None:
        """A route without rpm/tpm limits never asks for a grant, which is where a child used to notice its fork:
        its threads never started, so it never shared health, rollouts or spend again. Started as it is forked."""
        plain = deployment.upstream("plain")
        parent = deployment.client(config(prefix, {"plain": {"base_url": plain.base_url}}, ordered("plain")), "P")
        parent.chat()
        report, pid, _ = in_a_forked_child(parent, _forked_worker)
        assert report["pid_seen"] == pid != os.getpid()
        assert sorted(report["threads"]) == ["holyroute-state-listen", "holyroute-state-sync"]

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_fork_while_another_thread_holds_the_backends_lock(self, prefix: str, deployment: Deployment) -> None:
        """The fork waits until no thread of the parent holds the backend's lock, so the child never inherits it
        held (nothing in the child would release it: its first request would hang on it)."""
        up = deployment.upstream("a")
        parent = deployment.client(config(prefix, {"a": {"base_url": up.base_url}}, ordered("a")), "P")
        parent.chat()
        backend = parent.router.state
        assert isinstance(backend, RedisBackend)
        holding, release = threading.Event(), threading.Event()

        def holder() -> None:
            with backend._lock:
                holding.set()
                release.wait(5.0)

        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        assert holding.wait(5.0)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        try:
            report, _, forked_s = in_a_forked_child(parent, _routing_child)
        finally:
            release.set()
            timer.cancel()
            thread.join(5.0)
        assert forked_s >= 0.2, "the fork waited for the lock"
        assert sorted(report["threads"]) == ["holyroute-state-listen", "holyroute-state-sync"]

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_fork_while_the_sync_thread_holds_its_wake_events_lock(self, prefix: str, deployment: Deployment) -> None:
        """The sync thread takes its wake event's inner lock each time it waits for work. Forked then, the child's
        copy stayed held for good: its first publish (every cooldown and ejection wakes the sync thread) hung."""
        up = deployment.upstream("a")
        parent = deployment.client(config(prefix, {"a": {"base_url": up.base_url}}, ordered("a")), "P")
        parent.chat()
        backend = parent.router.state
        assert isinstance(backend, RedisBackend)
        with held_by_another_thread(backend.wake._cond):  # type: ignore[attr-defined]  # what Event.wait() takes
            report, _, _ = in_a_forked_child(parent, _publishing_child)
        assert sorted(report["threads"]) == ["holyroute-state-listen", "holyroute-state-sync"]

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_child_takes_no_lock_but_the_backends_inside_the_fork(self, prefix: str, deployment: Deployment) -> None:
        """A parent's thread holds the leases' lock as the process forks: the child, which never routes, does not
        hang inside the fork on it (it did when the child dropped its inherited leases there)."""
        client, backend = one_limited_router(prefix, deployment)
        with held_by_another_thread(backend.leases._lock):
            report, _, _ = in_a_forked_child(client, _idle_child)
        assert report == {"threads": []}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_a_child_charges_and_pushes_none_of_its_parents_outage(self, prefix: str, deployment: Deployment) -> None:
        """The parent routed on its own buckets and aborted a rollout while Redis was away: both are the parent's to
        charge and push when Redis is back. The child's own take is its first call alone, and it has no rollout
        change to push (it had both: every child would charge the parent's requests again, and write its abort)."""
        limited = deployment.upstream("limited")
        cfg = config(
            prefix,
            {"limited": {"base_url": limited.base_url, "rpm": 600}},
            {**ordered("limited"), "canary": rollout_route("limited", [{"set_weight": 50}, {"pause": {}}])},
        )
        parent = deployment.client(cfg, "P")
        parent.chat()
        backend = parent.router.state
        assert isinstance(backend, RedisBackend)
        with redis_away(backend):  # for the parent and the child
            backend.failed(redis.ConnectionError("Connection refused"))
            parent.chat()
            parent.chat()
            parent.engine("canary").abort("broke while Redis was away")
            assert parent.router.health.taken_local() == {"limited": (2, 0)}
            assert sorted(backend.store._unsynced) == ["canary"]
            report, _, _ = in_a_forked_child(parent, _what_the_child_holds)
        assert report == {"taken": {"limited": (1, 0)}, "unsynced": []}

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    @pytest.mark.parametrize("child", [_idle_child, _routing_child], ids=["idle", "routing"])
    def test_a_child_sends_none_of_its_parents_queue(
        self, child: Callable[[Client, Any], None], prefix: str, store: redis.Redis, deployment: Deployment
    ) -> None:
        """The parent has spend queued for its next sync when it forks. A child that never routes starts no thread
        and is no member of the fleet; one that routes starts its own; neither sends the parent's queue again (it
        did, under the child's new origin, so the once-only check let it through: spend counted twice)."""
        up = deployment.upstream("a")
        cfg = config(prefix, {"a": {"base_url": up.base_url}}, ordered("a"))
        cfg["state"]["sync_interval_s"] = 3.0  # the parent's queue waits for the test to wake its sync thread
        parent = deployment.client(cfg, "P")
        parent.chat()
        backend = parent.router.state
        assert isinstance(backend, RedisBackend)
        backend.add_spend("team:fork", 1.0)
        report, _, _ = in_a_forked_child(parent, child)
        members = store.zcard(Keys(prefix).members)  # the child has exited: a member entry outlives it (10 s)
        routed = child is _routing_child
        assert sorted(report["threads"]) == (["holyroute-state-listen", "holyroute-state-sync"] if routed else [])
        assert members == (2 if routed else 1)

        def in_redis() -> list[float]:
            keys = store.scan_iter(match=f"{prefix}:{{spend}}:*")
            return sorted(float(store.hget(key, "team:fork") or 0) for key in keys)

        backend.wake.set()  # the parent's sync sends its queue
        wait_until(lambda: len(in_redis()) == 3, 5.0, "the parent's spend in Redis")
        for _ in range(2):  # two more syncs of the parent: anything else queued anywhere would be in Redis now
            since = time.time()
            backend.wake.set()
            wait_until(
                lambda s=since: float(store.zscore(Keys(prefix).members, backend.origin) or 0) > s, 5.0, "a sync"
            )
        assert in_redis() == [1.0, 1.0, 1.0], "once per period: the parent's, not the child's again"


def synced_twice(store: redis.Redis, client: Client, prefix: str) -> None:
    """Wait until ``client``'s sync thread has completed two more syncs (each stamps its member entry)."""
    origin = client.router.state.origin  # type: ignore[attr-defined]
    members = Keys(prefix).members
    for _ in range(2):
        since = time.time()

        def stamped(since: float = since) -> bool:
            return float(store.zscore(members, origin) or 0.0) > since

        wait_until(stamped, 2.0, "a sync")


class TestBadEntries:
    """One malformed message or entry in Redis is skipped with one event; the background threads live on, clients
    can still be built, and an absurd deadline is clamped to the configured maximum instead of degrading the
    backend."""

    GARBAGE = (
        b"\xff\xfe not utf-8",
        b"not json",
        b"[1, 2]",
        b'{"kind": "health", "k": "cooldown"}',
        b'{"kind": "health", "k": "cooldown", "e": "a", "m": "gpt-4o-mini", "u": "soon"}',
        b'{"kind": "rollout", "route": 7}',
        b'{"kind": "health", "k": "cooldown", "e": "a", "t": ' + b"9" * 400 + b"}",
    )

    def test_malformed_messages_and_entries(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(prefix, {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}}, ordered("a", "b"))
        keys = Keys(prefix)
        for n, junk in enumerate(self.GARBAGE):
            store.hset(keys.health, f"c|x{n}|m", b"9999999999 " + junk)
        store.hset(keys.health, "c|y|m", b"nonsense")
        with capture_logs() as logs:
            one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")  # built despite the bad entries
            for junk in self.GARBAGE:
                store.publish(keys.channel, junk)
            # Both threads of both routers are still running, and still follow: A's 429 reaches B.
            a.push(Reply.rate_limited(retry_after_s=30))
            one.chat()
            wait_until(lambda: two.router.health.cooldown("a", MODEL, two.now()) is not None, 2.0, "B to follow")
            for client in (one, two):
                backend = client.router.state
                assert all(thread.is_alive() for thread in backend.threads)  # type: ignore[attr-defined]
                assert backend.live  # type: ignore[attr-defined]
        invalid = named(logs, "holyroute.state_invalid")
        assert {entry["key"] for entry in invalid} >= {keys.channel, f"{keys.health} c|y|m"}
        assert named(logs, "holyroute.background_error") == []
        assert named(logs, "holyroute.state_degraded") == []
        reported = Counter((entry["key"], entry["problem"]) for entry in invalid)
        assert max(reported.values()) <= 2, "once per key and problem in each router"
        assert two.chat() == MODEL

    def test_absurd_deadline_is_clamped_and_the_backend_stays_live(
        self, prefix: str, store: redis.Redis, deployment: Deployment
    ) -> None:
        """A cooldown until the year 5000 (from a header like `99999999h`) lasts at most max_cooldown_s anywhere."""
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(prefix, {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}}, ordered("a", "b"))
        cfg["retry"]["max_cooldown_s"] = 60
        with capture_logs() as logs:
            one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
            far = time.time() + 3600 * 99_999_999
            one.router.state.publish(HealthChange("cooldown", "a", MODEL, until=far, reason="99999999h"))
            wait_until(lambda: two.router.health.cooldown("a", MODEL, two.now()) is not None, 2.0, "B to follow")
            store.publish(
                Keys(prefix).channel,
                json.dumps({"o": "elsewhere", "kind": "health", "k": "ejected", "e": "b", "u": 1e300}),
            )
            wait_until(lambda: two.router.health.live_changes(two.now(), time.time()), 2.0, "B to apply both")
            for client in (one, two):  # the change must not be refused and pushed again at the later syncs
                synced_twice(store, client, prefix)
            for client in (one, two):
                assert client.router.state.live  # type: ignore[attr-defined]
                wall = time.time()
                for change in client.router.health.live_changes(client.now(), wall):
                    limit = 60 if change.kind == "cooldown" else 300
                    assert change.until <= wall + limit + 1, change
            stored = store.hget(Keys(prefix).health, f"c|a|{MODEL}")
            assert stored is not None
            assert float(cast(bytes, stored).split(b" ")[0]) <= time.time() + 61
        assert named(logs, "holyroute.state_degraded") == []
        assert named(logs, "holyroute.state_write_failed") == []

    def test_loops_survive_an_exception_in_one_iteration(
        self, prefix: str, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        a, b = deployment.upstream("a"), deployment.upstream("b")
        cfg = config(prefix, {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}}, ordered("a", "b"))
        with capture_logs() as logs:
            one, two = deployment.client(cfg, "A"), deployment.client(cfg, "B")
            backend = two.router.state
            book = two.router.health
            real_apply = type(book).apply
            failures = {"left": 6}

            def flaky(self: Any, *args: Any) -> None:
                if self is book and failures["left"] > 0:
                    failures["left"] -= 1
                    raise RuntimeError("a bug in one iteration")
                real_apply(self, *args)

            monkeypatch.setattr(type(book), "apply", flaky)
            a.push(Reply.rate_limited(retry_after_s=30))
            one.chat()  # B's listener and sync thread both hit the bug, then recover
            wait_until(lambda: two.router.health.cooldown("a", MODEL, two.now()) is not None, 3.0, "B to follow")
            assert all(thread.is_alive() for thread in backend.threads)  # type: ignore[attr-defined]
        errors = named(logs, "holyroute.background_error")
        assert errors
        assert {entry["error"] for entry in errors} == {"RuntimeError"}
        assert len(errors) == len({entry["loop"] for entry in errors}), "once per loop and exception type"
        assert all("a bug" not in entry["reason"] for entry in errors), "the message (maybe a URL) is not echoed"

    def test_bad_rollout_state_keeps_the_last_good(
        self, prefix: str, store: redis.Redis, tmp_path: Path, deployment: Deployment
    ) -> None:
        """An aborted rollout whose key is overwritten with junk stays aborted; a new router holds at stable."""
        main = deployment.upstream("main")
        cfg = config(
            prefix, {"main": {"base_url": main.base_url}}, {"chat": rollout_route("main", [{"set_weight": 50}])}
        )
        key = Keys(prefix).rollout("chat")
        with capture_logs() as logs:
            running = deployment.client(cfg, "A")
            running.engine().abort("candidate broke")
            store.set(key, b'{"route": "chat", "weight": "fifty", "status": "progressing", "version": 99}')
            synced_twice(store, running, prefix)
            assert (running.engine().state.status, running.engine().state.weight) == ("aborted", 0.0)
            fresh = deployment.client(cfg, "B")
            assert (fresh.engine().state.status, fresh.engine().state.weight) == ("paused", 0.0)
            assert {fresh.chat() for _ in range(20)} == {STABLE}, "stable takes all traffic"
            assert store.get(key) is not None
        invalid = [entry for entry in named(logs, "holyroute.state_invalid") if entry["key"] == key]
        assert invalid
        assert "fifty" not in json.dumps(invalid)

    def test_rollout_key_of_another_type(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        """A rollout key that is a hash (WRONGTYPE for GET) is a bad entry, not a Redis outage."""
        main = deployment.upstream("main")
        route = {"chat": rollout_route("main", [{"set_weight": 50}])}
        cfg = config(prefix, {"main": {"base_url": main.base_url}}, route)
        key = Keys(prefix).rollout("chat")
        store.hset(key, "weight", "50")
        with capture_logs() as logs:
            client = deployment.client(cfg, "A")
            assert (client.engine().state.status, client.engine().state.weight) == ("paused", 0.0)
            assert {client.chat() for _ in range(5)} == {STABLE}
            assert client.router.state.live  # type: ignore[attr-defined]
        assert named(logs, "holyroute.state_degraded") == []
        assert [entry["key"] for entry in named(logs, "holyroute.state_invalid")] == [key]

    def test_refused_write_is_dropped_not_resent(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        """A write Redis refuses (here: spend into a key of another type) is reported once and dropped; the backend
        stays live instead of failing the same pipeline forever."""
        main = deployment.upstream("main")
        cfg = config(prefix, {"main": {"base_url": main.base_url}}, ordered("main"))
        for period in ("hour", "day", "month"):
            store.set(Keys(prefix).spend(period, period_key(period, time.time())), "not a hash")
        with capture_logs() as logs:
            client = deployment.client(cfg, "A")
            for _ in range(3):
                client.router.state.add_spend("route:chat", 0.5)
                synced_twice(store, client, prefix)
            assert client.router.state.live  # type: ignore[attr-defined]
            assert client.chat() == MODEL
        assert named(logs, "holyroute.state_degraded") == []
        refused = named(logs, "holyroute.state_write_failed")
        assert len(refused) == 1
        assert refused[0]["problem"] == "Redis refused a write (ResponseError)"

    def test_bad_counters_are_skipped(self, prefix: str, store: redis.Redis, deployment: Deployment) -> None:
        main = deployment.upstream("main")
        cfg = config(
            prefix, {"main": {"base_url": main.base_url}}, {"chat": rollout_route("main", [{"set_weight": 50}])}
        )
        keys = Keys(prefix)
        store.hset(keys.measurements("chat", 1, STABLE), mapping={"calls": "lots", "errors": "1" * 400, "l7": "2"})
        for period in ("hour", "day", "month"):
            store.hset(keys.spend(period, period_key(period, time.time())), mapping={"route:chat": "inf"})
        with capture_logs():
            client = deployment.client(cfg, "A")
            assert client.chat() in (STABLE, CANDIDATE)
            assert client.router.state.spent("route:chat", "day") >= 0.0
            assert all(thread.is_alive() for thread in client.router.state.threads)  # type: ignore[attr-defined]


class TestExplainReadOnly:
    """``holyroute explain`` against a Redis configuration writes no key."""

    def test_no_keys_written(
        self, prefix: str, store: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        cfg = config(
            prefix,
            {"main": {"base_url": "http://127.0.0.1:9/v1"}},
            {"chat": rollout_route("main", [{"set_weight": 20}, {"pause": {}}])},
        )
        path = write_config(tmp_path, cfg)
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        with capture_logs():
            assert cli.main(["explain", str(request), "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert "weight 20%" in out
        assert list(store.scan_iter(match=f"{prefix}:*")) == [], "explain wrote nothing to Redis"
