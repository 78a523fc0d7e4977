from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.history import (
    INTERRUPTED_RESULT,
    Violation,
    estimate_tokens,
    repair,
    starts_turn,
    trim,
    validate,
)

Message = dict[str, Any]


def call(call_id: str, name: str = "get_current_time", arguments: Any = "{}") -> Message:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def asks(*ids: str, content: Any = None) -> Message:
    return {"role": "assistant", "content": content, "tool_calls": [call(i) for i in ids]}


def user(text: Any) -> Message:
    return {"role": "user", "content": text}


def tool(call_id: str, content: Any = "ok") -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


SYSTEM: Message = {"role": "system", "content": "be brief"}
SEED_ID = "call_5J4llKvb0fa4AsN4hefoshH0"
SEED = [SYSTEM, user("Dame la hora actual"), asks(SEED_ID), user("¿Sigues ahí?")]


def rules(messages: list[Any]) -> list[str]:
    return [v.rule for v in validate(messages)]


# --- one test per rule, with OpenAI's exact text ----------------------------------------------


def test_seed_history_from_the_bug_report_is_rejected_with_openais_text() -> None:
    assert validate(SEED) == [
        Violation(
            "missing_tool_response",
            2,
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            "call_5J4llKvb0fa4AsN4hefoshH0",
            "messages.[2].role",
            None,
        )
    ]


def test_missing_responses_lists_every_unanswered_id_in_call_order() -> None:
    [v] = validate([user("hi"), asks("call_a", "call_b", "call_c"), tool("call_b")])
    assert v.rule == "missing_tool_response"
    assert v.message.endswith("did not have response messages: call_a, call_c")


def test_history_ending_in_unanswered_calls_is_rejected() -> None:
    assert rules([user("hi"), asks("call_a")]) == ["missing_tool_response"]


@pytest.mark.parametrize("between", [user("x"), {"role": "assistant", "content": "x"}, SYSTEM])
def test_replies_must_come_immediately_after_the_call(between: Message) -> None:
    found = validate([user("hi"), asks("call_a"), between, tool("call_a")])
    assert [v.rule for v in found] == ["missing_tool_response", "orphan_tool_message"]
    assert found[1].index == 3


def test_orphan_tool_message() -> None:
    [v] = validate([user("hi"), tool("call_a")])
    assert v.rule == "orphan_tool_message"
    assert v.index == 1
    assert v.message == (
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
        "message with 'tool_calls'."
    )
    assert v.param == "messages.[1].role"


def test_tool_message_without_tool_call_id() -> None:
    found = validate([user("hi"), asks("call_a"), {"role": "tool", "content": "ok"}])
    # In message order: the call it fails to answer comes first.
    assert [v.rule for v in found] == ["missing_tool_response", "missing_tool_call_id"]
    assert found[1].message == (
        "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'."
    )
    assert found[1].param == "messages.[2].tool_call_id"


def test_unknown_tool_call_id() -> None:
    found = validate([user("hi"), asks("call_a"), tool("call_a"), tool("call_X")])
    assert [v.rule for v in found] == ["unknown_tool_call_id"]
    assert found[0].index == 3
    assert found[0].message == (
        "Invalid parameter: 'tool_call_id' of 'call_X' not found in 'tool_calls' of previous "
        "message."
    )


def test_duplicate_tool_reply() -> None:
    assert rules([user("hi"), asks("call_a"), tool("call_a"), tool("call_a")]) == [
        "duplicate_tool_call_id"
    ]


def test_duplicate_id_inside_one_assistant_message() -> None:
    found = validate([user("hi"), asks("call_a", "call_a"), tool("call_a")])
    assert [v.rule for v in found] == ["duplicate_tool_call_id"]
    assert found[0].param == "messages[1].tool_calls[1].id"


