"""Many processes, one router: worker processes sharing the real Redis at 127.0.0.1:6379.

Each test starts four worker processes (``python -m tests._worker``, the official SDK over ``holyroute.client``)
against fake upstreams served from this process, and judges what the upstreams received (``received_at`` is wall
time, comparable across processes) and what the workers report. Each uses its own key prefix and deletes its keys
afterwards; each is skipped when no Redis answers. Every wait is bounded in time, every worker in calls and time.

These are the one place where the tests depend on real time: that is what they measure. The figures are printed
(shown without ``-s``) for the state backend's closing note.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

import holyroute
from holyroute.state.redis.payloads import Keys
from holyroute.testing import FakeUpstream, RecordedRequest, Reply

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4


# ---- helpers --------------------------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own in the real Redis; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        pytest.skip(
            "no Redis at 127.0.0.1:6379 (start one: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "
            '--save "" --appendonly no)'
        )
    name = f"holyroute-test-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def write_config(
    directory: Path,
    prefix: str,
    endpoints: dict[str, dict[str, Any]],
    route: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """A configuration file with one route, ``chat``, and the Redis state backend under ``prefix``."""
    config = {
        "endpoints": endpoints,
        "routes": {"chat": route},
        # A Redis answer slower than timeout_ms (default 10 ms) counts as Redis down: on a loaded two-core test
        # machine that would measure the scheduler, not the sharing. Degraded operation is another behaviour.
        "state": {"backend": "redis", "url": REDIS_URL, "prefix": prefix, "timeout_ms": 1000, **(state or {})},
        **extra,
    }
    path = directory / "holyroute.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def wait_until(done: Callable[[], bool], timeout_s: float, what: str, workers: Workers | None = None) -> None:
    """Poll ``done`` every 20 ms for at most ``timeout_s``; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if workers is not None:
            workers.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.02)


class Workers:
    """The worker processes of one test, and the files they are steered by (see tests/_worker.py)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path, *options: str, count: int = WORKERS, first: int = 1) -> None:
        """Start ``count`` workers (numbered from ``first``) and wait until each has built its client."""
        for n in range(first, first + count):
            with (self.run_dir / f"worker-{n}.log").open("wb") as log:
                command = [sys.executable, "-m", "tests._worker", str(config), str(self.run_dir), str(n), *options]
                self.procs.append(
                    subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                )
        ready = [self.run_dir / f"ready-{n}" for n in range(first, first + count)]
        wait_until(lambda: all(path.exists() for path in ready), 40, "the workers to start", self)

    def go(self, until: float | None = None) -> None:
        """Let every worker start calling, until ``until`` (Unix time) or until :meth:`stop`."""
        partial = self.run_dir / ".go"
        partial.write_text(json.dumps({"until": until}))
        partial.replace(self.run_dir / "go")

    def stop(self) -> None:
        (self.run_dir / "stop").touch()

    def log(self, n: int) -> str:
        return (self.run_dir / f"worker-{n}.log").read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        for n, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None and code != 0:
                pytest.fail(f"worker {n} exited with {code}:\n{self.log(n)}")

    def results(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Wait for every worker to finish (bounded) and read what each reported."""
        deadline = time.monotonic() + timeout_s
        for n, proc in enumerate(self.procs, start=1):
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {n} still running after {timeout_s:g}s:\n{self.log(n)}")
            if code != 0:
                pytest.fail(f"worker {n} exited with {code}:\n{self.log(n)}")
        return [json.loads((self.run_dir / f"result-{n}.json").read_text()) for n in range(1, len(self.procs) + 1)]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    group = Workers(run_dir)
    try:
        yield group
    finally:
        group.kill()  # only when a test failed before its workers finished


def failures(results: list[dict[str, Any]]) -> list[str]:
    """Every failed call, and every worker that lost Redis (its figures would then be its own, not shared)."""
    failed = [f"worker {r['worker']}: {call['error']}" for r in results for call in r["calls"] if "error" in call]
    return failed + [
        f"worker {r['worker']}: Redis degraded" for r in results if "holyroute.state_degraded" in r["events"]
    ]


def worker_of(request: RecordedRequest) -> str:
    return request.headers.get("x-worker", "?")


