"""Splitting a long answer into messages a platform accepts (Telegram 4096, Discord 2000).

Cuts prefer paragraph breaks, then line breaks, then sentence ends, then spaces, then a
hard cut. A cut inside a ``` code block closes the block in one part and reopens it, with
the same language tag, in the next, so every part renders on its own.
"""

from __future__ import annotations

import re

FENCE = re.compile(r"^```(\S*)\s*$", re.M)
_SENTENCE_END = re.compile(r"[.!?…](?=\s)")


def _open_fence(text: str) -> str | None:
    """The opening line of a code block left open at the end of `text`, else None."""
    opening: str | None = None
    for match in FENCE.finditer(text):
        opening = None if opening is not None else match.group(0).strip()
    return opening


def _cut_point(text: str, limit: int) -> int:
    window = text[:limit]
    for separator in ("\n\n", "\n"):
        at = window.rfind(separator)
        if at > limit // 3:
            return at + len(separator)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] > limit // 3:
        return ends[-1]
    at = window.rfind(" ")
    if at > limit // 3:
        return at + 1
    return limit


def split_text(text: str, limit: int) -> list[str]:
    if limit < 100:
        raise ValueError("limit too small to split with code fences")
    parts: list[str] = []
    rest = text.strip()
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            parts.append(rest)
            break
        # Room for a closing fence if the cut falls inside a block.
        budget = limit - len("\n```")
        cut = _cut_point(rest, budget)
        head = rest[:cut].rstrip()
        opening = _open_fence(head)
        if opening is not None:
            head += "\n```"
            reopen = opening[:40] + "\n"
        else:
            reopen = ""
        if head.strip() and head.strip() != "```":
            parts.append(head)
        rest = rest[cut:].lstrip("\n")
        if not rest.strip():
            break
        if opening is None:
            rest = rest.lstrip()
    return [p for p in parts if p.strip()]
