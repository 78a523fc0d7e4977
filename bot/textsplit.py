"""Splitting a long answer into messages a platform accepts (Telegram 4096, Discord 2000).

Cuts prefer paragraph breaks, then line breaks, then sentence ends, then spaces, then a
hard cut. A cut inside a ``` code block closes the block in one part and reopens it, with
the same language tag, in the next, so every part renders on its own.

A fence is any line that starts (after spaces or tabs) with three backticks: it opens a
block when none is open and closes the open one otherwise. Each part is checked by that
same rule as it will be sent, so every part is balanced even for odd input.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final

# Below this a reopened fence plus its closing line would leave no room for the text.
MIN_LIMIT: Final = 16
CLOSING_FENCE: Final = "\n```"
_MAX_TAG: Final = 20
# Shorter parts than this share of the room are only made when nothing better exists.
_MIN_SHARE: Final = 0.5

_FENCE = re.compile(r"[ \t]*```")
_FENCE_TAG = re.compile(r"[ \t]*`{3,}[ \t]*([\w+#.-]*)")
_CLOSING_LINE = re.compile(r"[ \t]*```[ \t]*(?:\n|$)")
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")
_SENTENCE_END = re.compile(r"[.!?…。！？](?=\s)")
_SPACE = re.compile(r"\s")
# What goes between two parts: the spaces at a cut and the blank lines after it, but not
# the indentation of the next line, which matters inside code.
_SEPARATOR = re.compile(r"[^\S\n]*(?:\n(?:[^\S\n]*\n)*)?")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One part: the original text it carries plus the fence lines added around it."""

    body: str
    reopened: str | None  # language tag of a block reopened at the start ("" for none)
    closed: bool  # whether a closing fence was added at the end

    def render(self) -> str:
        head = "" if self.reopened is None else f"```{self.reopened}\n"
        return head + self.body + (CLOSING_FENCE if self.closed else "")


def _open_block(text: str, open_tag: str | None, max_tag: int) -> str | None:
    """The tag of the block still open after `text`, given the one open before it."""
    for line in text.split("\n"):
        if _FENCE.match(line):
            if open_tag is None:
                match = _FENCE_TAG.match(line)
                tag = match.group(1) if match else ""
                open_tag = tag if len(tag) <= max_tag else ""
            else:
                open_tag = None
    return open_tag


def _continues_cleanly(text: str, cut: int) -> bool:
    """A cut inside a line must not put backticks at the start of the next part's line,
    where they would read as a fence."""
    rest = text[cut:].lstrip(" \t")
    return not rest.startswith("`")


def _cut(text: str, start: int, budget: int) -> int:
    """Where to end a part that begins at `start` and holds at most `budget` characters."""
    window = text[start : start + budget + 1]
    floor = int(budget * _MIN_SHARE)

    def fits(at: int) -> bool:
        return 0 < at <= budget and bool(window[:at].strip())

    def last(positions: list[int], minimum: int, *, inline: bool) -> int | None:
        for at in reversed(positions):
            if at >= minimum and fits(at) and (not inline or _continues_cleanly(text, start + at)):
                return at
        return None

    paragraphs = [m.start() for m in _PARAGRAPH.finditer(window)]
    lines = [m.start() for m in re.finditer("\n", window)]
    sentences = [m.end() for m in _SENTENCE_END.finditer(window)]
    spaces = [m.start() for m in _SPACE.finditer(window)]
    for positions, minimum, inline in (
        (paragraphs, floor, False),
        (lines, floor, False),
        (sentences, floor, True),
        (spaces, 1, True),
    ):
        found = last(positions, minimum, inline=inline)
        if found is not None:
            return start + found
    return start + _hard_cut(window, budget)


def _hard_cut(window: str, budget: int) -> int:
    """A cut inside a word, stepping back off backticks, accents and joined emoji."""
    at = min(budget, len(window))
    while at > 1 and at < len(window) and _bad_start(window[at]):
        at -= 1
    return at


def _bad_start(char: str) -> bool:
    """Characters the next part must not start with: a backtick could read as a fence,
    a combining mark or joiner belongs to the character before it."""
    return char == "`" or char == "\u200d" or unicodedata.combining(char) != 0


def plan_chunks(text: str, limit: int) -> list[Chunk]:
    """The parts `split_text` sends, with the fence lines it added kept apart."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters, got {limit}")
    max_tag = min(_MAX_TAG, limit // 4)
    end = len(text.rstrip())
    chunks: list[Chunk] = []
    tag: str | None = None
    pos = _skip_separator(text, 0)
    while pos < end:
        room = limit - (0 if tag is None else len(f"```{tag}\n"))
        if end - pos <= room:
            body = text[pos:end]
            still_open = _open_block(body, tag, max_tag)
            if still_open is None or end - pos + len(CLOSING_FENCE) <= room:
                chunks.append(Chunk(body, tag, still_open is not None))
                break
        cut = _cut(text, pos, room - len(CLOSING_FENCE))
        body = text[pos:cut].rstrip()
        pos = _skip_separator(text, cut)
        if not body.strip():
            continue
        still_open = _open_block(body, tag, max_tag)
        closing = _CLOSING_LINE.match(text, pos) if still_open is not None else None
        if closing is not None:
            # The block ends right after the cut: keep its own closing line here rather
            # than adding one and reopening an empty block in the next part.
            body += CLOSING_FENCE
            pos = _skip_separator(text, closing.end())
            still_open = None
        chunks.append(Chunk(body, tag, still_open is not None))
        tag = still_open
    return chunks


def _skip_separator(text: str, pos: int) -> int:
    match = _SEPARATOR.match(text, pos)
    return match.end() if match else pos


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` characters, none empty; [] for blank text."""
    return [chunk.render() for chunk in plan_chunks(text, limit)]
