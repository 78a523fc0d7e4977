"""OpenAI's rules for a chat history: check them, repair a history that breaks them, trim one.

Messages are OpenAI chat message dicts. `validate` is the single source of truth: the engine
checks every request with it and the offline model rejects with it, so a history that would
earn a 400 from OpenAI is caught here first, with OpenAI's own wording where it has one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

ROLES: Final = ("system", "developer", "user", "assistant", "tool")
MAX_TOOL_CALL_ID: Final = 40
INTERRUPTED_RESULT: Final = "no result: the tool call was interrupted"

_LEADING_ROLES: Final = frozenset({"system", "developer"})
_TEXT_ROLES: Final = frozenset({"system", "developer", "user", "assistant"})
_PART_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "tool": frozenset({"text"}),
    "assistant": frozenset({"text", "refusal"}),
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
}


@dataclass(frozen=True)
class Violation:
    rule: str
    index: int
    message: str
    param: str | None
    code: str | None


def _empty_array(path: str) -> str:
    return (
        f"Invalid '{path}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead."
    )


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _missing_responses(index: int, ids: Sequence[str]) -> Violation:
    return Violation(
        "missing_tool_response",
        index,
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(ids),
        f"messages.[{index}].role",
        None,
    )


# --- content -------------------------------------------------------------------------------


def _valid_part(role: str, part: Any) -> bool:
    if not isinstance(part, Mapping) or part.get("type") not in _PART_TYPES[role]:
        return False
    kind = part["type"]
    return kind not in ("text", "refusal") or isinstance(part.get(kind), str)


def _content_violation(n: int, role: str, message: Mapping[str, Any]) -> Violation | None:
    content = message.get("content")
    if content is None:
        if role == "assistant":
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                return None
            return Violation(
                "assistant_without_content_or_calls",
                n,
                f"Invalid 'messages[{n}]': an assistant message needs 'content' or 'tool_calls'.",
                f"messages.[{n}].content",
                None,
            )
        return Violation(
            "null_content",
            n,
            "Invalid value for 'content': expected a string, got null.",
            f"messages.[{n}].content",
            None,
        )
    if isinstance(content, str):
        return None
    if isinstance(content, list):
        if not content:
            return Violation(
                "bad_content_shape",
                n,
                _empty_array(f"messages[{n}].content"),
                f"messages[{n}].content",
                "empty_array",
            )
        for k, part in enumerate(content):
            if not _valid_part(role, part):
                return Violation(
                    "bad_content_shape",
                    n,
                    f"Invalid 'messages[{n}].content[{k}]': not a content part a {role} "
                    f"message may carry (allowed types: {', '.join(sorted(_PART_TYPES[role]))}).",
                    f"messages[{n}].content[{k}]",
                    None,
                )
        return None
    return Violation(
        "bad_content_shape",
        n,
        f"Invalid type for 'messages[{n}].content': expected a string or an array of content "
        f"parts, but got {_type_name(content)} instead.",
        f"messages[{n}].content",
        None,
    )


# --- tool calls ------------------------------------------------------------------------------


def _call_violation(n: int, k: int, call: Any) -> Violation | None:
    """The first thing wrong with one entry of an assistant message's tool_calls."""
    path = f"messages[{n}].tool_calls[{k}]"

    def bad(what: str, where: str = path) -> Violation:
        return Violation("bad_tool_call", n, f"Invalid '{where}': {what}.", where, None)

    if not isinstance(call, Mapping):
        return bad(f"expected an object, but got {_type_name(call)} instead")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        return bad("expected a non-empty string", f"{path}.id")
    if len(call_id) > MAX_TOOL_CALL_ID:
        return Violation(
            "tool_call_id_too_long",
            n,
            f"Invalid '{path}.id': string too long. Expected a string with maximum length "
            f"{MAX_TOOL_CALL_ID}, but got a string with length {len(call_id)} instead.",
            f"{path}.id",
            None,
        )
    if call.get("type") != "function":
        return bad("expected 'function'", f"{path}.type")
    function = call.get("function")
    if not isinstance(function, Mapping):
        return bad("expected an object", f"{path}.function")
    name = function.get("name")
    if not isinstance(name, str):
        return bad("expected a string", f"{path}.function.name")
    if not name:
        return Violation(
            "empty_function_name",
            n,
            f"Invalid '{path}.function.name': empty string. Expected a string with minimum "
            "length 1, but got an empty string instead.",
            f"{path}.function.name",
            None,
        )
    if not isinstance(function.get("arguments"), str):
        return bad("expected a string of JSON", f"{path}.function.arguments")
    return None


