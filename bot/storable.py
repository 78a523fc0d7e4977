"""Text every database stores and every JSON encoder sends.

Platforms, models and tools can all hand over Python strings that are not valid Unicode
text: lone surrogates (JSON escapes such as "\\ud800" decode to them) cannot be encoded as
UTF-8 at all, so SQLite, PostgreSQL and OpenAI all refuse them; NUL characters are valid
but PostgreSQL refuses them in text columns. A write that fails on such a character fails
again on every retry, and the message, answer or tool result would be lost.
"""

from __future__ import annotations

from typing import Final

REPLACEMENT: Final = "\ufffd"


def storable(text: str) -> str:
    """`text` with each lone surrogate and NUL replaced by U+FFFD (a surrogate pair given
    as two code points becomes its character); valid text comes back as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    return text
