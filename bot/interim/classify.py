"""What kind of message arrived while tools run, and in which language.

Cheap on purpose (no LLM call): keyword lists from every locale file, matched on the
folded words of the start of the message. Keywords of all languages count, since people
mix them ("ok, gracias"); the language only decides which texts answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from bot.interim.catalog import MATCHED_KINDS, Locale, Rules, load_locales
from bot.interim.keys import InterimKind
from bot.interim.normalize import prepare, words

__all__ = [
    "Classification",
    "Classifier",
    "InterimKind",
    "Reading",
    "classify",
    "default_classifier",
    "detect_language",
    "told_language",
]

# The first kind that matches wins: "Hola, ¿sigues ahí?" asks for the status.
PRECEDENCE = (
    InterimKind.CANCEL,
    InterimKind.STATUS,
    InterimKind.THANKS,
    InterimKind.GREETING,
    InterimKind.QUESTION,
)
# A special character ("ñ", "¿") says more about a language than a common word does.
_CHAR_WEIGHT = 2


@dataclass(frozen=True, slots=True)
class Classification:
    kind: InterimKind
    language: str


@dataclass(frozen=True, slots=True)
class Reading:
    """What a message's own words say: its kind, and the language they tell (None: they
    tell none, and the conversation's is meant)."""

    kind: InterimKind
    told: str | None

    def classification(self, default_language: str) -> Classification:
        return Classification(self.kind, self.told or default_language)


def _strip_fillers(
    tokens: tuple[str, ...], fillers: tuple[tuple[str, ...], ...]
) -> tuple[str, ...]:
    """Drops "please", "oye", "now"... at both ends, keeping at least one word."""
    changed = True
    while changed:
        changed = False
        for filler in fillers:
            size = len(filler)
            if len(tokens) <= size:
                continue
            if tokens[:size] == filler:
                tokens, changed = tokens[size:], True
            elif tokens[-size:] == filler:
                tokens, changed = tokens[:-size], True
    return tokens


@dataclass(frozen=True, slots=True)
class _Matcher:
    """One kind's keywords of every locale, compiled: the whole message, its start, or
    anywhere in it, a keyword only ever between spaces (the texts come padded with one
    at each end). One regular expression per mode instead of a loop over every keyword:
    each message that comes while tools run is classified."""

    exact: frozenset[str]
    start: re.Pattern[str] | None
    anywhere: re.Pattern[str] | None

    def matches(self, padded_texts: tuple[str, ...]) -> bool:
        for padded in padded_texts:
            if padded.strip() in self.exact:
                return True
            if self.start is not None and self.start.match(padded):
                return True
            if self.anywhere is not None and self.anywhere.search(padded):
                return True
        return False


def _between_spaces(phrases: Iterable[str]) -> re.Pattern[str] | None:
    # Any alternative that fits counts (the engine backtracks through all of them), so
    # the order is only for a stable pattern.
    unique = sorted(set(phrases))
    if not unique:
        return None
    return re.compile(" (?:" + "|".join(re.escape(p) for p in unique) + ") ")


def _matcher(rules: Iterable[Rules]) -> _Matcher:
    every = list(rules)
    return _Matcher(
        exact=frozenset().union(*(r.exact for r in every)),
        start=_between_spaces(p for r in every for p in r.start),
        anywhere=_between_spaces(p for r in every for p in r.anywhere),
    )


class Classifier:
    """Classifies with the keywords and hints of the given locales."""

    def __init__(self, locales: Mapping[str, Locale]) -> None:
        self._locales = dict(locales)
        self._matchers = {
            kind: _matcher(loc.rules[kind] for loc in self._locales.values())
            for kind in MATCHED_KINDS
        }
        self._fillers = tuple(
            sorted(
                {f for loc in self._locales.values() for f in loc.fillers},
                key=len,
                reverse=True,
            )
        )
        self._question_marks = frozenset().union(
            *(loc.question_marks for loc in self._locales.values())
        )

    def detect_language(self, text: str, default: str = "en") -> str:
        return self.told_language(text) or default

    def told_language(self, text: str) -> str | None:
        prepared = prepare(text)
        return self._told(prepared, words(prepared))

    def _told(self, prepared: str, tokens: tuple[str, ...]) -> str | None:
        scores: dict[str, int] = {}
        for code, locale in self._locales.items():
            chars = sum(1 for c in prepared if c in locale.hint_chars)
            hits = sum(1 for t in tokens if t in locale.hint_words)
            scores[code] = _CHAR_WEIGHT * chars + hits
        best = max(scores.values(), default=0)
        winners = [code for code, score in scores.items() if score == best]
        # Nothing telling, or a tie: the text tells no language.
        if best == 0 or len(winners) > 1:
            return None
        return winners[0]

    def read(self, text: str) -> Reading:
        """The message's kind and the language it tells, its words folded once for both."""
        prepared = prepare(text)
        tokens = words(prepared)
        return Reading(self._kind(prepared, tokens), self._told(prepared, tokens))

    def classify(self, text: str, default_language: str = "en") -> Classification:
        return self.read(text).classification(default_language)

    def _kind(self, prepared: str, tokens: tuple[str, ...]) -> InterimKind:
        core = _strip_fillers(tokens, self._fillers)
        padded = (f" {' '.join(tokens)} ", f" {' '.join(core)} ")
        for kind in PRECEDENCE:
            if kind is InterimKind.QUESTION and any(m in prepared for m in self._question_marks):
                return kind
            if tokens and self._matchers[kind].matches(padded):
                return kind
        return InterimKind.DEFAULT


@cache
def default_classifier() -> Classifier:
    """The classifier over the packaged locales, read once."""
    return Classifier(load_locales())


def classify(text: str, default_language: str = "en") -> Classification:
    return default_classifier().classify(text, default_language)


def detect_language(text: str, default: str = "en") -> str:
    return default_classifier().detect_language(text, default)


def told_language(text: str) -> str | None:
    """The language `text` tells, or None when it tells none ("Ok", "👍") or ties: then
    the conversation keeps the language it has."""
    return default_classifier().told_language(text)
