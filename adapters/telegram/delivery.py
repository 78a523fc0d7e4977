"""Posting one reply to Telegram: split, render, fall back, retry, classify failures."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from telegram import Bot, Message, ReplyParameters
from telegram.constants import MessageLimit, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.warnings import PTBDeprecationWarning

from adapters.telegram.markup import to_html
from bot.events import ConversationKey, DeliveryError
from bot.textsplit import split_text

log = logging.getLogger(__name__)
T = TypeVar("T")

TEXT_LIMIT: int = MessageLimit.MAX_TEXT_LENGTH
DEFAULT_RETRY_DELAYS = (0.5, 1.0, 2.0)
# 429s are waited out and retried this many times before the core hears about them.
RATE_LIMIT_RETRIES = 3
# split_text refuses smaller limits (no room for code fences); below it we cut by length.
_MIN_SPLIT = 100
# Outbox ids whose first parts went out before a later part failed; bounded because the
# core may give up on a reply and never retry it.
_PROGRESS_MEMORY = 1024


def utf16_len(text: str) -> int:
    """Telegram counts message length in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class Part:
    source: str  # the model's markdown: sent as is when the HTML is refused
    html: str


def _fits(part: Part, limit: int) -> bool:
    return utf16_len(part.html) <= limit and utf16_len(part.source) <= limit


def _hard_cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _fit(source: str, limit: int) -> list[Part]:
    part = Part(source, to_html(source))
    if _fits(part, limit):
        return [part]
    # Escaping and tags made it grow: split again, smaller by the growth factor.
    longest = max(utf16_len(part.html), utf16_len(source))
    smaller = len(source) * limit // longest - 16
    pieces = split_text(source, smaller) if smaller >= _MIN_SPLIT else []
    if len(pieces) <= 1 or max(len(p) for p in pieces) >= len(source):
        pieces = _hard_cut(source, max(1, len(source) // 2))
    return [fitted for piece in pieces for fitted in _fit(piece, limit)]


def render_parts(text: str, limit: int = TEXT_LIMIT) -> list[Part]:
    """Splits at natural boundaries first, then renders each part under the limit."""
    return [
        fitted
        for chunk in split_text(text, limit)
        if chunk.strip()
        for fitted in _fit(chunk, limit)
    ]


def _retry_after_seconds(error: RetryAfter) -> float:
    with warnings.catch_warnings():
        # The attribute turns from int to timedelta in a later major version.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _is_parse_error(error: BadRequest) -> bool:
    return "can't parse entities" in error.message.lower()


class Delivery:
    """Sends replies through a Bot; safe to use from many tasks at once."""

    def __init__(self, bot: Bot, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS) -> None:
        self._bot = bot
        self._retry_delays = tuple(retry_delays)
        self._progress: OrderedDict[int, tuple[int, int]] = OrderedDict()

    async def post(
        self,
        conversation: ConversationKey,
        text: str,
        reply_to_id: str | None,
        *,
        progress_key: int | None = None,
    ) -> str | None:
        """Posts text (in as many parts as needed); returns the last part's message id.

        With a progress_key, parts that went out before a failure are not posted again
        when the same reply is retried.
        """
        parts = render_parts(text)
        if not parts:
            log.warning("not posting an empty reply to %s", conversation)
            return None
        done, last_id = (0, 0)
        if progress_key is not None:
            done, last_id = self._progress.pop(progress_key, (0, 0))
        chat_id = int(conversation.chat_id)
        thread_id = int(conversation.thread_id) if conversation.thread_id else None
        reply_to = int(reply_to_id) if reply_to_id and reply_to_id.isdigit() else None
        for index in range(done, len(parts)):
            try:
                message = await self._send_part(
                    chat_id, thread_id, parts[index], reply_to if index == 0 else None
                )
            except DeliveryError:
                if progress_key is not None and index > 0:
                    self._remember(progress_key, index, last_id)
                raise
            chat_id, last_id = message.chat_id, message.message_id
        return str(last_id)

    def _remember(self, key: int, done: int, last_id: int) -> None:
        self._progress[key] = (done, last_id)
        while len(self._progress) > _PROGRESS_MEMORY:
            self._progress.popitem(last=False)

    async def _send_part(
        self, chat_id: int, thread_id: int | None, part: Part, reply_to: int | None
    ) -> Message:
        reply = (
            ReplyParameters(reply_to, allow_sending_without_reply=True)
            if reply_to is not None
            else None
        )

        async def send(target: int) -> Message:
            try:
                return await self._bot.send_message(
                    target,
                    part.html,
                    parse_mode=ParseMode.HTML,
                    message_thread_id=thread_id,
                    reply_parameters=reply,
                )
            except BadRequest as error:
                if not _is_parse_error(error):
                    raise
                log.warning("Telegram refused the HTML (%s); sending plain text", error.message)
                return await self._bot.send_message(
                    target, part.source, message_thread_id=thread_id, reply_parameters=reply
                )

        return await self.call(send, chat_id, what=f"sendMessage to {chat_id}")

    async def call(self, action: Callable[[int], Awaitable[T]], chat_id: int, *, what: str) -> T:
        """Runs action(chat_id) with retries on network errors; failures as DeliveryError."""
        attempt = 0
        waits = 0
        while True:
            try:
                return await action(chat_id)
            except ChatMigrated as error:
                # The group became a supergroup: the same conversation lives on there.
                log.warning("chat %s migrated to %s", chat_id, error.new_chat_id)
                chat_id = int(error.new_chat_id)
            except (Forbidden, BadRequest, InvalidToken) as error:
                raise DeliveryError(f"{what}: {error.message}", permanent=True) from error
            except RetryAfter as error:
                # Only this task waits, so the other chats' replies keep going out.
                seconds = _retry_after_seconds(error)
                if waits >= RATE_LIMIT_RETRIES:
                    raise DeliveryError(f"{what}: {error.message}", retry_after=seconds) from error
                waits += 1
                log.warning("%s: %s; retry in %.0fs", what, error.message, seconds)
                await asyncio.sleep(seconds)
            except TelegramError as error:
                if attempt >= len(self._retry_delays):
                    raise DeliveryError(f"{what}: {error.message}") from error
                delay = self._retry_delays[attempt]
                attempt += 1
                log.warning("%s failed (%s); retry %d in %.1fs", what, error, attempt, delay)
                await asyncio.sleep(delay)
