"""Locale files: a new language is a new file; a broken file is refused with a clear error."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.interim.catalog import LocaleError, load_locales, packaged_locales
from bot.interim.classify import Classifier
from bot.interim.keys import PHRASE_KEYS, InterimKind
from bot.interim.replies import ReplyBook, RunningTool


def _packaged(language: str) -> dict[str, Any]:
    data = json.loads((packaged_locales() / f"{language}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _french() -> dict[str, Any]:
    data = copy.deepcopy(_packaged("en"))
    data["detect"] = {"chars": "çàèù", "words": ["bonjour", "merci", "le", "est", "tu", "vous"]}
    data["classify"]["greeting"] = {"start": ["bonjour", "salut"]}
    data["classify"]["thanks"] = {"anywhere": ["merci"]}
    data["format"]["plurals"]["tools"] = {"one": "{count} outil", "other": "{count} outils"}
    data["format"]["list"] = {"separator": ", ", "last": " et ", "empty": "rien"}
    data["interim"]["greeting"] = [
        "Bonjour ! Je travaille encore sur {tools}.",
        "Salut ! {tools} en cours, je reviens vite.",
        "Bonjour ! Un instant, {tools} en cours.",
        "Salut ! Encore {tools} et je te réponds.",
    ]
    return data


def _directory(tmp_path: Path, **extra: dict[str, Any]) -> Path:
    for entry in packaged_locales().iterdir():
        if entry.name.endswith(".json"):
            (tmp_path / entry.name).write_text(entry.read_text(encoding="utf-8"), "utf-8")
    for language, data in extra.items():
        (tmp_path / f"{language}.json").write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


def test_a_third_language_is_a_dropped_in_file(tmp_path: Path) -> None:
    book = ReplyBook.load(_directory(tmp_path, fr=_french()))
    assert book.languages == ("en", "es", "fr")
    result = book.classifier.classify("Bonjour !", default_language="en")
    assert (result.kind, result.language) == (InterimKind.GREETING, "fr")
    text = book.interim(
        InterimKind.GREETING, "fr", [RunningTool("a", 1), RunningTool("b", 2)], (), random.Random()
    )
    assert "2 outils" in text
    assert book.join(["a", "b"], "fr") == "a et b"


def test_packaged_directory_has_english_and_spanish() -> None:
    assert {"en", "es"} <= set(load_locales())


def test_locale_objects_carry_every_phrase() -> None:
    for locale in load_locales().values():
        assert set(locale.phrases) == set(PHRASE_KEYS)
        assert set(locale.interim) == set(InterimKind)


Breakage = Callable[[dict[str, Any]], None]


def _drop_status(d: dict[str, Any]) -> None:
    del d["interim"]["status"]


def _three_variants(d: dict[str, Any]) -> None:
    d["interim"]["thanks"] = d["interim"]["thanks"][:3]


def _drop_phrase(d: dict[str, Any]) -> None:
    del d["phrases"]["apology"]


def _one_apology(d: dict[str, Any]) -> None:
    d["phrases"]["apology"] = d["phrases"]["apology"][:1]


def _no_count(d: dict[str, Any]) -> None:
    d["interim"]["default"][0] = "Noted."


def _no_details(d: dict[str, Any]) -> None:
    d["interim"]["status"][2] = "Still here, {tools} running."


def _unknown_placeholder(d: dict[str, Any]) -> None:
    d["phrases"]["working"][1] = "Working on {thing}…"


def _bad_placeholder(d: dict[str, Any]) -> None:
    d["phrases"]["working"][1] = "Working on {0}…"


def _missing_plural_form(d: dict[str, Any]) -> None:
    del d["format"]["plurals"]["tools"]["other"]


def _typo_key(d: dict[str, Any]) -> None:
    d["phrases"]["wroking"] = ["Working…"]


def _not_a_list(d: dict[str, Any]) -> None:
    d["classify"]["cancel"]["exact"] = "stop"


def _no_keywords(d: dict[str, Any]) -> None:
    d["classify"]["thanks"] = {}


def _duplicate_variant(d: dict[str, Any]) -> None:
    d["interim"]["cancel"][1] = d["interim"]["cancel"][0]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_drop_status, "fr.json: interim.status: missing"),
        (_three_variants, "fr.json: interim.thanks: has 3 entries; at least 4"),
        (_drop_phrase, "fr.json: phrases.apology: missing"),
        (_one_apology, "fr.json: phrases.apology: has 1 entries; at least 2"),
        (_no_count, "fr.json: interim.default[0]: must state the count"),
        (_no_details, "fr.json: interim.status[2]: must use {details}"),
        (_unknown_placeholder, "fr.json: phrases.working[1]: unknown placeholder {thing}"),
        (_bad_placeholder, "fr.json: phrases.working[1]: placeholder {0} must be a plain"),
        (_missing_plural_form, "fr.json: format.plurals.tools.other: missing"),
        (_typo_key, "fr.json: phrases.wroking: unknown key"),
        (_not_a_list, "fr.json: classify.cancel.exact: expected a list"),
        (_no_keywords, "fr.json: classify.thanks: needs at least one keyword"),
        (_duplicate_variant, "fr.json: interim.cancel: has the same entry twice"),
    ],
)
def test_a_broken_locale_names_file_and_key(
    tmp_path: Path, breakage: Breakage, message: str
) -> None:
    data = _french()
    breakage(data)
    with pytest.raises(LocaleError) as caught:
        ReplyBook.load(_directory(tmp_path, fr=data))
    assert str(caught.value).startswith(message)


def test_invalid_json_names_the_file_and_line(tmp_path: Path) -> None:
    directory = _directory(tmp_path)
    (directory / "fr.json").write_text('{\n  "detect": ,\n}', encoding="utf-8")
    with pytest.raises(LocaleError, match=r"fr\.json: not valid JSON \(.*line 2\)"):
        load_locales(directory)


def test_english_is_required_as_the_fallback(tmp_path: Path) -> None:
    directory = _directory(tmp_path)
    (directory / "en.json").unlink()
    with pytest.raises(LocaleError, match=r"en\.json is required"):
        load_locales(directory)


def test_a_classifier_over_one_locale_only_knows_its_words() -> None:
    english = Classifier({"en": load_locales()["en"]})
    assert english.classify("gracias").kind is InterimKind.DEFAULT
    assert english.classify("thanks").kind is InterimKind.THANKS
