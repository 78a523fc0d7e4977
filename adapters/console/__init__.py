"""The console: chat with the bot in a terminal, or pipe a script into it."""

from adapters.console.adapter import ConsoleAdapter

__all__ = ["ConsoleAdapter"]
