"""The `stillhere` entry point: the standalone offline model, `db` commands, start-up errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy.engine import make_url

from bot.offline import FakeOpenAI
from storage.migrate import current_revision, head_revision, upgrade
from tests.conftest import POSTGRES_URL_VARIABLE
from tests.fakes.telegram_api import FakeTelegram
from tests.support.process import ROOT, bot_environment, read_until, run_bot, spawn_cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_fake_openai_command_serves_the_offline_model() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "fake-openai", "--port", str(port)],
        cwd=ROOT,
        env=bot_environment("sqlite+aiosqlite:///unused.db"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        read_until(server.stdout, f"127.0.0.1:{port}/v1")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        reply = client.chat.completions.create(
            model="anything", messages=[{"role": "user", "content": "hola"}]
        )
        with_tools = client.chat.completions.create(
            model="anything",
            messages=[{"role": "user", "content": "what time is it?"}],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_current_time", "parameters": {"type": "object"}},
                }
            ],
        )
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert "hola" in (reply.choices[0].message.content or "")
    calls = with_tools.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_current_time"]


def _stillhere(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`stillhere <args>` run to its end in `cwd`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/db/bot.db")
    before = _stillhere(tmp_path, env, "db", "current")
    assert before.returncode == 1 and "current: empty" in before.stdout
    upgrade = _stillhere(tmp_path, env, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    after = _stillhere(tmp_path, env, "db", "current")
    assert after.returncode == 0 and "(head: " in after.stdout
    assert _stillhere(tmp_path, env, "nonsense").returncode == 2


def test_alembic_narrates_nothing_and_each_migration_is_one_line(tmp_path: Path) -> None:
    log_file = tmp_path / "bot.log"
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db")  # LOG_LEVEL=INFO
    run = run_bot(tmp_path, env | {"LOG_FILE": str(log_file)}, stdin="hello\n")
    assert run.returncode == 0, run.stderr
    logged = log_file.read_text(encoding="utf-8")
    # Alembic imported after logging is set up used to add seven "setup plugin" lines and
    # two about its SQLite dialect to every run, `db` and `admin` command.
    assert "alembic" not in logged, logged
    assert "database schema migrated: empty -> 0001" in logged, logged
    for command in (["db", "upgrade"], ["admin", "sessions"]):
        done = _stillhere(tmp_path, env, *command)
        assert done.returncode == 0, done.stderr
        assert "alembic" not in done.stderr, (command, done.stderr)


async def test_a_rejected_telegram_token_is_one_line_without_the_token(tmp_path: Path) -> None:
    token = "42:WrongTokenWrongTokenWrongToken"
    async with FakeTelegram() as tg:
        env = bot_environment(
            f"sqlite+aiosqlite:///{tmp_path}/bot.db",
            TELEGRAM_BOT_TOKEN=token,
            TELEGRAM_BASE_URL=tg.base_url,
            OFFLINE_MODEL="true",
        )
        # The fake answers in this event loop, so the child runs without blocking it.
        child = await spawn_cli(tmp_path, env, "run")
        out, err = await asyncio.wait_for(child.communicate(), 60)
    stdout, stderr = out.decode(), err.decode()
    assert child.returncode == 2, stderr
    assert token not in stdout + stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("stillhere: ")]
    assert line.startswith("stillhere: setting TELEGRAM_BOT_TOKEN:")


@contextlib.contextmanager
def _refusing_port() -> Iterator[int]:
    """A local port held bound but not listening: every connection to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


TELEGRAM_TOKEN = "42:" + "T" * 35
DISCORD_TOKEN = "MTk4NjIy.fake." + "D" * 30


def _platform_environment(platform: str, database_url: str, port: int) -> dict[str, str]:
    closed = f"127.0.0.1:{port}"
    if platform == "telegram":
        extra = {"TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_BASE_URL": f"http://{closed}/bot"}
    else:
        extra = {
            "DISCORD_BOT_TOKEN": DISCORD_TOKEN,
            "DISCORD_API_BASE_URL": f"http://{closed}/api/v10",
            "DISCORD_GATEWAY_URL": f"ws://{closed}/",
        }
    # The start's INFO lines are not what these tests are about; errors and tracebacks are.
    return bot_environment(database_url, OFFLINE_MODEL="true", LOG_LEVEL="ERROR", **extra)


