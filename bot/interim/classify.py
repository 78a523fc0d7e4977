"""What kind of message arrived while tools run, and in which language.

Cheap on purpose (no LLM call): word lists from the locale files, matched on a normalized
copy of the first few hundred characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bot.interim.locales import Locale, load_locales

MAX_CHARS = 500
_MENTION = re.compile(r"(^|\s)@\w+")
_NAME_PREFIX = re.compile(r"^[^\s:]{1,40}( [^\s:]{1,40})?:\s+")
_NON_WORD = re.compile(r"[^\w/]+")


class InterimKind(StrEnum):
    STATUS = "status"
    GREETING = "greeting"
    QUESTION = "question"
    CANCEL = "cancel"
    THANKS = "thanks"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Classification:
    kind: InterimKind
    language: str


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _words(text: str) -> str:
    """' word word ' with accents, punctuation and mentions gone, for phrase matching."""
    text = _MENTION.sub(" ", text)
    return " " + " ".join(_NON_WORD.sub(" ", _fold(text)).split()) + " "


class Classifier:
    def __init__(self, locales: dict[str, Locale]) -> None:
        self.locales = locales

    def detect_language(self, text: str, default: str = "en") -> str:
        sample = text[:MAX_CHARS].lower()
        words = set(_NON_WORD.sub(" ", sample).split())
        best, best_score = default, 0
        for code, locale in self.locales.items():
            score = len(words & locale.detect_words)
            score += 2 * sum(1 for c in sample if c in locale.detect_chars)
            if score > best_score:
                best, best_score = code, score
        return best if best_score else default

    def classify(self, text: str, default_language: str = "en") -> Classification:
        sample = _NAME_PREFIX.sub("", text[:MAX_CHARS].strip(), count=1)
        language = self.detect_language(sample, default_language)
        words = _words(sample)
        # Every locale's words count: "stop" ends tools whatever language the chat uses.
        ordered = [self.locales[language]] if language in self.locales else []
        ordered += [loc for code, loc in self.locales.items() if code != language]
        for kind in (
            InterimKind.CANCEL,
            InterimKind.STATUS,
            InterimKind.THANKS,
            InterimKind.GREETING,
        ):
            if any(self._matches(kind, loc, words) for loc in ordered):
                return Classification(kind, language)
        if (
            "?" in sample
            or "¿" in sample
            or any(
                words.startswith(f" {w} ")
                for loc in ordered
                for w in loc.classify["question_words"]
            )
        ):
            return Classification(InterimKind.QUESTION, language)
        return Classification(InterimKind.DEFAULT, language)

    @staticmethod
    def _matches(kind: InterimKind, locale: Locale, words: str) -> bool:
        phrases = [_words(p) for p in locale.classify[kind.value]]
        if kind is InterimKind.CANCEL:
            # "para" or "stop" also occur mid-sentence ("para mañana"): a cancel is a
            # short message that starts with the word.
            return len(words.split()) <= 3 and any(words.startswith(p) for p in phrases)
        if kind is InterimKind.GREETING:
            return any(words.startswith(p) for p in phrases)
        return any(p in words for p in phrases)


_default: Classifier | None = None


def default_classifier(directory: Path | None = None) -> Classifier:
    global _default
    if directory is not None:
        return Classifier(load_locales(directory))
    if _default is None:
        _default = Classifier(load_locales())
    return _default


def classify(text: str, default_language: str = "en") -> Classification:
    return default_classifier().classify(text, default_language)


def detect_language(text: str, default: str = "en") -> str:
    return default_classifier().detect_language(text, default)
