"""The async driver under trio as under asyncio (anyio runs both): active health checks, the Redis backend.

Before: under trio the health checker started no task at all (endpoints were never probed), and a routed call on the
Redis backend with an rpm limit raised ``RuntimeError: no running event loop`` from the state backend, as did
``aclose()``: the router was the reason the call failed.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx2
import pytest
import redis

from holyroute import AsyncTransport, Router, load_config

from .conftest import Events

REDIS_URL = "redis://127.0.0.1:6379/0"
ANSWER = {
    "choices": [{"index": 0, "message": {"content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def answer(request: httpx2.Request) -> httpx2.Response:
    if request.url.path.endswith("/models"):
        return httpx2.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
    return httpx2.Response(200, json=ANSWER)


async def calls(config: dict[str, Any], count: int, *, wait_for_probe: bool = False) -> Events:
    events = Events()
    router = Router(load_config(config), log=False, sinks=[events])
    transport = AsyncTransport(router=router, transport=httpx2.MockTransport(answer))
    try:
        async with httpx2.AsyncClient(transport=transport) as client:
            for n in range(count):
                body = {"model": "chat", "messages": [{"role": "user", "content": f"call {n}"}]}
                response = await client.post("https://api.example/v1/chat/completions", json=body)
                assert response.status_code == 200
            if wait_for_probe:
                with anyio.fail_after(5):  # bounded: the first probe runs as soon as the task starts
                    while not events.named("holyroute.endpoint_health"):
                        await anyio.sleep(0.01)
    finally:
        await transport.aclose()
        await router.aclose()
    return events


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_health_checks_run(backend: str) -> None:
    config = {
        "endpoints": {
            "e": {"base_url": "https://e.example/v1", "api_key": "key-e", "health_check": {"interval_s": 30}}
        },
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["e"]}]}},
    }
    events = anyio.run(lambda: calls(config, 1, wait_for_probe=True), backend=backend)
    (health, *_) = events.named("holyroute.endpoint_health")
    assert health["endpoint"] == "e"
    assert health["status"] == "healthy"


@pytest.mark.skipif(not redis_up(), reason="no Redis at 127.0.0.1:6379 (.ci/run starts one)")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_redis_backend_with_a_shared_limit(backend: str) -> None:
    prefix = f"hrtrio-{uuid.uuid4().hex[:8]}"
    config = {
        "endpoints": {"e": {"base_url": "https://e.example/v1", "api_key": "key-e", "rpm": 6000}},
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["e"]}]}},
        "state": {"backend": "redis", "url": REDIS_URL, "prefix": prefix, "timeout_ms": 1000},
    }
    store = redis.Redis.from_url(REDIS_URL)
    try:
        events = anyio.run(lambda: calls(config, 20), backend=backend)
        assert [e["outcome"] for e in events.named("holyroute.request")] == ["ok"] * 20
        assert store.exists(f"{prefix}:{{limits:e}}"), "the shared rpm bucket was asked"
    finally:
        keys = list(store.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.delete(*keys)
        store.close()
