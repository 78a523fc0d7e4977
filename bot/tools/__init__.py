"""Tools the model may call. Users write `from bot.tools import tool`."""

from bot.tools.registry import Registry, ToolSpec, default_registry, tool

__all__ = ["Registry", "ToolSpec", "default_registry", "tool"]
