"""The newest history rows of recently active sessions, kept between model calls.

Every model call needs the session's history, and a chat's history only grows: reading
it whole for every turn costs more with every turn (the read and the row objects were a
sixth of the CPU of an answered message, bench/RESULTS.md). Here a model call reads only
the rows added since the last one, and takes the rest from this cache.

What keeps it right:
- Positions are only ever appended while `sessions.history_version` stays the same. The
  one writer that changes positioned rows in place (the admin repair) bumps that version
  in its transaction, and a cached copy is used only if the version it was read at is
  still the session's.
- An entry is kept only once the transaction that read it has committed (`Reads`): a
  transaction that rolls back may have read its own rows, and SQLite reuses a rolled
  back row's id.
- The read since the cached position starts at the cached last row and checks its id, so
  a copy that does not continue the stored history is never extended.

Bounded by rows, least recently kept first out: a busy bot's long chats fall back to the
full read, never to unbounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from bot.store import HistoryEntry

# About 15 MB of typical rows: the newest window (`bot.prompt.history_rows`) of a few
# dozen long chats, or of thousands of short ones.
HISTORY_CACHE_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class CachedHistory:
    """The newest rows of a session's history up to `last_position` (at most the model's
    window of them), as read at `version`."""

    version: int
    last_id: int
    last_position: int
    entries: tuple[HistoryEntry, ...]


class Reads:
    """The histories one transaction read, kept in the cache once it commits. Its work
    may run more than once (a group commit runs a failed batch's units again): `clear`
    at the start of each run leaves only the committed run's reads."""

    def __init__(self) -> None:
        self.read: dict[int, CachedHistory] = {}

    def clear(self) -> None:
        self.read.clear()

    def add(self, session_id: int, history: CachedHistory) -> None:
        self.read[session_id] = history


class HistoryCache:
    def __init__(self, max_rows: int = HISTORY_CACHE_ROWS) -> None:
        self.max_rows = max_rows
        self._entries: OrderedDict[int, CachedHistory] = OrderedDict()
        self._rows = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def rows(self) -> int:
        return self._rows

    def get(self, session_id: int) -> CachedHistory | None:
        # Read in the storage thread while the loop may keep: one dict lookup, atomic.
        return self._entries.get(session_id)

    def keep(self, reads: Reads) -> None:
        """What a committed transaction read. An older read (an earlier version, or fewer
        rows at the same one) committing late never replaces a newer one."""
        for session_id, history in reads.read.items():
            held = self._entries.get(session_id)
            if held is not None:
                if (held.version, held.last_position) > (history.version, history.last_position):
                    continue
                self._drop(session_id)
            if len(history.entries) > self.max_rows:
                continue
            self._entries[session_id] = history
            self._rows += len(history.entries)
        while self._rows > self.max_rows:
            self._drop(next(iter(self._entries)))

    def _drop(self, session_id: int) -> None:
        self._rows -= len(self._entries.pop(session_id).entries)
