"""The two drivers over an in-memory inner transport: plain httpx2 callers, odd errors, encodings, no mutation."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

import holyroute

from .conftest import Events

CONFIG = {
    "endpoints": {
        "a": {"base_url": "https://a.example/v1", "api_key": "key-a"},
        "b": {"base_url": "https://b.example/v1", "api_key": "key-b"},
    },
    "routes": {"chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["a", "b"]}]}},
    "retry": {"max_attempts": 2, "backoff_jitter_s": 0},
}
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}}
Handler = Callable[[httpx2.Request], httpx2.Response]


def send(mode: str, handler: Handler, request: httpx2.Request, events: Events) -> httpx2.Response:
    """Send ``request`` through holyroute's sync or async transport over ``handler``; read the body."""
    if mode == "sync":
        with httpx2.Client(
            transport=holyroute.Transport(CONFIG, transport=httpx2.MockTransport(handler), log=False, sinks=[events])
        ) as c:
            response = c.send(request)
            response.read()
            return response

    async def go() -> httpx2.Response:
        transport = holyroute.AsyncTransport(CONFIG, transport=httpx2.MockTransport(handler), log=False, sinks=[events])
        async with httpx2.AsyncClient(transport=transport) as c:
            response = await c.send(request)
            await response.aread()
            return response

    return asyncio.run(go())


def chat_request(**headers: str) -> httpx2.Request:
    return httpx2.Request(
        "POST",
        "https://sdk.example/v1/chat/completions",
        headers={"authorization": "Bearer caller", "x-trace": "t1", **headers},
        content=json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    )


def ok_json(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json={"id": "x", "usage": USAGE})


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestDrivers:
    def test_tls_error_fails_over(self, mode: str) -> None:
        """An unmapped ssl.SSLError from the inner transport is a failed attempt like any connection error."""
        events = Events()

        def handler(request: httpx2.Request) -> httpx2.Response:
            if request.url.host == "a.example":
                raise ssl.SSLError("handshake failed")
            return ok_json(request)

        assert send(mode, handler, chat_request(), events).status_code == 200
        (failover,) = events.named("holyroute.failover")
        assert failover["reason"] == "connection error: SSLError"

    def test_plain_httpx_caller_gets_httpx_error(self, mode: str) -> None:
        """Without the OpenAI SDK's headers, exhaustion re-raises the last httpx2 error with a note."""
        events = Events()

        def handler(request: httpx2.Request) -> httpx2.Response:
            raise httpx2.ConnectError("refused", request=request)

        with pytest.raises(httpx2.ConnectError) as caught:
            send(mode, handler, chat_request(), events)
        assert "holyroute: 2 attempt(s) for 'chat' failed; last: ConnectError" in caught.value.__notes__
        assert events.named("holyroute.request")[0]["outcome"] == "error"

    def test_caller_request_untouched(self, mode: str) -> None:
        """The caller's request object keeps its URL, key and body; the upstream sees the endpoint's."""
        seen: list[httpx2.Request] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            seen.append(request)
            return ok_json(request)

        request = chat_request(**{"x-holyroute-arm": "gpt-4.1"})
        send(mode, handler, request, Events())
        assert str(request.url) == "https://sdk.example/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer caller"
        assert json.loads(request.content)["model"] == "chat"
        (upstream,) = seen
        assert upstream.headers["authorization"] == "Bearer key-a"
        assert upstream.headers["x-trace"] == "t1"
        assert "x-holyroute-arm" not in upstream.headers
        assert upstream.headers["host"] == "a.example"

    def test_gzip_json_costed(self, mode: str) -> None:
        """A gzip-encoded JSON answer reaches the caller decoded and its usage is still read."""
        events = Events()
        body = gzip.compress(json.dumps({"id": "x", "usage": USAGE}).encode())

        def handler(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                200,
                headers={"content-type": "application/json", "content-encoding": "gzip"},
                stream=httpx2.ByteStream(body),
            )

        response = send(mode, handler, chat_request(), events)
        assert response.json()["usage"] == USAGE
        assert events.named("holyroute.request")[0]["prompt_tokens"] == 10

    @pytest.mark.parametrize(
        ("status", "body"), [(503, b'{"error": {"message": "down"}}'), (200, b"<html>busy</html>")]
    )
    def test_a_gzip_failure_comes_back_with_its_own_headers(self, mode: str, status: int, body: bytes) -> None:
        """A gzip answer judged a failure (a 503, a 200 whose body is no JSON) is decoded, and its headers lose their
        content-encoding on the way to the caller: the headers the core judged and kept still read as they came.
        (A view over the answer's live header list once read a neighbour's value here, or raised IndexError.)"""
        events = Events()

        def handler(request: httpx2.Request) -> httpx2.Response:
            headers = [
                ("content-type", "application/json" if status != 200 else "text/html"),
                ("content-encoding", "gzip"),
                ("x-ratelimit-remaining-requests", "99"),
                ("x-ratelimit-remaining-tokens", "5000"),
                ("retry-after", "0"),
                ("x-request-id", f"req_{request.url.host}"),
            ]
            return httpx2.Response(status, headers=headers, stream=httpx2.ByteStream(gzip.compress(body)))

        response = send(mode, handler, chat_request(), events)
        assert response.status_code == (503 if status == 503 else 502)
        if status == 503:
            assert response.headers["x-request-id"] == "req_b.example"  # the last endpoint's answer, its own id
            assert response.content == body
            assert "content-encoding" not in response.headers
        assert events.named("holyroute.request")[0]["outcome"] == "error"

    def test_in_memory_answer_still_watched(self, mode: str) -> None:
        """Inner transports that hand back an already-read answer (test doubles) still produce the event."""
        events = Events()
        send(mode, lambda r: httpx2.Response(200, json={"usage": USAGE}), chat_request(), events)
        assert events.named("holyroute.request")[0]["completion_tokens"] == 5

    def test_should_retry_false_on_give_up(self, mode: str) -> None:
        events = Events()
        response = send(
            mode, lambda r: httpx2.Response(503, json={"error": {"message": "down"}}), chat_request(), events
        )
        assert response.status_code == 503
        assert response.headers["x-should-retry"] == "false"
        assert response.json() == {"error": {"message": "down"}}
        assert len(events.named("holyroute.failover")) == 1

    def test_passthrough_untouched(self, mode: str) -> None:
        seen: list[Any] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            seen.append((str(request.url), request.headers["authorization"]))
            return httpx2.Response(200, json={})

        request = httpx2.Request("GET", "https://sdk.example/v1/models", headers={"authorization": "Bearer caller"})
        send(mode, handler, request, Events())
        assert seen == [("https://sdk.example/v1/models", "Bearer caller")]


def test_health_checker_runs_with_the_transport() -> None:
    """An endpoint with health_check is probed in the background from construction until close()."""
    import threading
    import time

    from holyroute.testing import FakeUpstream

    with FakeUpstream("probed") as up:
        config = {
            "endpoints": {"a": {"base_url": up.base_url, "health_check": {"interval_s": 0.05, "timeout_s": 1}}},
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["a"]}]}},
        }
        transport = holyroute.Transport(config, log=False, sinks=[])
        deadline = time.monotonic() + 5
        while transport.router.health.probe_status("a") == "unknown" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transport.router.health.probe_status("a") == "healthy"
        assert any(r.path == "/v1/models" for r in up.requests)
        transport.close()
        assert not any(t.name == "holyroute-health" and t.is_alive() for t in threading.enumerate())
