"""Allow- and block-lists of users, chats, Discord guilds and roles; admins by user id."""

from __future__ import annotations

from dataclasses import dataclass

from bot.events import CommandRequest, ConversationKey, InboundMessage
from bot.guards.ids import IdSet
from bot.policies import Verdict
from bot.settings import Settings


@dataclass(frozen=True)
class AccessGate:
    admins: IdSet
    allowed_users: IdSet
    blocked_users: IdSet
    allowed_chats: IdSet
    blocked_chats: IdSet
    allowed_guilds: IdSet
    allowed_roles: IdSet

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessGate:
        return cls(
            admins=IdSet(settings.admin_users),
            allowed_users=IdSet(settings.allowed_users),
            blocked_users=IdSet(settings.blocked_users),
            allowed_chats=IdSet(settings.allowed_chats),
            blocked_chats=IdSet(settings.blocked_chats),
            allowed_guilds=IdSet(settings.allowed_guilds),
            allowed_roles=IdSet(settings.allowed_roles),
        )

    def is_admin(self, platform: str, user_id: str) -> bool:
        return self.admins.has(platform, user_id)

    def refusal(self, message: InboundMessage | CommandRequest) -> str | None:
        """Why this message may not reach the model (or this command be answered), or None."""
        platform = message.conversation.platform
        chat = message.conversation.chat_id
        if message.is_admin or self.is_admin(platform, message.user_id):
            return None
        if self.blocked_users.has(platform, message.user_id):
            return "blocked user"
        if self.blocked_chats.has(platform, chat):
            return "blocked chat"
        if self.allowed_users and not self.allowed_users.has(platform, message.user_id):
            return "user not in ALLOWED_USERS"
        if message.is_private:
            return None
        if self.allowed_chats and not self.allowed_chats.has(platform, chat):
            return "chat not in ALLOWED_CHATS"
        if self.allowed_guilds and not self.allowed_guilds.has(platform, message.guild_id):
            return "server not in ALLOWED_GUILDS"
        if self.allowed_roles and not any(
            self.allowed_roles.has(platform, role) for role in message.roles
        ):
            return "no role in ALLOWED_ROLES"
        return None

    async def check(self, message: InboundMessage) -> Verdict:
        reason = self.refusal(message)
        if reason is None:
            return Verdict.ALLOW
        # A stranger in a group gets silence; in private, one short line.
        return Verdict(reason=reason, notice_key="denied", notify_groups=False)

    async def usage(self, user_id: str, conversation: ConversationKey) -> dict[str, object] | None:
        return None
