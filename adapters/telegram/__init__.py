"""Telegram: python-telegram-bot against the Bot API (or a self-hosted server, or a fake)."""

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
