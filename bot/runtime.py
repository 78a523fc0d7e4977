"""Builds the core from settings: database, model client, tools, replies, engine.

Adapters are not built here: they attach to `runtime.engine`, and the caller starts the
engine once they have (so recovered replies have somewhere to go).
"""

from __future__ import annotations

import logging
from types import TracebackType

from bot.engine import Engine, EngineConfig
from bot.guards import AccessGate, build_gates
from bot.interim.replies import ReplyBook
from bot.llm import LLMClient
from bot.offline import FakeOpenAI
from bot.settings import Settings
from bot.tools.registry import default_registry
from bot.tools.runner import ToolRunner
from storage.database import create_engine
from storage.migrate import upgrade
from storage.repository import SqlStore

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offline: FakeOpenAI | None = None
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the runtime is not open (use `async with Runtime(...)`)")
        return self._engine

    async def __aenter__(self) -> Runtime:
        settings = self.settings
        if settings.db_auto_upgrade:
            await upgrade(settings.database_url)
        self.db = create_engine(settings.database_url)
        store = SqlStore(self.db, worker=self.settings.worker_id)
        base_url = settings.openai_base_url
        api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        if settings.uses_offline_model():
            self.offline = FakeOpenAI(record=False)
            await self.offline.start()
            base_url, api_key = self.offline.base_url, "offline"
            log.info("using the built-in offline model at %s", base_url)
        self.llm = LLMClient(
            api_key=api_key,
            base_url=base_url,
            model=settings.openai_model,
            timeout=settings.openai_timeout_seconds,
            max_retries=settings.openai_max_retries,
        )
        registry = default_registry(settings.tool_modules)
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
        if self.offline is not None:
            await self.offline.stop()
        await self.db.dispose()
