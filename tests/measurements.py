"""What the soaks and failover tests measured, listed at the end of the run (a pytest plugin: the root conftest.py
loads it).

A test asks for ``measured`` and calls it with a line (a soak's rate, a failover's lag). The line is kept on the test's
report, so it reaches the closing ``measurements`` section from whichever process ran the test (pytest-xdist hands
reports back to the process that prints), and a test that failed after measuring still shows its figures.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

#: The name a measured line is filed under in a report's ``user_properties``.
MEASUREMENT = "measurement"


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``measured(line)``: a figure for the run's closing ``measurements`` section."""

    def add(line: str) -> None:
        request.node.user_properties.append((MEASUREMENT, line.strip()))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every measured line of the run, by test id, in one section after the results."""
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == MEASUREMENT
    ]
    if lines:
        terminalreporter.section("measurements")
        for line in sorted(lines):
            terminalreporter.write_line(line)
