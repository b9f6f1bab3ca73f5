"""Every fault from the resilience issue, through the official SDK, sync and async, streaming and not.

The primary endpoint misbehaves once; the test asserts what the caller got, how many upstream attempts were made,
and the events that explain it. Local upstreams only; waits are bounded by tiny timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import openai
import pytest
from structlog.testing import capture_logs

from holyroute.testing import FakeUpstream, Reply

from .test_sdk import SDK

PIN = {"x-holyroute-arm": "gpt-4.1"}


@pytest.fixture
def ups() -> Iterator[dict[str, FakeUpstream]]:
    made = {name: FakeUpstream(name).start() for name in ("main", "backup")}
    yield made
    for up in made.values():
        up.stop()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[False, True], ids=["json", "stream"])
def stream(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def config(main_url: str, backup_url: str, **main: Any) -> dict[str, Any]:
    return {
        "endpoints": {
            "main": {"base_url": main_url, "api_key": "key-main", **main},
            "backup": {"base_url": backup_url, "api_key": "key-backup"},
        },
        "routes": {"chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["main", "backup"]}]}},
        "retry": {"max_attempts": 3, "backoff_initial_s": 0.001, "backoff_jitter_s": 0},
    }


@pytest.fixture
def run(mode: str, stream: bool) -> Iterator[Callable[[dict[str, Any]], Any]]:
    """One chat call (streamed or not) on a fresh sync or async SDK client; returns the text it got."""
    made: list[SDK] = []

    def call(cfg: dict[str, Any]) -> str:
        sdk = SDK(mode, cfg, base_url="http://127.0.0.1:9/v1")
        made.append(sdk)
        if stream:
            chunks = sdk.stream(model="chat", extra_headers=PIN)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return str(sdk.chat(model="chat", extra_headers=PIN).choices[0].message.content)

    yield call
    for sdk in made:
        sdk.close()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == f"holyroute.{name}"]


def served_by_backup(text: str, logs: list[dict[str, Any]], ups: dict[str, FakeUpstream]) -> dict[str, Any]:
    assert "backup" in text
    assert len(ups["backup"].requests) == 1
    (request,) = events(logs, "request")
    assert (request["endpoint"], request["attempts"], request["outcome"]) == ("backup", 2, "ok")
    (failover,) = events(logs, "failover")
    assert failover["endpoint"] == "main"
    assert failover["next_endpoint"] == "backup"
    return failover


RATE_LIMITS = {
    "retry-after-ms": (Reply.rate_limited(retry_after_s=1.5, retry_after_ms=True), 1.5),
    "retry-after seconds": (Reply.rate_limited(retry_after_s=2), 2.0),
    "retry-after http-date": (None, 30.0),
    "x-ratelimit-reset-requests only": (
        Reply(status=429, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}),
        360.0,
    ),
}


class TestRateLimited:
    @pytest.mark.parametrize("kind", list(RATE_LIMITS))
    def test_429_fails_over_and_cools(self, ups: dict[str, FakeUpstream], run: Any, kind: str) -> None:
        reply, seconds = RATE_LIMITS[kind]
        if reply is None:
            reply = Reply(status=429, headers={"retry-after": formatdate(time.time() + 30, usegmt=True)})
        ups["main"].push(reply)
        with capture_logs() as logs:
            text = run(config(ups["main"].base_url, ups["backup"].base_url))
        failover = served_by_backup(text, logs, ups)
        assert failover["status"] == 429
        (cooldown,) = events(logs, "cooldown")
        assert cooldown["cooldown_s"] == pytest.approx(seconds, abs=1.5)


class TestServerErrors:
    @pytest.mark.parametrize("code", [500, 502, 503, 504])
    def test_5xx_fails_over(self, ups: dict[str, FakeUpstream], run: Any, code: int) -> None:
        ups["main"].push(Reply.error(code))
        with capture_logs() as logs:
            text = run(config(ups["main"].base_url, ups["backup"].base_url))
        failover = served_by_backup(text, logs, ups)
        assert (failover["status"], failover["reason"]) == (code, f"{code} from upstream")


class TestConnectionFaults:
    def test_connection_refused(self, ups: dict[str, FakeUpstream], run: Any) -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there now
        with capture_logs() as logs:
            text = run(config(f"http://127.0.0.1:{port}/v1", ups["backup"].base_url))
        assert served_by_backup(text, logs, ups)["reason"] == "connection error: ConnectError"

    def test_connect_timeout(self, ups: dict[str, FakeUpstream], run: Any) -> None:
        """A listener whose accept queue is full drops the SYN: the connect times out, the backup answers."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        try:
            with capture_logs() as logs:
                text = run(config(f"http://127.0.0.1:{port}/v1", ups["backup"].base_url, timeout=0.2))
        finally:
            for filler in fillers:
                filler.close()
            server.close()
        assert served_by_backup(text, logs, ups)["reason"] == "timeout: ConnectTimeout"

    def test_read_timeout(self, ups: dict[str, FakeUpstream], run: Any) -> None:
        """No status line within the endpoint's timeout: the backup answers."""
        ups["main"].push(Reply(delay_s=5))
        with capture_logs() as logs:
            text = run(config(ups["main"].base_url, ups["backup"].base_url, timeout=0.1))
        assert served_by_backup(text, logs, ups)["reason"] == "timeout: ReadTimeout"

    def test_stream_stalls_after_headers(
        self, ups: dict[str, FakeUpstream], mode: str, instant_sdk_retries: None
    ) -> None:
        """A stream that stops after its headers times out in the caller: it was already handed over."""
        hold = threading.Event()
        ups["main"].push(Reply(gate=hold, gate_after=1, gate_timeout_s=5))
        sdk = SDK(mode, config(ups["main"].base_url, ups["backup"].base_url, timeout=0.1), base_url="http://x/v1")
        try:
            with capture_logs() as logs, pytest.raises(openai.APITimeoutError):
                sdk.stream(model="chat", extra_headers=PIN)
        finally:
            hold.set()
            sdk.close()
        (request,) = events(logs, "request")
        assert (request["outcome"], request["error"]) == ("error", "stream broken: ReadTimeout")

    def test_reset_before_headers(self, ups: dict[str, FakeUpstream], run: Any) -> None:
        ups["main"].push(Reply(drop=True))
        with capture_logs() as logs:
            text = run(config(ups["main"].base_url, ups["backup"].base_url))
        assert served_by_backup(text, logs, ups)["reason"].startswith("connection error: ")


