"""Gates a message passes before it is stored: access lists, rate limits, budgets.

Each policy is a small class; the engine asks them in order and the first refusal wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from bot.events import ConversationKey, InboundMessage


@dataclass(frozen=True)
class Verdict:
    reason: str = ""
    # Phrase (bot/interim/locales) to answer with; None = silence.
    notice_key: str | None = None
    values: Mapping[str, object] = field(default_factory=dict)
    # Private chats always get the notice; groups only when this says so.
    notify_groups: bool = True

    ALLOW: ClassVar[Verdict]


Verdict.ALLOW = Verdict()


class Gate(Protocol):
    async def check(self, message: InboundMessage) -> Verdict: ...

    async def usage(self, user_id: str, conversation: ConversationKey) -> dict[str, object] | None:
        """Figures /usage shows this user, if the gate counts anything."""
        ...
