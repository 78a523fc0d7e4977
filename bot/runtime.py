"""Builds the core from settings: database, model client, tools, replies, engine.

Adapters are not built here: they attach to `runtime.engine`, and the caller starts the
engine once they have (so recovered replies have somewhere to go).
"""

from __future__ import annotations

import logging
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.engine import Engine, EngineConfig
from bot.guards import AccessGate, build_gates
from bot.interim.replies import ReplyBook
from bot.llm import ChatModel, LLMClient
from bot.offline import OfflineModel
from bot.prompt import history_rows
from bot.settings import Settings, SettingsError
from bot.tools.registry import default_registry
from bot.tools.runner import ToolRunner
from storage.database import create_engine
from storage.migrate import SchemaError, SchemaNotAtHead, check_schema, upgrade
from storage.repository import SqlStore

log = logging.getLogger(__name__)


# Sent to a server named by OPENAI_BASE_URL alone: the SDK refuses to go without a key, and
# local servers (Ollama, llama.cpp, `stillhere fake-openai`) ignore it.
KEYLESS_API_KEY = "no-key"


def build_llm(settings: Settings) -> ChatModel:
    """The model the settings ask for: OpenAI (or a compatible server), or with no API key
    and no base URL the built-in offline model, answering in process."""
    if settings.uses_offline_model():
        return OfflineModel(settings.openai_model)
    key = settings.openai_api_key
    return LLMClient(
        api_key=key.get_secret_value() if key is not None else KEYLESS_API_KEY,
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        timeout=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
    )


async def open_database(settings: Settings) -> AsyncEngine:
    """The database, migrated to the head (DB_AUTO_UPGRADE) or checked to be at it. One
    out of reach, or a schema behind, stops the start with one line (a StartupError)
    before anything runs on it."""
    url = settings.database_url
    if settings.db_auto_upgrade:
        await upgrade(url)
        return create_engine(url)
    engine = create_engine(url)
    try:
        await check_schema(engine)
    except SchemaNotAtHead as exc:
        await engine.dispose()
        if exc.newer:
            raise SettingsError(f"setting DATABASE_URL: {exc}") from exc
        raise SettingsError(
            "setting DB_AUTO_UPGRADE: false, and the database schema is behind this code "
            f"(at revision {exc.current or 'none, an empty database'}; it needs {exc.head}): "
            "run `stillhere db upgrade`, or set DB_AUTO_UPGRADE=true"
        ) from exc
    except SchemaError as exc:
        await engine.dispose()
        raise SettingsError(f"setting DATABASE_URL: {exc}") from exc
    except BaseException:
        await engine.dispose()
        raise
    return engine


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offline = settings.uses_offline_model()
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the runtime is not open (use `async with Runtime(...)`)")
        return self._engine

    async def __aenter__(self) -> Runtime:
        settings = self.settings
        # First, as it may refuse a setting (TOOL_MODULES): nothing is open yet to close.
        registry = default_registry(settings.tool_modules)
        self.db = await open_database(settings)
        store = SqlStore(
            self.db,
            worker=settings.worker_id,
            history_rows=history_rows(settings.context_budget_tokens),
        )
        self.llm = build_llm(settings)
        if self.offline:
            log.info("using the built-in offline model, in process")
            if settings.openai_base_url is not None:
                log.warning("OFFLINE_MODEL=true: OPENAI_BASE_URL is not used")
        elif settings.openai_api_key is None:
            log.info("no OPENAI_API_KEY: the server at OPENAI_BASE_URL gets none")
        access = AccessGate.from_settings(settings)
        self._engine = Engine(
            store=store,
            llm=self.llm,
            registry=registry,
            runner=ToolRunner(registry, settings.tool_timeout_seconds),
            book=ReplyBook.load(),
            config=EngineConfig.from_settings(settings),
            gates=build_gates(settings, store, access),
            access=access,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._engine is not None:
            await self._engine.stop()
        await self.llm.close()
        await self.db.dispose()