class TestHeadersTimeout:
    def test_body_gets_the_normal_read_timeout(self, ups: dict[str, FakeUpstream], mode: str) -> None:
        """stream_headers_timeout_s bounds the wait for headers only: a pause between events later is fine."""
        cfg = config(ups["main"].base_url, ups["backup"].base_url)
        cfg["retry"]["stream_headers_timeout_s"] = 0.05
        hold = threading.Event()  # never set: the upstream pauses 0.2 s after its first event, then goes on
        ups["main"].push(Reply(gate=hold, gate_after=1, gate_timeout_s=0.2))
        sdk = SDK(mode, cfg, base_url="http://x/v1")
        try:
            with capture_logs() as logs:
                chunks = sdk.stream(model="chat", extra_headers=PIN)
        finally:
            sdk.close()
        assert ups["main"].gate_log == ["timeout"], "the upstream really paused mid-stream"
        assert "main" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert events(logs, "request")[0]["outcome"] == "ok"

    def test_hung_stream_fails_over_fast(self, ups: dict[str, FakeUpstream], mode: str) -> None:
        """No headers within stream_headers_timeout_s: the backup streams instead."""
        cfg = config(ups["main"].base_url, ups["backup"].base_url)
        cfg["retry"]["stream_headers_timeout_s"] = 0.05
        ups["main"].push(Reply(delay_s=5))
        sdk = SDK(mode, cfg, base_url="http://x/v1")
        try:
            with capture_logs() as logs:
                chunks = sdk.stream(model="chat", extra_headers=PIN)
        finally:
            sdk.close()
        assert "backup" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert events(logs, "failover")[0]["reason"] == "timeout: ReadTimeout"


class TestBadAnswers:
    def test_malformed_json_with_200(self, ups: dict[str, FakeUpstream], run: Any) -> None:
        ups["main"].push(Reply(headers={"content-type": "application/json"}, body=b"<html>upstream error</html>"))
        with capture_logs() as logs:
            text = run(config(ups["main"].base_url, ups["backup"].base_url))
        assert served_by_backup(text, logs, ups)["reason"] == "200 with a body that is not JSON"

    def test_torn_after_first_chunk(
        self, ups: dict[str, FakeUpstream], run: Any, stream: bool, instant_sdk_retries: None
    ) -> None:
        """Not streamed: the broken body fails over. Streamed: the first chunk already reached the caller, so
        the caller gets an error (never a quiet, shortened answer) and the event says so."""
        ups["main"].push(Reply(tear_after=1))
        with capture_logs() as logs:
            if stream:
                with pytest.raises(openai.APIConnectionError):
                    run(config(ups["main"].base_url, ups["backup"].base_url))
                (request,) = events(logs, "request")
                assert (request["endpoint"], request["outcome"]) == ("main", "error")
                assert request["error"].startswith("stream broken")
                assert ups["backup"].requests == []
                return
            text = run(config(ups["main"].base_url, ups["backup"].base_url))
        assert served_by_backup(text, logs, ups)["reason"].startswith("connection error: ")


class TestExhausted:
    """When every endpoint fails the same way, the SDK raises the matching error with the upstream's body."""

    def test_all_503(self, ups: dict[str, FakeUpstream], run: Any, instant_sdk_retries: None) -> None:
        for up in ups.values():
            up.push(*[Reply.error(503, "overloaded right now")] * 3)
        with capture_logs() as logs, pytest.raises(openai.InternalServerError, match="overloaded right now"):
            run(config(ups["main"].base_url, ups["backup"].base_url))
        assert len(ups["main"].requests) + len(ups["backup"].requests) == 3
        assert events(logs, "request")[0]["outcome"] == "error"
