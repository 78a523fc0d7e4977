"""The `stillhere` entry point: the standalone offline model, `db` commands, start-up errors."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import openai

from tests.fakes.telegram_api import FakeTelegram
from tests.support.process import ROOT, bot_environment, read_until


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


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/db/bot.db")

    def stillhere(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    before = stillhere("db", "current")
    assert before.returncode == 1 and "current: empty" in before.stdout
    upgrade = stillhere("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    after = stillhere("db", "current")
    assert after.returncode == 0 and "(head: " in after.stdout
    assert stillhere("nonsense").returncode == 2


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
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "run",
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
    stdout, stderr = out.decode(), err.decode()
    assert child.returncode == 2, stderr
    assert token not in stdout + stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("stillhere: ")]
    assert line.startswith("stillhere: setting TELEGRAM_BOT_TOKEN:")
