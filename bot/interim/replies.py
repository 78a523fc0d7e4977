"""Picking the text of an instant reply or a fixed phrase: varied, never the same text to a
session twice in a row, with the running tools counted (plurals) and named."""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from bot.interim.catalog import FALLBACK_LANGUAGE, Locale, load_locales
from bot.interim.classify import Classifier
from bot.interim.keys import PHRASE_KEYS, InterimKind

__all__ = ["PHRASE_KEYS", "ReplyBook", "RunningTool"]


@dataclass(frozen=True, slots=True)
class RunningTool:
    label: str  # plain words: "checking the time"
    seconds: float


@dataclass(frozen=True, slots=True)
class _Template:
    text: str
    # Matches any text this template can produce, whatever values filled it: a status
    # reply sent a minute ago counts as used even though its durations have changed.
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, text: str) -> _Template:
        parts = []
        for literal, name, _, _ in string.Formatter().parse(text):
            parts.append(re.escape(literal))
            if name is not None:
                parts.append(".*?")
        return cls(text, re.compile("".join(parts), re.DOTALL))

    def produced(self, sent: str) -> bool:
        return self.pattern.fullmatch(sent) is not None


def _pick(
    templates: Sequence[_Template],
    values: Mapping[str, object],
    avoid: Collection[str],
    rng: random.Random,
) -> str:
    """A variant not sent recently; `avoid` lists recent texts (if ordered, newest last)."""
    rendered = [(t, t.text.format_map(values)) for t in templates]
    fresh = [(t, text) for t, text in rendered if not any(t.produced(a) for a in avoid)]
    if not fresh and avoid:
        # All used: at least differ from the newest one, by template when known, by text
        # otherwise (a set has no order, but no text in it is repeated verbatim).
        newest = list(avoid)[-1] if isinstance(avoid, Sequence) else None
        fresh = [(t, text) for t, text in rendered if newest is None or not t.produced(newest)]
        fresh = [(t, text) for t, text in fresh if text not in avoid] or fresh
    return rng.choice(fresh or rendered)[1]


class ReplyBook:
    """Every text the core sends without asking the model, in every loaded language."""

    def __init__(self, locales: Mapping[str, Locale], rng: random.Random | None = None) -> None:
        if FALLBACK_LANGUAGE not in locales:
            raise ValueError(f"the {FALLBACK_LANGUAGE!r} locale is required (the fallback)")
        self._locales = dict(locales)
        self._rng = rng or random.Random()
        self._interim = {
            code: {kind: tuple(map(_Template.of, texts)) for kind, texts in loc.interim.items()}
            for code, loc in self._locales.items()
        }
        self._phrases = {
            code: {key: tuple(map(_Template.of, texts)) for key, texts in loc.phrases.items()}
            for code, loc in self._locales.items()
        }
        self.classifier = Classifier(self._locales)

    @classmethod
    def load(cls, directory: Path | Traversable | None = None) -> ReplyBook:
        """Reads and checks every locale file; raises LocaleError naming file and key."""
        return cls(load_locales(directory))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._locales))

    def _locale(self, language: str) -> Locale:
        return self._locales.get(language) or self._locales[FALLBACK_LANGUAGE]

    def duration(self, seconds: float, language: str) -> str:
        """ "12 s", "2 min 5 s", "1 h 3 min", in the locale's words."""
        formats = self._locale(language).durations
        total = max(0, round(seconds)) if math.isfinite(seconds) else 0
        hours, rest = divmod(total, 3600)
        minutes, secs = divmod(rest, 60)
        if hours:
            key = "hours_minutes" if minutes else "hours"
        elif minutes:
            key = "minutes_seconds" if secs else "minutes"
        else:
            key = "seconds"
        return formats[key].format(h=hours, m=minutes, s=secs)

    def join(self, items: Sequence[str], language: str) -> str:
        """ "a, b and c" / "a, b y c"."""
        locale = self._locale(language)
        if not items:
            return locale.list_empty
        if len(items) == 1:
            return items[0]
        return locale.list_separator.join(items[:-1]) + locale.list_last + items[-1]

    def describe(self, running: Sequence[RunningTool], language: str) -> str:
        """ "consultar la hora (12 s) y buscar en la web (2 min 5 s)"."""
        item = self._locale(language).tool_item
        return self.join(
            [
                item.format(label=tool.label, duration=self.duration(tool.seconds, language))
                for tool in running
            ],
            language,
        )

    def _values(
        self,
        locale: Locale,
        running: Sequence[RunningTool] | None,
        count: int | None,
        given: Mapping[str, object],
    ) -> dict[str, object]:
        values = dict(given)
        if running is not None:
            values["details"] = self.describe(running, locale.language)
            count = len(running) if count is None else count
        if count is not None:
            values["count"] = count
            values.update({name: p.render(count) for name, p in locale.plurals.items()})
        seconds = values.get("seconds")
        if "reset" not in values and isinstance(seconds, int | float):
            values["reset"] = self.duration(seconds, locale.language)
        return values

    def interim(
        self,
        kind: InterimKind,
        language: str,
        running: Sequence[RunningTool],
        avoid: Collection[str] = (),
        rng: random.Random | None = None,
    ) -> str:
        """The instant reply to a message that arrived while `running` tools work.

        `avoid` holds at least the last text sent to the session (newest last if ordered):
        the reply is never the same text, and prefers a variant none of them came from.
        """
        locale = self._locale(language)
        values = self._values(locale, running, None, {})
        templates = self._interim[locale.language][kind]
        return _pick(templates, values, avoid, rng or self._rng)

    def phrase(self, key: str, language: str, /, **values: object) -> str:
        """One of the fixed texts in PHRASE_KEYS, filled with `values`.

        Some names are not placeholders: `rng` and `avoid` work as in `interim`;
        `running` (RunningTool list) fills {details} and the plurals, `count` (int) the
        plurals alone; `seconds` (a wait) fills {reset} when no `reset` is given. They ride
        in **values so a caller can pass a policy's values dict straight through.
        """
        if key not in PHRASE_KEYS:
            raise KeyError(f"unknown phrase {key!r}; known: {', '.join(PHRASE_KEYS)}")
        rng = values.pop("rng", None) or self._rng
        avoid = values.pop("avoid", ())
        running = values.pop("running", None)
        count = values.pop("count", None)
        if not isinstance(rng, random.Random):
            raise TypeError("rng must be a random.Random")
        if isinstance(avoid, str) or not isinstance(avoid, Collection):
            raise TypeError("avoid must be a collection of texts")
        if running is not None and not (
            isinstance(running, Sequence) and all(isinstance(t, RunningTool) for t in running)
        ):
            raise TypeError("running must be a sequence of RunningTool")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise TypeError("count must be an int")
        locale = self._locale(language)
        filled = self._values(locale, running, count, values)
        spec = PHRASE_KEYS[key]
        missing = spec.required - filled.keys()
        if spec.counted and "count" not in filled:
            missing |= {"count"}
        if missing:
            raise ValueError(f"phrase {key!r} needs the value(s) {', '.join(sorted(missing))}")
        try:
            return _pick(self._phrases[locale.language][key], filled, avoid, rng)
        except KeyError as exc:
            raise ValueError(f"phrase {key!r} needs the value {exc.args[0]}") from None

    def status(self, language: str, running: Sequence[RunningTool]) -> str:
        """The /status answer while tools run."""
        return self.phrase("status_running", language, running=running)
