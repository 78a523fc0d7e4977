"""`stillhere admin ...`: see every session, find stuck ones, repair them.

It works on the live database while the bot runs, and never migrates it. Changes a running
bot must make itself (cancel, reset, carrying a repaired session on) go through the
`controls` table, which the bot polls. Output is rich text for people, or JSON lines with
`--json` for scripts. Exit codes: 0 ok, 1 problems found (stuck sessions, a stuck session
shown, an invalid history), 2 usage error, 3 no running bot applied a request in time. It
prints no setting, so no secret can leak through it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bot.settings import KNOWN_PLATFORMS, Settings

if TYPE_CHECKING:
    from storage.admin import (
        AdminStore,
        ControlState,
        MessageView,
        SessionSummary,
        Step,
        StuckRules,
        Transcript,
        WorkerView,
    )

OK, PROBLEMS, USAGE, NOT_APPLIED = 0, 1, 2, 3
POLL_SECONDS = 0.1
PREVIEW = 160
PIPED_WIDTH = 240
SESSION_HELP = "a session id, as `stillhere admin sessions` lists them"
NO_HEARTBEAT = "bot: no heartbeat recorded: no bot has run on this database (yet)"


# --- arguments ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def _session_id(text: str) -> int:
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a session id: {text!r}") from None


def add_admin_parser(commands: Any) -> None:
    """Adds `admin` and its commands to the `stillhere` parser's subcommands."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="JSON lines for scripts")
    attempts = argparse.ArgumentParser(add_help=False)
    attempts.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        metavar="N",
        help="a reply is stuck after this many failed sends (default 3)",
    )
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument(
        "--tool-margin",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="a tool call, or a model call, is stuck this long after its timeout (default 60)",
    )
    rules.add_argument(
        "--minutes",
        type=_seconds,
        default=5.0,
        metavar="M",
        help="a reply or queued message is stuck after this many minutes (default 5)",
    )
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument(
        "--wait",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the running bot to apply it (default 5; exit 3 if none did)",
    )

    admin = commands.add_parser(
        "admin",
        help="inspect and repair conversations (safe while the bot runs)",
        description="Inspect and repair conversations in the bot's database, also while the "
        "bot runs. Exit codes: 0 ok; 1 problems found (sessions --stuck: some are stuck; "
        "show: this one is stuck; validate: a history is invalid); 2 usage error, unknown "
        "session or a database not at the schema head; 3 no running bot applied the request "
        "of cancel, reset or repair within --wait (it stays queued for the next start).",
    )
    sub = admin.add_subparsers(dest="admin_command", required=True)
    sessions = sub.add_parser(
        "sessions",
        parents=[output, attempts, rules],
        help="one line per session; --stuck finds stuck ones",
    )
    sessions.add_argument("--stuck", action="store_true", help="only stuck sessions, and why")
    sessions.add_argument("--all", action="store_true", help="archived sessions too")
    sessions.add_argument("--platform", choices=KNOWN_PLATFORMS, help="only this platform's")
    sessions.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N (default 50)"
    )
    show = sub.add_parser(
        "show",
        parents=[output, attempts, rules],
        help="a session's transcript, whether its history is valid and why it is stuck",
    )
    show.add_argument("session", type=_session_id, help=SESSION_HELP)
    show.add_argument("--last", type=_positive_int, metavar="N", help="only the last N messages")
    repair = sub.add_parser(
        "repair",
        parents=[output, attempts, wait],
        help="cancel stuck tool calls, fix the history, resend stuck replies, carry on",
    )
    repair.add_argument("session", type=_session_id, help=SESSION_HELP)
    repair.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    cancel = sub.add_parser(
        "cancel", parents=[output, wait], help="ask the running bot to cancel a session's tools"
    )
    cancel.add_argument("session", type=_session_id, help=SESSION_HELP)
    reset = sub.add_parser(
        "reset", parents=[output, wait], help="ask the running bot to reset a conversation"
    )
    reset.add_argument("session", type=_session_id, help=SESSION_HELP)
    reset.add_argument(
        "--offline", action="store_true", help="archive it directly (only while the bot is down)"
    )
    sub.add_parser("validate", parents=[output], help="check every stored history")
    sub.add_parser("usage", parents=[output], help="tokens per user and chat, today and month")