def test_empty_tool_calls() -> None:
    found = validate([user("hi"), {"role": "assistant", "content": "x", "tool_calls": []}])
    assert [(v.rule, v.code, v.param) for v in found] == [
        ("empty_tool_calls", "empty_array", "messages[1].tool_calls")
    ]
    assert found[0].message == (
        "Invalid 'messages[1].tool_calls': empty array. Expected an array with minimum length "
        "1, but got an empty array instead."
    )


def test_empty_messages() -> None:
    assert validate([]) == [
        Violation(
            "empty_messages",
            0,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
            "empty_array",
        )
    ]


@pytest.mark.parametrize(
    "history",
    [
        [{"role": "system", "content": None}, user("hi")],
        [user("hi"), user(None)],
        [user("hi"), {"role": "user"}],
        [user("hi"), asks("call_a"), tool("call_a", None)],
    ],
)
def test_null_content(history: list[Message]) -> None:
    [v] = validate(history)
    assert v.rule == "null_content"
    assert v.message == "Invalid value for 'content': expected a string, got null."
    assert v.param == f"messages.[{v.index}].content"


def test_null_content_is_fine_for_an_assistant_with_tool_calls() -> None:
    assert validate([user("hi"), asks("call_a", content=None), tool("call_a")]) == []


def test_assistant_without_content_or_calls() -> None:
    assert rules([user("hi"), {"role": "assistant", "content": None}]) == [
        "assistant_without_content_or_calls"
    ]
    assert rules([user("hi"), {"role": "assistant"}]) == ["assistant_without_content_or_calls"]


def test_tool_call_id_too_long() -> None:
    long_id = "call_" + "x" * 41
    [v] = validate([user("hi"), asks("call_ok", long_id), tool("call_ok"), tool(long_id)])
    assert v.rule == "tool_call_id_too_long"
    assert v.message == (
        "Invalid 'messages[1].tool_calls[1].id': string too long. Expected a string with "
        "maximum length 40, but got a string with length 46 instead."
    )


def test_empty_function_name() -> None:
    bad = {"role": "assistant", "content": None, "tool_calls": [call("call_a", name="")]}
    [v] = validate([user("hi"), bad, tool("call_a")])
    assert v.rule == "empty_function_name"
    assert v.message == (
        "Invalid 'messages[1].tool_calls[0].function.name': empty string. Expected a string "
        "with minimum length 1, but got an empty string instead."
    )


@pytest.mark.parametrize(
    "entry",
    [
        "call_a",
        {"id": "call_a", "type": "custom", "function": {"name": "f", "arguments": "{}"}},
        {"id": "call_a", "type": "function"},
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": {}}},
        {"type": "function", "function": {"name": "f", "arguments": "{}"}},
    ],
)
def test_malformed_tool_call(entry: Any) -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [entry]}
    assert "bad_tool_call" in rules([user("hi"), message, tool("call_a")])


@pytest.mark.parametrize("role", ["function", "bot", None])
def test_bad_role(role: Any) -> None:
    [v] = validate([user("hi"), {"role": role, "content": "x"}])
    assert (v.rule, v.index) == ("bad_role", 1)


def test_message_that_is_not_an_object() -> None:
    assert rules([user("hi"), "hello"]) == ["not_an_object"]


@pytest.mark.parametrize(
    "content",
    [42, {"text": "x"}, [], [{"type": "image_url", "image_url": {"url": "x"}}], ["plain"]],
)
def test_bad_content_shape(content: Any) -> None:
    assert rules([{"role": "system", "content": content}, user("hi")]) == ["bad_content_shape"]


def test_content_parts_are_accepted() -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]
    assert validate([SYSTEM, user(parts), {"role": "assistant", "content": ""}]) == []


def test_replies_in_any_order_and_deferred_users_are_valid() -> None:
    history = [
        SYSTEM,
        user("a"),
        asks("call_a", "call_b"),
        tool("call_b"),
        tool("call_a"),
        user("meanwhile"),
        {"role": "assistant", "content": "done"},
    ]
    assert validate(history) == []


# --- repair ----------------------------------------------------------------------------------


