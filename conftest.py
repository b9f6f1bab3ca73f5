"""Collects the examples of README.md and docs/ as tests (see tests/doc_examples.py for how each kind runs), and
lists what the soaks measured at the end of the run."""

from pathlib import Path

from tests.doc_examples import sybil

pytest_collect_file = sybil(Path(__file__).parent).pytest()
#: The ``measured`` fixture and the ``measurements`` section it fills after the run; pytester, for its test.
pytest_plugins = ["tests.measurements", "pytester"]