# --- output helpers ----------------------------------------------------------------------------


def _console() -> Console:
    # Piped into grep or a file, 80 columns would fold every table row into many lines.
    width = None if sys.stdout.isatty() else PIPED_WIDTH
    return Console(highlight=False, soft_wrap=True, width=width)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, ensure_ascii=False, default=_jsonable), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _fail(message: str) -> int:
    print(f"stillhere admin: {message}", file=sys.stderr)
    return USAGE


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _since(moment: datetime) -> str:
    return _ago((datetime.now(UTC) - moment).total_seconds()) + " ago"


def _short(text: str | None, limit: int = PREVIEW) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _chat(summary: SessionSummary) -> str:
    where = f"{summary.platform}:{summary.chat_id}"
    if summary.thread_id:
        where += f"/{summary.thread_id}"
    return f"{summary.chat_title} ({where})" if summary.chat_title else where


def _state(summary: SessionSummary) -> str:
    state = "tools running" if summary.state == "tools" else summary.state
    return f"{state} (archived)" if summary.archived else state


def _waiting(summary: SessionSummary) -> str:
    """The user messages without an answer, as the JSON's `unanswered` counts them: those
    in the history after the last answer (a failed or hung call took them), then the
    queued and deferred ones, which the parentheses break out."""
    if not summary.unanswered:
        return "-"
    parts = [f"{summary.queued} queued"] if summary.queued else []
    if summary.deferred:
        parts.append(f"{summary.deferred} deferred")
    return f"{summary.unanswered} unanswered" + (f" ({', '.join(parts)})" if parts else "")


def _summary_record(summary: SessionSummary) -> dict[str, Any]:
    record = {"type": "session", **asdict(summary)}
    record["stuck"] = summary.stuck
    return record


def _bot_lines(workers: Sequence[WorkerView]) -> list[Text]:
    """Whether a bot runs: a session "running" a tool means nothing if none does."""
    if not workers:
        return [Text(NO_HEARTBEAT, "red")]
    lines = []
    for worker in workers:
        seen = _ago(worker.seconds_ago) + " ago"
        if worker.alive and worker.intake_problem:
            text = (
                f"bot: worker {worker.worker_id} alive (seen {seen}), but no messages "
                f"arrive from {worker.intake_problem}"
            )
            lines.append(Text(text, "bold red"))
        elif worker.alive:
            lines.append(Text(f"bot: worker {worker.worker_id} alive (seen {seen})", "green"))
        else:
            text = f"bot: worker {worker.worker_id} last seen {seen} (not running?)"
            lines.append(Text(text, "bold red"))
    return lines


def _emit_workers(workers: Sequence[WorkerView]) -> None:
    for worker in workers:
        _emit({"type": "worker", **asdict(worker)})


# --- commands --------------------------------------------------------------------------------


def _rules(args: argparse.Namespace) -> StuckRules:
    from storage.admin import StuckRules

    defaults = StuckRules()
    return StuckRules(
        getattr(args, "tool_margin", defaults.tool_margin_seconds),
        getattr(args, "max_attempts", defaults.max_attempts),
        getattr(args, "minutes", defaults.minutes),
        getattr(args, "llm_seconds", defaults.llm_seconds),
    )