def test_repair_inserts_the_missing_reply_right_after_the_call() -> None:
    assert repair(SEED) == [
        SYSTEM,
        user("Dame la hora actual"),
        asks(SEED_ID),
        tool(SEED_ID, INTERRUPTED_RESULT),
        user("¿Sigues ahí?"),
    ]


def test_repair_moves_a_later_reply_into_place() -> None:
    history = [user("a"), asks("call_a", "call_b"), tool("call_b", "B"), user("b")]
    history += [tool("call_a", "A")]
    assert repair(history) == [
        user("a"),
        asks("call_a", "call_b"),
        tool("call_b", "B"),
        tool("call_a", "A"),
        user("b"),
    ]


def test_repair_drops_orphans_and_duplicates() -> None:
    history = [tool("call_z"), user("a"), asks("call_a"), tool("call_a"), tool("call_a", "again")]
    assert repair(history) == [user("a"), asks("call_a"), tool("call_a")]


def test_repair_gives_a_reused_id_its_own_reply() -> None:
    history = [user("a"), asks("call_a"), user("b"), asks("call_a"), tool("call_a", "late")]
    assert repair(history) == [
        user("a"),
        asks("call_a"),
        tool("call_a", INTERRUPTED_RESULT),
        user("b"),
        asks("call_a"),
        tool("call_a", "late"),
    ]


def test_repair_fixes_null_content_where_it_is_required() -> None:
    history = [{"role": "system", "content": None}, user(None), asks("call_a")]
    history.append(tool("call_a", None))
    assert repair(history) == [
        {"role": "system", "content": ""},
        user(""),
        asks("call_a"),
        tool("call_a", ""),
    ]


def test_repair_drops_invalid_calls_and_their_replies() -> None:
    long_id = "call_" + "x" * 41
    mixed = {"role": "assistant", "content": None, "tool_calls": [call("call_a"), call(long_id)]}
    history = [user("a"), mixed, tool("call_a"), tool(long_id)]
    assert repair(history) == [user("a"), asks("call_a"), tool("call_a")]


def test_repair_drops_an_assistant_left_with_nothing() -> None:
    empty_name = {"role": "assistant", "content": None, "tool_calls": [call("call_a", name="")]}
    history = [user("a"), empty_name, tool("call_a"), {"role": "assistant", "tool_calls": []}]
    assert repair(history) == [user("a")]


def test_repair_keeps_the_text_of_an_assistant_whose_calls_were_invalid() -> None:
    history = [user("a"), {"role": "assistant", "content": "hm", "tool_calls": []}]
    assert repair(history) == [user("a"), {"role": "assistant", "content": "hm"}]


def test_repair_drops_what_cannot_be_a_message() -> None:
    assert repair([42, {"role": "bot", "content": "x"}, user("a")]) == [user("a")]  # type: ignore[list-item]


def test_repair_of_nothing_usable_is_empty() -> None:
    assert repair([]) == []
    assert repair([tool("call_a")]) == []


def test_repair_never_mutates_its_input_nor_shares_objects() -> None:
    history = [user(None), asks("call_a"), user("b")]
    before = copy.deepcopy(history)
    repaired = repair(history)
    repaired[1]["tool_calls"][0]["id"] = "changed"
    assert history == before


# --- trim ------------------------------------------------------------------------------------


def long_turn(tag: str) -> list[Message]:
    return [user(tag * 200), {"role": "assistant", "content": tag * 200}]


def cost(messages: list[Message]) -> int:
    return sum(estimate_tokens(m) for m in messages)


def test_estimate_tokens_grows_with_the_text() -> None:
    assert estimate_tokens(user("")) >= 4
    assert estimate_tokens(user("x" * 400)) >= estimate_tokens(user("")) + 100


