"""Running `stillhere` as a real child process, for tests that need one (crash, CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]


def bot_environment(database_url: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "TELEGRAM_", "DISCORD_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        DATABASE_URL=database_url,
        TOOL_MODULES="tests.support.slow_tools",
        TOOL_NOTICE_DELAY_SECONDS="0",
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def run_bot(
    cwd: Path, env: dict[str, str], stdin: str = "", *, stdin_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`stillhere run` to the end of its input (and of the work it started): `stdin` piped
    in, or `stdin_file` redirected as a file (`stillhere run < file`), which is not a pipe."""
    with contextlib.ExitStack() as files:
        file = None if stdin_file is None else files.enter_context(stdin_file.open("rb"))
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "run"],
            cwd=cwd,
            env=env,
            input=stdin if file is None else None,
            stdin=file,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=60,
        )


def start_bot(cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run"],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


async def spawn_cli(
    cwd: Path,
    env: dict[str, str],
    *argv: str,
    stdin: int = asyncio.subprocess.DEVNULL,
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """`stillhere <argv>` started as a child of the running event loop (stdin closed by default)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )


def read_until(stream: IO[str], needle: str, timeout: float = 30.0) -> list[str]:
    """Lines read until one contains `needle` (blocking reads; the child always writes)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen; got: {seen}")
