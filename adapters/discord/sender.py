"""Posting replies and typing indicators through discord.py's REST client."""

from __future__ import annotations

import logging

import aiohttp
import discord

from bot.events import ConversationKey, DeliveryError
from bot.textsplit import split_text

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000


def channel_id_of(conversation: ConversationKey) -> int:
    """Replies go to the thread when there is one, else to the channel or DM."""
    return int(conversation.thread_id or conversation.chat_id)


def allowed_mentions(reply_to_user_id: str | None) -> discord.AllowedMentions:
    """Pings nobody but the person answered, whatever the model wrote (@everyone, roles...)."""
    users: list[discord.Object] | bool = (
        [discord.Object(id=int(reply_to_user_id))] if reply_to_user_id else False
    )
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=True)


def _delivery_error(error: Exception) -> DeliveryError:
    if isinstance(error, discord.Forbidden | discord.NotFound):
        return DeliveryError(f"Discord refused the message: {error}", permanent=True)
    if isinstance(error, discord.RateLimited):
        return DeliveryError(f"rate limited: {error}", retry_after=error.retry_after)
    if isinstance(error, discord.DiscordServerError):
        return DeliveryError(f"Discord server error: {error}")
    if isinstance(error, discord.HTTPException):
        # Other 4xx answers (too long, malformed) fail the same way on every retry; a 429
        # here is Cloudflare's temporary ban, which does pass.
        return DeliveryError(
            f"Discord rejected the message: {error}", permanent=error.status != 429
        )
    return DeliveryError(f"could not reach Discord: {type(error).__name__}: {error}")


class DiscordSender:
    def __init__(self, client: discord.Client) -> None:
        self._client = client

    async def post(
        self,
        channel_id: int,
        text: str,
        *,
        nonce: str,
        reply_to_id: str | None,
        reply_to_user_id: str | None,
    ) -> str:
        """Posts `text` in parts of at most 2000 characters; returns the last part's id.

        Every part carries a nonce derived from `nonce` with enforce_nonce, so when a retry
        re-posts parts that had already gone through, Discord returns those instead of
        posting them twice.
        """
        parts = [part for part in split_text(text, MESSAGE_LIMIT) if part.strip()]
        if not parts:
            raise DeliveryError("nothing to post: the reply is empty", permanent=True)
        if self._client.is_closed():
            raise DeliveryError("the Discord client is closed")
        channel = self._client.get_partial_messageable(channel_id)
        reference = (
            None
            if reply_to_id is None
            else discord.MessageReference(
                message_id=int(reply_to_id), channel_id=channel_id, fail_if_not_exists=False
            )
        )
        mentions = allowed_mentions(reply_to_user_id)
        last_id = ""
        for index, part in enumerate(parts):
            part_nonce = nonce if index == 0 else f"{nonce}.{index}"
            try:
                if index == 0 and reference is not None:
                    sent = await channel.send(
                        part, reference=reference, allowed_mentions=mentions, nonce=part_nonce
                    )
                else:
                    sent = await channel.send(part, allowed_mentions=mentions, nonce=part_nonce)
            except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _delivery_error(exc) from exc
            last_id = str(sent.id)
        return last_id

    async def typing(self, conversation: ConversationKey) -> None:
        """Shows "typing…" once; Discord clears it after ~10 s or at the next post."""
        if self._client.is_closed():
            return
        channel = self._client.get_partial_messageable(channel_id_of(conversation))
        try:
            await channel.typing()
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # A lost indicator is harmless, and the next one comes typing_interval later.
            log.debug("typing indicator in %s failed: %s", conversation, exc)