@pytest.mark.parametrize(
    ("platform", "reason"),
    [
        ("telegram", "could not reach the Telegram Bot API at http://127.0.0.1:{port}/bot"),
        ("discord", "could not connect to Discord: "),
    ],
    ids=["telegram", "discord"],
)
def test_an_unreachable_platform_is_one_line_without_the_token_and_exit_2(
    tmp_path: Path, platform: str, reason: str
) -> None:
    with _refusing_port() as port:
        env = _platform_environment(platform, f"sqlite+aiosqlite:///{tmp_path}/bot.db", port)
        run = run_bot(tmp_path, env)
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith(f"stillhere: {reason.format(port=port)}"), line
    assert TELEGRAM_TOKEN not in run.stdout + run.stderr
    assert DISCORD_TOKEN not in run.stdout + run.stderr


@pytest.mark.parametrize("platform", ["telegram", "discord"])
def test_an_unreachable_platform_leaves_its_detail_in_the_log_file(
    tmp_path: Path, platform: str
) -> None:
    log_file = tmp_path / "logs" / "bot.log"
    with _refusing_port() as port:
        env = _platform_environment(platform, f"sqlite+aiosqlite:///{tmp_path}/bot.db", port)
        env["LOG_FILE"] = str(log_file)
        run = run_bot(tmp_path, env)
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.splitlines()
    logged = log_file.read_text(encoding="utf-8")
    # The line the operator saw, then the traceback down to the connection error itself.
    assert line.removeprefix("stillhere: ") in logged
    assert "Traceback" in logged and "Connect" in logged
    assert TELEGRAM_TOKEN not in logged and DISCORD_TOKEN not in logged


def test_run_with_a_database_url_of_a_sync_driver_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = bot_environment("postgresql+psycopg2://bot:hunter2@127.0.0.1:1/bot")
    run = run_bot(tmp_path, env, stdin="hello\n")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "stillhere: setting DATABASE_URL: "
        "needs an async driver: postgresql+asyncpg://... or sqlite+aiosqlite:///..."
    ]
    assert "hunter2" not in run.stdout + run.stderr


def test_a_database_url_without_a_driver_runs_on_the_async_one(tmp_path: Path) -> None:
    env = bot_environment(f"sqlite:///{tmp_path}/bot.db")
    run = run_bot(tmp_path, env, stdin="hello\n")
    assert run.returncode == 0, run.stderr
    assert "hello" in run.stdout  # the offline model echoes what it was told


async def test_run_with_a_base_url_and_no_key_talks_to_that_server(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """The README's `stillhere fake-openai` + OPENAI_BASE_URL recipe, with no key set."""
    env = bot_environment(
        f"sqlite+aiosqlite:///{tmp_path}/bot.db", OPENAI_BASE_URL=fake_openai.base_url
    )
    bot = await spawn_cli(tmp_path, env, "run", stdin=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(bot.communicate(b"hello there\n"), timeout=60)
    assert bot.returncode == 0, err.decode()
    assert len(fake_openai.requests) == 1
    assert "hello there" in out.decode()


@pytest.mark.parametrize("stubborn", ["ignores_cancel", "blocks_its_thread"])
async def test_a_stop_signal_ends_run_while_a_tool_will_not_stop(
    tmp_path: Path, fake_openai: FakeOpenAI, stubborn: str
) -> None:
    """SIGTERM (a deploy, `systemctl stop`) ends `stillhere run` in bounded time even while
    a tool ignores its cancel or holds its thread: it exits 0 and names the tool in the
    log; its call is left running, for recovery at the next start to settle."""
    fake_openai.script_tool_calls([(stubborn, {})])
    env = bot_environment(
        f"sqlite+aiosqlite:///{tmp_path}/bot.db", OPENAI_BASE_URL=fake_openai.base_url
    )
    child = await spawn_cli(tmp_path, env, "run", stdin=asyncio.subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"run the stubborn tool\n")
    await child.stdin.drain()
    # The "working on it" notice: the tool round is recorded and its tool started.
    while b"bot>" not in await asyncio.wait_for(child.stdout.readline(), 30):
        pass
    await asyncio.sleep(0.5)  # inside the tool's own code, where the cancel will land
    child.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(child.communicate(), 30)
    except TimeoutError:
        child.kill()
        await child.wait()
        pytest.fail(f"stillhere run still running 30 s after SIGTERM, with {stubborn}")
    assert child.returncode == 0, err.decode()
    assert stubborn in err.decode()


def test_run_with_a_tool_module_that_cannot_be_loaded_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db", TOOL_MODULES="no_such_tools")
    run = run_bot(tmp_path, env, stdin="hello\n")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "stillhere: setting TOOL_MODULES: cannot load no_such_tools: "
        "ModuleNotFoundError: No module named 'no_such_tools'"
    ]


def test_run_with_a_log_file_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    env = bot_environment(
        f"sqlite+aiosqlite:///{tmp_path}/bot.db", LOG_FILE=str(tmp_path / "a-file" / "bot.log")
    )
    run = run_bot(tmp_path, env, stdin="hello\n")
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"stillhere: setting LOG_FILE: cannot write to {tmp_path}/a-file/")


