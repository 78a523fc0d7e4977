"""`stillhere admin ...` through the real entry point: in process with capsys (run in a thread,
since `main` owns its event loop), as a subprocess, and against a bot running as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot import engine as engine_module
from bot.cli import main
from bot.events import DeliveryError, ReplyKind
from bot.offline import FakeOpenAI
from storage.migrate import downgrade, upgrade
from storage.models import (
    ControlRow,
    OutboxRow,
    SessionRow,
    ToolCallRow,
    WorkerRow,
)
from tests.conftest import CoreFactory
from tests.storage.test_admin import (
    answered,
    corrupt_history,
    dump,
    execute,
    fetch,
    stopped_in_a_hung_model_call,
    stuck_tool_session,
    wait_rows,
)
from tests.support.process import spawn_cli

ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`main` configures the root logger for the process; give pytest's handlers back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def admin_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


Run = tuple[int, str, str]


async def admin(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """`stillhere admin ARGV...` in process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(main, ["admin", *argv])
    except SystemExit as exc:  # argparse's way of saying "usage error"
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def of_type(out: str, kind: str) -> list[dict[str, Any]]:
    """The JSON lines of one type ("session", "worker", ...)."""
    return [record for record in json_lines(out) if record.get("type") == kind]


# --- bad input first -----------------------------------------------------------------------------


