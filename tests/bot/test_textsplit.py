"""Long answers split under the platform limit, at good boundaries, code blocks intact."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.textsplit import MIN_LIMIT, plan_chunks, split_text

# Written apart from the module on purpose: a fence is a line starting with ``` (after
# spaces or tabs), and a balanced part has an even number of them.
_FENCE_LINE = re.compile(r"^[ \t]*```", re.M)


def _balanced(part: str) -> bool:
    return len(_FENCE_LINE.findall(part)) % 2 == 0


def _visible(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _sentences(word: str, count: int) -> str:
    return " ".join(f"{word} sentence number {i}." for i in range(count))


def test_an_answer_under_the_limit_is_one_part() -> None:
    text = _sentences("First", 76) + "\n\n" + _sentences("Second", 76)
    assert 4000 < len(text) <= 4096
    assert split_text(text, 4096) == [text]


def test_at_2000_it_splits_at_the_paragraph_boundary() -> None:
    first = _sentences("First", 70)
    second = _sentences("Second", 65)
    third = _sentences("Third", 20)
    text = f"{first}\n\n{second}\n\n{third}"
    assert len(text) > 4000
    parts = split_text(text, 2000)
    assert parts == [first, second, third]


def test_a_code_block_after_prose_moves_whole_to_the_next_part() -> None:
    prose = _sentences("Intro", 45)
    code = "\n".join(f"    total += value_{i}  # step {i}" for i in range(40))
    text = f"{prose}\n\n```python\ndef add():\n{code}\n```\n\nThat is all."
    assert 2400 < len(text) < 2600
    parts = split_text(text, 2000)
    assert parts == [prose, text[len(prose) + 2 :]]
    assert parts[1].startswith("```python\n") and "```\n\nThat is all." in parts[1]


def test_a_code_block_longer_than_the_limit_is_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})  # a line of code" for i in range(100))
    text = f"Here is the script:\n\n```python\n{code}\n```\n\nThat's all."
    assert 2500 < len(text) < 3500
    parts = split_text(text, 2000)
    assert len(parts) == 2
    assert all(len(p) <= 2000 and _balanced(p) for p in parts)
    assert parts[0].endswith("\n```")
    assert parts[1].startswith("```python\nprint(")
    assert parts[1].endswith("```\n\nThat's all.")
    # Cut between lines of code, never inside one.
    assert re.search(r"# a line of code\n```$", parts[0])


def test_indentation_inside_code_survives_the_cut() -> None:
    body = "\n".join(f"        indented_line_{i} = {i}" for i in range(200))
    parts = split_text(f"```\n{body}\n```", 500)
    for part in parts:
        lines = part.split("\n")[1:-1]
        assert lines and all(line.startswith("        indented_line_") for line in lines)


def test_sentence_end_then_space_then_hard_cut() -> None:
    sentence = "Word " * 30 + "end. "
    parts = split_text(sentence * 10, 400)
    assert all(p.endswith("end.") for p in parts[:-1])
    unbroken = split_text("word " * 100, 60)
    assert all(re.fullmatch(r"(word ?)+", p) and not p.endswith(" ") for p in unbroken)
    assert split_text("x" * 50, 20) == ["x" * 16, "x" * 16, "x" * 18]


def test_whitespace_only_is_nothing() -> None:
    assert split_text("", 2000) == []
    assert split_text(" \n\n \t ", 2000) == []


def test_a_limit_too_small_for_fences_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        split_text("hello", MIN_LIMIT - 1)


def test_an_unclosed_block_is_closed_in_its_last_part() -> None:
    parts = split_text("Look:\n```sh\nls -la", 2000)
    assert parts == ["Look:\n```sh\nls -la\n```"]


def test_no_empty_block_is_reopened_when_the_cut_meets_the_fence() -> None:
    code = "x = 1\n" * 30  # 180 characters
    text = f"```py\n{code}```\n\n" + "After the code. " * 5
    # At 190 the room for text (less a closing fence) ends just before the block's own
    # closing line: that line ends this part instead of an added one.
    parts = split_text(text, 190)
    assert parts == [text[:189], text[191:].rstrip()]


_pieces = st.one_of(
    st.text(alphabet="abc .!?\n\t`", min_size=1, max_size=40),
    st.builds(
        lambda tag, body: f"\n```{tag}\n{body}\n```\n",
        st.sampled_from(["", "py", "javascript", "x" * 30]),
        st.text(alphabet="ab .\n  ", max_size=120),
    ),
    st.just("\n\n"),
    st.text(alphabet="ñé😀\u0301\u200d", min_size=1, max_size=5),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_pieces, max_size=60).map("".join), st.integers(MIN_LIMIT, 300))
def test_split_properties(text: str, limit: int) -> None:
    chunks = plan_chunks(text, limit)
    parts = split_text(text, limit)
    assert parts == [c.render() for c in chunks]
    for part in parts:
        assert 0 < len(part) <= limit
        assert part.strip()
        assert _balanced(part)
    # Without the fence lines it added, the parts carry every visible character in order.
    assert "".join(_visible(c.body) for c in chunks) == _visible(text)
    # A block closed at the end of one part reopens at the start of the next.
    for before, after in pairwise(chunks):
        assert before.closed == (after.reopened is not None)
    if not text.strip():
        assert parts == []


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=3000), st.sampled_from([2000, 4096]))
def test_platform_limits_on_any_text(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(0 < len(p) <= limit and p.strip() and _balanced(p) for p in parts)
    assert _visible("".join(c.body for c in plan_chunks(text, limit))) == _visible(text)
