"""Configuration: what loads, and the exact messages for what does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import holyroute
from holyroute import Config, ConfigError, load_config

from .conftest import base_config

ISSUE_EXAMPLE = """
endpoints:
  openai-main:   {base_url: https://api.openai.com/v1, api_key: ${OPENAI_API_KEY}}
  openai-backup: {base_url: https://eu.example.com/v1, api_key: ${OPENAI_BACKUP_KEY}, timeout: 30}
  deepseek:      {base_url: https://api.deepseek.com/v1, api_key: ${DEEPSEEK_API_KEY}}
  gemini:        {base_url: https://generativelanguage.googleapis.com/v1beta/openai, api_key: ${GEMINI_API_KEY}}
routes:
  chat-default:
    sticky: user
    targets:
      - model: gpt-4.1
        endpoints: [openai-main, openai-backup]
        weight: 90
      - model: deepseek-chat
        endpoints: [deepseek]
        weight: 10
    fallbacks: [chat-cheap]
  chat-cheap:
    targets: [{model: gemini-2.5-flash, endpoints: [gemini], weight: 100}]
prices:
  gpt-4.1: {input: 2.00, cached_input: 0.50, output: 8.00}
"""

ENV = {"OPENAI_API_KEY": "sk-a", "OPENAI_BACKUP_KEY": "sk-b", "DEEPSEEK_API_KEY": "sk-c", "GEMINI_API_KEY": "g"}


def problems(source: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(source, environ=environ or {})
    return [line.removeprefix("  - ") for line in str(caught.value).splitlines()[1:]]


class TestLoading:
    """The issue's example loads from YAML, TOML and dicts."""

    def test_yaml_file(self, tmp_path: Path) -> None:
        path = tmp_path / "holyroute.yaml"
        path.write_text(ISSUE_EXAMPLE)
        config = load_config(path, environ=ENV)
        assert config.endpoints["openai-backup"].timeout == 30
        assert config.endpoints["openai-main"].api_key is not None
        assert config.endpoints["openai-main"].api_key.get_secret_value() == "sk-a"
        assert config.routes["chat-default"].sticky == "user"
        assert config.prices["gpt-4.1"].cached_input == 0.5

    def test_toml_file(self, tmp_path: Path) -> None:
        path = tmp_path / "holyroute.toml"
        path.write_text(
            '[endpoints.main]\nbase_url = "http://127.0.0.1:9/v1"\n'
            '[routes.chat]\ntargets = [{model = "m", endpoints = ["main"]}]\n'
        )
        assert list(load_config(path).routes) == ["chat"]

    def test_config_passes_through(self) -> None:
        config = load_config(base_config())
        assert load_config(config) is config
        assert Config.load(config) is config

    def test_default_path_from_env(self, tmp_path: Path) -> None:
        path = tmp_path / "x.yaml"
        path.write_text(ISSUE_EXAMPLE)
        assert "chat-cheap" in load_config(None, environ={**ENV, "HOLYROUTE_CONFIG": str(path)}).routes

    def test_no_config_anywhere(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError, match=r"set HOLYROUTE_CONFIG, or create \./holyroute\.yaml"):
            load_config(None, environ={})

    def test_env_default_and_escape(self) -> None:
        config = base_config()
        config["endpoints"]["main"]["api_key"] = "${MISSING:-fallback}"
        config["endpoints"]["main"]["headers"] = {"x-price": "$$5"}
        loaded = load_config(config, environ={})
        assert loaded.endpoints["main"].api_key is not None
        assert loaded.endpoints["main"].api_key.get_secret_value() == "fallback"
        assert loaded.endpoints["main"].request_headers()[-1] == ("x-price", "$5")  # headers are SecretStr now

    def test_secret_not_in_repr(self) -> None:
        config = load_config(base_config())
        assert "key-main" not in repr(config)
        assert "key-main" not in str(config.model_dump())


class TestErrors:
    """Every problem names its key path and the fix; all problems are reported at once."""

    def test_unknown_endpoint_with_suggestion(self) -> None:
        config = base_config()
        config["routes"]["chat-default"]["targets"][1]["endpoints"] = ["deeep"]
        assert problems(config) == [
            "routes.chat-default.targets[1].endpoints[0]: unknown endpoint 'deeep' (did you mean 'deep'?); "
            "known: backup, cheap, deep, main"
        ]

    def test_issue_message_shape(self) -> None:
        """The message from the issue, for a typo with no close match."""
        config = {
            "endpoints": {"deepseek": {"base_url": "https://d/v1"}, "openai-main": {"base_url": "https://o/v1"}},
            "routes": {
                "chat-default": {
                    "targets": [
                        {"model": "a", "endpoints": ["openai-main"]},
                        {"model": "b", "endpoints": ["zzz"]},
                    ]
                }
            },
        }
        assert problems(config) == [
            "routes.chat-default.targets[1].endpoints[0]: unknown endpoint 'zzz'; known: deepseek, openai-main"
        ]

    def test_missing_env_var_named(self) -> None:
        config = base_config()
        config["endpoints"]["main"]["api_key"] = "${OPENAI_API_KEY}"
        assert problems(config) == [
            "endpoints.main.api_key: environment variable OPENAI_API_KEY is not set; "
            "export OPENAI_API_KEY=... or write ${OPENAI_API_KEY:-default}"
        ]

    def test_typo_in_key(self) -> None:
        config = base_config()
        config["routes"]["chat-default"]["targets"][0]["wieght"] = 5
        assert problems(config) == ["routes.chat-default.targets[0].wieght: unknown key; did you mean 'weight'?"]

    def test_many_problems_at_once(self) -> None:
        config = base_config()
        route = config["routes"]["chat-default"]
        route["fallbacks"] = ["chat-default", "nope"]
        for target in route["targets"]:
            target["weight"] = 0
        assert problems(config) == [
            "routes.chat-default.targets: every weight is 0; give at least one target a positive weight",
            "routes.chat-default.fallbacks[0]: a route cannot fall back to itself",
            "routes.chat-default.fallbacks[1]: unknown route 'nope'; known: chat-cheap, chat-default",
        ]

    @pytest.mark.parametrize(
        ("path", "value", "expected"),
        [
            (("targets", 0, "weight"), -1, "routes.chat-default.targets[0].weight: Input should be greater than"),
            (("targets", 0, "weight"), "ninety", "routes.chat-default.targets[0].weight: Input should be a valid"),
            (("targets", 0, "endpoints"), [], "routes.chat-default.targets[0].endpoints: List should have at least"),
            (("sticky",), "cookie", "routes.chat-default.sticky: sticky must be 'user', 'header:<name>'"),
            (("targets", 0, "model"), None, "routes.chat-default.targets[0].model: Input should be a valid string"),
        ],
    )
    def test_field_errors(self, path: tuple[Any, ...], value: Any, expected: str) -> None:
        config = base_config()
        node = config["routes"]["chat-default"]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        (problem,) = problems(config)
        assert problem.startswith(expected)

    def test_bad_base_url_not_echoed(self) -> None:
        """A malformed base_url is explained without echoing it (it may hold credentials)."""
        config = base_config()
        config["endpoints"]["main"]["base_url"] = "api.openai.com/v1?key=secret"
        (problem,) = problems(config)
        assert problem == "endpoints.main.base_url: must be an absolute http(s) URL such as https://api.openai.com/v1"
        assert "secret" not in problem

    def test_duplicate_arm(self) -> None:
        config = base_config()
        config["routes"]["chat-default"]["targets"][1]["model"] = "gpt-4.1"
        assert problems(config) == [
            "routes.chat-default.targets[1]: arm 'gpt-4.1' appears twice in this route; "
            "give one of them a distinct 'name'"
        ]

    def test_missing_required(self) -> None:
        assert problems({"endpoints": {}}) == ["routes: required; add it"]

    def test_bad_files(self, tmp_path: Path) -> None:
        broken = tmp_path / "broken.yaml"
        broken.write_text("endpoints: [")
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(broken)
        with pytest.raises(ConfigError, match="no such file"):
            load_config(tmp_path / "absent.yaml")
        (tmp_path / "x.ini").write_text("")
        with pytest.raises(ConfigError, match=r"unknown file type '\.ini'"):
            load_config(tmp_path / "x.ini")

    def test_client_fails_at_construction(self) -> None:
        """holyroute.client() raises the ConfigError before any request is made."""
        with pytest.raises(ConfigError, match="routes: required"):
            holyroute.client({"endpoints": {}})
