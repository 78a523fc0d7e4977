"""Turns a stored history into the request the model gets, checked before it leaves.

The stored history is valid by construction; the check here is the second line of defence.
A violation means a bug: it is logged at error level, counted, and repaired, so an invalid
request is never sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot import history as history_rules
from bot.store import HistoryEntry

log = logging.getLogger(__name__)


@dataclass
class PromptStats:
    """Counts that an operator wants to see (and tests assert stay at zero)."""

    repaired_requests: int = 0
    violations: list[str] = field(default_factory=list)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _sendable_call(call: Any) -> Any:
    """The call with arguments that are not a JSON object (bad JSON the model sent, which
    its tool result already reported) replaced by "{}": servers such as vLLM parse every
    historical call's arguments and answer 400, which would cost the chat every later
    answer. The stored call keeps the text. A call of any other shape goes as it is, for
    `bot.history.validate` to catch."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments")
    if not isinstance(arguments, str) or _is_json_object(arguments):
        return call
    return {**call, "function": {**function, "arguments": "{}"}}


def to_openai(entry: HistoryEntry, *, name_authors: bool) -> dict[str, Any]:
    if entry.role == "user":
        text = entry.content or ""
        if name_authors and entry.author_name:
            # OpenAI's `name` field forbids spaces and most scripts; a prefix keeps any name.
            text = f"{entry.author_name}: {text}"
        return {"role": "user", "content": text}
    if entry.role == "tool":
        return {"role": "tool", "tool_call_id": entry.tool_call_id, "content": entry.content or ""}
    message: dict[str, Any] = {"role": entry.role, "content": entry.content}
    if entry.tool_calls:
        message["tool_calls"] = [_sendable_call(call) for call in entry.tool_calls]
    return message


SUMMARY_CHARS = 1000


def collapse_user_runs(messages: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """A run of more than `cap` user messages in a row (a crowd writing while tools ran)
    keeps its newest `cap - 1` messages and one line summarizing the older ones. Only the
    request is shortened; the stored transcript keeps every message."""
    run_length = 0
    for message in messages:
        run_length = run_length + 1 if message.get("role") == "user" else 0
        if run_length > cap:
            break
    else:
        return messages  # no run to shorten, as in most requests: nothing to copy
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) > cap:
            older, newer = run[: len(run) - cap + 1], run[len(run) - cap + 1 :]
            joined = " · ".join(str(m.get("content") or "") for m in older)
            if len(joined) > SUMMARY_CHARS:
                joined = joined[:SUMMARY_CHARS] + "…"
            out.append(
                {"role": "user", "content": f"[{len(older)} earlier messages, in short] {joined}"}
            )
            out.extend(newer)
        else:
            out.extend(run)
        run.clear()

    for message in messages:
        if message.get("role") == "user":
            run.append(message)
            continue
        flush()
        out.append(message)
    flush()
    return out


def build_request(
    *,
    system_prompt: str,
    entries: Sequence[HistoryEntry],
    name_authors: bool,
    note: str | None,
    budget_tokens: int,
    max_user_run: int,
    stats: PromptStats,
    session_label: str,
) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system_prompt}]
    messages.extend(
        collapse_user_runs([to_openai(e, name_authors=name_authors) for e in entries], max_user_run)
    )
    if note:
        messages.append({"role": "system", "content": note})
    # The request as it goes out is what must be valid: trimmed first, a broken turn too
    # old to be sent costs nothing, and a cut that broke one would be caught here.
    messages = history_rules.trim(messages, budget_tokens)
    problems = history_rules.validate(messages)
    if problems:
        stats.repaired_requests += 1
        for problem in problems:
            stats.violations.append(f"{session_label}: {problem.rule} at {problem.index}")
            log.error(
                "invalid history (bug): %s at message %d: %s",
                problem.rule,
                problem.index,
                problem.message,
                extra={"session": session_label},
            )
        messages = history_rules.repair(messages)
    return messages


# The fewest tokens any history message is estimated at: a user message with no text.
_SMALLEST_MESSAGE_TOKENS = history_rules.estimate_tokens({"role": "user", "content": ""})


def history_rows(budget_tokens: int) -> int:
    """How many of a session's newest history rows to read for a request of
    `budget_tokens`: no more messages can fit than the budget holds of the smallest one,
    and twice that leaves room for starting at a turn's first message. Only a run of
    user messages longer than that (which the request summarizes in one line anyway)
    could have let older turns in."""
    return 2 * (budget_tokens // _SMALLEST_MESSAGE_TOKENS) + 1
