"""Loading and checking the locale data files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

KINDS = ("status", "greeting", "question", "cancel", "thanks", "default")
MIN_VARIANTS = 4
PHRASE_KEYS = (
    "working",
    "apology",
    "text_only",
    "denied",
    "rate_limited",
    "over_budget",
    "help",
    "start",
    "status_idle",
    "status_thinking",
    "status_running",
    "cancel_idle",
    "cancel_done",
    "reset_done",
    "interim_note",
    "usage_report",
    "usage_unlimited",
    "admin_only",
)
CLASSIFY_KEYS = ("cancel", "status", "thanks", "greeting", "question_words")


class LocaleError(ValueError):
    """A locale file that lacks something the bot needs; names the file and the key."""


@dataclass(frozen=True)
class Locale:
    code: str
    detect_chars: str
    detect_words: frozenset[str]
    classify: dict[str, tuple[str, ...]]
    plural: dict[str, dict[str, str]]
    conjunction: str
    interim: dict[str, tuple[str, ...]]
    phrases: dict[str, tuple[str, ...]]


def _strings(data: Any, where: str) -> tuple[str, ...]:
    if not isinstance(data, list) or not all(isinstance(x, str) and x for x in data):
        raise LocaleError(f"{where}: expected a list of non-empty strings")
    return tuple(data)


def parse_locale(code: str, data: Any, source: str) -> Locale:
    def need(mapping: Any, key: str, where: str) -> Any:
        if not isinstance(mapping, dict) or key not in mapping:
            raise LocaleError(f"{source}: missing key {where}{key!r}")
        return mapping[key]

    detect = need(data, "detect", "")
    classify = need(data, "classify", "")
    interim = need(data, "interim", "")
    phrases = need(data, "phrases", "")
    plural = need(data, "plural", "")
    tools_plural = need(plural, "tools", "plural.")
    for form in ("one", "other"):
        need(tools_plural, form, "plural.tools.")
    variants = {}
    for kind in KINDS:
        found = _strings(need(interim, kind, "interim."), f"{source}: interim.{kind}")
        if len(found) < MIN_VARIANTS:
            raise LocaleError(
                f"{source}: interim.{kind} has {len(found)} variants; at least {MIN_VARIANTS}"
            )
        variants[kind] = found
    return Locale(
        code=code,
        detect_chars=str(detect.get("chars", "")),
        detect_words=frozenset(_strings(need(detect, "words", "detect."), f"{source}: words")),
        classify={
            key: _strings(need(classify, key, "classify."), f"{source}: classify.{key}")
            for key in CLASSIFY_KEYS
        },
        plural={k: dict(v) for k, v in plural.items()},
        conjunction=str(need(data, "and", "")),
        interim=variants,
        phrases={
            key: _strings(need(phrases, key, "phrases."), f"{source}: phrases.{key}")
            for key in PHRASE_KEYS
        },
    )


def load_locales(directory: Path | None = None) -> dict[str, Locale]:
    if directory is None:
        return dict(_packaged())
    return _read(directory)


@cache
def _packaged() -> tuple[tuple[str, Locale], ...]:
    folder = resources.files("bot.interim") / "locales"
    return tuple(_read(Path(str(folder))).items())


def _read(directory: Path) -> dict[str, Locale]:
    found = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LocaleError(
                f"{path.name}: not valid JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        found[path.stem] = parse_locale(path.stem, data, path.name)
    if "en" not in found:
        raise LocaleError(f"{directory}: en.json is required (the fallback language)")
    return found
