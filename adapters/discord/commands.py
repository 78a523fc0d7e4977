"""The bot's slash commands: each asks the core and answers only the person who ran it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import discord
from discord import app_commands

from adapters.discord.convert import command_from_interaction
from adapters.discord.sender import MESSAGE_LIMIT
from bot.core_api import ChatCore
from bot.events import CommandName
from bot.textsplit import split_text

SLASH_COMMANDS: dict[CommandName, str] = {
    CommandName.CANCEL: "Stop what I am working on in this conversation",
    CommandName.STATUS: "Show what I am doing in this conversation",
    CommandName.RESET: "Forget this conversation and start over",
    CommandName.HELP: "How to talk to me",
    CommandName.USAGE: "Your usage and limits",
}

Callback = Callable[[discord.Interaction[discord.Client]], Coroutine[Any, Any, None]]


def _answering(core: ChatCore, name: CommandName) -> Callback:
    async def answer(interaction: discord.Interaction[discord.Client]) -> None:
        text = await core.command(command_from_interaction(interaction, name))
        parts = [part for part in split_text(text, MESSAGE_LIMIT) if part.strip()] or ["…"]
        # Ephemeral: a command's answer is for whoever ran it, not the whole channel.
        await interaction.response.send_message(parts[0], ephemeral=True)
        for part in parts[1:]:
            await interaction.followup.send(part, ephemeral=True)

    return answer


def build_command_tree(
    client: discord.Client, core: ChatCore
) -> app_commands.CommandTree[discord.Client]:
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for name, description in SLASH_COMMANDS.items():
        tree.add_command(
            app_commands.Command(
                name=name.value, description=description, callback=_answering(core, name)
            )
        )
    return tree
