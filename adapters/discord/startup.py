"""Turning a failed Discord start-up into one line an operator can act on."""

from __future__ import annotations

import aiohttp
import discord

from bot.settings import StartupError


class DiscordStartError(StartupError):
    """The bot could not log in to Discord or connect to its gateway."""


_INTENT_HELP = (
    'Discord refused the bot\'s intents: enable "Message Content Intent" under Developer '
    "Portal > Applications > your app > Bot > Privileged Gateway Intents, then restart"
)
_TOKEN_HELP = (
    "DISCORD_BOT_TOKEN was rejected by Discord: copy a fresh one from Developer Portal > "
    "Applications > your app > Bot > Reset Token"
)


def explain_start_failure(error: BaseException | None) -> str:
    """One line saying why start-up failed and what to do about it."""
    cause = None if error is None else error.__context__
    if isinstance(error, AttributeError) and isinstance(cause, OSError | aiohttp.ClientError):
        # discord.py's reconnect loop trips over its missing socket (AttributeError) when the
        # very first gateway connection fails; the connection error is the real reason.
        error = cause
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return _INTENT_HELP
    if isinstance(error, discord.LoginFailure):
        return _TOKEN_HELP
    if isinstance(error, discord.ConnectionClosed):
        if error.code == 4004:
            return _TOKEN_HELP
        if error.code == 4014:
            return _INTENT_HELP
        return f"the Discord gateway closed the connection (code {error.code}): {error.reason}"
    if isinstance(error, TimeoutError):
        return "Discord did not finish connecting in time (check the network and Discord status)"
    if error is None:
        return "the Discord connection ended before it was ready"
    return f"could not connect to Discord: {type(error).__name__}: {error}"