async def _sessions(admin: AdminStore, args: argparse.Namespace) -> int:
    shown, total = await admin.sessions(
        rules=_rules(args),
        stuck_only=args.stuck,
        include_archived=args.all,
        platform=args.platform,
        limit=args.limit,
    )
    workers = await admin.workers()
    status = PROBLEMS if args.stuck and total else OK
    if args.json:
        _emit_workers(workers)
        for summary in shown:
            _emit(_summary_record(summary))
        return status
    console = _console()
    if not shown:
        console.print("no stuck sessions" if args.stuck else "no sessions")
        for line in _bot_lines(workers):
            console.print(line)
        return status
    table = Table(title="stuck sessions" if args.stuck else "sessions")
    for column in ("id", "chat", "state", "tools", "waiting", "outbox", "last activity"):
        table.add_column(column, overflow="fold")
    table.add_column("last error" if not args.stuck else "why stuck", overflow="fold")
    for summary in shown:
        tools = "-"
        if summary.open_tools:
            tools = f"{summary.open_tools} for {_ago(summary.oldest_tool_seconds)}"
        if args.stuck:
            last = "\n".join(f"{r.code}: {r.text}" for r in summary.reasons)
        else:
            last = _short(summary.last_error, 60) or "-"
        cells = [
            str(summary.id),
            _chat(summary),
            _state(summary),
            tools,
            _waiting(summary),
            f"{summary.undelivered} unsent" if summary.undelivered else "-",
            _since(summary.last_activity),
            last,
        ]
        # Text, not markup: chat titles and errors come from outside and may hold "[...]".
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)
    if total > len(shown):
        console.print(f"{total - len(shown)} more not shown (--limit)")
    for line in _bot_lines(workers):
        console.print(line)
    return status


def _message_line(view: MessageView) -> Text:
    place = f"pos {view.position}" if view.position is not None else view.status
    if view.status == "pending_calls":
        place = "waiting for tool results"
    elif view.status == "deferred":
        place = "deferred: arrived while tools ran"
    elif view.status == "dropped":
        place = "taken out of the history by a repair"
    line = Text(f"#{view.id} [{place}] ", style="dim")
    if view.role == "user":
        line.append(f"{view.author or 'user'}: ", style="bold")
        line.append(view.content or "")
    elif view.role == "tool":
        line.append(f"tool result for {view.tool_call_id}: ", style="italic")
        line.append(_short(view.content))
    elif view.status == "interim":
        line.append(f"bot (instant reply, {view.kind or 'reply'}): ", style="cyan")
        line.append(view.content or "")
    else:
        line.append("bot: ", style="green")
        if view.content:
            line.append(view.content)
        if view.calls or view.status == "pending_calls":
            line.append(("" if not view.content else " ") + "[calls tools]", style="yellow")
    return line


def _call_line(view: MessageView, index: int) -> Text:
    call = view.calls[index]
    took = f", {call.seconds:.1f} s" if call.seconds is not None else ""
    line = Text(f"    {call.name}({_short(call.arguments, 80)}) ", style="yellow")
    line.append(f"{call.status}{took} (timeout {call.timeout_seconds:g} s, id {call.call_id})")
    if call.result is not None:
        line.append(f" → {_short(call.result)}")
    return line


def _print_transcript(found: Transcript, workers: Sequence[WorkerView]) -> None:
    console = _console()
    summary = found.session
    console.print(Text(f"session {summary.id} · {_chat(summary)} · {_state(summary)}", "bold"))
    for line in _bot_lines(workers):
        console.print(line)
    if summary.last_error:
        console.print(Text(f"last error: {summary.last_error}", "red"))
    for reason in summary.reasons:
        console.print(Text(f"stuck: {reason.code}: {reason.text}", "bold red"))
    if found.problems:
        console.print(Text(f"history: INVALID ({found.history_length} messages)", style="bold red"))
        for problem in found.problems:
            where = f" (#{problem.row_id}, position {problem.position})" if problem.row_id else ""
            console.print(
                Text(f"  {problem.rule} at message {problem.index}{where}: {problem.message}")
            )
    else:
        console.print(Text(f"history: valid ({found.history_length} messages)", "green"))
    console.print()
    if found.omitted:
        console.print(Text(f"… {found.omitted} earlier messages not shown", "dim"))
    for view in found.messages:
        console.print(_message_line(view))
        for index in range(len(view.calls)):
            console.print(_call_line(view, index))
    if found.outbox:
        console.print()
        console.print(Text("replies (outbox):", "bold"))
        for out in found.outbox:
            state = out.delivery
            if out.delivered_at is None:
                state += f", {out.attempts} attempt(s)"
                if out.last_error:
                    state += f", last error: {out.last_error}"
            console.print(Text(f"  #{out.id} {out.kind}: {state} · {_short(out.text, 80)}"))


