"""The ``measured`` fixture (tests/measurements.py): what a test measured is listed at the end of the run, whether the
test ran in the process that prints or in a pytest-xdist worker (the README's command runs the suite on two)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("workers", ["0", "2"])
def test_every_measured_line_is_listed_after_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    pytester.makepyfile(
        test_soak="""
        def test_soak(measured):
            measured("soak: 3 calls, none failed")

        def test_failover(measured):
            measured("failover: noticed in 2 ms")
            assert False, "failed after measuring"

        def test_quiet():
            pass
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # tests.measurements, as the root conftest.py loads it
    result = pytester.runpytest_subprocess("-p", "tests.measurements", "-p", "no:cacheprovider", "-n", workers)
    result.assert_outcomes(passed=2, failed=1)
    heading = next(at for at, line in enumerate(result.outlines) if " measurements " in line)
    assert result.outlines[heading + 1 : heading + 3] == [
        "test_soak.py::test_failover: failover: noticed in 2 ms",
        "test_soak.py::test_soak: soak: 3 calls, none failed",
    ]
    assert not any("test_quiet" in line for line in result.outlines)
