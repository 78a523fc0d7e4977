"""The names the code relies on in every locale file: reply kinds and fixed phrases.

Kept apart from the loader and the picker so both, and the tests, check the same list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class InterimKind(StrEnum):
    STATUS = "status"
    GREETING = "greeting"
    QUESTION = "question"
    CANCEL = "cancel"
    THANKS = "thanks"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class TextSpec:
    """What every variant of one text must look like.

    `required`: placeholders each variant must use (and the only ones it may use, besides
    the counting ones when `counted`); `counted`: each variant states how many tools run,
    through a plural placeholder.
    """

    min_variants: int
    required: frozenset[str] = frozenset()
    counted: bool = False


# Values the picker fills in itself whenever it knows the running tools or a count.
COUNT_VALUES: Final = frozenset({"count", "details"})

MIN_INTERIM_VARIANTS: Final = 4
INTERIM_SPECS: Final[Mapping[InterimKind, TextSpec]] = MappingProxyType(
    {
        kind: TextSpec(
            MIN_INTERIM_VARIANTS,
            required=frozenset({"details"}) if kind is InterimKind.STATUS else frozenset(),
            counted=True,
        )
        for kind in InterimKind
    }
)

# Texts posted into the chat on the bot's own initiative vary (>= 2 variants); answers to a
# command may stay fixed, since people (and scripts) read them as a predictable status line.
PHRASE_KEYS: Final[Mapping[str, TextSpec]] = MappingProxyType(
    {
        # chat replies
        "working": TextSpec(2),
        "apology": TextSpec(2),
        "text_only": TextSpec(2),
        "denied": TextSpec(2),
        "rate_limited": TextSpec(2, required=frozenset({"reset"})),
        "over_budget": TextSpec(2, required=frozenset({"reset"})),
        # command answers
        "help": TextSpec(1),
        "start": TextSpec(1),
        "admin_only": TextSpec(1),
        "status_idle": TextSpec(1),
        "status_thinking": TextSpec(1),
        "status_running": TextSpec(1, required=frozenset({"details"}), counted=True),
        "cancel_idle": TextSpec(1),
        "cancel_done": TextSpec(1, counted=True),
        "reset_done": TextSpec(1),
        "usage_report": TextSpec(
            1, required=frozenset({"day", "day_limit", "month", "month_limit"})
        ),
        "usage_unlimited": TextSpec(1),
        # for the model, not for people
        "interim_note": TextSpec(1, required=frozenset({"replies"})),
    }
)
