"""Collects the examples of README.md and docs/ as tests (see tests/doc_examples.py for how each kind runs)."""

from pathlib import Path

from tests.doc_examples import sybil

pytest_collect_file = sybil(Path(__file__).parent).pytest()
