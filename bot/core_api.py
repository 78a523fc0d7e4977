"""The face the core shows adapters: adapters type against this, never the engine class."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from bot.events import CommandRequest, InboundMessage, ReplySink

# What an adapter answers a command the core could not carry out: the core, whose phrases
# speak the user's language, is what failed, so this one line is fixed.
COMMAND_FAILED = "Sorry, that command failed; please try again."


class SubmitOutcome(StrEnum):
    ACCEPTED = "accepted"  # stored; the session will answer
    DUPLICATE = "duplicate"  # this platform message was seen before: nothing done
    IGNORED = "ignored"  # not for the bot (unaddressed group chatter, empty text)
    DENIED = "denied"  # a policy refused it (access, rate limit, budget); a notice may follow


class ChatCore(Protocol):
    def attach(self, sink: ReplySink) -> None:
        """Registers the adapter that delivers replies for `sink.platform`."""
        ...

    async def submit(self, message: InboundMessage) -> SubmitOutcome:
        """Stores the message durably, then lets its session act on it. Returns at once:
        the answer (instant reply or LLM answer) reaches the adapter through `sink.send`."""
        ...

    def report_intake(self, platform: str, problem: str | None) -> None:
        """What keeps the platform's messages from arriving while the bot runs (another
        process polling with the same token, the API out of reach), or None once they
        arrive again: the admin CLI shows it beside the bot's heartbeat."""
        ...

    async def command(self, request: CommandRequest) -> str | None:
        """Runs a bot command and returns the text to answer it with; None when it gets no
        answer (someone the access lists refuse, in a group)."""
        ...
