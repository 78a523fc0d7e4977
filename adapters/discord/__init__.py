"""Discord: the adapter between discord.py and the platform-free core."""

from adapters.discord.adapter import DiscordAdapter
from adapters.discord.routing import point_discord_at
from adapters.discord.startup import DiscordStartError

__all__ = ["DiscordAdapter", "DiscordStartError", "point_discord_at"]
