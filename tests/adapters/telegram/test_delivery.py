"""Splitting and rendering long replies so every part fits Telegram's limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.telegram.adapter import file_url_for
from adapters.telegram.delivery import render_parts, utf16_len
from tests.fakes.telegram_api import parse_html


def squash(text: str) -> str:
    return "".join(text.split())


def test_short_text_is_one_part() -> None:
    [part] = render_parts("Son las **12:00**.")
    assert (part.source, part.html) == ("Son las **12:00**.", "Son las <b>12:00</b>.")


def test_whitespace_only_text_has_no_parts() -> None:
    assert render_parts(" \n\n ") == []


def test_escaping_growth_is_split_again_under_the_limit() -> None:
    # Each "<" becomes "&lt;": the rendered text is about 2.5 times the source.
    text = "a<b " * 2500
    parts = render_parts(text)
    assert all(utf16_len(p.html) <= 4096 for p in parts)
    assert squash("".join(parse_html(p.html) for p in parts)) == squash(text)


def test_astral_characters_count_double() -> None:
    text = "😀" * 3000  # 3000 characters, 6000 UTF-16 units
    parts = render_parts(text)
    assert len(parts) >= 2
    assert all(utf16_len(p.html) <= 4096 for p in parts)
    assert "".join(p.source for p in parts) == text


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="ab <>&*_`\n", min_size=4000, max_size=12000))
def test_every_part_parses_and_fits(text: str) -> None:
    parts = render_parts(text, limit=4096)
    for part in parts:
        assert utf16_len(part.html) <= 4096
        parse_html(part.html)


def test_file_url_matches_the_api_url() -> None:
    assert file_url_for("https://api.telegram.org/bot") == "https://api.telegram.org/file/bot"
    assert file_url_for("http://127.0.0.1:8081/bot/") == "http://127.0.0.1:8081/file/bot"


def test_tiny_limits_fall_back_to_cutting_by_length() -> None:
    # With a limit this small split_text cannot be used at all; parts still fit.
    text = "&" * 500
    parts = render_parts(text, limit=120)
    assert all(utf16_len(p.html) <= 120 for p in parts)
    assert "".join(p.source for p in parts) == text


def test_code_blocks_stay_valid_across_parts() -> None:
    code = "\n".join(f"x = {i} < {i + 1} and y & z" for i in range(400))
    parts = render_parts(f"Here:\n```python\n{code}\n```\nDone.")
    assert len(parts) >= 3
    for part in parts:
        assert utf16_len(part.html) <= 4096
        parse_html(part.html)
    assert all('<pre><code class="language-python">' in p.html for p in parts[1:-1])