async def _show(admin: AdminStore, args: argparse.Namespace) -> int:
    found = await admin.transcript(args.session, _rules(args), last=args.last)
    workers = await admin.workers()
    # An invalid history is one of the reasons a session is stuck.
    status = PROBLEMS if found.session.stuck else OK
    if not args.json:
        _print_transcript(found, workers)
        return status
    _emit(
        {
            **_summary_record(found.session),
            "history_valid": not found.problems,
            "history_length": found.history_length,
            "omitted": found.omitted,
        }
    )
    _emit_workers(workers)
    for problem in found.problems:
        _emit({"type": "violation", **asdict(problem)})
    for view in found.messages:
        _emit({"type": "message", **asdict(view)})
    for out in found.outbox:
        _emit({"type": "outbox", **asdict(out), "delivery": out.delivery})
    return status


def _print_steps(steps: Sequence[Step], header: str, as_json: bool, dry_run: bool) -> None:
    if as_json:
        for step in steps:
            _emit({"type": "step", "dry_run": dry_run, **asdict(step)})
        return
    console = _console()
    console.print(Text(header, "bold"))
    for step in steps:
        console.print(Text(f"  - {step.text}"))


async def _repair(admin: AdminStore, args: argparse.Namespace) -> int:
    done = await admin.repair(args.session, _rules(args), dry_run=args.dry_run)
    state: ControlState | None = None
    if done.steps:
        if args.dry_run:
            header = f"dry run, nothing changed: the repair of session {args.session} would"
        else:
            header = f"repaired session {args.session}:"
        _print_steps(done.steps, header, args.json, args.dry_run)
    elif not args.json:
        _console().print(f"session {args.session}: nothing to repair")
    if done.control_id is not None:
        if not args.json:
            _console().print(
                f"waiting up to {args.wait:g} s for the running bot to pick it up "
                f"(control #{done.control_id})"
            )
        state = await _wait_for(admin, done.control_id, args.wait)
    if args.json:
        _emit(
            {
                "type": "repair",
                "session": args.session,
                "dry_run": args.dry_run,
                "steps": len(done.steps),
                "control": done.control_id,
                "applied": None if state is None else state.done,
                "result": None if state is None else state.result,
            }
        )
    elif state is not None and state.done:
        _console().print(Text(f"the bot picked it up: {state.result}"))
    elif state is not None:
        await _nobody(
            admin,
            f"no running bot picked it up within {args.wait:g} s: the 'recover' control stays "
            "queued and a bot carries the session on when it next starts",
        )
    return NOT_APPLIED if state is not None and not state.done else OK


