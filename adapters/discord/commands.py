"""The bot's slash commands: each asks the core and answers only the person who ran it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import discord
from discord import app_commands

from adapters.discord.sender import MESSAGE_LIMIT
from bot.events import CommandName
from bot.textsplit import split_text

SLASH_COMMANDS: dict[CommandName, str] = {
    CommandName.CANCEL: "Stop what I am working on in this conversation",
    CommandName.STATUS: "Show what I am doing in this conversation",
    CommandName.RESET: "Forget this conversation and start over",
    CommandName.HELP: "How to talk to me",
    CommandName.USAGE: "Your usage and limits",
}

# In English: each person's language is the core's to know, and it is the core that failed.

Callback = Callable[[discord.Interaction[discord.Client]], Coroutine[Any, Any, None]]
# Takes a slash command over from discord.py; returns at once (the adapter answers it in a
# task of its own, which discord.py's per-interaction task would leave unowned at stop).
SlashHandler = Callable[[discord.Interaction[discord.Client], CommandName], None]


async def acknowledge(interaction: discord.Interaction[discord.Client]) -> None:
    """Defers the answer: Discord drops an interaction not acknowledged within 3 s, and the
    core may take longer (a /cancel waits for its session). Ephemeral is decided here, and
    the followup that ends the "thinking…" state keeps it: the answer is for whoever ran
    the command, not the whole channel."""
    await interaction.response.defer(ephemeral=True, thinking=True)


async def answer_deferred(interaction: discord.Interaction[discord.Client], text: str) -> None:
    """Sends the answer of an acknowledged interaction as followups of at most 2000 characters."""
    parts = [part for part in split_text(text, MESSAGE_LIMIT) if part.strip()] or ["…"]
    for part in parts:
        await interaction.followup.send(part, ephemeral=True)


def _handing_over(handler: SlashHandler, name: CommandName) -> Callback:
    async def hand_over(interaction: discord.Interaction[discord.Client]) -> None:
        handler(interaction, name)

    return hand_over


def build_command_tree(
    client: discord.Client, handler: SlashHandler
) -> app_commands.CommandTree[discord.Client]:
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for name, description in SLASH_COMMANDS.items():
        tree.add_command(
            app_commands.Command(
                name=name.value, description=description, callback=_handing_over(handler, name)
            )
        )
    return tree
