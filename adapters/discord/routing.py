"""Where discord.py sends its REST calls and opens its gateway socket."""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl


def point_discord_at(api_base_url: str, gateway_url: str) -> None:
    """Points discord.py at `api_base_url` (REST) and `gateway_url` (first gateway connection).

    discord.py has no per-client option for either: both are class attributes read whenever a
    request or connection is made, so this changes them for the whole process and must run
    before login. Resumes follow READY's `resume_gateway_url`, as they do on Discord.
    """
    discord.http.Route.BASE = api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
