"""The docs site tells the truth: generated pages are current, every event is documented, every page is in the
navigation, and the example runner (tests/doc_examples.py) fails on what it should fail on."""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from sybil import Sybil
from sybil.example import SybilFailure

from tests.doc_examples import REPOSITORY, sybil

DOCS = REPOSITORY / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", REPOSITORY / "scripts" / "gen_reference.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestGeneratedReference:
    def test_pages_are_current(self) -> None:
        """The configuration and CLI references are what scripts/gen_reference.py writes from the code today."""
        for path, text in _generator().pages().items():
            assert path.read_text(encoding="utf-8") == text, f"run python scripts/gen_reference.py ({path.name})"

    def test_every_configuration_key_is_described(self) -> None:
        """Each key of every model has a meaning in the reference, taken from the model's own docstrings."""
        page = _generator().configuration_page()
        undescribed = [line for line in page.splitlines() if line.startswith("| `") and line.endswith("|  |")]
        assert undescribed == []

    def test_every_subcommand_has_a_section(self) -> None:
        from holyroute.cli import commands

        page = _generator().cli_page()
        parser = commands._parser()
        (subcommands,) = [action for action in parser._actions if hasattr(action, "_choices_actions")]
        for choice in subcommands._choices_actions:
            assert f"## holyroute {choice.dest}\n" in page


class TestEventReference:
    def test_every_event_is_documented(self) -> None:
        """Every event name the library emits appears in docs/reference/events.md."""
        names: set[str] = set()
        for path in (REPOSITORY / "holyroute").rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if path.name == "tracing.py":  # its other "holyroute.*" strings are span attributes, not events
                names |= set(re.findall(r"\"(holyroute\.[a-z_]+_failed)\"", text))
            else:
                names |= set(re.findall(r"\"(holyroute\.[a-z_]+)\"", text))
        names -= {"holyroute.yaml", "holyroute.yml", "holyroute.toml"}
        page = (DOCS / "reference" / "events.md").read_text(encoding="utf-8")
        assert sorted(name for name in names if f"`{name}`" not in page) == []


class TestNavigation:
    def test_every_page_is_in_the_navigation(self) -> None:
        """mkdocs.yml lists every page under docs/, and only pages that exist."""
        text = (REPOSITORY / "mkdocs.yml").read_text(encoding="utf-8")
        config = yaml.safe_load(text)

        def pages(node: object) -> list[str]:
            if isinstance(node, str):
                return [node]
            if isinstance(node, list):
                return [page for item in node for page in pages(item)]
            if isinstance(node, dict):
                return [page for item in node.values() for page in pages(item)]
            return []

        listed = pages(config["nav"])
        on_disk = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
        assert sorted(listed) == on_disk


class TestReadme:
    def test_links_resolve(self) -> None:
        """Every relative link of README.md names a file of the repository (mkdocs --strict checks docs/ itself)."""
        text = (REPOSITORY / "README.md").read_text(encoding="utf-8")
        targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
        assert targets
        assert [target for target in targets if not (REPOSITORY / target).is_file()] == []


class TestExampleRunner:
    """tests/doc_examples.py fails an example that is wrong, and never passes one it did not run."""

    def _run(self, tmp_path: Path, text: str) -> list[str]:
        """Run one page holding ``text`` as the suite runs README.md and docs/; what failed, in words."""
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        (root / "docs").mkdir()
        page = root / "docs" / "page.md"
        page.write_text(text, encoding="utf-8")
        runner: Sybil = sybil(root)
        document = runner.parse(page)
        assert runner.setup is not None
        assert runner.teardown is not None
        failures: list[str] = []
        runner.setup(document.namespace)
        try:
            for example in document:
                try:
                    example.evaluate()
                except SybilFailure as failure:
                    failures.append(str(failure))
                except Exception as exc:  # raised by the example itself, or a skip
                    failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            runner.teardown(document.namespace)
        return failures

    def test_console_output_is_compared(self, tmp_path: Path) -> None:
        failures = self._run(tmp_path, "```console\n$ holyroute --help\nusage: holyroute nothing like this\n```\n")
        assert len(failures) == 1
        assert "printed (exit 0)" in failures[0]

    def test_ellipsis_matches_the_rest(self, tmp_path: Path) -> None:
        assert self._run(tmp_path, "```console\n$ holyroute --help\nusage: holyroute ...\n```\n") == []

    def test_a_failing_command_must_show_its_exit_code(self, tmp_path: Path) -> None:
        shown = "```console\n$ holyroute check --nosuch\n...\n$ echo $?\n2\n```\n"
        hidden = "```console\n$ holyroute check --nosuch\n...\n```\n"
        assert self._run(tmp_path, shown) == []
        (failure,) = self._run(tmp_path, hidden)
        assert "show it with '$ echo $?'" in failure

    @pytest.mark.parametrize("language", ["bash", "text", "sh"])
    def test_a_block_no_runner_runs_fails_unless_skipped(self, tmp_path: Path, language: str) -> None:
        unmarked = f"```{language}\npip install holyroute\n```\n"
        marked = f'<!-- skip: next "installs from the index" -->\n```{language}\npip install holyroute\n```\n'
        (failure,) = self._run(tmp_path, unmarked)
        assert "not run by the docs tests" in failure
        (skipped,) = self._run(tmp_path, marked)
        assert skipped == "SkipTest: installs from the index"

    def test_other_commands_are_refused(self, tmp_path: Path) -> None:
        (failure,) = self._run(tmp_path, "```console\n$ rm -rf build\n```\n")
        assert "is not run by the docs tests" in failure

    def test_a_configuration_block_is_loaded(self, tmp_path: Path) -> None:
        """A complete configuration with a problem fails as holyroute.client() would; a fragment is only parsed."""
        broken = "```yaml\nendpoints: {}\nroutes:\n  chat: {targets: [{model: m, endpoints: [nosuch]}]}\n```\n"
        (failure,) = self._run(tmp_path, broken)
        assert "unknown endpoint 'nosuch'" in failure
        assert self._run(tmp_path, "```yaml\nretry: {max_attempts: 5}\n```\n") == []
