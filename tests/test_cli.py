"""Issue 15: the command line and the library behave as their help and the README say, as a user types them.

Each class is one finding of the issue; commands run through ``main(argv)`` with their output captured, or as a
subprocess where the process itself (a traceback, the exit status of ``python -m holyroute``) is the point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from openai import OpenAI

import holyroute
from holyroute.cli import main
from holyroute.testing import FakeUpstream


def _one_route(base_url: str) -> dict[str, Any]:
    return {
        "endpoints": {"local": {"base_url": base_url, "api_key": "test-key"}},
        "routes": {"chat": {"targets": [{"model": "gpt-4o", "endpoints": ["local"]}]}},
    }


class TestSinksAddToTheEventLog:
    """Finding 1: ``sinks=`` adds to the structlog event; ``log=False`` is the explicit way to turn it off."""

    def _call(self, **options: Any) -> tuple[list[str], list[dict[str, Any]]]:
        received: list[str] = []
        with FakeUpstream("local") as up, structlog.testing.capture_logs() as logged:
            http = holyroute.client(
                _one_route(up.base_url), sinks=[lambda name, fields: received.append(name)], **options
            )
            with OpenAI(api_key="unused", http_client=http) as sdk:
                sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        return received, logged

    def test_a_sink_receives_the_event_and_structlog_still_logs_it(self) -> None:
        received, logged = self._call()
        assert received == ["holyroute.request"]
        assert [entry["event"] for entry in logged] == ["holyroute.request"]

    def test_log_false_leaves_only_the_sinks(self) -> None:
        received, logged = self._call(log=False)
        assert received == ["holyroute.request"]
        assert logged == []

    def test_report_reads_the_log_written_beside_a_sink(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The event log `report` reads is still written when the application adds a sink of its own."""
        events = tmp_path / "events.jsonl"
        with events.open("w", encoding="utf-8") as log_file:
            structlog.configure(
                processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()],
                logger_factory=structlog.WriteLoggerFactory(file=log_file),
                cache_logger_on_first_use=False,
            )
            try:
                with FakeUpstream("local") as up:
                    seen: list[str] = []
                    http = holyroute.client(_one_route(up.base_url), sinks=[lambda name, fields: seen.append(name)])
                    with OpenAI(api_key="unused", http_client=http) as sdk:
                        for _ in range(3):
                            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            finally:
                structlog.reset_defaults()
        assert seen == ["holyroute.request"] * 3
        assert main(["report", str(events), "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["routes"][0]["route"] == "chat"
