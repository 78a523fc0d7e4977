"""Reading and checking the locale files (`locales/<language>.json`).

Everything language-specific lives in those files: detection hints, classification
keywords, plural forms, list and duration formats, and every text. A file that lacks
anything the code uses is refused at start-up with the file and the key named, rather than
failing on the first message that needs it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Final

from bot.interim.keys import COUNT_VALUES, INTERIM_SPECS, PHRASE_KEYS, InterimKind, TextSpec
from bot.interim.normalize import fold

FALLBACK_LANGUAGE: Final = "en"
# The kinds recognised by keywords; DEFAULT is what is left.
MATCHED_KINDS: Final[tuple[InterimKind, ...]] = tuple(
    kind for kind in InterimKind if kind is not InterimKind.DEFAULT
)
MATCH_MODES: Final = ("exact", "start", "anywhere")
DURATION_FORMATS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "seconds": frozenset({"s"}),
        "minutes": frozenset({"m"}),
        "minutes_seconds": frozenset({"m", "s"}),
        "hours": frozenset({"h"}),
        "hours_minutes": frozenset({"h", "m"}),
    }
)
TOOL_ITEM_VALUES: Final = frozenset({"label", "duration"})


class LocaleError(ValueError):
    """A locale file the bot cannot use; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Rules:
    """Folded keywords of one kind: the whole message, its start, or anywhere in it."""

    exact: frozenset[str]
    start: tuple[str, ...]
    anywhere: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plural:
    one: str
    other: str

    def render(self, count: int) -> str:
        return (self.one if count == 1 else self.other).format(count=count)


@dataclass(frozen=True, slots=True)
class Locale:
    language: str
    hint_chars: frozenset[str]
    hint_words: frozenset[str]
    fillers: tuple[tuple[str, ...], ...]
    question_marks: frozenset[str]
    rules: Mapping[InterimKind, Rules]
    plurals: Mapping[str, Plural]
    list_separator: str
    list_last: str
    list_empty: str
    durations: Mapping[str, str]
    tool_item: str
    interim: Mapping[InterimKind, tuple[str, ...]]
    phrases: Mapping[str, tuple[str, ...]]


def placeholders(template: str) -> frozenset[str]:
    """The {names} in a template; raises ValueError on anything but plain names."""
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain {{name}}")
        names.add(name)
    return frozenset(names)


