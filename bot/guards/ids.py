"""Matching ids from settings: "123" matches that id on any platform, "discord:123" only
on Discord."""

from __future__ import annotations

from collections.abc import Iterable


class IdSet:
    def __init__(self, entries: Iterable[str]) -> None:
        self.any_platform: set[str] = set()
        self.scoped: set[tuple[str, str]] = set()
        for entry in entries:
            platform, sep, ident = entry.partition(":")
            if sep and platform in ("telegram", "discord", "console"):
                self.scoped.add((platform, ident))
            else:
                self.any_platform.add(entry)

    def __bool__(self) -> bool:
        return bool(self.any_platform or self.scoped)

    def has(self, platform: str, ident: str | None) -> bool:
        if ident is None:
            return False
        return ident in self.any_platform or (platform, ident) in self.scoped
