"""Telegram messages to the core's normalized shapes: pure functions, no I/O.

Deciding *whether* to answer is the core's job; this module only reports the facts
truthfully (is it private, is the bot addressed, which topic) and picks out commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import Chat, Message, MessageEntity, User

from bot.events import CommandName, CommandRequest, ConversationKey, InboundMessage

PLATFORM = "telegram"
_COMMANDS = frozenset(CommandName)
# What may sit between a removed mention and the rest: "@bot, hi", "@bot: hi", "hi @bot?"
_JUNCTION = " ,.:;!?"
ASK_COMMAND = "ask"

# Checked in order: an animation also carries `document`, a venue also carries `location`.
_CONTENT_KINDS = (
    "sticker",
    "photo",
    "voice",
    "video_note",
    "video",
    "animation",
    "audio",
    "document",
    "venue",
    "location",
    "contact",
    "poll",
    "dice",
    "game",
    "story",
)


@dataclass(frozen=True, slots=True)
class BotIdentity:
    id: int
    username: str

    @property
    def mention(self) -> str:
        return f"@{self.username}".lower()


@dataclass(frozen=True, slots=True)
class Submit:
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class Command:
    request: CommandRequest
    message_id: int


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


Route = Submit | Command | Ignore


def conversation_key(message: Message) -> ConversationKey:
    thread = str(message.message_thread_id) if message.is_topic_message else ""
    return ConversationKey(PLATFORM, str(message.chat.id), thread)


def display_name(user: User) -> str:
    if user.username:
        return f"{user.full_name} (@{user.username})"
    return user.full_name


def unsupported_kind(message: Message) -> str | None:
    for kind in _CONTENT_KINDS:
        if getattr(message, kind, None):
            return kind
    return None


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """Removes entity spans (UTF-16 offsets, as Telegram counts) from text.

    The gap is closed so that "hey @bot, time?" reads "hey, time?" and "@bot: hi" reads "hi".
    """
    data = _utf16(text)
    pieces: list[str] = []
    pos = 0
    for offset, length in sorted(spans):
        pieces.append(data[pos : offset * 2].decode("utf-16-le", errors="replace"))
        pos = max(pos, (offset + length) * 2)
    pieces.append(data[pos:].decode("utf-16-le", errors="replace"))
    result = pieces[0]
    for piece in pieces[1:]:
        if not result.strip():
            result, piece = "", piece.lstrip(_JUNCTION)
        elif piece[:1] in _JUNCTION:  # also true for an empty piece
            result = result.rstrip(" ")
        result += piece
    return result.strip()


def _entity_text(text: str, entity: MessageEntity) -> str:
    data = _utf16(text)
    return data[entity.offset * 2 : (entity.offset + entity.length) * 2].decode(
        "utf-16-le", errors="replace"
    )


def _bot_mentions(text: str, entities: tuple[MessageEntity, ...], bot: BotIdentity) -> list[int]:
    """Indexes of the entities that name this bot."""
    found = []
    for index, entity in enumerate(entities):
        named = entity.type == MessageEntity.MENTION and (
            _entity_text(text, entity).lower() == bot.mention
        )
        linked = entity.type == MessageEntity.TEXT_MENTION and (
            entity.user is not None and entity.user.id == bot.id
        )
        if named or linked:
            found.append(index)
    return found


def _real_reply(message: Message) -> Message | None:
    """The message replied to, unless it is just the topic root Telegram fills in."""
    replied = message.reply_to_message
    if replied is None or replied.forum_topic_created is not None:
        return None
    return replied


@dataclass(frozen=True, slots=True)
class _ParsedCommand:
    name: str
    args: str
    for_us: bool


def _parse_command(
    text: str, entities: tuple[MessageEntity, ...], bot: BotIdentity
) -> _ParsedCommand | None:
    first = entities[0] if entities else None
    if first is None or first.type != MessageEntity.BOT_COMMAND or first.offset != 0:
        return None
    word = _entity_text(text, first)[1:]
    name, _, target = word.partition("@")
    args = _utf16(text)[first.length * 2 :].decode("utf-16-le", errors="replace").strip()
    for_us = not target or target.lower() == bot.username.lower()
    return _ParsedCommand(name.lower(), args, for_us)


def route(message: Message, bot: BotIdentity) -> Route:
    """Decides what one incoming message is for the core."""
    user = message.from_user
    if user is None:
        return Ignore("no sender (channel post)")
    if user.is_bot:
        return Ignore("sent by a bot")
    is_private = message.chat.type == Chat.PRIVATE
    text = message.text if message.text is not None else (message.caption or "")
    entities = message.entities if message.text is not None else message.caption_entities
    conversation = conversation_key(message)

    command = _parse_command(text, entities, bot)
    addressed_by_ask = False
    if command is not None:
        if not command.for_us:
            return Ignore(f"command /{command.name} for another bot")
        if command.name == ASK_COMMAND:
            text, entities, addressed_by_ask = command.args, (), True
        elif command.name in _COMMANDS:
            request = CommandRequest(
                conversation=conversation,
                name=CommandName(command.name),
                user_id=str(user.id),
                display_name=display_name(user),
                is_private=is_private,
                args=command.args,
            )
            return Command(request, message.message_id)

    mentions = _bot_mentions(text, entities, bot)
    replied = _real_reply(message)
    replies_to_bot = replied is not None and (
        replied.from_user is not None and replied.from_user.id == bot.id
    )
    addresses_bot = is_private or addressed_by_ask or bool(mentions) or replies_to_bot
    if mentions:
        text = _cut(text, [(entities[i].offset, entities[i].length) for i in mentions])

    inbound = InboundMessage(
        conversation=conversation,
        user_id=str(user.id),
        display_name=display_name(user),
        text=text,
        message_id=str(message.message_id),
        is_private=is_private,
        addresses_bot=addresses_bot,
        timestamp=message.date,
        reply_to_id=str(replied.message_id) if replied is not None else None,
        chat_title=message.chat.title,
        # A caption is text the model can read; only content with no text is unsupported.
        unsupported=None if text.strip() else unsupported_kind(message),
    )
    return Submit(inbound)