def _declared_ids(calls: Any) -> list[str]:
    """The ids tool messages may answer, in order, each once (malformed entries count if
    they carry a string id, so their replies are not also reported as unknown)."""
    if not isinstance(calls, list):
        return []
    ids: list[str] = []
    for call in calls:
        if isinstance(call, Mapping):
            call_id = call.get("id")
            if isinstance(call_id, str) and call_id and call_id not in ids:
                ids.append(call_id)
    return ids


def _calls_violations(n: int, calls: Any) -> list[Violation]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        where = f"messages[{n}].tool_calls"
        return [
            Violation(
                "bad_tool_call",
                n,
                f"Invalid type for '{where}': expected an array, but got "
                f"{_type_name(calls)} instead.",
                where,
                None,
            )
        ]
    if not calls:
        where = f"messages[{n}].tool_calls"
        return [Violation("empty_tool_calls", n, _empty_array(where), where, "empty_array")]
    found: list[Violation] = []
    seen: set[str] = set()
    for k, call in enumerate(calls):
        problem = _call_violation(n, k, call)
        if problem is not None:
            found.append(problem)
            continue
        if call["id"] in seen:
            where = f"messages[{n}].tool_calls[{k}].id"
            found.append(
                Violation(
                    "duplicate_tool_call_id",
                    n,
                    f"Invalid '{where}': the id '{call['id']}' appears twice in this message.",
                    where,
                    None,
                )
            )
        seen.add(call["id"])
    return found


# --- validate --------------------------------------------------------------------------------


class _OpenBlock:
    """An assistant message with tool_calls whose tool replies are still being read."""

    def __init__(self, index: int, ids: list[str]) -> None:
        self.index = index
        self.ids = ids
        self.answered: set[str] = set()

    def missing(self) -> list[Violation]:
        unanswered = [i for i in self.ids if i not in self.answered]
        return [_missing_responses(self.index, unanswered)] if unanswered else []


def _tool_violations(
    n: int, message: Mapping[str, Any], block: _OpenBlock | None
) -> list[Violation]:
    found: list[Violation] = []
    call_id = message.get("tool_call_id")
    if block is None:
        found.append(
            Violation(
                "orphan_tool_message",
                n,
                "Invalid parameter: messages with role 'tool' must be a response to a "
                "preceeding message with 'tool_calls'.",
                f"messages.[{n}].role",
                None,
            )
        )
    elif not isinstance(call_id, str):
        found.append(
            Violation(
                "missing_tool_call_id",
                n,
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                "'tool_call_id'.",
                f"messages.[{n}].tool_call_id",
                None,
            )
        )
    elif call_id not in block.ids:
        found.append(
            Violation(
                "unknown_tool_call_id",
                n,
                f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in 'tool_calls' "
                "of previous message.",
                f"messages.[{n}].tool_call_id",
                None,
            )
        )
    elif call_id in block.answered:
        found.append(
            Violation(
                "duplicate_tool_call_id",
                n,
                f"Invalid parameter: 'tool_call_id' of '{call_id}' was already answered by an "
                "earlier tool message.",
                f"messages.[{n}].tool_call_id",
                None,
            )
        )
    else:
        block.answered.add(call_id)
    content = _content_violation(n, "tool", message)
    if content is not None:
        found.append(content)
    return found


