"""The normalized shapes that adapters and the core speak.

Adapters convert platform updates into these and nothing else; the core never sees a
platform object. Identifiers are strings on purpose: Telegram ids are ints, Discord ids are
snowflakes, the console uses names, and a string holds them all without loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One conversation: a chat, or one topic/thread inside it ("" when there is none)."""

    platform: str
    chat_id: str
    thread_id: str = ""

    def __str__(self) -> str:
        tail = f"/{self.thread_id}" if self.thread_id else ""
        return f"{self.platform}:{self.chat_id}{tail}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a person wrote, as every adapter reports it."""

    conversation: ConversationKey
    user_id: str
    display_name: str
    text: str
    message_id: str
    is_private: bool
    addresses_bot: bool
    timestamp: datetime = field(default_factory=utcnow)
    reply_to_id: str | None = None
    chat_title: str | None = None
    # What kind of non-text content this was ("sticker", "photo", ...); None for text.
    unsupported: str | None = None
    is_admin: bool = False
    # Platform-side roles/guild for access policies (Discord roles, guild id); empty elsewhere.
    roles: tuple[str, ...] = ()
    guild_id: str | None = None

    @property
    def dedupe_key(self) -> str:
        """Identifies one platform message across redeliveries, resumes and restarts."""
        c = self.conversation
        return f"{c.platform}:{c.chat_id}:{self.message_id}"


class CommandName(StrEnum):
    START = "start"
    HELP = "help"
    CANCEL = "cancel"
    STATUS = "status"
    RESET = "reset"
    USAGE = "usage"


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A bot command (/cancel, /status, ...): answered directly, never part of the history."""

    conversation: ConversationKey
    name: CommandName
    user_id: str
    display_name: str
    is_private: bool
    args: str = ""
    # A platform's own say (a Discord server manager): admin commands in that chat, but
    # never past the access lists, which only ADMIN_USERS bypass.
    is_admin: bool = False
    # As on InboundMessage: what access lists check on Discord; empty elsewhere.
    roles: tuple[str, ...] = ()
    guild_id: str | None = None
    # Only the asker sees the answer, even in a group (a Discord slash command's).
    answered_privately: bool = False


class ReplyKind(StrEnum):
    ANSWER = "answer"  # the model's answer that closes a turn
    WORKING = "working"  # the model's own text (or a short line) when tools start
    INTERIM = "interim"  # an instant templated reply while tools run
    ERROR = "error"  # an apology after the LLM failed for good
    NOTICE = "notice"  # policy answers: text only, denied, over a limit


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A reply the core wants posted. `outbox_id` is stable across retries and restarts."""

    conversation: ConversationKey
    text: str
    reply_to_id: str | None
    kind: ReplyKind
    outbox_id: int
    # The user a reply may ping (Discord allowed_mentions): the author of reply_to_id.
    reply_to_user_id: str | None = None


class DeliveryError(Exception):
    """A send that did not go through. `permanent` ones are not retried (chat gone, forbidden)."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class ReplySink(Protocol):
    """What an adapter offers the core for talking back to its platform."""

    @property
    def platform(self) -> str: ...

    @property
    def typing_interval(self) -> float:
        """Seconds between typing indicators (the platform drops one after a while)."""
        ...

    async def send(self, message: OutgoingMessage) -> str | None:
        """Posts the message (split as the platform needs); returns the id of the last part.

        Raises DeliveryError when it could not be posted.
        """
        ...

    async def typing(self, conversation: ConversationKey) -> None: ...
