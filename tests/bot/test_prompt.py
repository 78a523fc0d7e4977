"""The request check before every call: a broken stored history is logged as a bug,
counted, and repaired, never sent as it is."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bot.history import validate
from bot.prompt import PromptStats, build_request, collapse_user_runs, history_rows, to_openai
from bot.store import HistoryEntry

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def request(
    entries: list[HistoryEntry],
    stats: PromptStats,
    *,
    system_prompt: str = "s",
    name_authors: bool = True,
    note: str | None = None,
    budget_tokens: int = 10_000,
    max_user_run: int = 10,
    session_label: str = "session-1",
) -> list[dict[str, Any]]:
    return build_request(
        system_prompt=system_prompt,
        entries=entries,
        name_authors=name_authors,
        note=note,
        budget_tokens=budget_tokens,
        max_user_run=max_user_run,
        stats=stats,
        session_label=session_label,
    )


def test_a_broken_history_is_repaired_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    entries = [
        HistoryEntry("user", "Dame la hora actual", "Ana"),
        HistoryEntry("assistant", None, tool_calls=[CALL]),
        HistoryEntry("user", "¿Sigues ahí?", "Ana"),  # the classic bug: no tool reply
    ]
    stats = PromptStats()
    with caplog.at_level(logging.ERROR, logger="bot.prompt"):
        messages = request(entries, stats, session_label="session-7")
    assert validate(messages) == []
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert stats.repaired_requests == 1
    assert stats.violations == ["session-7: missing_tool_response at 2"]
    assert "invalid history (bug): missing_tool_response" in caplog.text


def test_what_is_checked_is_the_request_as_it_goes_out() -> None:
    """A broken turn too old to fit the budget is not sent, so it is neither repaired nor
    reported; the newest turns go out as they are."""
    broken = [
        HistoryEntry("user", "Dame la hora actual " * 40, "Ana"),
        HistoryEntry("assistant", None, tool_calls=[CALL]),  # no tool reply: invalid
    ]
    recent = [HistoryEntry("user", "hola", "Ana"), HistoryEntry("assistant", "¡Hola!")]
    stats = PromptStats()
    messages = request([*broken, *recent], stats, budget_tokens=40)
    assert messages == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "Ana: hola"},
        {"role": "assistant", "content": "¡Hola!"},
    ]
    assert stats.repaired_requests == 0 and stats.violations == []


def test_a_valid_history_goes_out_unchanged_with_names_and_note() -> None:
    entries = [HistoryEntry("user", "hola", "Ana"), HistoryEntry("assistant", "¡Hola!")]
    stats = PromptStats()
    messages = request(entries, stats, note="already said: x")
    assert messages == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "Ana: hola"},
        {"role": "assistant", "content": "¡Hola!"},
        {"role": "system", "content": "already said: x"},
    ]
    assert stats.repaired_requests == 0


@pytest.mark.parametrize("raw", ["{not json", '{"a": 1', "[1, 2]", "5", '"x"', "null", ""])
def test_tool_arguments_that_are_no_json_object_go_out_as_an_empty_object(raw: str) -> None:
    """Servers such as vLLM parse a history's tool arguments and answer 400 on one that is
    not a JSON object; the request carries "{}" instead, the stored entry keeps the text."""
    stored = {**CALL, "function": {"name": "f", "arguments": raw}}
    entry = HistoryEntry("assistant", None, tool_calls=[stored])
    sent = to_openai(entry, name_authors=False)
    assert sent["tool_calls"] == [{**CALL, "function": {"name": "f", "arguments": "{}"}}]
    assert stored["function"] == {"name": "f", "arguments": raw}


def test_tool_arguments_that_are_a_json_object_go_out_as_the_model_wrote_them() -> None:
    raw = '{ "timezone" : "Europe/Madrid",  "days": 2 }'
    entry = HistoryEntry(
        "assistant", None, tool_calls=[{**CALL, "function": {"name": "f", "arguments": raw}}]
    )
    assert to_openai(entry, name_authors=False)["tool_calls"][0]["function"]["arguments"] == raw


def test_collapse_keeps_short_runs_and_summarizes_long_ones() -> None:
    run = [{"role": "user", "content": str(i)} for i in range(5)]
    assert collapse_user_runs(run, 5) == run
    collapsed = collapse_user_runs(run, 3)
    assert [m["content"] for m in collapsed] == [
        "[3 earlier messages, in short] 0 · 1 · 2",
        "3",
        "4",
    ]


@pytest.mark.parametrize("budget", [60, 1000, 12_000])
def test_history_rows_hold_more_than_a_request_of_that_budget_can(budget: int) -> None:
    rows = history_rows(budget)
    smallest = [HistoryEntry("user", "", None, None, None)] * rows
    sent = request(
        smallest,
        PromptStats(),
        system_prompt="",
        name_authors=False,
        budget_tokens=budget,
        max_user_run=rows + 1,
    )
    # Trimming dropped some: every row the request could use was among those read.
    assert 1 < len(sent) - 1 < rows
