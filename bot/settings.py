"""Every setting, in one place, read from the environment and `.env`.

The names are a contract with operators' scripts: rename nothing. Each field's description
is the one-line comment that `.env.example` and the README table carry (a test keeps the
three in step).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KNOWN_PLATFORMS = ("telegram", "discord", "console")
_TELEGRAM_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]{20,}$")
_DISCORD_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{30,}$")
# The databases stillhere runs on, each with the async driver it needs. A URL that names no
# driver (what hosting providers hand out) means that one.
ASYNC_DRIVERS = {"postgresql": "asyncpg", "postgres": "asyncpg", "sqlite": "aiosqlite"}
_DATABASE_FORMS = "postgresql+asyncpg://... or sqlite+aiosqlite:///..."


class GroupMode(StrEnum):
    MENTION = "mention"
    ALL = "all"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # A refused value may hold a secret (DATABASE_URL's password): errors never quote it.
        hide_input_in_errors=True,
    )

    # --- LLM ---
    openai_api_key: SecretStr | None = Field(
        None,
        description=(
            "API key for the OpenAI-compatible server; empty, with no base URL = offline demo model"
        ),
    )
    openai_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server (Ollama, vLLM, OpenRouter...)"
    )
    openai_model: str = Field("gpt-4o-mini", description="Model name sent with every request")
    openai_timeout_seconds: float = Field(
        60.0, gt=0, description="Timeout of one LLM request, in seconds"
    )
    openai_max_retries: int = Field(
        2, ge=0, description="Retries of a failed LLM request (429, 5xx, timeouts) by the SDK"
    )
    offline_model: bool = Field(
        False,
        description="Use the built-in offline model even on Telegram/Discord (demo only)",
    )
    system_prompt: str = Field(
        "You are stillhere, a helpful assistant in a group chat. Several people may talk to "
        "you; their names prefix their messages. Answer in the language of the last message. "
        "Be brief.",
        description="System prompt sent first in every request",
    )
    context_budget_tokens: int = Field(
        12000, gt=0, description="Approximate token budget of the history sent to the LLM"
    )

    # --- platforms ---
    platforms: CsvList = Field(
        default_factory=list,
        description="Platforms to run (telegram,discord,console); empty = chosen by tokens",
    )
    telegram_bot_token: SecretStr | None = Field(
        None, description="Telegram bot token from @BotFather; empty = Telegram off"
    )
    telegram_base_url: str = Field(
        "https://api.telegram.org/bot",
        description="Bot API base URL (a self-hosted Bot API server, or a test fake)",
    )
    telegram_webhook_url: str | None = Field(
        None, description="Public HTTPS URL for webhook mode; empty = long polling"
    )
    telegram_webhook_listen: str = Field(
        "0.0.0.0", description="Address the webhook server listens on"
    )
    telegram_webhook_port: int = Field(8443, description="Port the webhook server listens on")
    telegram_webhook_secret: SecretStr | None = Field(
        None, description="Secret Telegram sends with each webhook call; webhook mode needs one"
    )
    telegram_group_mode: GroupMode = Field(
        GroupMode.MENTION,
        description="In groups answer only when addressed (mention) or to every message (all)",
    )
    discord_bot_token: SecretStr | None = Field(
        None, description="Discord bot token from the Developer Portal; empty = Discord off"
    )
    discord_api_base_url: str = Field(
        "https://discord.com/api/v10", description="Discord REST base URL"
    )
    discord_gateway_url: str = Field(
        "wss://gateway.discord.gg/", description="Discord gateway websocket URL"
    )
    discord_group_mode: GroupMode = Field(
        GroupMode.MENTION,
        description="In servers answer only when addressed (mention) or to every message (all)",
    )

    # --- storage ---
    database_url: str = Field(
        "sqlite+aiosqlite:///./data/stillhere.db",
        description="SQLAlchemy async URL (sqlite+aiosqlite:///... or postgresql+asyncpg://...)",
    )
    worker_id: str = Field(
        "main",
        min_length=1,
        max_length=64,
        description="This process's name; give each worker sharing one database its own",
    )
    db_auto_upgrade: bool = Field(True, description="Apply database migrations when the bot starts")

    # --- tools and turns ---
    tool_modules: CsvList = Field(
        default_factory=list,
        description="Comma-separated import paths of modules with your own @tool functions",
    )
    tool_timeout_seconds: float = Field(
        120.0, gt=0, description="Default timeout of one tool call, in seconds"
    )
    max_tool_rounds: int = Field(
        8, ge=1, description="Tool rounds per turn before a last call without tools"
    )
    tool_notice_delay_seconds: float = Field(
        2.0,
        ge=0,
        description=(
            "Seconds tools run before the bot says it is working on it; "
            "quicker tools get no notice, 0 = at once"
        ),
    )

    # --- guardrails ---
    admin_users: CsvList = Field(
        default_factory=list,
        description="Admin user ids (id or platform:id), comma-separated; admins may use all",
    )
    allowed_users: CsvList = Field(
        default_factory=list, description="Only these user ids may talk to the bot; empty = all"
    )
    blocked_users: CsvList = Field(
        default_factory=list, description="User ids the bot ignores (private: one short reply)"
    )
    allowed_chats: CsvList = Field(
        default_factory=list,
        description="Only these chat/group/channel ids are served; empty = all",
    )
    blocked_chats: CsvList = Field(
        default_factory=list, description="Chat/group/channel ids the bot never answers in"
    )
    allowed_guilds: CsvList = Field(
        default_factory=list, description="Discord server (guild) ids served; empty = all"
    )
    allowed_roles: CsvList = Field(
        default_factory=list,
        description="Discord role ids allowed to talk to the bot in servers; empty = all",
    )
    rate_limit_user_per_minute: int = Field(
        20, ge=0, description="Messages per user per minute before a pause; 0 = no limit"
    )
    rate_limit_chat_per_minute: int = Field(
        60, ge=0, description="Messages per chat per minute before a pause; 0 = no limit"
    )
    token_budget_user_daily: int = Field(
        0, ge=0, description="LLM tokens one user may use per day (UTC); 0 = no limit"
    )
    token_budget_user_monthly: int = Field(
        0, ge=0, description="LLM tokens one user may use per month (UTC); 0 = no limit"
    )
    token_budget_chat_daily: int = Field(
        0, ge=0, description="LLM tokens one chat may use per day (UTC); 0 = no limit"
    )
    token_budget_chat_monthly: int = Field(
        0, ge=0, description="LLM tokens one chat may use per month (UTC); 0 = no limit"
    )
    token_budget_global_daily: int = Field(
        0, ge=0, description="LLM tokens the whole bot may use per day (UTC); 0 = no limit"
    )
    max_message_chars: int = Field(
        4000, gt=0, description="Longer messages are cut (with a note to the model)"
    )
    max_deferred_messages: int = Field(
        10, gt=0, description="Deferred messages sent in full per turn; older ones summarized"
    )

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR")
    log_file: str | None = Field(
        None,
        description="Log to this file; empty = stderr (a console chat shows warnings only)",
    )

    @field_validator(
        "platforms",
        "tool_modules",
        "admin_users",
        "allowed_users",
        "blocked_users",
        "allowed_chats",
        "blocked_chats",
        "allowed_guilds",
        "allowed_roles",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("platforms")
    @classmethod
    def _known_platforms(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in KNOWN_PLATFORMS:
                raise ValueError(f"unknown platform {name!r}; use {', '.join(KNOWN_PLATFORMS)}")
        return value

    @field_validator(
        "openai_base_url",
        "telegram_base_url",
        "telegram_webhook_url",
        "discord_api_base_url",
        "discord_gateway_url",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^(https?|wss?)://[^\s/]+", value):
            raise ValueError(f"not a URL: {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_database_url(cls, value: str) -> str:
        # Messages quote the scheme at most: the rest of the URL may hold a password.
        scheme, separator, rest = value.partition("://")
        if not separator or not re.fullmatch(r"[A-Za-z0-9_.]+(\+[A-Za-z0-9_.]+)?", scheme):
            raise ValueError(f"not a database URL; use {_DATABASE_FORMS}")
        backend, _, driver = scheme.lower().partition("+")
        wanted = ASYNC_DRIVERS.get(backend)
        if wanted is None:
            raise ValueError(f"unsupported database {backend!r}; use {_DATABASE_FORMS}")
        if driver not in ("", wanted):
            raise ValueError(f"needs an async driver: {_DATABASE_FORMS}")
        backend = "postgresql" if backend == "postgres" else backend
        return f"{backend}+{wanted}://{rest}"

    @field_validator("telegram_bot_token")
    @classmethod
    def _telegram_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not _TELEGRAM_TOKEN.match(value.get_secret_value()):
            raise ValueError("malformed token: expected <digits>:<letters> as @BotFather gives it")
        return value

    @field_validator("discord_bot_token")
    @classmethod
    def _discord_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not _DISCORD_TOKEN.match(value.get_secret_value()):
            raise ValueError("malformed token: copy it from Developer Portal > Bot > Token")
        return value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not re.match(r"^[A-Za-z0-9_-]{1,256}$", value.get_secret_value()):
            raise ValueError("use 1-256 characters among A-Z, a-z, 0-9, _ and - (Telegram's rule)")
        return value

    @field_validator("openai_api_key")
    @classmethod
    def _empty_secret_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"unknown log level {value!r}")
        return upper

    def enabled_platforms(self) -> list[str]:
        """The platforms to run: as configured, else those with a token, else the console."""
        if self.platforms:
            return list(self.platforms)
        chosen = []
        if self.telegram_bot_token is not None:
            chosen.append("telegram")
        if self.discord_bot_token is not None:
            chosen.append("discord")
        return chosen or ["console"]

    def uses_offline_model(self) -> bool:
        """The built-in model answers when no server is named: no key and no base URL. A
        base URL alone names a server (a local Ollama or `stillhere fake-openai` needs no
        key), unless OFFLINE_MODEL=true asks for the built-in model."""
        if self.openai_api_key is not None:
            return False
        return self.openai_base_url is None or self.offline_model

    def secrets(self) -> list[str]:
        """Every secret value set, so logging can mask them wherever they appear."""
        values = [
            self.openai_api_key,
            self.telegram_bot_token,
            self.discord_bot_token,
            self.telegram_webhook_secret,
        ]
        return [v.get_secret_value() for v in values if v is not None]


class StartupError(Exception):
    """The bot cannot start (a wrong setting, a platform unreachable or refusing the bot),
    or cannot go on (a platform refusing it while it runs), worded as one line an operator
    can act on, without secrets: `stillhere` prints it alone and exits 2."""


class SettingsError(StartupError):
    """A wrong setting, worded as one line that names it."""


def load_settings(**overrides: Any) -> Settings:
    """Reads the settings, turning pydantic's report into one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"setting {name}: {message}") from None


