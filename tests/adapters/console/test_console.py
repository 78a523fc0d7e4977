"""The first five minutes: `stillhere run` with no keys, piped stdin, in an empty folder."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.process import bot_environment, read_until, run_bot, start_bot
from tests.support.spanish_time import tells_the_time


def test_console_run_offline_with_piped_stdin(tmp_path: Path) -> None:
    env = bot_environment(
        f"sqlite+aiosqlite:///{tmp_path}/data/bot.db", STILLHERE_TEST_TOOL_DELAY="1.0"
    )
    bot = start_bot(tmp_path, env)
    try:
        assert bot.stdin is not None and bot.stdout is not None
        bot.stdin.write("Dame la hora actual\n")
        bot.stdin.flush()
        banner_and_working = read_until(bot.stdout, "bot> ")  # the tool runs now
        bot.stdin.write("¿Sigues ahí?\n")
        bot.stdin.close()  # end of input: the bot finishes what it started, then exits
        rest = bot.stdout.read()  # until the bot exits (its log output is a few KB)
        assert bot.stderr is not None
        errors = bot.stderr.read()
        bot.wait(timeout=60)
    finally:
        if bot.poll() is None:
            bot.kill()
    assert bot.returncode == 0, errors
    out = "\n".join(banner_and_working) + "\n" + rest
    assert "OFFLINE DEMO MODEL" in out
    replies = [line for line in out.splitlines() if line.startswith("bot> ")]
    # working line, the instant status reply (Spanish, counting the tool), the final answer
    assert len(replies) == 3, out
    assert "1 herramienta" in replies[1] and "consultar la hora" in replies[1]
    assert tells_the_time(replies[2]) and "¿Sigues ahí?" in replies[2]
    assert (tmp_path / "data" / "bot.db").exists()
    assert "rejected" not in errors


def test_console_commands(tmp_path: Path) -> None:
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    result = run_bot(tmp_path, env, "/status\n/reset\n/cancel\n/help\nhello\n")
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("bot> ")]
    assert replies[0] == "bot> Nothing is running right now."
    assert "new conversation" in replies[1]
    assert "nothing to cancel" in replies[2]
    assert "/cancel" in replies[3]
    assert "hello" in replies[4]


def test_a_piped_console_chat_logs_warnings_only_to_stderr(tmp_path: Path) -> None:
    # The README: a console chat shows warnings only. A script piped in is still a console
    # chat, its stderr usually the same terminal, so it gets the same quiet stderr.
    env = bot_environment(
        f"sqlite+aiosqlite:///{tmp_path}/bot.db",  # LOG_LEVEL=INFO
        OFFLINE_MODEL="true",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",  # unused, and a warning says so
    )
    result = run_bot(tmp_path, env, "hello\n")
    assert result.returncode == 0, result.stderr
    assert "hello" in _replies(result.stdout)[-1]
    [warning] = result.stderr.splitlines()
    assert " WARNING bot.runtime: OFFLINE_MODEL=true: OPENAI_BASE_URL is not used" in warning


def test_a_console_chat_logging_to_dev_stderr_shows_every_line(tmp_path: Path) -> None:
    # The README's way to watch a console chat's events in the terminal.
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db", LOG_FILE="/dev/stderr")
    result = run_bot(tmp_path, env, "hello\n")
    assert result.returncode == 0, result.stderr
    assert " INFO bot.session: turn answered session=session-1 turn=1" in result.stderr


def test_platform_token_without_key_is_a_clear_start_error(tmp_path: Path) -> None:
    env = bot_environment(
        f"sqlite+aiosqlite:///{tmp_path}/bot.db", TELEGRAM_BOT_TOKEN="123456:" + "A" * 35
    )
    result = run_bot(tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stillhere: setting OPENAI_API_KEY: required to answer on telegram "
        "(set OFFLINE_MODEL=true to use the offline demo model there on purpose)"
    ]
    assert "A" * 35 not in result.stderr


def _replies(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("bot> ")]


def test_a_line_over_the_stream_limit_and_the_next_are_both_answered(tmp_path: Path) -> None:
    # 100 KiB is past asyncio's 64 KiB line limit, which used to kill the reader: the line
    # and every line after it went unread, and the run never reached its end.
    long_line = "a long line " + "x" * (100 * 1024)
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    result = run_bot(tmp_path, env, f"{long_line}\nand a short one\n")
    assert result.returncode == 0, result.stderr
    replies = _replies(result.stdout)
    assert any("a long line xxx" in reply for reply in replies), result.stdout
    assert "and a short one" in replies[-1], result.stdout


def test_stdin_redirected_from_a_file_is_read_line_by_line(tmp_path: Path) -> None:
    # A regular file is no pipe: the loop cannot watch it, so it used to crash the start.
    script = tmp_path / "script.txt"
    script.write_text("/status\nhello from a file\n", encoding="utf-8")
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    result = run_bot(tmp_path, env, stdin_file=script)
    assert result.returncode == 0, result.stderr
    replies = _replies(result.stdout)
    assert replies[0] == "bot> Nothing is running right now.", result.stdout
    assert "hello from a file" in replies[-1], result.stdout


def test_stdin_from_dev_null_ends_the_run_at_once(tmp_path: Path) -> None:
    # /dev/null is a device the loop cannot watch either (epoll refuses it).
    env = bot_environment(f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    result = run_bot(tmp_path, env, stdin_file=Path(os.devnull))
    assert result.returncode == 0, result.stderr
    assert "OFFLINE DEMO MODEL" in result.stdout
    assert _replies(result.stdout) == []