class RolloutChanges:
    """When (``time.time()``) each rollout change was published on the prefix's channel: the moment it was written,
    since the state and the message go in one transaction."""

    def __init__(self, prefix: str) -> None:
        self.times: list[float] = []
        self._client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(Keys(prefix).channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message is not None and json.loads(message["data"]).get("kind") == "rollout":
                self.times.append(time.time())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()


@pytest.fixture
def rollout_changes(prefix: str) -> Iterator[RolloutChanges]:
    changes = RolloutChanges(prefix)
    try:
        yield changes
    finally:
        changes.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "holyroute.cli", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# ---- the behaviours -------------------------------------------------------------------------------------------


class TestSharedCooldown:
    """A 429 seen by one worker process cools the endpoint down in every other worker within 100 ms."""

    def test_other_workers_stop_sending_to_the_cooled_endpoint(
        self, prefix: str, tmp_path: Path, workers: Workers, measured: Callable[[str], None]
    ) -> None:
        """Three workers send nothing to `a` later than 100 ms after the 429 and keep succeeding through `b`."""
        with FakeUpstream("a") as a, FakeUpstream("b") as b:
            config = write_config(
                tmp_path,
                prefix,
                {"a": {"base_url": a.base_url}, "b": {"base_url": b.base_url}},
                {"targets": [{"model": "gpt-4o-mini", "endpoints": ["a", "b"]}]},
            )
            workers.start(config, "--sleep", "0.005")
            workers.go()

            def calls_at(up: FakeUpstream, after: float = 0.0) -> Counter[str]:
                return Counter(worker_of(r) for r in list(up.requests) if r.received_at > after)

            names = [str(n) for n in range(1, WORKERS + 1)]
            wait_until(lambda: all(calls_at(a)[n] >= 20 for n in names), 20, "20 calls from every worker", workers)
            a.push(Reply.rate_limited(retry_after_s=5))

            def limited() -> list[RecordedRequest]:
                # The 429'd call is the one call `a` and `b` both saw: it failed over to `b` within the same call.
                at_b = {r.headers.get("x-call") for r in list(b.requests)}
                return [r for r in list(a.requests) if r.headers.get("x-call") in at_b]

            wait_until(lambda: bool(limited()), 10, "the 429 to be served and failed over", workers)
            hit = limited()[0]
            served, by = hit.received_at, worker_of(hit)
            others = [n for n in names if n != by]
            wait_until(
                lambda: time.time() > served + 1.0 and all(calls_at(b, served + 0.1)[n] >= 30 for n in others),
                3.5,  # well inside the 5 s cooldown
                "a second of calls through b from the other workers",
                workers,
            )
            workers.stop()
            results = workers.results()
            at_a, at_b = list(a.requests), list(b.requests)

        failed_over = {r.headers.get("x-call") for r in at_b} & {r.headers.get("x-call") for r in at_a}
        assert failed_over == {hit.headers.get("x-call")}, "one call met the 429 and failed over"
        window = served + 4.5  # the cooldown ends 5 s after the 429: judge the requests before then
        late = [
            (worker_of(r), round(r.received_at - served, 3))
            for r in at_a
            if worker_of(r) != by and served + 0.1 < r.received_at < window
        ]
        own = [r for r in at_a if worker_of(r) == by and served < r.received_at < window]
        last_at_a = {
            n: max(r.received_at for r in at_a if worker_of(r) == n and r.received_at < window) for n in others
        }
        first_at_b = {
            n: min(r.received_at for r in at_b if worker_of(r) == n and r.received_at > served) - served for n in others
        }
        through_b = {n: sum(served + 0.1 < r.received_at < window and worker_of(r) == n for r in at_b) for n in others}
        measured(
            f"shared cooldown: worker {by} got the 429; other workers' last request to a at "
            f"{', '.join(f'{1000 * (t - served):+.1f}' for t in last_at_a.values())} ms, first to b at "
            f"{', '.join(f'{1000 * s:+.1f}' for s in first_at_b.values())} ms after it; "
            f"calls through b after it: {through_b}; calls per worker: {[len(r['calls']) for r in results]}"
        )
        assert late == [], "no other worker sends to a more than 100 ms after the 429"
        assert own == [], "the worker that got the 429 never sends to a again while it cools down"
        assert all(count >= 30 for count in through_b.values()), through_b
        assert failures(results) == []


class TestSharedRpm:
    """A global rpm of 600 on one endpoint holds across four worker processes within 5%."""

    RPM = 600
    DURATION_S = 12.0

    def test_four_processes_share_one_bucket(
        self, prefix: str, tmp_path: Path, workers: Workers, measured: Callable[[str], None]
    ) -> None:
        """A burst of the bucket's 600, then 10 calls a second across all workers, never 4x; no call fails."""
        rate = self.RPM / 60
        with FakeUpstream("limited") as up:
            config = write_config(
                tmp_path,
                prefix,
                {"limited": {"base_url": up.base_url, "rpm": self.RPM}},
                {"targets": [{"model": "gpt-4o-mini", "endpoints": ["limited"]}]},
                # Default max_attempts (3): waits for room in the shared bucket spend no attempt, only max_wait_s.
                retry={"when_limited": "wait", "max_wait_s": 30},
            )
            workers.start(config, "--sleep", "0")
            until = time.time() + self.DURATION_S
            workers.go(until)
            results = workers.results(self.DURATION_S + 30)
            arrivals = sorted(r.received_at for r in up.requests)

        first, last = arrivals[0], arrivals[-1]
        drained = arrivals[min(self.RPM, len(arrivals)) - 1]  # the bucket's initial 600 are gone about here
        start = max(first + 3.0, drained + 1.0)
        steady = sum(start <= t < until for t in arrivals) / (until - start)
        allowed = self.RPM + rate * (last - first)
        measured(
            f"shared rpm {self.RPM}: {len(arrivals)} calls in {last - first:.2f} s "
            f"(at most {allowed:.0f} allowed, {len(arrivals) / allowed:.3f} of it); burst of {self.RPM} in "
            f"{drained - first:.2f} s; steady {steady:.2f}/s from +{start - first:.1f} s to "
            f"+{until - first:.1f} s (limit {rate:g}/s); calls per worker: {[len(r['calls']) for r in results]}"
        )
        assert failures(results) == []
        assert steady == pytest.approx(rate, rel=0.05)
        assert len(arrivals) <= 1.05 * allowed


STABLE, CANDIDATE = "stable-model", "candidate-model"


def rollout_route(steps: list[dict[str, Any]], **analysis: Any) -> dict[str, Any]:
    return {
        "rollout": {
            "stable": {"model": STABLE, "endpoints": ["main"]},
            "candidate": {"model": CANDIDATE, "endpoints": ["main"]},
            "steps": steps,
            **({"analysis": analysis} if analysis else {}),
        }
    }


def follow_lag(results: list[dict[str, Any]], since: float, model: str) -> list[float]:
    """Per worker: seconds from ``since`` to the start of its first call after which every call it started was
    served by ``model`` (the time it took that worker to follow the change, to within one call)."""
    lags = []
    for result in results:
        after = [call for call in result["calls"] if call["start"] >= since]
        other = [n for n, call in enumerate(after) if call.get("model") != model]
        first = other[-1] + 1 if other else 0
        lags.append(after[first]["start"] - since if first < len(after) else float("inf"))
    return lags


class TestRolloutFollowsTheCli:
    """A rollout promoted or aborted from the CLI is followed by every worker process within one second."""

    def test_promote_then_abort(
        self,
        prefix: str,
        tmp_path: Path,
        workers: Workers,
        rollout_changes: RolloutChanges,
        measured: Callable[[str], None],
    ) -> None:
        """From 50% to 100% on `promote --full`, then to 0% on `abort`: every call started a second later agrees."""
        with FakeUpstream("main") as up:
            config = write_config(
                tmp_path,
                prefix,
                {"main": {"base_url": up.base_url}},
                rollout_route([{"set_weight": 50}, {"pause": {}}]),
            )
            workers.start(config, "--sleep", "0.005")
            workers.go()

            def calls_since(moment: float) -> Counter[str]:
                return Counter(worker_of(r) for r in list(up.requests) if r.received_at > moment)

            names = [str(n) for n in range(1, WORKERS + 1)]
            wait_until(lambda: all(calls_since(0)[n] >= 20 for n in names), 20, "20 calls from every worker", workers)
            models = Counter(r.model for r in list(up.requests))
            assert set(models) == {STABLE, CANDIDATE}, "at 50% both arms serve"

            def run(*command: str) -> tuple[float, float]:
                """Run the CLI, then let every worker call on for a while; when it started and when it wrote."""
                seen = len(rollout_changes.times)
                launched = time.time()
                cli("rollout", *command, "--config", str(config))
                wait_until(lambda: len(rollout_changes.times) > seen, 5, f"{command[0]} to be published")
                written = rollout_changes.times[seen]
                wait_until(
                    lambda: time.time() > written + 1.5 and all(calls_since(written + 1.5)[n] >= 5 for n in names),
                    10,
                    f"every worker's calls 1.5 s after {command[0]}",
                    workers,
                )
                return launched, written

            launched_1, promoted = run("promote", "chat", "--full")
            launched_2, aborted = run("abort", "chat")
            workers.stop()
            results = workers.results()

        promote_lags = follow_lag(
            [{**r, "calls": [c for c in r["calls"] if c["end"] < aborted]} for r in results], promoted, CANDIDATE
        )
        abort_lags = follow_lag(results, aborted, STABLE)
        measured(
            f"rollout follows the CLI: promote written {promoted - launched_1:.2f} s after the CLI started, "
            f"workers followed in {', '.join(f'{1000 * lag:.0f}' for lag in promote_lags)} ms; abort written "
            f"{aborted - launched_2:.2f} s after the CLI started, workers followed in "
            f"{', '.join(f'{1000 * lag:.0f}' for lag in abort_lags)} ms"
        )
        for result in results:
            promoted_window = [
                c.get("model") for c in result["calls"] if promoted + 1 <= c["start"] and c["end"] < aborted
            ]
            assert set(promoted_window) == {CANDIDATE}, f"worker {result['worker']} after promote"
            aborted_window = [c.get("model") for c in result["calls"] if c["start"] >= aborted + 1]
            assert set(aborted_window) == {STABLE}, f"worker {result['worker']} after abort"
        assert failures(results) == []


class TestAnalysisSeesEveryProcess:
    """A rollout's analysis judges the measurements of every process, merged in Redis."""

    CALLS = 200  # per worker: about 100 per arm, so no worker alone comes near MIN_CALLS
    MIN_CALLS = 260  # per arm; all four workers together give each arm about 400

    def test_min_calls_reached_only_by_all_workers_together(
        self, prefix: str, tmp_path: Path, workers: Workers, measured: Callable[[str], None]
    ) -> None:
        """The analysis step passes once, and the status counts exactly the calls the workers made on each arm."""
        assert self.CALLS < self.MIN_CALLS < WORKERS * self.CALLS / 2
        steps: list[dict[str, Any]] = [{"set_weight": 50}, {"analysis": {}}, {"pause": {}}]
        # Latency ratios between two arms of one local upstream are scheduler noise: only min_calls decides here.
        analysis = {"min_calls": self.MIN_CALLS, "min_duration": 0, "interval": 0.05, "max_latency_ratio": None}
        with FakeUpstream("main") as up:
            config = write_config(
                tmp_path,
                prefix,
                {"main": {"base_url": up.base_url}},
                rollout_route(steps, **analysis),
                state={"sync_interval_s": 0.1},  # measurements reach Redis well before the workers are done
            )
            workers.start(config, "--sleep", "0.005", "--calls", str(self.CALLS))
            workers.go()
            results = workers.results()
        rollouts = holyroute.Rollouts(config, emit=lambda event, fields: None)
        try:
            [status] = rollouts.status()  # every process's measurements, as Redis holds them
        finally:
            rollouts.close()

        made = Counter(call.get("model") for result in results for call in result["calls"])
        per_worker = [Counter(call.get("model") for call in result["calls"]) for result in results]
        passed = [
            result["worker"]
            for result in results
            for _ in range(result["events"].get("holyroute.rollout:analysis_passed", 0))
        ]
        measured(
            f"shared analysis: min_calls {self.MIN_CALLS} per arm; per worker {[dict(c) for c in per_worker]}; "
            f"all workers {dict(made)}; status arms {status['arms']}; passed by worker(s) {passed}"
        )
        assert failures(results) == []
        # paused on the third configured step (the pause), counted from 1 as status, events and README count
        assert (status["step"], status["status"]) == (3, "paused"), status["reason"]
        assert len(passed) == 1, "one worker passed the analysis step, once"
        assert {arm: numbers["calls"] for arm, numbers in status["arms"].items()} == {
            STABLE: made[STABLE],
            CANDIDATE: made[CANDIDATE],
        }
