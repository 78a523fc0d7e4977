"""Classification of messages that arrive while tools run, and language detection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.interim.catalog import MATCHED_KINDS, Rules, load_locales
from bot.interim.classify import (
    InterimKind,
    _matcher,
    classify,
    default_classifier,
    detect_language,
    told_language,
)

STATUS = InterimKind.STATUS
GREETING = InterimKind.GREETING
QUESTION = InterimKind.QUESTION
CANCEL = InterimKind.CANCEL
THANKS = InterimKind.THANKS
DEFAULT = InterimKind.DEFAULT

EXAMPLES: list[tuple[str, InterimKind, str]] = [
    # status
    ("¿Sigues ahí?", STATUS, "es"),
    ("sigues ahi?", STATUS, "es"),
    ("SIGUES AHÍ???", STATUS, "es"),
    ("¿Estás ahí?", STATUS, "es"),
    ("estas ahi", STATUS, "es"),
    ("¿Cuánto falta?", STATUS, "es"),
    ("¿sigues con eso?", STATUS, "es"),
    ("¿Cómo vas?", STATUS, "es"),
    ("oye, ¿hay alguien?", STATUS, "es"),
    ("¿Ya terminaste?", STATUS, "es"),
    ("Hola, ¿sigues ahí?", STATUS, "es"),
    ("are you there?", STATUS, "en"),
    ("Are you still there??", STATUS, "en"),
    ("still there?", STATUS, "en"),
    ("you there? 👀", STATUS, "en"),
    ("hello, anyone there?", STATUS, "en"),
    ("How long will this take?", STATUS, "en"),
    ("any update?", STATUS, "en"),
    ("what's taking so long", STATUS, "en"),
    ("/status", STATUS, "en"),
    # greeting
    ("Hola", GREETING, "es"),
    ("hola!!", GREETING, "es"),
    ("holaaa 👋", GREETING, "es"),
    ("buenas", GREETING, "es"),
    ("Buenos días", GREETING, "es"),
    ("buenas tardes a todos", GREETING, "es"),
    ("hi", GREETING, "en"),
    ("Hi!", GREETING, "en"),
    ("hello there", GREETING, "en"),
    ("Good morning!", GREETING, "en"),
    ("hey 😀", GREETING, "en"),
    # question
    ("¿Cómo estás?", QUESTION, "es"),
    ("¿Qué tal?", QUESTION, "es"),
    ("que tal", QUESTION, "es"),
    ("¿para qué sirve esto?", QUESTION, "es"),
    ("¿Me puedes decir el clima de mañana?", QUESTION, "es"),
    ("cuando sale el tren", QUESTION, "es"),
    ("what's up?", QUESTION, "en"),
    ("What’s up", QUESTION, "en"),
    ("how are you", QUESTION, "en"),
    ("Can you also check the weather?", QUESTION, "en"),
    ("is it going to rain tomorrow?", QUESTION, "en"),
    # cancel
    ("/cancel", CANCEL, "en"),
    ("/cancel@stillhere_bot", CANCEL, "en"),
    ("cancela", CANCEL, "es"),
    ("Cancelar", CANCEL, "es"),
    ("cancélalo ya", CANCEL, "es"),
    ("para", CANCEL, "es"),
    ("¡PARA!", CANCEL, "es"),
    ("para ya, por favor", CANCEL, "es"),
    ("olvídalo", CANCEL, "es"),
    ("stop", CANCEL, "en"),
    ("STOP!!!", CANCEL, "en"),
    ("stop it please", CANCEL, "en"),
    ("cancel", CANCEL, "en"),
    ("Cancel that.", CANCEL, "en"),
    ("abort", CANCEL, "en"),
    ("never mind", CANCEL, "en"),
    ("ok please stop", CANCEL, "en"),
    ("Gracias, pero cancela eso", CANCEL, "es"),
    # thanks
    ("gracias", THANKS, "es"),
    ("¡Muchas gracias!", THANKS, "es"),
    ("mil gracias 🙏", THANKS, "es"),
    ("Hola, gracias", THANKS, "es"),
    ("thanks", THANKS, "en"),
    ("Thank you!", THANKS, "en"),
    ("thx", THANKS, "en"),
    ("ok thanks a lot", THANKS, "en"),
    # default
    ("Ok", DEFAULT, "en"),
    ("vale", DEFAULT, "es"),
    ("Mañana tengo una reunión a las 10", DEFAULT, "es"),
    ("I also need the forecast for Madrid", DEFAULT, "en"),
    ("👍", DEFAULT, "en"),
    ("", DEFAULT, "en"),
    ("   ", DEFAULT, "en"),
]


@pytest.mark.parametrize(("text", "kind", "language"), EXAMPLES)
def test_kind_and_language(text: str, kind: InterimKind, language: str) -> None:
    result = classify(text, default_language="en" if language == "en" else "es")
    assert (result.kind, result.language) == (kind, language)


def test_every_kind_has_examples_in_both_languages() -> None:
    seen = {(kind, language) for _, kind, language in EXAMPLES}
    for kind in InterimKind:
        assert (kind, "en") in seen and (kind, "es") in seen, kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Ana: ¿sigues ahí?", STATUS),
        ("Juan Pérez: gracias", THANKS),
        ("@stillhere_bot hola", GREETING),
        ("<@123456789> stop", CANCEL),
        ("<@!123456789> are you there?", STATUS),
        ("hey @stillhere_bot, still there?", STATUS),
    ],
)
def test_name_prefixes_and_mentions_are_ignored(text: str, kind: InterimKind) -> None:
    assert classify(text).kind is kind


def test_precedence_cancel_status_thanks_greeting_question() -> None:
    assert classify("hola, gracias, ¿sigues ahí? para ya").kind is CANCEL
    assert classify("thanks, are you still there?").kind is STATUS
    assert classify("hello and thanks! how are you?").kind is THANKS
    assert classify("hi, how are you?").kind is GREETING
    assert classify("what time is it?").kind is QUESTION


def test_para_inside_a_sentence_is_not_a_cancel() -> None:
    assert classify("es para mañana").kind is DEFAULT
    assert classify("¿para cuándo estará?").kind is QUESTION


def test_huge_input_is_classified_from_its_start() -> None:
    assert classify("¿Sigues ahí? " + "x" * 1_000_000).kind is STATUS
    assert classify("a" * 1_000_000).kind is DEFAULT


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("¿Qué hora es?", "es"),
        ("Dame la hora actual", "es"),
        ("mañana", "es"),
        ("¡Genial!", "es"),
        ("gracias", "es"),
        ("What time is it?", "en"),
        ("thanks a lot", "en"),
        ("is it going to rain", "en"),
        # The offline demo's own suggestions, which once told no language at all.
        ("wait 600 seconds", "en"),
        ("wait 10 seconds", "en"),
        ("wait 5 minutes", "en"),
        ("espera 10 segundos", "es"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    other = "en" if language == "es" else "es"
    assert detect_language(text, default=other) == language
    assert told_language(text) == language


@pytest.mark.parametrize("text", ["Ok", "👍", "", "/cancel", "12:30", "lol"])
def test_unknown_or_tied_keeps_the_default(text: str) -> None:
    assert detect_language(text, default="es") == "es"
    assert detect_language(text, default="en") == "en"
    assert detect_language(text, default="fr") == "fr"
    assert told_language(text) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["en", "es"]))
def test_any_text_gets_a_kind_and_a_known_or_default_language(text: str, default: str) -> None:
    result = classify(text, default)
    assert result.kind in set(InterimKind)
    assert result.language in {"en", "es"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["en", "es"]))
def test_one_reading_tells_what_classify_and_told_language_tell(text: str, default: str) -> None:
    reading = default_classifier().read(text)
    assert reading.told == told_language(text)
    assert reading.classification(default) == classify(text, default)


@pytest.mark.parametrize("kind", MATCHED_KINDS)
def test_every_keyword_matches_where_its_mode_says(kind: InterimKind) -> None:
    """All locales' keywords of a kind are compiled together: each must still match."""
    rules = [locale.rules[kind] for locale in load_locales().values()]
    matcher = _matcher(rules)
    for rule in rules:
        for phrase in rule.exact:
            assert matcher.matches((f" {phrase} ",)), phrase
        for phrase in rule.start:
            assert matcher.matches((f" {phrase} zzq ",)), phrase
        for phrase in rule.anywhere:
            assert matcher.matches((f" zzq {phrase} zzq ",)), phrase


@pytest.mark.parametrize(
    ("mode", "text", "matched"),
    [
        ("start", " are you there ", True),
        ("start", " are you ", True),
        ("start", " /status now ", True),
        ("start", " so are you ", False),
        ("start", " are yours ", False),
        ("start", " ware you ", False),
        ("start", " status ", False),
        ("start", " a.b ", True),
        ("start", " axb ", False),
        ("anywhere", " so you there now ", True),
        ("anywhere", " you there ", True),
        ("anywhere", " you therefore ", False),
        ("anywhere", " bayou there ", False),
        ("anywhere", " a.b ", True),
        ("anywhere", " axb ", False),
    ],
)
def test_a_keyword_matches_as_whole_words_only(mode: str, text: str, matched: bool) -> None:
    phrases = ("are you", "/status", "a.b") if mode == "start" else ("you there", "a.b")
    rules = Rules(
        frozenset(), phrases if mode == "start" else (), phrases if mode == "anywhere" else ()
    )
    assert _matcher([rules]).matches((text,)) is matched