# --- the database at start: behind the schema head, out of reach, not creatable --------------


@pytest.mark.parametrize("revision", [None, "0001"], ids=["no-schema", "behind-head"])
async def test_run_without_auto_upgrade_on_a_schema_behind_is_one_line_and_exit_2(
    tmp_path: Path, revision: str | None
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    if revision is not None:
        await upgrade(url, revision)
    env = bot_environment(url, DB_AUTO_UPGRADE="false")
    child = await spawn_cli(tmp_path, env, "run", stdin=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(b"hello\n"), 60)
    assert child.returncode == 2, err.decode()
    [line] = err.decode().splitlines()
    assert line.startswith("stillhere: setting DB_AUTO_UPGRADE: "), line
    assert f"at revision {revision or 'none'}" in line and f"needs {head_revision()}" in line
    assert "run `stillhere db upgrade`" in line, line
    assert "hello" not in out.decode()  # nothing was answered on a schema it cannot use
    assert await current_revision(url) == revision  # and it migrated nothing


async def test_run_without_auto_upgrade_on_a_schema_at_head_runs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    await upgrade(url)
    env = bot_environment(url, DB_AUTO_UPGRADE="false")
    child = await spawn_cli(tmp_path, env, "run", stdin=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(b"hello\n"), 60)
    assert child.returncode == 0, err.decode()
    assert "hello" in out.decode()  # the offline model echoes what it was told


DATABASE_PASSWORD = "hunter2-secret"
COMMANDS = [["run"], ["db", "upgrade"], ["db", "current"], ["admin", "sessions"]]
COMMAND_IDS = ["run", "db-upgrade", "db-current", "admin-sessions"]


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_a_database_server_down_is_one_line_naming_database_url_without_the_password(
    tmp_path: Path, command: list[str]
) -> None:
    with _refusing_port() as port:
        url = f"postgresql+asyncpg://bot:{DATABASE_PASSWORD}@127.0.0.1:{port}/bot"
        done = _stillhere(tmp_path, bot_environment(url), *command)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line == (
        f"stillhere: setting DATABASE_URL: cannot connect to "
        f"postgresql+asyncpg://bot:***@127.0.0.1:{port}/bot: connection refused"
    )
    assert DATABASE_PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("command", COMMANDS[:3], ids=COMMAND_IDS[:3])
def test_a_sqlite_folder_that_cannot_be_created_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/a-file/data/bot.db")
    done = _stillhere(tmp_path, env, *command)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line == (
        f"stillhere: setting DATABASE_URL: cannot create the folder {tmp_path}/a-file/data "
        "for the SQLite file: not a directory"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_a_sqlite_file_that_cannot_be_opened_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "bot.db").mkdir()  # a folder where the file should be
    done = _stillhere(tmp_path, bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db"), *command)
    assert done.returncode == 2, done.stderr
    # Nor a traceback of aiosqlite's thread after it, once the event loop has closed.
    [line] = done.stderr.splitlines()
    assert line == (
        f"stillhere: setting DATABASE_URL: cannot open the SQLite file {tmp_path}/bot.db: "
        "unable to open database file"
    )


def test_a_database_out_of_reach_leaves_its_traceback_in_the_log_file_only(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "bot.log"
    with _refusing_port() as port:
        url = f"postgresql+asyncpg://bot:{DATABASE_PASSWORD}@127.0.0.1:{port}/bot"
        run = run_bot(tmp_path, bot_environment(url, LOG_FILE=str(log_file)))
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.splitlines()
    logged = log_file.read_text(encoding="utf-8")
    assert line.removeprefix("stillhere: ") in logged
    assert "Traceback" in logged and "ConnectionRefusedError" in logged
    assert DATABASE_PASSWORD not in logged + run.stdout + run.stderr


def test_a_postgresql_server_refusing_the_credentials_is_one_line_without_the_password(
    tmp_path: Path,
) -> None:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE} to run this test")
    # A role the server does not know: refused whether it checks passwords or trusts
    # (as CI's does), where a wrong password alone would be let in.
    wrong = make_url(url).set(username="stillhere_no_such_role", password=DATABASE_PASSWORD)
    env = bot_environment(wrong.render_as_string(hide_password=False))
    done = _stillhere(tmp_path, env, "db", "upgrade")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        f"stillhere: setting DATABASE_URL: cannot connect to "
        f"{wrong.render_as_string(hide_password=True)}: "
    ), line
    assert "stillhere_no_such_role" in line.split(": ", 3)[-1]  # the server's reason
    assert DATABASE_PASSWORD not in done.stdout + done.stderr
