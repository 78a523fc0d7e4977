"""Long answers split under the platform limit, at good boundaries, code blocks intact."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.textsplit import FENCE, split_text


def _balanced(part: str) -> bool:
    return len(FENCE.findall(part)) % 2 == 0


def _visible(text: str) -> str:
    without_fences = FENCE.sub("", text)
    return re.sub(r"\s+", "", without_fences)


def test_short_text_is_one_part() -> None:
    text = "word " * 800  # 4,000 characters
    assert split_text(text, 4096) == [text.strip()]


def test_splits_at_a_paragraph_boundary() -> None:
    first = "First paragraph. " * 70
    second = "Second paragraph. " * 70
    parts = split_text(f"{first.strip()}\n\n{second.strip()}", 2000)
    assert parts == [first.strip(), second.strip()]


def test_code_block_is_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})  # a line of code" for i in range(80))
    text = f"Here is the script:\n\n```python\n{code}\n```\n\nThat's all."
    assert len(text) > 2000
    parts = split_text(text, 2000)
    assert len(parts) == 2
    assert all(len(p) <= 2000 and _balanced(p) for p in parts)
    assert parts[0].endswith("```")
    assert parts[1].startswith("```python\n")
    assert _visible("\n".join(parts)) == _visible(text)


def test_whitespace_only_is_nothing() -> None:
    assert split_text(" \n\n ", 2000) == []


def test_hard_cut_when_there_is_no_space() -> None:
    parts = split_text("x" * 5000, 2000)
    assert [len(p) for p in parts] == [1996, 1996, 1008]


words = st.text(alphabet="abcdefghij .!?\n", min_size=1, max_size=30)
blocks = st.one_of(
    words,
    st.builds(lambda lang, body: f"\n```{lang}\n{body}\n```\n", st.sampled_from(["", "py"]), words),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(blocks, min_size=1, max_size=150), st.sampled_from([100, 300, 2000]))
def test_split_properties(pieces: list[str], limit: int) -> None:
    text = "".join(pieces)
    parts = split_text(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    assert all(p.strip() for p in parts)
    if _balanced(text):
        assert all(_balanced(p) for p in parts)
    assert _visible("\n".join(parts)) == _visible(text)
