"""The Redis cache store: shared across processes, entries with TTLs, bounded by entries and bytes.

Uses the real Redis at 127.0.0.1:6379 under a key prefix of each test's own (deleted afterwards); skipped when no
Redis answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from holyroute.state.cache.redis import RedisCache
from holyroute.testing import FakeUpstream

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        pytest.skip("no Redis at 127.0.0.1:6379")
    name = f"holyroute-test-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        keys = [*client.scan_iter(match=f"{name}:*", count=1000), *client.scan_iter(match="{" + name + ":*")]
        if keys:
            client.delete(*keys)
        client.close()


class FakeWall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class TestRedisCache:
    def test_round_trip_and_ttl(self, prefix: str) -> None:
        cache = RedisCache(REDIS_URL, prefix=prefix, max_entries=10, max_bytes=10_000, timeout_s=2.0)
        try:
            cache.put("k", b"value", 60)
            assert cache.get("k") == b"value"
            assert cache.get("other") is None
            ttl = cache.redis.pttl("{" + prefix + ":cache}:e:k")
            assert isinstance(ttl, int)
            assert 0 < ttl <= 60_000
        finally:
            cache.close()

    def test_bounded_by_entries(self, prefix: str) -> None:
        wall = FakeWall()
        cache = RedisCache(REDIS_URL, prefix=prefix, max_entries=3, max_bytes=10_000, timeout_s=2.0, wall_clock=wall)
        try:
            for index in range(5):
                wall.now += 1
                cache.put(f"k{index}", b"v", 60)
            assert [cache.get(f"k{i}") for i in range(5)] == [None, None, b"v", b"v", b"v"]
        finally:
            cache.close()

    def test_bounded_by_bytes(self, prefix: str) -> None:
        wall = FakeWall()
        cache = RedisCache(REDIS_URL, prefix=prefix, max_entries=1000, max_bytes=350, timeout_s=2.0, wall_clock=wall)
        try:
            for index in range(10):
                wall.now += 1
                cache.put(f"k{index}", b"x" * 100, 60)
                assert cache.used_bytes() <= 350
            assert cache.get("k9") == b"x" * 100
            assert cache.get("k0") is None
            cache.put("huge", b"x" * 1000, 60)  # larger than the whole cap: never written
            assert cache.get("huge") is None
        finally:
            cache.close()

    def test_expired_entries_leave_the_index(self, prefix: str) -> None:
        wall = FakeWall()
        cache = RedisCache(REDIS_URL, prefix=prefix, max_entries=1000, max_bytes=10_000, timeout_s=2.0, wall_clock=wall)
        try:
            cache.put("old", b"x" * 100, 1)
            wall.now += 5
            cache.put("new", b"y", 60)
            assert cache.used_bytes() == len(b"y") + len("new")
        finally:
            cache.close()


class TestAcrossProcesses:
    def test_a_call_cached_by_one_worker_is_a_hit_in_another(self, prefix: str, tmp_path: Path) -> None:
        with FakeUpstream("main") as up:
            config = {
                "endpoints": {"main": {"base_url": up.base_url, "api_key": "k"}},
                "prices": {"gpt-4.1": {"input": 2.0, "output": 8.0}},
                "routes": {"chat": {"targets": [{"model": "gpt-4.1", "endpoints": ["main"]}], "cache": {"ttl": 60}}},
                "state": {"backend": "memory", "url": REDIS_URL, "prefix": prefix},
                "cache": {"backend": "redis", "timeout_ms": 2000},
            }
            path = tmp_path / "holyroute.yaml"
            path.write_text(yaml.safe_dump(config))
            runs = []
            for _ in range(2):
                done = subprocess.run(
                    [sys.executable, "-m", "tests._cache_worker", str(path)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, done.stderr[-2000:]
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            assert up.received == 1
        first, second = runs
        assert (first["cache"], second["cache"]) == ("stored", "hit")
        assert (second["id"], second["content"]) == (first["id"], first["content"])
        assert second["saved_usd"] == first["cost_usd"] > 0
        assert second["cost_usd"] == 0
