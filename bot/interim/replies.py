"""Picking the text of an instant reply or a fixed phrase: varied, never the same text to a
session twice in a row, with the running tools counted (plurals) and named."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.interim.classify import InterimKind
from bot.interim.locales import Locale, load_locales


@dataclass(frozen=True, slots=True)
class RunningTool:
    label: str  # plain words: "checking the time"
    seconds: float


def humanize_seconds(seconds: float) -> str:
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, rest = divmod(total, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(total, 3600)
    return f"{hours} h {rest // 60} min"


class _Formatting(dict[str, object]):
    """Leaves an unknown {placeholder} as it is rather than failing a reply."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class ReplyBook:
    def __init__(self, locales: dict[str, Locale], rng: random.Random | None = None) -> None:
        self.locales = locales
        self.rng = rng or random.Random()

    @classmethod
    def load(cls, directory: Path | None = None) -> ReplyBook:
        return cls(load_locales(directory))

    @property
    def languages(self) -> list[str]:
        return sorted(self.locales)

    def _locale(self, language: str) -> Locale:
        return self.locales.get(language) or self.locales["en"]

    def plural(self, language: str, noun: str, count: int) -> str:
        forms = self._locale(language).plural[noun]
        return (forms["one"] if count == 1 else forms["other"]).format(n=count)

    def join(self, language: str, items: Sequence[str]) -> str:
        if len(items) <= 1:
            return "".join(items)
        return f"{', '.join(items[:-1])} {self._locale(language).conjunction} {items[-1]}"

    def describe(self, language: str, running: Sequence[RunningTool]) -> str:
        return self.join(
            language, [f"{tool.label} ({humanize_seconds(tool.seconds)})" for tool in running]
        )

    def _pick(
        self,
        variants: Sequence[str],
        values: dict[str, object],
        avoid: Collection[str],
        rng: random.Random,
    ) -> str:
        rendered = [v.format_map(_Formatting(values)) for v in variants]
        fresh = [text for text in rendered if text not in avoid]
        return rng.choice(fresh or rendered)

    def interim(
        self,
        kind: InterimKind,
        language: str,
        running: Sequence[RunningTool],
        avoid: Collection[str] = (),
        rng: random.Random | None = None,
    ) -> str:
        locale = self._locale(language)
        values: dict[str, object] = {
            "tools": self.plural(locale.code, "tools", len(running)),
            "running": self.describe(locale.code, running),
        }
        return self._pick(locale.interim[kind.value], values, avoid, rng or self.rng)

    def phrase(self, key: str, language: str, **values: object) -> str:
        locale = self._locale(language)
        if "count" in values and "tools" not in values:
            values["tools"] = self.plural(locale.code, "tools", int(str(values["count"])))
        return self._pick(locale.phrases[key], dict(values), (), self.rng)

    def status(self, language: str, running: Sequence[RunningTool]) -> str:
        return self.phrase(
            "status_running",
            language,
            tools=self.plural(language, "tools", len(running)),
            running=self.describe(language, running),
        )
