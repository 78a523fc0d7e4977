"""Telegram's webhook calls, each answered once the update it brought is taken in.

python-telegram-bot's own webhook server answers Telegram's call as soon as the update is
queued, and Telegram then forgets it: a process killed before storing it lost the
message. This server puts the update in the application's queue (the custom webhook
python-telegram-bot documents) and answers once the core has taken it in, or after the
wait's limit (adapters.telegram.confirmation). Killed before that, the call goes
unanswered and Telegram sends the update again; storing it is deduplicated.

A call without the secret Telegram was given (`X-Telegram-Bot-Api-Secret-Token`) is
refused. An update the library cannot parse is logged and answered: asked for again, it
would fail again.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from aiohttp import web
from telegram import Bot, Update

from adapters.telegram.confirmation import UnconfirmedUpdates

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class WebhookServer:
    def __init__(
        self,
        *,
        listen: str,
        port: int,
        path: str,
        secret: str,
        bot: Bot,
        updates: asyncio.Queue[object],
        unconfirmed: UnconfirmedUpdates,
    ) -> None:
        self._listen = listen
        self._port = port
        self._secret = secret.encode()
        self._bot = bot
        self._updates = updates
        self._unconfirmed = unconfirmed
        app = web.Application()
        app.router.add_post("/" + path.lstrip("/"), self._call)
        # Calls in flight wait for their update to be taken in, at most the wait's limit.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=unconfirmed.wait_limit + 1
        )

    async def start(self) -> None:
        """Listens; an address or port it cannot have raises OSError."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._listen, self._port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise

    async def stop(self) -> None:
        """Stops listening, once the calls in flight are answered."""
        await self._runner.cleanup()

    async def _call(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return web.Response(status=403, text="wrong or missing secret token")
        try:
            data = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="not JSON")
        try:
            update = Update.de_json(data, self._bot)
        except Exception:
            log.exception("skipping a malformed webhook update: %.500r", data)
            return web.Response()
        self._unconfirmed.fetched([update.update_id])
        await self._updates.put(update)
        await self._unconfirmed.before_answering(update.update_id)
        return web.Response()