def validate(messages: Sequence[Mapping[str, Any]]) -> list[Violation]:
    """Every rule OpenAI enforces on `messages`, in message order; [] means it would pass."""
    if not messages:
        return [Violation("empty_messages", 0, _empty_array("messages"), "messages", "empty_array")]
    found: list[Violation] = []
    block: _OpenBlock | None = None
    for n, message in enumerate(messages):
        is_dict = type(message) is dict
        role = message.get("role") if is_dict or isinstance(message, Mapping) else None
        if role == "tool":
            found.extend(_tool_violations(n, message, block))
            continue
        # Any other message ends the stretch where a block's replies may appear.
        if block is not None:
            found.extend(block.missing())
            block = None
        # Most of every history, checked on every request: text with no calls is valid.
        if (
            is_dict
            and role in _TEXT_ROLES
            and type(message.get("content")) is str
            and message.get("tool_calls") is None
        ):
            continue
        if not isinstance(message, Mapping):
            found.append(
                Violation(
                    "not_an_object",
                    n,
                    f"Invalid type for 'messages[{n}]': expected an object, but got "
                    f"{_type_name(message)} instead.",
                    f"messages[{n}]",
                    None,
                )
            )
            continue
        if role not in ROLES:
            found.append(
                Violation(
                    "bad_role",
                    n,
                    f"Invalid value for 'messages[{n}].role': {role!r}. Supported values are: "
                    "'system', 'developer', 'user', 'assistant' and 'tool'.",
                    f"messages[{n}].role",
                    None,
                )
            )
            continue
        content = _content_violation(n, role, message)
        if content is not None:
            found.append(content)
        if role == "assistant":
            calls = message.get("tool_calls")
            found.extend(_calls_violations(n, calls))
            ids = _declared_ids(calls)
            if ids:
                block = _OpenBlock(n, ids)
    if block is not None:
        found.extend(block.missing())
    # A missing reply is only noticed after its block, yet belongs to the assistant message.
    return sorted(found, key=lambda v: v.index)


# --- repair ----------------------------------------------------------------------------------


def _fixed_content(role: str, content: Any) -> Any:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = [part for part in content if _valid_part(role, part)]
        return parts or ""
    return json.dumps(content, ensure_ascii=False, default=str)


def _valid_calls(calls: Any) -> list[Any]:
    if not isinstance(calls, list):
        return []
    kept: list[Any] = []
    seen: set[str] = set()
    for k, call in enumerate(calls):
        if _call_violation(0, k, call) is None and call["id"] not in seen:
            seen.add(call["id"])
            kept.append(call)
    return kept


def _cleaned(message: Any) -> dict[str, Any] | None:
    """The message with its own faults fixed, or None when nothing of it can be kept."""
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
        return None
    out = copy.deepcopy(dict(message))
    role = out["role"]
    if role == "tool" and not isinstance(out.get("tool_call_id"), str):
        return None
    if role == "assistant":
        if out.get("tool_calls") is not None:
            calls = _valid_calls(out["tool_calls"])
            if calls:
                out["tool_calls"] = calls
            else:
                del out["tool_calls"]
        if out.get("tool_calls") is not None and out.get("content") is None:
            return out
        if out.get("content") is None:
            return None
    out["content"] = _fixed_content(role, out.get("content"))
    return out


def _call_ids(message: Mapping[str, Any]) -> list[str]:
    if message["role"] != "assistant":
        return []
    return [call["id"] for call in message.get("tool_calls") or ()]


def _find_replies(
    messages: Sequence[Mapping[str, Any]], start: int, ids: Sequence[str], used: set[int]
) -> dict[str, int]:
    """Where, after `start`, the first unused reply to each id sits."""
    wanted = set(ids)
    found: dict[str, int] = {}
    for j in range(start + 1, len(messages)):
        if not wanted:
            break
        message = messages[j]
        if message["role"] == "tool" and j not in used and message["tool_call_id"] in wanted:
            found[message["tool_call_id"]] = j
            wanted.discard(message["tool_call_id"])
        # A later call reusing an id owns the replies that come after it.
        wanted.difference_update(_call_ids(message))
    return found


