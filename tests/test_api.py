"""The public surface: what `import holyroute` exports and costs, the compat fallback, and the demo command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import pytest

import holyroute
from holyroute.cli import main
from holyroute.core.plan import DROPPED_HEADERS
from holyroute.drivers import compat as _compat


def test_exported_names() -> None:
    assert holyroute.__all__ == [
        "Alert",
        "AsyncTransport",
        "Config",
        "ConfigError",
        "HolyrouteError",
        "Rollouts",
        "Router",
        "Transport",
        "__version__",
        "async_client",
        "client",
        "load_config",
        "router_of",
    ]


def test_import_is_light() -> None:
    """`import holyroute` loads neither the OpenAI SDK, YAML, tenacity nor structlog; clients load what they need."""
    heavy = "('openai', 'yaml', 'tenacity', 'structlog')"
    code = f"import sys, holyroute; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out.splitlines()[-1]))


class TestImportCost:
    """What keeps ``import holyroute`` and a plain routed client cheap, checked by structure rather than by timing
    (``benchmarks/bench_import.py`` times it)."""

    def test_import_loads_only_the_state_registration(self) -> None:
        """`import holyroute` loads none of the schema, the core, the drivers or a backend: names load on use."""
        code = "import holyroute\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('holyroute'))))"
        out = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}"], capture_output=True, check=True)
        assert json.loads(out.stdout) == [
            "holyroute",
            "holyroute.core",
            "holyroute.core.ports",
            "holyroute.exceptions",
            "holyroute.state",
            "holyroute.state.factory",
        ]

    def test_import_loads_no_heavy_dependency(self) -> None:
        heavy = ("pydantic", "yaml", "genai_prices", "redis", "scipy", "structlog", "tenacity", "concurrent.futures")
        assert _loaded_after("import holyroute", heavy) == []

    def test_a_plain_client_loads_nothing_it_does_not_use(self) -> None:
        """A client for a dict configuration with no alerts, rollouts, shadows, probes or Redis never loads them."""
        config = {
            "endpoints": {"local": {"base_url": "http://127.0.0.1:1/v1"}},
            "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["local"]}]}},
            "state": {"backend": "memory"},
        }
        unused = (
            "yaml",
            "redis",
            "scipy",
            "holyroute.core.alerts",
            "holyroute.core.rollouts",
            "holyroute.drivers.probe",
            "holyroute.state.file",
            "holyroute.state.redis",
            "concurrent.futures.thread",
        )
        code = f"import holyroute\nholyroute.client({config!r}).close()"
        assert _loaded_after(code, unused) == []

    def test_public_names_resolve_lazily(self) -> None:
        from holyroute.drivers import transport

        assert holyroute.Transport is transport.Transport
        assert holyroute.client is transport.client
        assert set(holyroute.__all__) <= set(dir(holyroute))
        assert holyroute.testing.FakeUpstream.__name__ == "FakeUpstream"
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            holyroute.nope  # noqa: B018


def test_clients_are_httpx2() -> None:
    config = {
        "endpoints": {"local": {"base_url": "http://127.0.0.1:1/v1"}},
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["local"]}]}},
    }
    with holyroute.client(config) as sync_client:
        assert isinstance(sync_client, httpx2.Client)
        assert sync_client.timeout.read == 600
        assert sync_client.timeout.connect == 5
    assert isinstance(holyroute.async_client(config), httpx2.AsyncClient)


class TestClientOptions:
    """Pool options reach the inner transport instead of being silently ignored by httpx2.Client."""

    config: ClassVar[dict[str, Any]] = {
        "endpoints": {"local": {"base_url": "http://127.0.0.1:1/v1"}},
        "routes": {"chat": {"targets": [{"model": "m", "endpoints": ["local"]}]}},
    }

    def test_limits_reach_inner_pool(self) -> None:
        with holyroute.client(self.config, limits=httpx2.Limits(max_connections=3), headers={"x-a": "1"}) as c:
            inner = c._transport._inner  # type: ignore[attr-defined]
            assert inner._pool._max_connections == 3
            assert c.headers["x-a"] == "1"

    def test_own_inner_transport(self) -> None:
        seen: list[str] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            seen.append(str(request.url))
            return httpx2.Response(200, json={})

        with holyroute.client(self.config, transport=httpx2.MockTransport(handler)) as c:
            c.post("http://sdk.example/v1/chat/completions", json={"model": "chat"})
        assert seen == ["http://127.0.0.1:1/v1/chat/completions"]

    def test_conflicting_options(self) -> None:
        with pytest.raises(TypeError, match="verify configure the inner transport"):
            holyroute.client(self.config, transport=httpx2.MockTransport(lambda r: httpx2.Response(200)), verify=False)


class TestCompat:
    """The fast request builder and the public-API fallback produce the same request."""

    def request(self) -> httpx2.Request:
        return httpx2.Request(
            "POST",
            "http://sdk.example/v1/chat/completions?x=1",
            headers={"Authorization": "Bearer caller", "OpenAI-Organization": "org-caller", "X-Custom": "kept"},
            content=b'{"model":"alias"}',
        )

    @pytest.mark.parametrize("fast", [True, False])
    def test_same_result(self, fast: bool) -> None:
        built = _compat.attempt_request(
            self.request(),
            "https://up.example/v1/chat/completions",
            drop=DROPPED_HEADERS,
            add=(("authorization", "Bearer endpoint"),),
            body=b'{"model":"gpt-4.1"}',
            extensions={},
            fast=fast,
        )
        assert str(built.url) == "https://up.example/v1/chat/completions"
        assert built.headers["host"] == "up.example"
        assert built.headers["authorization"] == "Bearer endpoint"
        assert built.headers["content-length"] == "19"
        assert built.headers["x-custom"] == "kept"
        assert "openai-organization" not in built.headers
        assert built.read() == b'{"model":"gpt-4.1"}'

    def test_probe_matches_this_httpx2(self) -> None:
        assert _compat.fast_headers_supported(httpx2.Headers({"a": "b"})) is True


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`holyroute demo` runs offline, prints the table and writes one request event per call."""
    events = tmp_path / "events.jsonl"
    assert main(["demo", "--calls", "20", "--events", str(events)]) == 0
    out = capsys.readouterr().out
    assert "chat-default" in out
    assert "total" in out
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    requests = sum(1 for e in lines if e["event"] == "holyroute.request")
    assert f"{requests} calls in " in out
    assert "0 errors seen by the application" in out


def test_demo_shows_a_promotion_and_a_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--events", str(tmp_path / "events.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "canary-good  completed      100%  all steps done: candidate at 100%" in out
    assert "canary-bad   aborted          0%  analysis failed: error rate" in out