def check_startup(settings: Settings) -> None:
    """Rules that span several settings; each failure names the missing setting."""
    platforms = settings.enabled_platforms()
    on_chat_platform = [p for p in platforms if p != "console"]
    # Keyed on the key, not on the model used: a base URL without a key does not let a bot
    # start on a platform, where a forgotten key of a hosted server would answer every
    # message with an apology. A server that takes no key gets any value, on purpose.
    if on_chat_platform and settings.openai_api_key is None and not settings.offline_model:
        keyless = (
            "; a server that needs none (Ollama) takes any value"
            if settings.openai_base_url is not None
            else ""
        )
        raise SettingsError(
            f"setting OPENAI_API_KEY: required to answer on {', '.join(on_chat_platform)}"
            f"{keyless} (set OFFLINE_MODEL=true to use the offline demo model there on purpose)"
        )
    if "telegram" in platforms and settings.telegram_bot_token is None:
        raise SettingsError("setting TELEGRAM_BOT_TOKEN: required when PLATFORMS has telegram")
    if "telegram" in platforms:
        check_telegram_webhook(settings)
    if "discord" in platforms and settings.discord_bot_token is None:
        raise SettingsError("setting DISCORD_BOT_TOKEN: required when PLATFORMS has discord")


def check_telegram_webhook(settings: Settings) -> None:
    """Webhook mode needs a secret: the webhook is a public URL, and the secret is all that
    tells Telegram's calls from anyone else's."""
    if settings.telegram_webhook_url and settings.telegram_webhook_secret is None:
        raise SettingsError(
            "setting TELEGRAM_WEBHOOK_SECRET: required when TELEGRAM_WEBHOOK_URL is set "
            "(without it anyone who finds the URL can send the bot forged messages)"
        )
