"""The Discord adapter: a discord.py client feeding the core and posting its replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp
import discord

from adapters.discord.commands import (
    acknowledge,
    answer_deferred,
    build_command_tree,
)
from adapters.discord.convert import (
    PLATFORM,
    TextCommand,
    command_from_interaction,
    is_from_person,
    to_event,
)
from adapters.discord.routing import point_discord_at
from adapters.discord.sender import DiscordSender, channel_id_of
from adapters.discord.startup import DiscordStartError, explain_start_failure
from bot.core_api import COMMAND_FAILED, ChatCore
from bot.events import (
    CommandName,
    ConversationKey,
    DeliveryError,
    InboundMessage,
    OutgoingMessage,
)
from bot.lost import LostIntake
from bot.settings import GroupMode, Settings

log = logging.getLogger(__name__)

# The bot never joins voice: without this, every start warns twice that voice support
# (PyNaCl, davey) is not installed.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False

# message_content is privileged: without it Discord sends servers' messages with empty text.
INTENTS = discord.Intents(guilds=True, guild_messages=True, dm_messages=True, message_content=True)
# What a call to Discord raises when it does not go through.
_CALL_FAILED = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)


class _Client(discord.Client):
    """Forwards the few gateway events the adapter cares about."""

    def __init__(self, adapter: DiscordAdapter, *, guild_ready_timeout: float) -> None:
        super().__init__(
            intents=INTENTS,
            guild_ready_timeout=guild_ready_timeout,
            chunk_guilds_at_startup=False,
            # No message cache: an edit would otherwise rewrite, in place, a message whose
            # on_message has not run yet; and replies carry the message they answer anyway.
            max_messages=None,
            # The safety net for any send that does not say otherwise: ping nobody.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self._adapter = adapter
        self.tree = build_command_tree(self, adapter.on_slash_command)

    async def setup_hook(self) -> None:
        try:
            synced = await self.tree.sync()
        except discord.HTTPException as exc:
            # Typed "/status" still works, so a failed sync is not worth refusing to start.
            log.warning("could not register Discord slash commands: %s", exc)
        else:
            log.info("registered %d Discord slash commands", len(synced))

    async def on_ready(self) -> None:
        self._adapter.on_ready()

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        # Told at once, not through an `on_disconnect` handler: discord.py would schedule
        # that as a task even while the client closes, when no loop is left to run it.
        if event == "disconnect":
            self._adapter.on_disconnected()
        elif event == "resumed":
            self._adapter.on_connected()
        super().dispatch(event, *args, **kwargs)

    async def on_message(self, message: discord.Message) -> None:
        self._adapter.on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        # MESSAGE_UPDATE also reports link previews being attached; only edits carry a time.
        if payload.data.get("edited_timestamp") is not None:
            log.info("ignored an edit of Discord message %s", payload.message_id)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        log.info("ignored the deletion of Discord message %s", payload.message_id)


class DiscordAdapter:
    """Connects to Discord, submits what people write, and posts the core's replies."""

    def __init__(
        self,
        settings: Settings,
        core: ChatCore,
        *,
        guild_ready_timeout: float = 2.0,
        start_timeout: float = 60.0,
        command_grace: float = 5.0,
    ) -> None:
        """`command_grace`: how long stop() lets commands still being answered finish
        before it cancels them."""
        if settings.discord_bot_token is None:
            raise DiscordStartError("DISCORD_BOT_TOKEN is not set")
        self.core = core
        self._settings = settings
        self._token = settings.discord_bot_token.get_secret_value()
        self._start_timeout = start_timeout
        self._command_grace = command_grace
        self._client = _Client(self, guild_ready_timeout=guild_ready_timeout)
        self._sender = DiscordSender(self._client)
        self._ready = asyncio.Event()
        self.lost = LostIntake()
        # One consumer keeps submissions in gateway order; discord.py runs every event
        # handler as its own task, which could let a later message overtake an earlier one.
        self._inbox: asyncio.Queue[InboundMessage | TextCommand] = asyncio.Queue()
        self._client_task: asyncio.Task[None] | None = None
        self._inbox_task: asyncio.Task[None] | None = None
        # Command answers being posted (and slash commands being carried out), each in its
        # own task: discord.py waits out a 429 however long it is, and in the inbox that
        # would hold up every later message of every server. Kept here so stop() can end
        # them and so their failures are logged.
        self._commands: set[asyncio.Task[None]] = set()

    # --- ReplySink --------------------------------------------------------------------

    @property
    def platform(self) -> str:
        return "discord"

    @property
    def typing_interval(self) -> float:
        # Discord shows "typing…" for about 10 s after each trigger.
        return 8.0

    async def send(self, message: OutgoingMessage) -> str | None:
        return await self._sender.post(
            channel_id_of(message.conversation),
            message.text,
            nonce=str(message.outbox_id),
            reply_to_id=message.reply_to_id,
            reply_to_user_id=message.reply_to_user_id,
        )

    async def typing(self, conversation: ConversationKey) -> None:
        await self._sender.typing(conversation)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Logs in, connects and waits for READY; raises DiscordStartError saying why not."""
        if self._client_task is not None:
            raise RuntimeError("DiscordAdapter.start() was already called")
        point_discord_at(self._settings.discord_api_base_url, self._settings.discord_gateway_url)
        self.core.attach(self)
        self._inbox_task = asyncio.create_task(self._drain_inbox(), name="discord-inbox")
        self._client_task = asyncio.create_task(self._client.start(self._token), name="discord")
        ready = asyncio.create_task(self._ready.wait(), name="discord-ready")
        try:
            await asyncio.wait(
                {self._client_task, ready},
                timeout=self._start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        if self._ready.is_set():
            self._client_task.add_done_callback(self._report_client_end)
            return
        failure = self._failure_of(self._client_task)
        await self.stop()
        raise DiscordStartError(explain_start_failure(failure)) from failure

    @staticmethod
    def _failure_of(task: asyncio.Task[None]) -> BaseException | None:
        if not task.done():
            return TimeoutError()
        if task.cancelled():
            return None
        return task.exception()

    def _report_client_end(self, task: asyncio.Task[None]) -> None:
        """discord.py reconnects by itself; its client ends with an error only for good
        (a token revoked, an intent withdrawn)."""
        if not task.cancelled() and task.exception() is not None:
            reason = explain_start_failure(task.exception())
            log.error("the Discord connection ended: %s", reason, exc_info=task.exception())
            self.lost.declare(f"{reason} (the connection ended while the bot ran)")

    async def stop_intake(self) -> None:
        # discord.py closes its gateway and its HTTP session together, so intake stops with
        # everything: a reply cut by it is posted again after a restart, and Discord drops
        # that repeat by its nonce (see the README's delivery notes).
        await self.stop()

    async def stop(self) -> None:
        """Disconnects, submits what had already arrived, and ends every task it started."""
        if self._client_task is None:
            return
        await self._client.close()
        await self._finish(self._client_task, timeout=10.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._inbox.join(), timeout=5.0)
        if self._inbox_task is not None:
            self._inbox_task.cancel()
            await self._finish(self._inbox_task, timeout=5.0)
        await self._end_commands()

    async def _end_commands(self) -> None:
        # The client is closed, so no answer can be posted any more; the grace lets a
        # slash /cancel or /reset the core is carrying out finish rather than stop half-way.
        # A loop, because a slash command discord.py received just before the close may
        # still be handed over while this waits.
        deadline = asyncio.get_running_loop().time() + self._command_grace
        while running := {task for task in self._commands if not task.done()}:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            _, running = await asyncio.wait(running, timeout=timeout)
            if not running:
                continue
            log.warning(
                "%d Discord command%s still running at shutdown %s cancelled",
                len(running),
                "" if len(running) == 1 else "s",
                "was" if len(running) == 1 else "were",
            )
            for task in running:
                task.cancel()
            await asyncio.wait(running)

    @staticmethod
    async def _finish(task: asyncio.Task[None], *, timeout: float) -> None:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled() and task.exception() is not None:
            # Already reported (start-up failure or _report_client_end); nothing to re-raise.
            log.debug("task %s had failed: %r", task.get_name(), task.exception())

    # --- inbound ----------------------------------------------------------------------

    def on_ready(self) -> None:
        user = self._client.user
        log.info("connected to Discord as %s (%s)", user, None if user is None else user.id)
        self._ready.set()
        self.on_connected()

    def on_connected(self) -> None:
        self.core.report_intake(PLATFORM, None)

    def on_disconnected(self) -> None:
        # discord.py reconnects by itself, and a resume replays what was missed; the admin
        # CLI shows this only while it takes (or if it never ends). Our own close is none.
        if not self._client.is_closed():
            self.core.report_intake(PLATFORM, "the gateway connection dropped; reconnecting")

    def on_message(self, message: discord.Message) -> None:
        user = self._client.user
        if user is None or not is_from_person(message, user.id):
            return
        event = to_event(
            message,
            user.id,
            commands_unaddressed=self._settings.discord_group_mode is GroupMode.ALL,
        )
        self._inbox.put_nowait(event)

    async def _drain_inbox(self) -> None:
        while True:
            event = await self._inbox.get()
            try:
                await self._handle(event)
            except Exception:
                log.exception("could not handle a Discord message")
            finally:
                self._inbox.task_done()

    async def _handle(self, event: InboundMessage | TextCommand) -> None:
        if isinstance(event, InboundMessage):
            outcome = await self.core.submit(event)
            log.debug("Discord message %s: %s", event.message_id, outcome)
            return
        # Carried out here, in order with the messages: a /reset left to run beside the
        # inbox would archive the session that a "hello" written after it had just started
        # a turn in. The core answers commands quickly; only the post can wait long.
        try:
            text = await self.core.command(event.request)
        except Exception:
            # Unanswered, the person would wait for nothing: they had better hear it failed.
            log.exception(
                "could not carry out /%s (Discord message %s)",
                event.request.name,
                event.message_id,
            )
            text = COMMAND_FAILED
        if text is None:
            return
        self._spawn_command(
            self._post_typed_answer(event, text), name=f"discord-command-{event.message_id}"
        )

    def _spawn_command(self, answer: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(answer, name=name)
        self._commands.add(task)
        task.add_done_callback(self._command_done)

    def _command_done(self, task: asyncio.Task[None]) -> None:
        self._commands.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "could not answer a Discord command (%s)",
                task.get_name(),
                exc_info=task.exception(),
            )

    def on_slash_command(
        self, interaction: discord.Interaction[discord.Client], name: CommandName
    ) -> None:
        self._spawn_command(
            self._answer_slash(interaction, name), name=f"discord-slash-{interaction.id}"
        )

    async def _answer_slash(
        self, interaction: discord.Interaction[discord.Client], name: CommandName
    ) -> None:
        try:
            await acknowledge(interaction)
        except _CALL_FAILED as exc:
            # Too late (Discord has shown the person "The application did not respond") or
            # unreachable: carrying out a /reset nobody will hear of would be worse.
            log.warning("could not acknowledge /%s, so it was not run: %s", name.value, exc)
            return
        try:
            text = await self.core.command(command_from_interaction(interaction, name))
        except Exception:
            # Deferred, the interaction shows "thinking…" until a followup comes, for up
            # to 15 minutes: the person had better hear that it failed.
            log.exception("could not carry out /%s (slash command %s)", name.value, interaction.id)
            text = COMMAND_FAILED
        if text is None:
            # The core answers every command only its asker sees (answered_privately).
            log.error(
                "/%s got no answer from the core (slash command %s)", name.value, interaction.id
            )
            text = COMMAND_FAILED
        if self._client.is_closed():
            log.warning("could not answer /%s: the Discord client is closed", name.value)
            return
        try:
            await answer_deferred(interaction, text)
        except _CALL_FAILED as exc:
            log.warning("could not answer /%s: %s", name.value, exc)

    async def _post_typed_answer(self, event: TextCommand, text: str) -> None:
        try:
            # The nonce makes a replayed command message (gateway resume) post one answer.
            await self._sender.post(
                event.channel_id,
                text,
                nonce=f"c{event.message_id}",
                reply_to_id=event.message_id,
                reply_to_user_id=event.user_id,
            )
        except DeliveryError as exc:
            log.warning("could not answer /%s: %s", event.request.name, exc)
