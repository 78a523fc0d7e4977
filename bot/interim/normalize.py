"""Reducing a chat message to what the classifier compares: words without case, accents,
punctuation, emoji, mentions or a "Name:" prefix.

Keywords from the locale files go through `fold` too, so both sides always match.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# Only the start of a message says what it is; the cap keeps a pasted novel cheap.
MAX_SCANNED_CHARS: Final = 600

# Telegram "@name", Discord "<@123>", "<@!123>" (nickname) and "<@&123>" (role).
_MENTION = re.compile(r"<@[!&]?\d+>|@\w+")
# "Ana: hola" or "Ana María: hola", as group messages are often quoted or prefixed.
_NAME_PREFIX = re.compile(r"^[^\s:/@]{1,32}(?: [^\s:/@]{1,32})?:\s+")
# A "/command" keeps its slash; "what's" and "what’s" become one word.
_WORD = re.compile(r"/?\w+(?:['’]\w+)*")
_APOSTROPHE = re.compile(r"['’]")
# "holaaa", "thaaanks": letters repeated for emphasis are folded to one, on both sides.
_REPEAT = re.compile(r"(\w)\1+")


def prepare(text: str) -> str:
    """The message's own words in lower case, still with accents and punctuation."""
    head = _MENTION.sub(" ", text[:MAX_SCANNED_CHARS]).strip()
    return _NAME_PREFIX.sub("", head, count=1).casefold()


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(prepared: str) -> tuple[str, ...]:
    """The words of a `prepare`d text, accents and emphasis removed."""
    return tuple(
        _REPEAT.sub(r"\1", _APOSTROPHE.sub("", word))
        for word in _WORD.findall(_strip_accents(prepared))
    )


def fold(phrase: str) -> str:
    """A keyword as the classifier compares it: its words joined by single spaces."""
    return " ".join(words(phrase.casefold()))