async def test_unknown_session_is_one_clear_line_and_exit_2(
    admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await upgrade(admin_env)
    for command in (["show", "42"], ["repair", "42"], ["cancel", "42"], ["reset", "42"]):
        code, out, err = await admin(capsys, *command)
        assert code == 2, command
        assert err.strip().splitlines() == [
            "stillhere admin: no session 42 (`stillhere admin sessions --all` lists them)"
        ]
        assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "abc"],
        ["show", "0"],
        ["sessions", "--limit", "0"],
        ["sessions", "--platform", "irc"],
        ["sessions", "--tool-margin", "-5"],
        ["sessions", "--minutes", "nan"],
        ["repair", "1", "--max-attempts", "x"],
        ["cancel", "1", "--wait", "-1"],
        ["frobnicate"],
        [],
    ],
)
async def test_bad_arguments_are_usage_errors(
    argv: list[str], admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await admin(capsys, *argv)
    assert code == 2
    assert "usage:" in err and out == ""


async def test_missing_database_file_is_reported_and_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/data/none.db")
    code, out, err = await admin(capsys, "sessions")
    assert code == 2 and out == ""
    assert f"no database file at {tmp_path}/data/none.db" in err
    assert not (tmp_path / "data").exists()


async def test_missing_database_of_the_default_url_names_the_folder_it_was_looked_for_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run from another folder than the bot's, with the default relative URL.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = await admin(capsys, "sessions")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert f"no database file at {Path.cwd()}/data/stillhere.db " in line
    assert f"current folder: {Path.cwd()};" in line
    assert "a relative DATABASE_URL and the .env file are read from the current folder" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg2://bot:hunter2@127.0.0.1:1/bot", "mysql://bot:hunter2@127.0.0.1:1/bot"],
)
async def test_database_url_without_an_async_driver_is_one_line_and_exit_2(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = await admin(capsys, "sessions")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("stillhere: setting DATABASE_URL: ")
    assert "hunter2" not in err


async def test_database_url_without_a_driver_is_served_by_the_async_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await upgrade(f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/bot.db")
    code, _, err = await admin(capsys, "sessions")
    assert (code, err) == (0, "")


async def test_schema_behind_head_is_refused_without_migrating(
    admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await upgrade(admin_env)

    await downgrade(admin_env, "base")
    before = await dump(admin_env)
    code, out, err = await admin(capsys, "sessions")
    assert code == 2 and out == ""
    assert "run `stillhere db upgrade`" in err and len(err.strip().splitlines()) == 1
    assert await dump(admin_env) == before


# --- sessions ------------------------------------------------------------------------------------


async def test_sessions_lists_and_filters(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await answered(make_core, "hello")
    code, out, _ = await admin(capsys, "sessions", "--json")
    assert code == 0
    (row,) = of_type(out, "session")
    assert (row["id"], row["platform"], row["state"], row["stuck"]) == (1, "memory", "idle", False)
    code, out, _ = await admin(capsys, "sessions", "--json", "--platform", "telegram")
    assert (code, of_type(out, "session")) == (0, [])
    code, out, _ = await admin(capsys, "sessions", "--stuck")
    assert (code, out.splitlines()[0]) == (0, "no stuck sessions")
    code, out, _ = await admin(capsys, "sessions")
    assert code == 0 and "memory:chat-1" in out and "idle" in out
    # Titles come from the platforms: shown as they are, never read as rich markup.
    await execute(admin_env, update(SessionRow).values(chat_title="[red]Team[/red]"))
    code, out, _ = await admin(capsys, "sessions")
    assert code == 0 and "[red]Team[/red] (memory:chat-1)" in out


async def test_sessions_archived_only_with_all(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await answered(make_core, "hello")
    code, out, _ = await admin(capsys, "reset", "1", "--offline", "--json")
    assert code == 0 and json_lines(out)[0]["applied"] is True
    code, out, _ = await admin(capsys, "sessions", "--json")
    assert (code, of_type(out, "session")) == (0, [])
    code, out, _ = await admin(capsys, "sessions", "--json", "--all")
    (row,) = of_type(out, "session")
    assert row["archived"] is True
    code, out, _ = await admin(capsys, "reset", "1", "--offline")
    assert code == 0 and "archived already" in out


async def test_sessions_and_show_say_whether_the_bot_is_alive(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await upgrade(admin_env)
    code, out, _ = await admin(capsys, "sessions")
    assert (code, out.splitlines()) == (
        0,
        ["no sessions", "bot: no heartbeat recorded: no bot has run on this database (yet)"],
    )
    async with make_core() as (runtime, chat):
        await chat.say("hello")
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
        await wait_rows(admin_env, WorkerRow)
        code, out, _ = await admin(capsys, "sessions")
        assert code == 0
        assert re.search(r"^bot: worker main alive \(seen \d+ s ago\)$", out, re.MULTILINE), out
        code, out, _ = await admin(capsys, "sessions", "--json")
        (worker,) = of_type(out, "worker")
        assert (worker["worker_id"], worker["alive"]) == ("main", True)
        assert worker["seconds_ago"] < 30 and worker["last_seen"]
    # As if the bot had been killed four minutes ago: its heartbeat stopped then.
    killed = datetime.now(UTC) - timedelta(minutes=4)
    await execute(admin_env, update(WorkerRow).values(last_seen_at=killed))
    dead = "bot: worker main last seen 4 min ago (not running?)"
    code, out, _ = await admin(capsys, "sessions", "--stuck")
    assert (code, out.splitlines()) == (0, ["no stuck sessions", dead])
    code, out, _ = await admin(capsys, "show", "1")
    assert code == 0 and out.splitlines()[1] == dead
    code, out, _ = await admin(capsys, "show", "1", "--json")
    (worker,) = of_type(out, "worker")
    assert (worker["worker_id"], worker["alive"]) == ("main", False)
    assert worker["seconds_ago"] >= 240


async def test_the_running_engine_keeps_beating(
    make_core: CoreFactory, admin_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "CONTROL_POLL_SECONDS", 0.01)
    async with make_core():
        (first,) = await wait_rows(admin_env, WorkerRow)
        async with asyncio.timeout(10):
            while True:
                (now,) = await fetch(admin_env, WorkerRow)
                if now.last_seen_at > first.last_seen_at:
                    break
                await asyncio.sleep(0.02)
    assert now.worker_id == "main"


async def test_a_bot_alive_but_deaf_says_which_platform_and_why(
    make_core: CoreFactory,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Why did it stop answering?": a heartbeat says the bot runs; what its adapter
    reported says why no message arrives."""
    monkeypatch.setattr(engine_module, "CONTROL_POLL_SECONDS", 0.01)
    problem = "another process uses this TELEGRAM_BOT_TOKEN (Conflict: terminated)"

    async def beats_with(problem_seen: bool) -> None:
        async with asyncio.timeout(10):
            while ((await fetch(admin_env, WorkerRow))[0].intake_problem is None) == problem_seen:
                await asyncio.sleep(0.02)

    alive = r"^bot: worker main alive \(seen \d+ s ago\)"
    async with make_core() as (runtime, _chat):
        await wait_rows(admin_env, WorkerRow)
        runtime.engine.report_intake("telegram", problem)
        await beats_with(problem_seen=True)
        code, out, _ = await admin(capsys, "sessions")
        since = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        deaf = rf"{alive}, but no messages arrive from telegram {since}: {re.escape(problem)}$"
        assert code == 0 and re.search(deaf, out, re.MULTILINE), out
        code, out, _ = await admin(capsys, "sessions", "--json")
        (worker,) = of_type(out, "worker")
        assert worker["alive"] and worker["intake_problem"].endswith(f" UTC: {problem}")
        runtime.engine.report_intake("telegram", None)
        await beats_with(problem_seen=False)
        code, out, _ = await admin(capsys, "sessions")
        assert re.search(rf"{alive}$", out, re.MULTILINE), out


async def test_never_finishing_tool_is_flagged_stuck_with_the_tool_reason(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_openai.script_tool_calls([("never_finishes", {})])
    async with make_core(tool_timeout_seconds=30) as (_runtime, chat):
        await chat.say("run the hanging tool")
        await chat.wait_for(1)
        code, out, _ = await admin(capsys, "sessions", "--json", "--tool-margin", "5")
        (row,) = of_type(out, "session")
        assert (code, row["state"], row["open_tools"], row["stuck"]) == (0, "tools", 1, False)
        # As if the tool had hung for an hour: its start moves back, the clock stays.
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        await execute(admin_env, update(ToolCallRow).values(started_at=hour_ago))
        code, out, _ = await admin(capsys, "sessions", "--stuck", "--json", "--tool-margin", "5")
        (row,) = of_type(out, "session")
        assert code == 1
        assert [r["code"] for r in row["reasons"]] == ["tool_overdue"]
        assert "never_finishes" in row["reasons"][0]["text"]
        code, out, _ = await admin(capsys, "sessions", "--stuck", "--tool-margin", "5")
        assert code == 1 and "tool_overdue" in out and "tools running" in out


async def test_a_session_left_in_llm_is_stuck_after_the_model_timeouts_settings(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await stopped_in_a_hung_model_call(make_core, fake_openai, admin_env)
    # A call may take 30 s x (1 + 1 retry), then the margin: stuck after 60 + 5 s.
    monkeypatch.setenv("OPENAI_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "1")
    for seconds, stuck in ((55, False), (75, True)):
        since = datetime.now(UTC) - timedelta(seconds=seconds)
        await execute(admin_env, update(SessionRow).values(updated_at=since))
        code, out, _ = await admin(capsys, "sessions", "--stuck", "--json", "--tool-margin", "5")
        rows = of_type(out, "session")
        assert (code, len(rows)) == ((1, 1) if stuck else (0, 0)), seconds
    (row,) = rows
    assert row["state"] == "llm"
    assert [r["code"] for r in row["reasons"]] == ["llm_overdue"]
    assert "60 s" in row["reasons"][0]["text"]


async def test_the_table_counts_waiting_messages_as_the_json_does(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await stopped_in_a_hung_model_call(make_core, fake_openai, admin_env, "are you there?")
    # One message in the history the hung call took, one queued behind it.
    code, out, _ = await admin(capsys, "sessions", "--json")
    (row,) = of_type(out, "session")
    assert (row["unanswered"], row["queued"], row["deferred"]) == (2, 1, 0)
    code, out, _ = await admin(capsys, "sessions")
    assert code == 0 and "2 unanswered (1 queued)" in out


async def test_undeliverable_reply_is_stuck_shown_and_resent_after_repair(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with make_core() as (runtime, chat):
        chat.fail_next = [DeliveryError("Forbidden: bot was blocked", permanent=True)]
        await chat.say("hi")
        await wait_rows(admin_env, OutboxRow, OutboxRow.failed.is_(True))
        await runtime.engine.wait_idle()
    code, out, _ = await admin(capsys, "sessions", "--stuck", "--json")
    (row,) = of_type(out, "session")
    assert code == 1 and [r["code"] for r in row["reasons"]] == ["outbox_failed"]
    code, out, _ = await admin(capsys, "show", "1", "--json")
    outbox = [r for r in json_lines(out) if r["type"] == "outbox"]
    assert [(o["kind"], o["delivery"]) for o in outbox] == [("answer", "failed")]
    assert outbox[0]["last_error"] == "Forbidden: bot was blocked"
    code, out, _ = await admin(capsys, "show", "1")
    assert code == 1 and "failed" in out and "Forbidden: bot was blocked" in out
    assert "stuck: outbox_failed: reply #1 (answer) failed for good: Forbidden" in out
    code, out, _ = await admin(capsys, "repair", "1", "--wait", "0")
    assert code == 3 and "send reply #1 (answer) again" in out
    async with make_core() as (runtime, chat):
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    code, out, _ = await admin(capsys, "sessions", "--stuck", "--json")
    assert (code, of_type(out, "session")) == (0, [])


# --- show, validate, repair of a corrupted history -----------------------------------------------


async def test_corrupted_history_flagged_by_validate_and_show_then_repaired(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await answered(make_core, "hello")
    await corrupt_history(admin_env, 1)

    code, out, _ = await admin(capsys, "validate")
    assert code == 1
    assert "1 of 1 histories are invalid" in out
    assert "missing_tool_response at message 3" in out
    code, out, _ = await admin(capsys, "validate", "--json")
    lines = json_lines(out)
    assert code == 1
    assert [(r["session"], r["rule"], r["index"]) for r in lines[:-1]] == [
        (1, "missing_tool_response", 3),
        (1, "unknown_tool_call_id", 4),
    ]
    assert lines[-1] == {"checked": 1, "invalid": 1}

    code, out, _ = await admin(capsys, "show", "1", "--json")
    assert code == 1
    records = json_lines(out)
    assert records[0]["type"] == "session" and records[0]["history_valid"] is False
    violations = [r for r in records if r["type"] == "violation"]
    assert [(v["rule"], v["index"], v["position"]) for v in violations] == [
        ("missing_tool_response", 3, 3),
        ("unknown_tool_call_id", 4, 4),
    ]
    assert "call_lost" in violations[0]["message"]
    code, out, _ = await admin(capsys, "show", "1")
    assert code == 1 and "history: INVALID" in out
    assert "missing_tool_response at message 3" in out

    before = await dump(admin_env)
    code, planned, _ = await admin(capsys, "repair", "1", "--dry-run")
    assert code == 0 and planned.startswith("dry run, nothing changed")
    assert await dump(admin_env) == before
    code, done, _ = await admin(capsys, "repair", "1", "--wait", "0")
    assert code == 3 and done.startswith("repaired session 1")
    steps = [line for line in done.splitlines() if line.startswith("  - ")]
    assert steps == [line for line in planned.splitlines() if line.startswith("  - ")]
    assert any("missing tool result for call_lost" in s for s in steps)
    assert await dump(admin_env) != before

    code, out, _ = await admin(capsys, "validate")
    assert (code, out.strip()) == (0, "checked 1 histories: all valid")
    code, out, _ = await admin(capsys, "show", "1")
    assert code == 0 and "history: valid" in out
    async with make_core() as (runtime, chat):
        await chat.say("are you there?", message_id="after-repair")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    assert fake_openai.rejected == []


async def test_show_says_why_a_session_is_stuck_and_exits_1(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await stuck_tool_session(make_core, fake_openai)
    code, out, _ = await admin(capsys, "show", "1")
    assert code == 0 and "stuck:" not in out
    # As if the tool had hung for an hour: its start moves back, the clock stays.
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await execute(admin_env, update(ToolCallRow).values(started_at=hour_ago))
    code, out, _ = await admin(capsys, "show", "1", "--tool-margin", "5")
    (line,) = [line for line in out.splitlines() if line.startswith("stuck: ")]
    assert code == 1
    assert line.startswith("stuck: tool_overdue: tool never_finishes (")
    assert "plus 5 s" in line
    code, out, _ = await admin(capsys, "show", "1", "--json")
    (session,) = of_type(out, "session")
    assert code == 1 and session["stuck"] is True
    assert [r["code"] for r in session["reasons"]] == ["tool_overdue"]
    assert "plus 60 s" in session["reasons"][0]["text"]


async def test_show_transcript_marks_instant_replies_deferred_and_tool_calls(
    make_core: CoreFactory,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support import slow_tools

    monkeypatch.setattr(slow_tools, "DELAY", 0.5)
    async with make_core() as (runtime, chat):
        await chat.say("what time is it?", name="Ana")
        await chat.wait_for(1)
        await chat.say("are you still there?", name="Luis")
        await chat.wait_for(3)
        await runtime.engine.wait_idle()
    code, out, _ = await admin(capsys, "show", "1")
    assert code == 0
    assert "history: valid (5 messages)" in out
    assert "Ana: what time is it?" in out and "Luis: are you still there?" in out
    assert "bot (instant reply, status)" in out
    assert 'get_current_time({"timezone": "UTC"}) done' in out
    assert "#1 answer: delivered" not in out  # the first reply is the working notice
    assert "working: delivered" in out and "interim: delivered" in out
    code, out, _ = await admin(capsys, "show", "1", "--last", "1", "--json")
    messages = [r for r in json_lines(out) if r["type"] == "message"]
    assert [m["role"] for m in messages] == ["assistant"]
    assert json_lines(out)[0]["omitted"] == 5


# --- repair of a stuck tool, then a core carries on ----------------------------------------------


async def test_repair_dry_run_changes_nothing_then_repair_gets_the_session_answered(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await stuck_tool_session(make_core, fake_openai)
    before = await dump(admin_env)
    code, out, _ = await admin(capsys, "repair", "1", "--dry-run", "--json")
    planned = of_type(out, "step")
    assert code == 0 and await dump(admin_env) == before
    assert [s["code"] for s in planned] == ["cancel_tool", "close_round", "recover"]
    assert all(s["dry_run"] is True for s in planned)
    assert json_lines(out)[-1] == {
        "type": "repair",
        "session": 1,
        "dry_run": True,
        "steps": 3,
        "control": None,
        "applied": None,
        "result": None,
    }
    code, out, _ = await admin(capsys, "repair", "1", "--json", "--wait", "0")
    done = of_type(out, "step")
    assert code == 3
    assert [(s["code"], s["text"]) for s in done] == [(s["code"], s["text"]) for s in planned]
    (outcome,) = of_type(out, "repair")
    assert (outcome["dry_run"], outcome["steps"], outcome["applied"]) == (False, 3, False)
    assert isinstance(outcome["control"], int)
    (call,) = await fetch(admin_env, ToolCallRow)
    assert (call.status, call.result) == ("cancelled", "cancelled by an operator")
    code, out, _ = await admin(capsys, "validate")
    assert code == 0
    async with make_core(tool_timeout_seconds=30) as (runtime, chat):
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    assert "cancelled by an operator" in sent[0].message.text
    assert fake_openai.rejected == []
    (control,) = await fetch(admin_env, ControlRow)
    assert control.action == "recover" and control.done_at is not None


async def test_repair_while_the_core_runs_is_carried_on_by_it(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_openai.script_tool_calls([("never_finishes", {})])
    async with make_core(tool_timeout_seconds=30) as (_runtime, chat):
        await chat.say("run the hanging tool")
        await chat.wait_for(1)
        code, out, _ = await admin(capsys, "repair", "1", "--wait", "10")
        assert code == 0 and "cancelled by an operator" in out
        assert "the bot picked it up: session handed back to the engine" in out
        sent = await chat.wait_for(2)
        assert sent[1].message.kind is ReplyKind.ANSWER
        assert "cancelled by an operator" in sent[1].message.text
        (control,) = await wait_rows(admin_env, ControlRow, ControlRow.done_at.is_not(None))
        assert control.result == "session handed back to the engine"
        # No wait_idle here: the engine keeps the repaired call's task until its own
        # timeout (reported to the engine's owner); stopping the core cancels it.
    code, out, _ = await admin(capsys, "validate")
    assert code == 0
    assert fake_openai.rejected == []


async def test_repair_without_a_running_bot_says_none_picked_it_up_and_exits_3(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await stopped_in_a_hung_model_call(make_core, fake_openai, admin_env)
    # Killed during the model call, four minutes ago.
    killed = datetime.now(UTC) - timedelta(minutes=4)
    await execute(admin_env, update(WorkerRow).values(last_seen_at=killed))
    code, out, _ = await admin(capsys, "repair", "1", "--wait", "0.3")
    assert code == 3
    assert "queue a 'recover' control" in out
    assert "no running bot picked it up within 0.3 s" in out
    assert "bot: worker main last seen 4 min ago (not running?)" in out
    (control,) = await fetch(admin_env, ControlRow)
    assert (control.action, control.done_at) == ("recover", None)


async def test_repair_of_a_healthy_session_has_nothing_to_repair(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await answered(make_core, "hello")
    code, out, _ = await admin(capsys, "repair", "1")
    assert (code, out.strip()) == (0, "session 1: nothing to repair")
    code, out, _ = await admin(capsys, "repair", "1", "--json")
    assert (code, json_lines(out)) == (
        0,
        [
            {
                "type": "repair",
                "session": 1,
                "dry_run": False,
                "steps": 0,
                "control": None,
                "applied": None,
                "result": None,
            }
        ],
    )
    assert await fetch(admin_env, ControlRow) == []


# --- controls: cancel and reset ------------------------------------------------------------------


async def test_cancel_without_a_running_bot_stays_queued(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await answered(make_core, "hello")
    code, out, _ = await admin(capsys, "cancel", "1", "--wait", "0.3")
    assert code == 3
    assert "no running bot applied it within 0.3 s" in out
    assert "stays queued" in out and "next starts" in out
    (control,) = await fetch(admin_env, ControlRow)
    assert control.action == "cancel" and control.done_at is None
    code, out, _ = await admin(capsys, "cancel", "1", "--wait", "0", "--json")
    (result,) = json_lines(out)
    assert (code, result["applied"], result["result"]) == (3, False, None)


async def test_cancel_and_reset_applied_by_a_running_core(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_openai.script_tool_calls([("never_finishes", {})])
    async with make_core(tool_timeout_seconds=30) as (runtime, chat):
        await chat.say("run the hanging tool")
        await chat.wait_for(1)
        code, out, _ = await admin(capsys, "cancel", "1", "--wait", "10", "--json")
        (result,) = json_lines(out)
        assert code == 0 and result["applied"] is True
        assert result["result"] == "cancelled 1 running tool call(s)"
        sent = await chat.wait_for(2)
        assert "cancelled by an operator" in sent[1].message.text
        await runtime.engine.wait_idle()
        code, out, _ = await admin(capsys, "reset", "1", "--wait", "10")
        assert code == 0 and "the bot applied it: conversation reset" in out
    (session,) = await fetch(admin_env, SessionRow)
    assert session.active_key is None
    assert fake_openai.rejected == []


# --- usage ---------------------------------------------------------------------------------------


async def test_usage_reports_tokens_per_user_and_chat(
    make_core: CoreFactory, admin_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with make_core() as (runtime, chat):
        await chat.say("hello", user="u7")
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
    code, out, _ = await admin(capsys, "usage", "--json")
    lines = {(r["scope"], r["id"]): r for r in json_lines(out)}
    assert code == 0
    assert lines[("user", "u7")]["calls_today"] == 1
    assert lines[("user", "u7")]["tokens_today"] > 0
    assert lines[("chat", "memory:chat-1")]["tokens_month"] == lines[("user", "u7")]["tokens_month"]
    code, out, _ = await admin(capsys, "usage")
    assert code == 0 and "user u7" in out and "total" in out


async def test_no_secret_reaches_the_output_of_any_command(
    make_core: CoreFactory,
    admin_env: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's promise: secrets are never printed by the admin CLI, though it reads
    the same settings (environment and .env) as the bot."""
    secrets = {
        "OPENAI_API_KEY": "sk-admin-cli-SECRET-123456",
        "TELEGRAM_BOT_TOKEN": "42:" + "S" * 35,
        "DISCORD_BOT_TOKEN": "MTk4NjIy.secret." + "S" * 30,
        "TELEGRAM_WEBHOOK_SECRET": "webhook-SECRET-654321",
    }
    async with make_core(openai_api_key=secrets["OPENAI_API_KEY"]) as (runtime, chat):
        await chat.say("hello")
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    commands = [
        ["sessions", "--all"],
        ["show", "1"],
        ["repair", "1", "--dry-run"],
        ["validate"],
        ["usage"],
        ["show", "99"],  # an error line too
    ]
    for argv in commands + [[*argv, "--json"] for argv in commands]:
        code, out, err = await admin(capsys, *argv)
        assert code == (2 if "99" in argv else 0), (argv, err)
        assert out + err
        for value in secrets.values():
            assert value not in out + err, argv


# --- as separate processes -----------------------------------------------------------------------


def _env(database_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "TELEGRAM_", "DISCORD_")) and k != "PLATFORMS"
    }
    env.update(DATABASE_URL=database_url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


async def _cli(env: dict[str, str], cwd: Path, *argv: str) -> Run:
    process = await spawn_cli(cwd, env, *argv)
    try:
        out, err = await asyncio.wait_for(process.communicate(), SUBPROCESS_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_validate_as_a_subprocess_exits_1_on_a_corrupted_history(
    make_core: CoreFactory, database_url: str, tmp_path: Path
) -> None:
    await answered(make_core, "hello")
    await corrupt_history(database_url, 1)
    code, out, err = await _cli(_env(database_url), tmp_path, "admin", "validate", "--json")
    assert code == 1, err
    assert json_lines(out)[0]["rule"] == "missing_tool_response"


async def test_missing_database_as_a_subprocess_is_the_one_line_and_no_log_lines(
    tmp_path: Path,
) -> None:
    env = _env("unused")
    del env["DATABASE_URL"]  # the default, relative to the current folder
    code, out, err = await _cli(env, tmp_path, "admin", "sessions")
    assert (code, out) == (2, "")
    (line,) = err.strip().splitlines()
    assert line.startswith(f"stillhere admin: no database file at {tmp_path}/data/stillhere.db ")


@contextlib.asynccontextmanager
async def _bot(env: dict[str, str], cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await spawn_cli(
        cwd,
        env,
        "run",
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,  # its log lines too, to see why if it fails
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _reply(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    """The bot's next printed reply that contains `needle` (log lines are skipped)."""
    async with asyncio.timeout(SUBPROCESS_TIMEOUT):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended before {needle!r}: {''.join(seen)}")
            line = raw.decode()
            seen.append(line)
            if line.startswith("bot> ") and needle in line:
                return line


async def test_running_bot_process_applies_an_admin_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    env = _env(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    seen: list[str] = []
    async with _bot(env, tmp_path) as bot:
        assert bot.stdin is not None and bot.stdout is not None
        bot.stdin.write(b"wait 600 seconds\n")
        await bot.stdin.drain()
        await _reply(bot.stdout, "", seen)  # the notice: the tool started

        code, out, err = await admin(capsys, "sessions", "--json")
        assert code == 0, err
        (row,) = of_type(out, "session")
        assert (row["platform"], row["state"], row["open_tools"]) == ("console", "tools", 1)

        code, out, err = await _cli(
            env, tmp_path, "admin", "cancel", str(row["id"]), "--wait", "20", "--json"
        )
        assert code == 0, err
        (result,) = json_lines(out)
        assert result["applied"] is True
        assert result["result"] == "cancelled 1 running tool call(s)"
        final = await _reply(bot.stdout, "cancelled by an operator", seen)
        assert "wait_seconds" in final

        bot.stdin.close()
        await asyncio.wait_for(bot.communicate(), SUBPROCESS_TIMEOUT)
        assert bot.returncode == 0, "".join(seen)
