"""Settings are a contract: every name documented, every mistake one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError, check_startup, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = [
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "SYSTEM_PROMPT",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_BASE_URL",
    "TELEGRAM_WEBHOOK_URL",
    "TELEGRAM_GROUP_MODE",
    "DISCORD_BOT_TOKEN",
    "DISCORD_API_BASE_URL",
    "DISCORD_GATEWAY_URL",
    "DISCORD_GROUP_MODE",
    "DATABASE_URL",
    "TOOL_MODULES",
    "TOOL_TIMEOUT_SECONDS",
    "MAX_TOOL_ROUNDS",
    "LOG_LEVEL",
]
TELEGRAM_TOKEN = "123456:" + "A" * 35


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_contract_names_exist() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    assert set(CONTRACT) <= fields


def test_every_setting_is_in_env_example_and_readme() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert re.search(rf"^{name.upper()}=", example, re.M), f"{name.upper()} not in .env.example"
        assert f"`{name.upper()}`" in readme, f"{name.upper()} not in the README table"


def _documented_default(value: object) -> str:
    """A field's default as the README table and .env.example write it."""
    if value is None or value == []:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_the_readme_table_and_env_example_give_each_settings_meaning_and_default() -> None:
    """The settings' module says the three are kept in step: names alone would let a
    description or a default drift from what the code does."""
    readme = (ROOT / "README.md").read_text()
    rows = {
        name: (meaning, default)
        for name, meaning, default in re.findall(
            r"^\| `([A-Z_]+)` \| (.+?) \| (.+?) \|$", readme, re.M
        )
    }
    example = (ROOT / ".env.example").read_text()
    entries = {
        name: (comment, value.strip('"'))
        for comment, name, value in re.findall(r"^# (.+)\n([A-Z_]+)=(.*)$", example, re.M)
    }
    for name, field in Settings.model_fields.items():
        variable = name.upper()
        default = _documented_default(field.get_default(call_default_factory=True))
        meaning, shown = rows[variable]
        assert meaning == field.description, variable
        if shown == "(empty)":
            assert default == "", variable
        else:
            text = shown.strip("`")
            # A long default (SYSTEM_PROMPT) is shown cut short, ending in "...".
            assert default == text or (
                text.endswith("...") and default.startswith(text.removesuffix("..."))
            ), variable
        assert entries[variable] == (field.description, default), variable


def test_env_example_parses_as_is(tmp_path: Path) -> None:
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.enabled_platforms() == ["console"]
    assert settings.uses_offline_model()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("OPENAI_BASE_URL", "not a url", "OPENAI_BASE_URL"),
        ("PLATFORMS", "telegram,irc", "PLATFORMS"),
        ("TELEGRAM_BOT_TOKEN", "nonsense", "TELEGRAM_BOT_TOKEN"),
        ("DISCORD_BOT_TOKEN", "short", "DISCORD_BOT_TOKEN"),
        ("MAX_TOOL_ROUNDS", "0", "MAX_TOOL_ROUNDS"),
        ("TELEGRAM_GROUP_MODE", "sometimes", "TELEGRAM_GROUP_MODE"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
    ],
)
def test_wrong_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"setting {named}:")
    assert "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://bot:hunter2@db.example/bot",  # a driver that is not async
        "sqlite+pysqlite:///./data/bot.db",
        "mysql+aiomysql://bot:hunter2@db.example/bot",  # a database stillhere does not run on
        "bot:hunter2@db.example/bot",  # not a URL at all
        "",
    ],
)
def test_database_url_without_an_async_driver_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("setting DATABASE_URL:")
    assert "\n" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        # What hosting providers hand out: the async driver is what the URL means here.
        (
            "postgresql://bot:p%40ss@db.example:5433/bot",
            "postgresql+asyncpg://bot:p%40ss@db.example:5433/bot",
        ),
        ("postgres://bot:pw@db.example/bot", "postgresql+asyncpg://bot:pw@db.example/bot"),
        ("sqlite:///./data/bot.db", "sqlite+aiosqlite:///./data/bot.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        (
            "postgresql+asyncpg://bot:pw@db.example/bot",
            "postgresql+asyncpg://bot:pw@db.example/bot",
        ),
        ("sqlite+aiosqlite:///./data/bot.db", "sqlite+aiosqlite:///./data/bot.db"),
    ],
)
def test_database_url_without_a_driver_gets_the_async_one(
    monkeypatch: pytest.MonkeyPatch, url: str, meant: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().database_url == meant


def test_platform_token_without_api_key_names_the_missing_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
    settings = load_settings()
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        check_startup(settings)
    monkeypatch.setenv("OFFLINE_MODEL", "true")
    check_startup(load_settings())  # chosen explicitly: allowed


def test_webhook_mode_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
    monkeypatch.setenv("OFFLINE_MODEL", "true")
    monkeypatch.setenv("TELEGRAM_WEBHOOK_URL", "https://bot.example.org/hook")
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "")
    with pytest.raises(SettingsError) as caught:
        check_startup(load_settings())
    assert str(caught.value).startswith("setting TELEGRAM_WEBHOOK_SECRET:")
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "s3cret-Token")
    check_startup(load_settings())


def test_a_base_url_without_a_key_means_that_server_on_the_console(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    settings = load_settings()
    assert not settings.uses_offline_model()
    check_startup(settings)


def test_a_base_url_without_a_key_does_not_answer_on_a_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A platform still needs OPENAI_API_KEY: a forgotten key of a hosted server would
    otherwise start a bot that answers every message with an apology."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
    with pytest.raises(SettingsError) as caught:
        check_startup(load_settings())
    assert str(caught.value).startswith("setting OPENAI_API_KEY:")
    assert "any value" in str(caught.value)  # how a keyless server (Ollama) is used there
    monkeypatch.setenv("OPENAI_API_KEY", "ollama")
    check_startup(load_settings())


def test_offline_model_asked_for_wins_over_a_base_url_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("OFFLINE_MODEL", "true")
    assert load_settings().uses_offline_model()


def test_platforms_follow_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().enabled_platforms() == ["console"]
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "x" * 59)
    assert load_settings().enabled_platforms() == ["telegram", "discord"]
    monkeypatch.setenv("PLATFORMS", "discord")
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        check_startup(load_settings())


def test_secrets_are_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    settings = load_settings()
    assert "sk-very-secret-value" not in repr(settings)
    assert settings.secrets() == ["sk-very-secret-value"]
