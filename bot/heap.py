"""Keeping the garbage collector's full pauses short once the bot runs.

A started bot holds a few hundred thousand objects for good: modules, SQLAlchemy's compiled
statements, the client libraries' state. Python's full collection walks all of them, and
under load one comes every few seconds: 100–150 ms in which no chat is answered
(bench/RESULTS.md, session 11). Once started, those objects are moved where collections
no longer look (`gc.freeze`), so a full collection walks only what the chats create.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once, when the bot has started: what is garbage by then is collected, and
    everything alive is kept out of later collections."""
    gc.collect()
    gc.freeze()
