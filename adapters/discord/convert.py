"""discord.py messages and interactions -> the core's normalized events.

Only translation lives here; the core decides who gets answered. Everything that can be
decided from plain values is a small pure function so it is tested without a client.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import discord

from bot.events import CommandName, CommandRequest, ConversationKey, InboundMessage

PLATFORM = "discord"

TEXT_COMMANDS: Mapping[str, CommandName] = {
    "/cancel": CommandName.CANCEL,
    "/status": CommandName.STATUS,
    "/reset": CommandName.RESET,
    "/help": CommandName.HELP,
    "/usage": CommandName.USAGE,
}

# Joins, pins, thread notices and the like are Discord's own messages, not a person's.
_PERSON_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
_MENTION = re.compile(r"<@[!&]?(\d+)>")
_SPACES = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True, slots=True)
class TextCommand:
    """A "/status"-style message: answered by the core directly, in reply to `message_id`."""

    request: CommandRequest
    channel_id: int
    message_id: str
    user_id: str


def strip_mentions(content: str, ids: Collection[str]) -> str:
    """Removes mentions of `ids` (user <@id>, <@!id> or role <@&id>) and the gaps they leave."""

    def drop(match: re.Match[str]) -> str:
        return "" if match.group(1) in ids else match.group(0)

    stripped = _MENTION.sub(drop, content)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in stripped.splitlines()).strip()


def name_mentions(content: str, names: Mapping[str, str]) -> str:
    """Writes other people's <@id> mentions as @name, which is what the model can use."""

    def rename(match: re.Match[str]) -> str:
        name = names.get(match.group(1))
        return match.group(0) if name is None or match.group(0).startswith("<@&") else f"@{name}"

    return _MENTION.sub(rename, content)


def parse_command(text: str) -> tuple[CommandName, str] | None:
    """Parses a typed command: "/reset now" -> (RESET, "now"); anything else -> None."""
    head, _, args = text.strip().partition(" ")
    name = TEXT_COMMANDS.get(head.lower())
    return None if name is None else (name, args.strip())


def attachment_kind(content_type: str | None, *, voice: bool = False) -> str:
    """The core's name for a non-text attachment ("photo", "video", ...)."""
    if voice:
        return "voice"
    major = (content_type or "").partition("/")[0]
    return {"image": "photo", "video": "video", "audio": "audio"}.get(major, "document")


def unsupported_kind(message: discord.Message) -> str | None:
    """What a message carries instead of text, or None when there is nothing else."""
    if message.stickers:
        return "sticker"
    if message.attachments:
        first = message.attachments[0]
        return attachment_kind(first.content_type, voice=message.flags.voice)
    if message.poll is not None:
        return "poll"
    if message.embeds:
        return "embed"
    return None


def conversation_of(channel: object, channel_id: int) -> ConversationKey:
    """A thread is its own session under its parent channel; a channel or DM is one session."""
    if isinstance(channel, discord.Thread):
        return ConversationKey(PLATFORM, str(channel.parent_id), str(channel.id))
    return ConversationKey(PLATFORM, str(channel_id))


def _is_admin(user: discord.abc.User) -> bool:
    if not isinstance(user, discord.Member):
        return False
    permissions = user.guild_permissions
    return permissions.administrator or permissions.manage_guild


def _roles(user: discord.abc.User) -> tuple[str, ...]:
    if not isinstance(user, discord.Member):
        return ()
    return tuple(str(role.id) for role in user.roles if not role.is_default())


def _own_mention_ids(message: discord.Message, bot_id: int) -> set[str]:
    ids = {str(bot_id)}
    if message.guild is not None and message.guild.self_role is not None:
        ids.add(str(message.guild.self_role.id))
    return ids


def _replies_to_bot(message: discord.Message, bot_id: int) -> bool:
    reference = message.reference
    if reference is None:
        return False
    replied = reference.resolved or reference.cached_message
    return isinstance(replied, discord.Message) and replied.author.id == bot_id


def _reply_to_id(message: discord.Message) -> str | None:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    return str(reference.message_id)


def _chat_title(message: discord.Message) -> str | None:
    channel = message.channel
    if message.guild is None or not isinstance(channel, discord.abc.GuildChannel | discord.Thread):
        return None
    return f"{message.guild.name} #{channel.name}"


def is_from_person(message: discord.Message, bot_id: int) -> bool:
    """False for the bot's own echoed posts, other bots, webhooks and system notices."""
    return (
        message.author.id != bot_id
        and not message.author.bot
        and message.webhook_id is None
        and message.type in _PERSON_MESSAGE_TYPES
    )


def to_event(
    message: discord.Message, bot_id: int, *, commands_unaddressed: bool
) -> InboundMessage | TextCommand:
    """Converts a person's message. Commands count in DMs, when addressed, and in servers
    whose group mode answers everything (`commands_unaddressed`)."""
    is_private = message.guild is None
    own_ids = _own_mention_ids(message, bot_id)
    mentioned = bool(own_ids & {str(i) for i in message.raw_mentions + message.raw_role_mentions})
    addresses_bot = is_private or mentioned or _replies_to_bot(message, bot_id)
    names = {str(user.id): user.display_name for user in message.mentions}
    text = name_mentions(strip_mentions(message.content, own_ids), names)
    conversation = conversation_of(message.channel, message.channel.id)
    author = message.author

    command = parse_command(text)
    if command is not None and (addresses_bot or commands_unaddressed):
        name, args = command
        request = CommandRequest(
            conversation=conversation,
            name=name,
            user_id=str(author.id),
            display_name=author.display_name,
            is_private=is_private,
            args=args,
            is_admin=_is_admin(author),
            roles=_roles(author),
            guild_id=None if message.guild is None else str(message.guild.id),
        )
        return TextCommand(request, message.channel.id, str(message.id), str(author.id))

    return InboundMessage(
        conversation=conversation,
        user_id=str(author.id),
        display_name=author.display_name,
        text=text,
        message_id=str(message.id),
        is_private=is_private,
        addresses_bot=addresses_bot,
        timestamp=message.created_at,
        reply_to_id=_reply_to_id(message),
        chat_title=_chat_title(message),
        unsupported=None if text else unsupported_kind(message),
        # Server managers may run admin commands in their server (see CommandRequest), but
        # only ADMIN_USERS bypass access lists and budgets or get admin-only tools.
        roles=_roles(author),
        guild_id=None if message.guild is None else str(message.guild.id),
    )


def command_from_interaction(
    interaction: discord.Interaction[discord.Client], name: CommandName
) -> CommandRequest:
    """A slash command as the same CommandRequest a typed "/name" would give."""
    channel_id = interaction.channel_id or 0
    return CommandRequest(
        conversation=conversation_of(interaction.channel, channel_id),
        name=name,
        user_id=str(interaction.user.id),
        display_name=interaction.user.display_name,
        is_private=interaction.guild_id is None,
        is_admin=_is_admin(interaction.user),
        roles=_roles(interaction.user),
        guild_id=None if interaction.guild_id is None else str(interaction.guild_id),
        answered_privately=True,  # ephemeral
    )