async def _wait_for(admin: AdminStore, control_id: int, seconds: float) -> ControlState:
    """The control once the bot applied it, or as it is after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    state = await admin.control(control_id)
    while not state.done and loop.time() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        state = await admin.control(control_id)
    return state


async def _nobody(admin: AdminStore, text: str) -> None:
    """Says no bot applied a request, and what the heartbeats tell of why."""
    console = _console()
    console.print(Text(text, "bold red"))
    for line in _bot_lines(await admin.workers()):
        console.print(line)


async def _ask(admin: AdminStore, args: argparse.Namespace, action: str) -> int:
    control_id = await admin.request(args.session, action)
    if not args.json:
        _console().print(
            f"'{action}' requested for session {args.session} (control #{control_id}); "
            f"waiting up to {args.wait:g} s for the running bot"
        )
    state = await _wait_for(admin, control_id, args.wait)
    if args.json:
        _emit(
            {
                "control": control_id,
                "session": args.session,
                "action": action,
                "applied": state.done,
                "result": state.result,
            }
        )
    elif state.done:
        _console().print(Text(f"the bot applied it: {state.result}"))
    else:
        await _nobody(
            admin,
            f"no running bot applied it within {args.wait:g} s: the request stays queued and "
            "a bot applies it when it next starts",
        )
    return OK if state.done else NOT_APPLIED


async def _reset(admin: AdminStore, args: argparse.Namespace) -> int:
    summary = await admin.summary(args.session, _rules(args))
    if summary.archived:
        _console().print(f"session {args.session} is archived already: nothing to reset")
        return OK
    if not args.offline:
        return await _ask(admin, args, "reset")
    await admin.archive(args.session)
    if args.json:
        _emit({"session": args.session, "action": "reset", "applied": True, "offline": True})
    else:
        _console().print(
            f"session {args.session} archived: the conversation's next message starts a new one"
        )
    return OK


async def _validate(admin: AdminStore, args: argparse.Namespace) -> int:
    checked, invalid = await admin.invalid_histories()
    if args.json:
        for summary, problems in invalid:
            for problem in problems:
                _emit({"session": summary.id, "chat": _chat(summary), **asdict(problem)})
        _emit({"checked": checked, "invalid": len(invalid)})
    else:
        console = _console()
        if not invalid:
            console.print(f"checked {checked} histories: all valid")
        else:
            console.print(
                Text(f"{len(invalid)} of {checked} histories are invalid:", style="bold red")
            )
            for summary, problems in invalid:
                console.print(Text(f"session {summary.id} · {_chat(summary)}", "bold"))
                for problem in problems:
                    where = f" (#{problem.row_id})" if problem.row_id else ""
                    console.print(
                        Text(f"  {problem.rule} at message {problem.index}{where}: ")
                        + Text(problem.message)
                    )
            console.print("`stillhere admin repair SESSION` fixes one (try --dry-run first)")
    return PROBLEMS if invalid else OK


async def _usage(admin: AdminStore, args: argparse.Namespace) -> int:
    lines = await admin.usage()
    if args.json:
        for line in lines:
            _emit(asdict(line))
        return OK
    table = Table(title="LLM usage (UTC)")
    for column in ("who", "calls today", "tokens today", "calls this month", "tokens this month"):
        table.add_column(column, justify="left" if column == "who" else "right")
    for line in lines:
        table.add_row(
            f"{line.scope} {line.id}" if line.scope != "total" else "total",
            str(line.calls_today),
            f"{line.tokens_today:,}",
            str(line.calls_month),
            f"{line.tokens_month:,}",
        )
    _console().print(table)
    return OK


COMMANDS: dict[str, Callable[[AdminStore, argparse.Namespace], Any]] = {
    "sessions": _sessions,
    "show": _show,
    "repair": _repair,
    "cancel": lambda admin, args: _ask(admin, args, "cancel"),
    "reset": _reset,
    "validate": _validate,
    "usage": _usage,
}


async def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    """Runs one `stillhere admin` command; returns the exit code."""
    # Alembic narrates loading its plugins (as storage.migrate imports it) and scripts at
    # INFO; an admin command only checks the head, and its errors must stay one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from storage.admin import AdminStore, UnknownSession
    from storage.database import create_engine
    from storage.migrate import SchemaError, check_schema

    missing = _missing_database(settings.database_url)
    if missing is not None:
        return _fail(missing)
    # The model call's limit is the bot's setting, not an option: the CLI judges by the
    # same numbers the bot runs with.
    args.llm_seconds = settings.openai_timeout_seconds * (settings.openai_max_retries + 1)
    engine = create_engine(settings.database_url)
    try:
        await check_schema(engine)
        admin = AdminStore(engine, settings.system_prompt)
        status: int = await COMMANDS[args.admin_command](admin, args)
        return status
    except SchemaError as exc:
        return _fail(str(exc))
    except UnknownSession:
        return _fail(f"no session {args.session} (`stillhere admin sessions --all` lists them)")
    finally:
        await engine.dispose()


def _missing_database(url: str) -> str | None:
    from storage.admin import sqlite_file_missing

    path = sqlite_file_missing(url)
    if path is None:
        return None
    return (
        f"no database file at {path} (current folder: {os.getcwd()}; a relative "
        "DATABASE_URL and the .env file are read from the current folder: run it from the "
        "bot's folder or set DATABASE_URL; `stillhere db upgrade` creates the file)"
    )
