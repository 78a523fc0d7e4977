"""Instant replies and fixed phrases picked from the packaged locale files."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.interim.catalog import load_locales
from bot.interim.keys import MIN_INTERIM_VARIANTS, PHRASE_KEYS, InterimKind
from bot.interim.replies import ReplyBook, RunningTool

LANGUAGES = ("en", "es")
CLOCK = RunningTool("consultar la hora", 12)
SEARCH = RunningTool("buscar en la web", 125)
WEATHER = RunningTool("ver el tiempo", 3725)


@pytest.fixture(scope="module")
def book() -> ReplyBook:
    return ReplyBook.load()


def test_packaged_languages(book: ReplyBook) -> None:
    assert set(LANGUAGES) <= set(book.languages)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", list(InterimKind))
def test_at_least_four_distinct_variants_per_kind(
    book: ReplyBook, kind: InterimKind, language: str
) -> None:
    variants = load_locales()[language].interim[kind]
    assert len(set(variants)) >= MIN_INTERIM_VARIANTS
    rng = random.Random(7)
    texts = {book.interim(kind, language, [CLOCK], (), rng) for _ in range(200)}
    assert len(texts) == len(variants)  # every variant is reachable


@pytest.mark.parametrize(
    ("language", "one", "two"),
    [("en", "1 tool", "2 tools"), ("es", "1 herramienta", "2 herramientas")],
)
@pytest.mark.parametrize("kind", list(InterimKind))
def test_count_with_plurals(
    book: ReplyBook, kind: InterimKind, language: str, one: str, two: str
) -> None:
    rng = random.Random(3)
    for _ in range(30):
        single = book.interim(kind, language, [CLOCK], (), rng)
        assert one in single and two.split()[1] not in single
        assert two in book.interim(kind, language, [CLOCK, SEARCH], (), rng)


def test_status_names_the_tools_and_how_long_they_ran(book: ReplyBook) -> None:
    rng = random.Random(1)
    for _ in range(30):
        es = book.interim(InterimKind.STATUS, "es", [CLOCK, SEARCH, WEATHER], (), rng)
        assert (
            "consultar la hora (12 s), buscar en la web (2 min 5 s) y ver el tiempo (1 h 2 min)"
            in es
        )
        assert "3 herramientas" in es
        en = book.interim(InterimKind.STATUS, "en", [CLOCK, SEARCH], (), rng)
        assert "consultar la hora (12 s) and buscar en la web (2 min 5 s)" in en


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (12.4, "12 s"),
        (59.6, "1 min"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (3725, "1 h 2 min"),
        (-5, "0 s"),
        (float("nan"), "0 s"),
    ],
)
def test_durations(book: ReplyBook, seconds: float, text: str) -> None:
    assert book.duration(seconds, "es") == text


def test_lists_join_naturally(book: ReplyBook) -> None:
    assert book.join(["a", "b", "c"], "es") == "a, b y c"
    assert book.join(["a", "b", "c"], "en") == "a, b and c"
    assert book.join(["a", "b"], "en") == "a and b"
    assert book.join(["a"], "en") == "a"


@pytest.mark.parametrize("language", LANGUAGES)
def test_cancel_replies_say_the_tools_are_being_stopped(book: ReplyBook, language: str) -> None:
    words = ("cancel", "stop") if language == "en" else ("cancel", "detengo", "paro")
    rng = random.Random(5)
    for _ in range(40):
        text = book.interim(InterimKind.CANCEL, language, [CLOCK], (), rng).lower()
        assert any(word in text for word in words), text


def test_unknown_language_falls_back_to_english(book: ReplyBook) -> None:
    text = book.interim(InterimKind.STATUS, "de", [CLOCK], (), random.Random(0))
    assert "1 tool" in text
    assert book.phrase("status_idle", "xx") == book.phrase("status_idle", "en")


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(list(InterimKind)),
            st.sampled_from(LANGUAGES),
            st.lists(st.floats(0, 4000), min_size=1, max_size=3),
        ),
        min_size=2,
        max_size=40,
    ),
    seed=st.integers(0, 2**32),
    remembered=st.integers(1, 8),
)
def test_a_session_never_gets_the_same_text_twice_in_a_row(
    book: ReplyBook,
    steps: list[tuple[InterimKind, str, list[float]]],
    seed: int,
    remembered: int,
) -> None:
    rng = random.Random(seed)
    sent: list[str] = []
    for kind, language, times in steps:
        running = [RunningTool(f"tool {i}", s) for i, s in enumerate(times)]
        text = book.interim(kind, language, running, sent[-remembered:], rng)
        if sent:
            assert text != sent[-1]
        sent.append(text)


def test_same_kind_in_a_row_uses_another_variant_even_when_durations_change(
    book: ReplyBook,
) -> None:
    rng = random.Random(11)
    previous = book.interim(InterimKind.STATUS, "en", [RunningTool("search", 1)], (), rng)
    for second in range(2, 200):
        text = book.interim(
            InterimKind.STATUS, "en", [RunningTool("search", second)], [previous], rng
        )
        # Same opening words would mean the same template with a new duration.
        assert text.split(":")[0] != previous.split(":")[0]
        previous = text


def test_all_variants_used_still_differs_from_the_newest(book: ReplyBook) -> None:
    rng = random.Random(2)
    history: list[str] = []
    for _ in range(50):
        text = book.interim(InterimKind.DEFAULT, "es", [CLOCK], history, rng)
        assert not history or text != history[-1]
        history.append(text)


def test_the_one_variant_not_used_yet_is_chosen(book: ReplyBook) -> None:
    rng = random.Random(9)
    every = {book.interim(InterimKind.THANKS, "en", [CLOCK], (), rng) for _ in range(200)}
    assert len(every) == len(load_locales()["en"].interim[InterimKind.THANKS])
    for remaining in every:
        assert book.interim(InterimKind.THANKS, "en", [CLOCK], every - {remaining}, rng) == (
            remaining
        )


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_phrase_renders(book: ReplyBook, language: str) -> None:
    values = {
        "replies": "«¡Hola!»",
        "reset": "2026-01-01 00:00 UTC",
        "day": 10,
        "day_limit": 100,
        "month": 20,
        "month_limit": "∞",
    }
    for key in PHRASE_KEYS:
        text = book.phrase(key, language, running=[CLOCK], **values)
        assert text and "{" not in text, key


@pytest.mark.parametrize("language", LANGUAGES)
def test_chat_phrases_vary_and_avoid_the_last_one(book: ReplyBook, language: str) -> None:
    rng = random.Random(4)
    for key in ("working", "apology", "text_only", "denied"):
        assert PHRASE_KEYS[key].min_variants >= 2
        last = book.phrase(key, language, rng=rng)
        for _ in range(20):
            text = book.phrase(key, language, rng=rng, avoid=[last])
            assert text != last
            last = text


def test_phrase_plurals_and_waits(book: ReplyBook) -> None:
    assert "1 herramienta" in book.phrase("cancel_done", "es", count=1)
    assert "2 herramientas" in book.phrase("cancel_done", "es", count=2)
    assert "3 tools" in book.phrase("cancel_done", "en", count=3)
    assert "1 min 15 s" in book.phrase("rate_limited", "es", seconds=75)
    assert "tomorrow" in book.phrase("over_budget", "en", reset="tomorrow")
    status = book.status("es", [CLOCK, SEARCH])
    assert "2 herramientas" in status and "consultar la hora (12 s) y buscar" in status


def test_help_names_the_commands(book: ReplyBook) -> None:
    for language in LANGUAGES:
        text = book.phrase("help", language)
        for command in ("/cancel", "/status", "/reset", "/help"):
            assert command in text


def test_interim_note_for_the_model(book: ReplyBook) -> None:
    note = book.phrase("interim_note", "en", replies="«Hi! 1 tool is still running.»")
    assert "«Hi! 1 tool is still running.»" in note and "not repeat" in note


def test_phrase_without_its_value_is_a_clear_error(book: ReplyBook) -> None:
    with pytest.raises(ValueError, match="reset"):
        book.phrase("rate_limited", "en")
    with pytest.raises(ValueError, match="count"):
        book.phrase("cancel_done", "en")
    with pytest.raises(KeyError, match="nope"):
        book.phrase("nope", "en")


@pytest.mark.parametrize(
    "values",
    [{"rng": 3}, {"avoid": "text"}, {"running": ["tool"]}, {"count": "2"}, {"count": True}],
)
def test_phrase_rejects_wrongly_typed_controls(book: ReplyBook, values: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        book.phrase("cancel_done", "en", **values)