@pytest.mark.parametrize(
    "message",
    [
        user(""),
        user("Ana: ¿qué hora es?"),
        asks("call_1", "call_2"),
        {"role": "tool", "tool_call_id": "call_1", "content": "2026-11-24T17:30:05+00:00"},
        {"role": "user", "name": "ana", "content": [{"type": "text", "text": "hi"}]},
    ],
)
def test_estimate_tokens_prices_the_compact_json_at_four_characters_a_token(
    message: Message,
) -> None:
    compact = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    assert estimate_tokens(message) == len(compact) // 4 + 4


def test_trim_keeps_everything_within_budget() -> None:
    history = [SYSTEM, *long_turn("a"), *long_turn("b")]
    assert trim(history, cost(history)) == history


def test_trim_drops_the_oldest_turns_and_keeps_the_system_prompt() -> None:
    history = [SYSTEM, *long_turn("a"), *long_turn("b"), *long_turn("c")]
    budget = cost([SYSTEM, *long_turn("b"), *long_turn("c")])
    assert trim(history, budget) == [SYSTEM, *long_turn("b"), *long_turn("c")]


def test_trim_keeps_the_last_turn_whole_even_over_budget() -> None:
    # "later" was written while the tool ran: the answer to its turn needs "q" and the
    # result as much as it, so the turn is kept from "q", as it is when nobody wrote.
    last = [user("q"), asks("call_a"), tool("call_a", "x" * 5000), user("later")]
    last += [{"role": "assistant", "content": "done"}]
    history = [SYSTEM, *long_turn("a"), *last]
    assert trim(history, 1) == [SYSTEM, *last]
    turn = [user("q"), asks("call_a"), tool("call_a", "x" * 5000)]
    assert trim([SYSTEM, *long_turn("a"), *turn], 1) == [SYSTEM, *turn]
    assert trim([SYSTEM, *long_turn("a"), *turn, user("later")], 1) == [
        SYSTEM,
        *turn,
        user("later"),
    ]


def test_trim_keeps_a_greeting_before_the_first_user_message_when_it_fits() -> None:
    history = [SYSTEM, {"role": "assistant", "content": "Hi, I am stillhere."}, user("hi")]
    assert trim(history, cost(history)) == history
    assert trim(history, cost(history) - 1) == [SYSTEM, user("hi")]


def test_trim_without_a_user_message_keeps_everything() -> None:
    history = [SYSTEM, {"role": "assistant", "content": "x" * 1000}]
    assert trim(history, 1) == history


# --- properties ------------------------------------------------------------------------------

ID_POOL = [f"call_{c}" for c in "abcdef"]
texts = st.text(max_size=20)
text_parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), min_size=1)


@st.composite
def valid_histories(draw: st.DrawFn) -> list[Message]:
    history: list[Message] = []
    for role in ("system", "developer"):
        if draw(st.booleans()):
            history.append({"role": role, "content": draw(texts)})
    for _ in range(draw(st.integers(0, 4))):
        for _ in range(draw(st.integers(1, 2))):
            history.append(user(draw(st.one_of(texts, text_parts))))
        for _ in range(draw(st.integers(0, 2))):
            ids = draw(st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=3, unique=True))
            history.append(asks(*ids, content=draw(st.one_of(st.none(), texts))))
            for call_id in draw(st.permutations(ids)):
                history.append(tool(call_id, draw(st.one_of(texts, text_parts))))
            for _ in range(draw(st.integers(0, 2))):
                history.append(user(draw(texts)))
        if draw(st.booleans()):
            history.append({"role": "assistant", "content": draw(texts)})
    return history or [user("hi")]


raw_calls: st.SearchStrategy[Any] = st.one_of(
    st.integers(),
    st.fixed_dictionaries(
        {
            "id": st.one_of(st.sampled_from(ID_POOL), st.text(max_size=45), st.none()),
            "type": st.sampled_from(["function", "custom"]),
        },
        optional={
            "function": st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["", "get_current_time"])},
                    optional={"arguments": st.one_of(texts, st.integers(), st.just({}))},
                ),
            )
        },
    ),
)
junk_messages: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.integers(),
    st.fixed_dictionaries(
        {"role": st.sampled_from([*("user", "assistant", "tool", "system"), "function", None])},
        optional={
            "content": st.one_of(
                st.none(),
                texts,
                st.integers(),
                st.lists(st.one_of(st.integers(), st.just({"type": "bogus"})), max_size=2),
                text_parts,
            ),
            "tool_calls": st.one_of(st.none(), texts, st.lists(raw_calls, max_size=3)),
            "tool_call_id": st.one_of(st.none(), st.sampled_from(ID_POOL), st.integers()),
        },
    ),
)