def repair(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` that validates clean, changed as little as possible.

    Tool replies are put right after their call (moved from later in the list, or made up as
    interrupted); tool messages that answer nothing are dropped. Returns [] only when no
    message survives, which `validate` still rejects: repair cannot invent a conversation.
    """
    cleaned = [c for c in map(_cleaned, messages) if c is not None]
    out: list[dict[str, Any]] = []
    used: set[int] = set()
    for i, message in enumerate(cleaned):
        if i in used or message["role"] == "tool":
            continue
        out.append(message)
        ids = _call_ids(message)
        if not ids:
            continue
        replies = _find_replies(cleaned, i, ids, used)
        for j in sorted(replies.values()):
            out.append(cleaned[j])
            used.add(j)
        out.extend(
            {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_RESULT}
            for call_id in ids
            if call_id not in replies
        )
    return out


# --- trim ------------------------------------------------------------------------------------


# Built once: json.dumps with options builds a new encoder per call, and every message of
# every request is estimated.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


def compact_json_chars(value: Any) -> int:
    """The length of `value` as compact JSON, in characters (what a request prices)."""
    return len(_COMPACT_JSON.encode(value))


# {"role":"","content":""}: what a text message adds to its role and its text.
_TEXT_MESSAGE_CHARS: Final = 24


def estimate_tokens(message: Mapping[str, Any]) -> int:
    """A cheap guess (about 4 characters a token, plus the per-message overhead).

    The characters are the message's compact JSON, counted without encoding its strings
    (most of every history, and every message is estimated on every call); escapes in
    them are not counted, which a guess this rough can spare."""
    content = message.get("content")
    if len(message) == 2 and type(content) is str:
        role = message.get("role")
        if type(role) is str:  # {"role": …, "content": …}: most of every history
            return (_TEXT_MESSAGE_CHARS + len(role) + len(content)) // 4 + 4
    # The braces, and per member its key's quotes, colon and separator.
    size = 1 + 4 * len(message)
    for key, value in message.items():
        size += len(key) + (len(value) + 2 if type(value) is str else compact_json_chars(value))
    return size // 4 + 4


def starts_turn(messages: Sequence[Mapping[str, Any]], index: int) -> bool:
    """Whether a request may begin at `messages[index]`: at a user message, but not at one
    right after a tool result. That one was written while the tools ran and belongs to
    their turn, whose answer needs the question and the results as much as it."""
    if messages[index].get("role") != "user":
        return False
    return index == 0 or messages[index - 1].get("role") != "tool"


def trim(messages: Sequence[dict[str, Any]], budget_tokens: int) -> list[dict[str, Any]]:
    """The newest turns that fit `budget_tokens`, after the leading system/developer messages
    (the messages themselves, not copies).

    Cuts only where a turn may begin (`starts_turn`), so a tool block is never split nor
    parted from what was written while it ran; keeps at least the last turn even when that
    alone is over budget.
    """
    head = 0
    while head < len(messages) and messages[head].get("role") in _LEADING_ROLES:
        head += 1
    kept = list(messages)
    costs = [estimate_tokens(m) for m in kept]
    if sum(costs) <= budget_tokens:
        return kept
    cost = sum(costs[:head])
    suffix_cost = [0] * (len(kept) + 1)
    for i in range(len(kept) - 1, head - 1, -1):
        suffix_cost[i] = suffix_cost[i + 1] + costs[i]
    cuts = [i for i in range(head, len(kept)) if starts_turn(kept, i)]
    if not cuts:
        return kept
    start = next((i for i in cuts if cost + suffix_cost[i] <= budget_tokens), cuts[-1])
    return kept[:head] + kept[start:]
