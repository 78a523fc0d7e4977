"""Model markdown to the HTML subset Telegram accepts.

The output is well formed by construction: every tag is opened and closed by the same
call, and every piece of user text goes through `html.escape`, so a stray `<` or an odd
number of asterisks can never produce "can't parse entities". Anything not recognised is
kept as (escaped) text rather than guessed at.
"""

from __future__ import annotations

import html
import re

# Leftmost match wins; at the same position the alternation order decides, so a code span
# shields its content and `**` is tried before `*`.
_INLINE = re.compile(
    r"`(?P<code>[^`\n]+)`"
    r"|\[(?P<link_text>[^\]\n]+)\]\((?P<link_url>[^)\s]+)\)"
    r"|\*\*(?P<bold>\S(?:.*?\S)?)\*\*"
    r"|(?<!\w)__(?P<bold_u>\S(?:.*?\S)?)__(?!\w)"
    r"|~~(?P<strike>\S(?:.*?\S)?)~~"
    r"|\*(?P<italic>[^*\s](?:[^*\n]*?[^*\s])?)\*"
    # Underscores inside words (snake_case, file_names) are not emphasis.
    r"|(?<!\w)_(?P<italic_u>[^_\s](?:[^_\n]*?[^_\s])?)_(?!\w)"
)
_FENCE = re.compile(r"^\s*```\s*(?P<lang>[\w+#.-]*)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:")


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def render_inline(text: str) -> str:
    """Renders one stretch of text outside code blocks."""
    out: list[str] = []
    pos = 0
    for match in _INLINE.finditer(text):
        out.append(_escape(text[pos : match.start()]))
        out.append(_render_match(match))
        pos = match.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _render_match(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups["code"] is not None:
        return f"<code>{_escape(groups['code'])}</code>"
    if groups["link_text"] is not None:
        url = groups["link_url"]
        if not url.lower().startswith(_SAFE_SCHEMES):
            return _escape(match.group(0))
        return f'<a href="{html.escape(url, quote=True)}">{render_inline(groups["link_text"])}</a>'
    for name, tag in (
        ("bold", "b"),
        ("bold_u", "b"),
        ("strike", "s"),
        ("italic", "i"),
        ("italic_u", "i"),
    ):
        inner = groups[name]
        if inner is not None:
            return f"<{tag}>{render_inline(inner)}</{tag}>"
    raise AssertionError("a pattern group matched without being handled")


def _render_code_block(lines: list[str], lang: str) -> str:
    body = _escape("\n".join(lines))
    if lang:
        return f'<pre><code class="language-{lang}">{body}</code></pre>'
    return f"<pre>{body}</pre>"


def to_html(markdown: str) -> str:
    """Converts model markdown to Telegram HTML (parse_mode=HTML)."""
    out: list[str] = []
    code_lines: list[str] | None = None
    lang = ""
    for line in markdown.split("\n"):
        fence = _FENCE.match(line)
        if code_lines is None:
            if fence:
                code_lines, lang = [], fence.group("lang")
                continue
            heading = _HEADING.match(line)
            if heading:
                out.append(f"<b>{render_inline(heading.group('title'))}</b>")
            else:
                out.append(render_inline(line))
        elif fence and not fence.group("lang") and line.strip() == "```":
            out.append(_render_code_block(code_lines, lang))
            code_lines = None
        else:
            code_lines.append(line)
    if code_lines is not None:
        # An unclosed fence still reads as code: the model ran out of tokens mid-block.
        out.append(_render_code_block(code_lines, lang))
    return "\n".join(out)