class _Reader:
    """Typed access to one file's JSON, every failure worded as "<file>: <key>: problem"."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, problem: str) -> LocaleError:
        return LocaleError(f"{self.source}: {where}: {problem}" if where else problem)

    def section(
        self, value: object, where: str, required: Iterable[str], optional: Iterable[str] = ()
    ) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(where or "(top level)", "expected an object")
        required = tuple(required)
        known = set(required) | set(optional)
        for key in required:
            if key not in value:
                raise self.error(_join(where, key), "missing")
        for key in value:
            if key not in known:
                raise self.error(_join(where, str(key)), f"unknown key; expected {sorted(known)}")
        return value

    def mapping(self, value: object, where: str) -> dict[str, object]:
        if not isinstance(value, dict) or not value:
            raise self.error(where, "expected a non-empty object")
        return value

    def text(
        self,
        value: object,
        where: str,
        allowed: frozenset[str] = frozenset(),
        required: frozenset[str] = frozenset(),
    ) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, "expected a non-empty string")
        self.check_template(value, where, allowed=allowed, required=required)
        return value

    def texts(self, value: object, where: str, minimum: int = 0) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(where, "expected a list of non-empty strings")
        if len(value) < minimum:
            raise self.error(where, f"has {len(value)} entries; at least {minimum} needed")
        if len(set(value)) != len(value):
            raise self.error(where, "has the same entry twice")
        return tuple(value)

    def check_template(
        self,
        template: str,
        where: str,
        *,
        allowed: frozenset[str],
        required: frozenset[str] = frozenset(),
        one_of: frozenset[str] = frozenset(),
    ) -> None:
        try:
            names = placeholders(template)
        except ValueError as exc:
            raise self.error(where, str(exc)) from None
        unknown = names - allowed
        if unknown:
            raise self.error(where, f"unknown placeholder {{{sorted(unknown)[0]}}}")
        missing = required - names
        if missing:
            raise self.error(where, f"must use {{{sorted(missing)[0]}}}")
        if one_of and not names & one_of:
            raise self.error(where, f"must state the count with one of {_braced(one_of)}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _braced(names: Iterable[str]) -> str:
    return ", ".join(f"{{{name}}}" for name in sorted(names))


def _folded(reader: _Reader, phrases: Iterable[str], where: str) -> tuple[str, ...]:
    folded = []
    for phrase in phrases:
        key = fold(phrase)
        if not key:
            raise reader.error(where, f"{phrase!r} has no letters or digits to match")
        if key not in folded:
            folded.append(key)
    return tuple(folded)


def _rules(reader: _Reader, value: object, where: str) -> Rules:
    section = reader.section(value, where, (), MATCH_MODES)
    modes = {
        mode: _folded(reader, reader.texts(section.get(mode, []), f"{where}.{mode}"), where)
        for mode in MATCH_MODES
    }
    if not any(modes.values()):
        raise reader.error(where, "needs at least one keyword")
    return Rules(frozenset(modes["exact"]), modes["start"], modes["anywhere"])


def _variants(
    reader: _Reader, value: object, where: str, spec: TextSpec, plurals: frozenset[str]
) -> tuple[str, ...]:
    variants = reader.texts(value, where, spec.min_variants)
    allowed = spec.required
    if spec.counted:
        allowed |= plurals | COUNT_VALUES
    for index, variant in enumerate(variants):
        reader.check_template(
            variant,
            f"{where}[{index}]",
            allowed=allowed,
            required=spec.required,
            one_of=plurals if spec.counted else frozenset(),
        )
    return variants


def parse_locale(language: str, data: object, source: str) -> Locale:
    """Checks one locale's JSON data and turns it into a Locale."""
    r = _Reader(source)
    top = r.section(data, "", ("detect", "classify", "format", "interim", "phrases"))

    detect = r.section(top["detect"], "detect", ("chars", "words"))
    chars = detect["chars"]
    if not isinstance(chars, str):
        raise r.error("detect.chars", "expected a string of characters (may be empty)")
    hint_words = _folded(r, r.texts(detect["words"], "detect.words", 1), "detect.words")

    classify = r.section(top["classify"], "classify", ("fillers", "question_marks", *MATCHED_KINDS))
    fillers = _folded(r, r.texts(classify["fillers"], "classify.fillers"), "classify.fillers")
    marks = classify["question_marks"]
    if not isinstance(marks, str) or not marks:
        raise r.error("classify.question_marks", "expected a non-empty string of characters")
    rules = {kind: _rules(r, classify[kind], f"classify.{kind}") for kind in MATCHED_KINDS}

    fmt = r.section(top["format"], "format", ("plurals", "list", "duration", "tool"))
    plural_section = r.mapping(fmt["plurals"], "format.plurals")
    plurals = {}
    reserved = COUNT_VALUES | {n for spec in PHRASE_KEYS.values() for n in spec.required}
    for name, forms in plural_section.items():
        where = f"format.plurals.{name}"
        if not name.isidentifier() or name in reserved:
            raise r.error(where, "a plural's name must be a plain word not used elsewhere")
        pair = r.section(forms, where, ("one", "other"))
        one = r.text(pair["one"], f"{where}.one", allowed=frozenset({"count"}))
        other = r.text(pair["other"], f"{where}.other", allowed=frozenset({"count"}))
        plurals[name] = Plural(one, other)
    plural_names = frozenset(plurals)
    listing = r.section(fmt["list"], "format.list", ("separator", "last", "empty"))
    for key in ("separator", "last"):
        if not isinstance(listing[key], str) or not listing[key]:
            raise r.error(f"format.list.{key}", "expected a non-empty string")
    durations_section = r.section(fmt["duration"], "format.duration", DURATION_FORMATS)
    durations = {}
    for key, needed in DURATION_FORMATS.items():
        where = f"format.duration.{key}"
        durations[key] = r.text(durations_section[key], where, allowed=needed, required=needed)
    tool_item = r.text(
        fmt["tool"], "format.tool", allowed=TOOL_ITEM_VALUES, required=frozenset({"label"})
    )

    interim_section = r.section(top["interim"], "interim", tuple(InterimKind))
    interim = {
        kind: _variants(r, interim_section[kind], f"interim.{kind}", spec, plural_names)
        for kind, spec in INTERIM_SPECS.items()
    }
    phrase_section = r.section(top["phrases"], "phrases", tuple(PHRASE_KEYS))
    phrases = {
        key: _variants(r, phrase_section[key], f"phrases.{key}", spec, plural_names)
        for key, spec in PHRASE_KEYS.items()
    }

    return Locale(
        language=language,
        hint_chars=frozenset(chars.casefold()),
        hint_words=frozenset(hint_words),
        fillers=tuple(sorted((tuple(f.split()) for f in fillers), key=len, reverse=True)),
        question_marks=frozenset(marks),
        rules=MappingProxyType(rules),
        plurals=MappingProxyType(plurals),
        list_separator=str(listing["separator"]),
        list_last=str(listing["last"]),
        list_empty=str(listing["empty"]),
        durations=MappingProxyType(durations),
        tool_item=tool_item,
        interim=MappingProxyType(interim),
        phrases=MappingProxyType(phrases),
    )


def packaged_locales() -> Traversable:
    return resources.files("bot.interim") / "locales"


def load_locales(directory: Traversable | None = None) -> dict[str, Locale]:
    """Every `<language>.json` in the directory (the packaged one by default), checked."""
    folder = packaged_locales() if directory is None else directory
    found: dict[str, Locale] = {}
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".json")),
        key=lambda entry: entry.name,
    )
    for entry in files:
        language = entry.name.removesuffix(".json")
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LocaleError(
                f"{entry.name}: not valid JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        except UnicodeDecodeError:
            raise LocaleError(f"{entry.name}: not UTF-8 text") from None
        found[language] = parse_locale(language, data, entry.name)
    if FALLBACK_LANGUAGE not in found:
        raise LocaleError(f"{folder}: {FALLBACK_LANGUAGE}.json is required (the fallback language)")
    return found
