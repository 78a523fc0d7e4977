"""A real crash: the bot process is SIGKILLed while a tool runs, then started again."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import text

from bot.history import validate
from bot.prompt import to_openai
from storage.database import create_engine
from storage.repository import SqlStore
from tests.fakes.telegram_api import FakeTelegram, TgUser
from tests.support.ports import free_port
from tests.support.process import bot_environment, read_until, run_bot, spawn_cli, start_bot

ANA = TgUser(1001, "Ana")


async def _tool_running_and_notice_recorded(url: str) -> bool:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            running = await connection.scalar(
                text("SELECT count(*) FROM tool_calls WHERE status = 'running'")
            )
            pending = await connection.scalar(
                text("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
            )
            return bool(running) and pending == 0
    finally:
        await engine.dispose()


def wait_for_state(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not asyncio.run(_tool_running_and_notice_recorded(url)):
        assert time.monotonic() < deadline, "the tool never started"
        time.sleep(0.05)


async def _stored_history(url: str) -> list[dict[str, object]]:
    engine = create_engine(url)
    try:
        store = SqlStore(engine)
        session_id = (await store.sessions_needing_work() or [1])[0]
        return [to_openai(e, name_authors=False) for e in await store.history(session_id)]
    finally:
        await engine.dispose()


def test_sigkill_while_a_tool_runs_then_restart(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    env = bot_environment(url, STILLHERE_TEST_TOOL_DELAY="60")
    bot = start_bot(tmp_path, env)
    try:
        assert bot.stdin is not None and bot.stdout is not None
        bot.stdin.write("Dame la hora actual\n")
        bot.stdin.flush()
        read_until(bot.stdout, "bot> ")  # the "working on it" line
        wait_for_state(url)  # ...recorded as delivered, and the tool marked running
        bot.kill()
        bot.wait(timeout=10)
    finally:
        if bot.poll() is None:
            bot.kill()
    assert bot.returncode == -9

    again = run_bot(tmp_path, env)
    assert again.returncode == 0, again.stderr
    replies = [line for line in again.stdout.splitlines() if line.startswith("bot> ")]
    assert len(replies) == 1, again.stdout
    assert "interrupted by a restart" in replies[0]

    history = asyncio.run(_stored_history(url))
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[0]["content"] == "Dame la hora actual"
    assert validate([{"role": "system", "content": "s"}, *history]) == []


async def _start_telegram_bot(cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await spawn_cli(cwd, env, "run", stdout=asyncio.subprocess.DEVNULL)


def _telegram_environment(tg: FakeTelegram, db: Path) -> dict[str, str]:
    return bot_environment(
        f"sqlite+aiosqlite:///{db}",
        TELEGRAM_BOT_TOKEN=tg.token,
        TELEGRAM_BASE_URL=tg.base_url,
        OFFLINE_MODEL="true",
    )


@contextlib.asynccontextmanager
async def _killed_unable_to_store(
    cwd: Path, env: dict[str, str], db: Path
) -> AsyncIterator[sqlite3.Connection]:
    """A bot process, SIGKILLed on leaving, and a connection to its SQLite file for the
    test to take the write lock with (BEGIN IMMEDIATE), so that the bot cannot store; the
    lock goes only once the bot is dead."""
    process = await _start_telegram_bot(cwd, env)
    lock = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        yield lock
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        lock.close()


async def _next_start_answers_once(tg: FakeTelegram, cwd: Path, env: dict[str, str]) -> None:
    """Starts the bot again: it answers "hello there" exactly once, leaves no update
    unconfirmed, and stops cleanly."""
    second = await _start_telegram_bot(cwd, env)
    try:
        await tg.wait_for(lambda: len(tg.sent_messages(ANA.id)) >= 1, timeout=30)
        # A wrong second post would come right after recovery: let the bot idle on.
        polls = len(tg.calls_to("getUpdates"))
        await tg.wait_for(lambda: len(tg.calls_to("getUpdates")) >= polls + 1, timeout=30)
        await tg.wait_for(lambda: tg.queued_updates == [], timeout=30)
    finally:
        second.terminate()
        _, errors = await second.communicate()
    assert second.returncode == 0, errors.decode()
    sent = tg.sent_messages(ANA.id)
    assert len(sent) == 1
    assert "hello there" in sent[0].text


async def test_sigkill_between_reply_stored_and_delivered_then_restart(tmp_path: Path) -> None:
    """The answer is in the outbox and its sendMessage is in flight when the process dies.
    Exactly one answer is posted, by the next process."""
    async with FakeTelegram() as tg:
        env = _telegram_environment(tg, tmp_path / "bot.db")
        tg.hang_next("sendMessage")
        first = await _start_telegram_bot(tmp_path, env)
        try:
            tg.push_text(ANA.id, ANA, "hello there")
            await tg.wait_for(lambda: len(tg.calls_to("sendMessage")) == 1, timeout=30)
            first.kill()
            await first.wait()
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
        assert tg.sent_messages(ANA.id) == []  # the hung send never completed

        await _next_start_answers_once(tg, tmp_path, env)


async def test_sigkill_while_a_fetched_message_is_being_stored_then_restart(
    tmp_path: Path,
) -> None:
    """Telegram is told to forget an update (a later getUpdates offset) only once the
    message is stored: the process dies while it cannot store it, and the next one gets
    it from Telegram again and answers it once."""
    db = tmp_path / "bot.db"
    async with FakeTelegram() as tg:
        env = _telegram_environment(tg, db)
        async with _killed_unable_to_store(tmp_path, env, db) as lock:
            await tg.wait_for(lambda: bool(tg.calls_to("getUpdates")), timeout=30)
            # Another process holds SQLite's write lock: the bot can fetch, not store.
            lock.execute("BEGIN IMMEDIATE")
            polls = len(tg.calls_to("getUpdates"))
            tg.push_text(ANA.id, ANA, "hello there")
            # The long poll open when it came answers with it.
            await tg.wait_for(lambda: tg.calls_to("getUpdates")[polls - 1].status == 200)
            # python-telegram-bot polls again at once; the bot waits for the storing.
            await asyncio.sleep(1.0)
            assert [u["message"]["text"] for u in tg.queued_updates] == ["hello there"]
            assert len(tg.calls_to("getUpdates")) == polls
        assert tg.sent_messages(ANA.id) == []

        await _next_start_answers_once(tg, tmp_path, env)


async def test_sigkill_while_a_webhook_message_is_being_stored_then_telegram_resends_it(
    tmp_path: Path,
) -> None:
    """In webhook mode the answer to Telegram's call confirms the update: the process dies
    while it cannot store the message, the call goes unanswered, and the update Telegram
    sends again is answered once by the next process."""
    db = tmp_path / "bot.db"
    port = free_port()
    async with FakeTelegram() as tg:
        env = {
            **_telegram_environment(tg, db),
            "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
            "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1",
            "TELEGRAM_WEBHOOK_PORT": str(port),
            "TELEGRAM_WEBHOOK_SECRET": "crash-test-secret",
        }
        async with _killed_unable_to_store(tmp_path, env, db) as lock:
            await tg.wait_for(lambda: bool(tg.calls_to("setWebhook")), timeout=30)
            # Another process holds SQLite's write lock: the bot gets the call, cannot store.
            lock.execute("BEGIN IMMEDIATE")
            message_id = tg.push_text(ANA.id, ANA, "hello there")
            await asyncio.sleep(1.0)
            assert tg.webhook_deliveries == []  # the call is still unanswered
        await tg.wait_for(lambda: bool(tg.webhook_deliveries), timeout=30)
        [(update_id, status)] = tg.webhook_deliveries
        assert status == 0  # the connection closed unanswered: Telegram was told nothing
        assert tg.sent_messages(ANA.id) == []
        again = {
            "update_id": update_id,
            "message": {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": {"id": ANA.id, "type": "private", "first_name": ANA.first_name},
                "from": ANA.to_dict(),
                "text": "hello there",
            },
        }

        second = await _start_telegram_bot(tmp_path, env)
        try:
            await tg.wait_for(lambda: len(tg.calls_to("setWebhook")) == 2, timeout=30)
            tg.push_raw(again)  # Telegram sends it again
            await tg.wait_for(lambda: len(tg.sent_messages(ANA.id)) >= 1, timeout=30)
            await tg.wait_for(lambda: len(tg.webhook_deliveries) == 2, timeout=30)
            await asyncio.sleep(0.5)  # a wrong second post would come now
        finally:
            second.terminate()
            _, errors = await second.communicate()
        assert second.returncode == 0, errors.decode()
        assert tg.webhook_deliveries[1] == (update_id, 200)
        sent = tg.sent_messages(ANA.id)
        assert len(sent) == 1
        assert "hello there" in sent[0].text
