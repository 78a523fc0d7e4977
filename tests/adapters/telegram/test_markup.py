"""Model markdown to Telegram HTML: every output must be accepted by Telegram's parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.telegram.markup import to_html
from tests.fakes.telegram_api import HtmlParseError, parse_html


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("<b>not a tag</b>", "&lt;b&gt;not a tag&lt;/b&gt;"),
        ("**bold** and __also__", "<b>bold</b> and <b>also</b>"),
        ("*it* and _it_", "<i>it</i> and <i>it</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("run `a<b && c`", "run <code>a&lt;b &amp;&amp; c</code>"),
        ("**use `x`**", "<b>use <code>x</code></b>"),
        ("**bold _and italic_**", "<b>bold <i>and italic</i></b>"),
        ("see [docs](https://e.org/?a=1&b=2)", 'see <a href="https://e.org/?a=1&amp;b=2">docs</a>'),
        ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
        ("my_file_name.py and snake_case", "my_file_name.py and snake_case"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("* item one\n* item two", "* item one\n* item two"),
        ("## Title", "<b>Title</b>"),
        ("**", "**"),
    ],
)
def test_inline_conversions(markdown: str, expected: str) -> None:
    assert to_html(markdown) == expected


def test_fenced_block_with_language_becomes_pre_code_and_is_escaped() -> None:
    markdown = "Try:\n```python\nif a < b and **x**:\n    pass\n```\nDone."
    assert to_html(markdown) == (
        'Try:\n<pre><code class="language-python">if a &lt; b and **x**:\n    pass'
        "</code></pre>\nDone."
    )


def test_fenced_block_without_language_is_plain_pre() -> None:
    assert to_html("```\n<x>\n```") == "<pre>&lt;x&gt;</pre>"


def test_unclosed_fence_is_still_code() -> None:
    assert to_html("text\n```js\nlet a = 1 < 2") == (
        'text\n<pre><code class="language-js">let a = 1 &lt; 2</code></pre>'
    )


def test_visible_text_keeps_the_words() -> None:
    assert parse_html(to_html("**Son las** _12:00_ (UTC) & `ok`")) == "Son las 12:00 (UTC) & ok"


def test_fake_parser_rejects_what_telegram_rejects() -> None:
    for broken in ("<b>open", "a < b", "<b><i>x</b></i>", "</b>", "<br>", '<a href="x>y</a>'):
        with pytest.raises(HtmlParseError):
            parse_html(broken)


_MARKDOWNISH = st.text(alphabet="ab *_`~[]()<>&#:/.\nhtps-", max_size=120)


@given(_MARKDOWNISH)
def test_any_markdown_renders_to_html_telegram_accepts(markdown: str) -> None:
    parse_html(to_html(markdown))


@given(st.text(max_size=200))
def test_any_text_renders_to_html_telegram_accepts(text: str) -> None:
    parse_html(to_html(text))