@st.composite
def broken_histories(draw: st.DrawFn) -> list[Any]:
    history: list[Any] = list(draw(valid_histories()))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["drop", "insert", "move", "copy", "null"]))
        if action == "insert" or not history:
            at = draw(st.integers(0, len(history)))
            history.insert(at, draw(junk_messages))
            continue
        i = draw(st.integers(0, len(history) - 1))
        if action == "drop":
            del history[i]
        elif action == "move":
            history.insert(draw(st.integers(0, len(history) - 1)), history.pop(i))
        elif action == "copy":
            history.insert(draw(st.integers(0, len(history))), copy.deepcopy(history[i]))
        elif isinstance(history[i], dict):
            history[i] = {**history[i], "content": None}
    return history


any_histories = st.one_of(valid_histories(), broken_histories(), st.lists(junk_messages))


def keeps_a_conversation(history: list[Any]) -> bool:
    """Repair never drops system/developer/user messages, so these leave a non-empty result."""
    return any(
        isinstance(m, dict) and m.get("role") in ("system", "developer", "user") for m in history
    )


@given(valid_histories())
def test_generated_valid_histories_validate_clean(history: list[Message]) -> None:
    assert validate(history) == []


@given(valid_histories())
def test_repair_leaves_valid_histories_unchanged(history: list[Message]) -> None:
    assert repair(history) == history


@settings(max_examples=300)
@given(any_histories)
def test_repair_always_yields_a_valid_history(history: list[Any]) -> None:
    before = copy.deepcopy(history)
    repaired = repair(history)
    assert history == before
    if keeps_a_conversation(history):
        assert validate(repaired) == []
    else:
        assert repaired == [] or validate(repaired) == []


@settings(max_examples=300)
@given(any_histories)
def test_repair_is_idempotent(history: list[Any]) -> None:
    once = repair(history)
    assert repair(once) == once


@given(broken_histories())
def test_broken_histories_are_caught_or_already_fine(history: list[Any]) -> None:
    """validate agrees with repair: whatever it accepts, repair leaves alone."""
    if history and validate(history) == []:
        assert repair(history) == history


@settings(max_examples=200)
@given(valid_histories(), st.integers(0, 400))
def test_trim_of_a_valid_history_is_valid_at_every_budget(
    history: list[Message], budget: int
) -> None:
    trimmed = trim(history, budget)
    assert validate(trimmed) == []
    head = 0
    while head < len(history) and history[head]["role"] in ("system", "developer"):
        head += 1
    assert trimmed[:head] == history[:head]
    kept = trimmed[head:]
    assert kept == history[len(history) - len(kept) :]
    if len(kept) < len(history) - head:
        assert kept[0]["role"] == "user"
        assert starts_turn(history, len(history) - len(kept))
        turns = [i for i in range(len(kept)) if starts_turn(kept, i)]
        if turns != [0]:
            # More than the last turn survived only because it fitted.
            assert cost(trimmed) <= budget
        # Cutting where the previous turn begins would have gone over budget.
        dropped = history[head : len(history) - len(kept)]
        previous = max(i for i in range(len(dropped)) if starts_turn(history, head + i))
        assert cost(history[:head] + dropped[previous:] + kept) > budget
    for i, message in enumerate(trimmed):
        if message["role"] == "assistant" and message.get("tool_calls"):
            ids = {c["id"] for c in message["tool_calls"]}
            replies = trimmed[i + 1 : i + 1 + len(ids)]
            assert {m.get("tool_call_id") for m in replies} == ids
