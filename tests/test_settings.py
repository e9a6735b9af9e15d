"""Settings.from_env: secrets only from the environment mapping; the API token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bot.settings import DEFAULT_GITHUB_API_URL, DEFAULT_SLACK_API_URL, Settings, ensure_api_token_file


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("SLACK_BOT_TOKEN", "slack_bot_token"),
        ("SLACK_SIGNING_SECRET", "slack_signing_secret"),
        ("SLACK_APP_TOKEN", "slack_app_token"),
        ("SLACK_API_URL", "slack_api_url"),
        ("GITHUB_WEBHOOK_SECRET", "github_webhook_secret"),
        ("GITHUB_TOKEN", "github_token"),
        ("GITHUB_API_URL", "github_api_url"),
        ("DEPLOYBOT_TOKEN", "api_token"),
    ],
)
def test_each_variable_lands_in_its_field(variable: str, attribute: str) -> None:
    assert getattr(Settings.from_env({variable: "  value-1 "}), attribute) == "value-1"


def test_unset_and_blank_values_mean_none_or_the_default() -> None:
    settings = Settings.from_env({"SLACK_BOT_TOKEN": "", "GITHUB_TOKEN": "   ", "SLACK_API_URL": ""})
    assert settings.slack_bot_token is None
    assert settings.github_token is None
    assert settings.slack_api_url == DEFAULT_SLACK_API_URL
    assert settings.github_api_url == DEFAULT_GITHUB_API_URL
    assert not settings.slack_enabled and not settings.github_enabled


@pytest.mark.parametrize(
    ("environ", "data_dir", "expected_dir", "expected_file"),
    [
        ({}, None, "var", "var/api-token"),
        ({}, "/srv/deploybot", "/srv/deploybot", "/srv/deploybot/api-token"),
        ({"DEPLOYBOT_DATA_DIR": "/data"}, None, "/data", "/data/api-token"),
        ({"DEPLOYBOT_DATA_DIR": "/data"}, "/explicit", "/explicit", "/explicit/api-token"),
        ({"DEPLOYBOT_TOKEN_FILE": "/run/secrets/token"}, "/srv", "/srv", "/run/secrets/token"),
    ],
)
def test_data_dir_and_token_file_location(
    environ: dict[str, str], data_dir: str | None, expected_dir: str, expected_file: str
) -> None:
    settings = Settings.from_env(environ, data_dir=data_dir)
    assert settings.data_dir == Path(expected_dir)
    assert settings.api_token_file == Path(expected_file)
    assert settings.upload_dir == Path(expected_dir) / "uploads"


def test_the_token_file_is_the_data_directory_s_unless_given(tmp_path: Path) -> None:
    """Settings(data_dir=X) used to keep ./var/api-token: the tests that build Settings so read the token file of a
    server run in the checkout (`make run`, then `make test`), and registered it as a bootstrap token."""
    assert Settings(data_dir=tmp_path).api_token_file == tmp_path / "api-token"
    assert Settings().api_token_file == Path("var/api-token")
    given = tmp_path / "elsewhere" / "token"
    assert Settings(data_dir=tmp_path, api_token_file=given).api_token_file == given
    assert Settings(data_dir=tmp_path, api_token_file=Path("var/api-token")).api_token_file == Path("var/api-token")


def test_repr_leaks_no_secret() -> None:
    environ = {
        name: f"secret-{name}"
        for name in (
            "SLACK_BOT_TOKEN",
            "SLACK_SIGNING_SECRET",
            "SLACK_APP_TOKEN",
            "GITHUB_WEBHOOK_SECRET",
            "GITHUB_TOKEN",
            "DEPLOYBOT_TOKEN",
        )
    }
    text = repr(Settings.from_env(environ))
    assert "secret-" not in text
    assert "api_token_file" in text


def test_bootstrap_tokens_come_from_the_env_and_the_file(tmp_path: Path) -> None:
    assert Settings.from_env({}, data_dir=tmp_path).api_tokens() == frozenset()
    assert Settings.from_env({"DEPLOYBOT_TOKEN": "env"}, data_dir=tmp_path).api_tokens() == {"env"}
    (tmp_path / "api-token").write_text("file-token\n")
    assert Settings.from_env({"DEPLOYBOT_TOKEN": "env"}, data_dir=tmp_path).api_tokens() == {"env", "file-token"}


def test_token_file_is_created_once_private_and_random(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "api-token", tmp_path / "b" / "api-token"
    assert ensure_api_token_file(first) is True
    token = first.read_text()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert token.startswith("dbt_") and len(token.strip()) == 4 + 43  # an API token like any other
    assert ensure_api_token_file(first) is False
    assert first.read_text() == token
    ensure_api_token_file(second)
    assert second.read_text() != token
