"""The Telegram adapter: python-telegram-bot's Application in, the core's shapes out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from telegram import BotCommand, BotCommandScopeAllGroupChats, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters.telegram.confirmation import CONFIRM_WAIT_SECONDS, UnconfirmedUpdates
from adapters.telegram.convert import (
    PLATFORM,
    BotIdentity,
    Command,
    Ignore,
    Submit,
    route,
)
from adapters.telegram.delivery import DEFAULT_RETRY_DELAYS, Delivery
from adapters.telegram.http_client import AiohttpRequest
from adapters.telegram.processor import PerChatUpdateProcessor
from adapters.telegram.transport import ChatActionExemptRateLimiter, UpdateGuardRequest
from adapters.telegram.webhook import WebhookServer
from bot.core_api import COMMAND_FAILED, ChatCore
from bot.events import ConversationKey, DeliveryError, OutgoingMessage
from bot.lost import LostIntake
from bot.settings import Settings, SettingsError, StartupError, check_telegram_webhook
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

# Telegram drops "typing..." after about 5 seconds.
TYPING_INTERVAL = 4.5
# How long a stop waits for command answers still being posted before cancelling them.
ANSWER_GRACE_SECONDS = 5.0
_ALLOWED_UPDATES = (Update.MESSAGE, Update.EDITED_MESSAGE)
_COMMANDS = (
    BotCommand("start", "Start talking with me"),
    BotCommand("help", "What I can do"),
    BotCommand("cancel", "Stop what I am working on"),
    BotCommand("status", "What I am doing right now"),
    BotCommand("reset", "Forget this conversation"),
    BotCommand("usage", "Your usage and limits"),
)
_GROUP_COMMANDS = (*_COMMANDS, BotCommand("ask", "Ask me something: /ask <question>"))

_Context = ContextTypes.DEFAULT_TYPE


def file_url_for(base_url: str) -> str:
    """The file download base matching a Bot API base (".../bot" -> ".../file/bot")."""
    head, _, last = base_url.rstrip("/").rpartition("/")
    return f"{head}/file/{last}"


# What python-telegram-bot turns into InvalidToken: Unauthorized, and Not Found (a token
# that is no bot's).
_TOKEN_REJECTED = frozenset({401, 404})


class TelegramAdapter:
    """Receives Telegram updates for the core and posts its replies (a ReplySink)."""

    def __init__(
        self,
        settings: Settings,
        core: ChatCore,
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        poll_timeout: float = 10.0,
        confirm_wait: float = CONFIRM_WAIT_SECONDS,
    ) -> None:
        if settings.telegram_bot_token is None:
            raise ValueError("TELEGRAM_BOT_TOKEN is required for the Telegram adapter")
        # Again here, for an adapter built without `stillhere run`'s start-up checks.
        check_telegram_webhook(settings)
        self._settings = settings
        self._core = core
        self._poll_timeout = poll_timeout
        self._unconfirmed = UnconfirmedUpdates(confirm_wait)
        # Command answers being posted (`_carry_out`): let finish, within reason, on stop.
        self._answers = TaskSet("telegram-commands")
        self._app: Application = (  # type: ignore[type-arg]
            ApplicationBuilder()
            .token(settings.telegram_bot_token.get_secret_value())
            .base_url(settings.telegram_base_url)
            .base_file_url(file_url_for(settings.telegram_base_url))
            .request(AiohttpRequest())
            .rate_limiter(ChatActionExemptRateLimiter())
            .concurrent_updates(PerChatUpdateProcessor())
            .get_updates_request(
                UpdateGuardRequest(
                    connection_pool_size=1,
                    on_answer=self._polled,
                    unconfirmed=self._unconfirmed,
                )
            )
            .job_queue(None)
            .build()
        )
        self._app.add_handler(TypeHandler(Update, self._on_update))
        self._app.add_error_handler(self._on_error)
        self._delivery = Delivery(self._app.bot, retry_delays)
        self._identity: BotIdentity | None = None
        self._webhook: WebhookServer | None = None
        self._running = False
        self.lost = LostIntake()

    # --- ReplySink ---------------------------------------------------------------------

    @property
    def platform(self) -> str:
        return PLATFORM

    @property
    def typing_interval(self) -> float:
        return TYPING_INTERVAL

    async def send(self, message: OutgoingMessage) -> str | None:
        if not self._running:
            raise DeliveryError("the Telegram adapter is not running")
        return await self._delivery.post(
            message.conversation,
            message.text,
            message.reply_to_id,
            progress_key=message.outbox_id,
        )

    async def typing(self, conversation: ConversationKey) -> None:
        if not self._running:
            return
        thread = int(conversation.thread_id) if conversation.thread_id else None
        try:
            await self._app.bot.send_chat_action(
                int(conversation.chat_id), ChatAction.TYPING, message_thread_id=thread
            )
        except TelegramError as error:
            # Best effort: a lost indicator is not worth a retry.
            log.debug("typing in %s failed: %s", conversation, error)

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def identity(self) -> BotIdentity:
        if self._identity is None:
            raise RuntimeError("the adapter has not started")
        return self._identity

    async def start(self) -> None:
        self._core.attach(self)
        try:
            await self._app.initialize()  # getMe: who we are, and a token check
            bot = self._app.bot
            self._identity = BotIdentity(bot.id, bot.username)
            await self._register_commands()
            self._running = True
            await self._start_updates()
            await self._app.start()
        except InvalidToken as error:
            await self.stop()
            # python-telegram-bot's message quotes the token: say why without it, and
            # `from None` keeps the chained original out of the printed traceback.
            raise SettingsError(self._rejected(error)) from None
        except TelegramError as error:
            await self.stop()
            # Kept chained: the log file gets the whole story (the log masks the token).
            raise StartupError(self._failed(error)) from error
        except OSError as error:
            await self.stop()
            # The webhook server's port taken or its address not ours: the Bot API's own
            # errors reach us as TelegramErrors, so a bare OSError is not about it.
            if not self._settings.telegram_webhook_url:
                raise
            raise StartupError(self._unlistenable(error)) from error
        except BaseException:
            await self.stop()
            raise
        log.info("Telegram adapter running as @%s", self._identity.username)

    def _rejected(self, error: InvalidToken) -> str:
        cause = error.__cause__ if isinstance(error.__cause__, TelegramError) else error
        reason = self._masked(cause.message)
        return (
            f"setting TELEGRAM_BOT_TOKEN: the Bot API at {self._settings.telegram_base_url} "
            f"rejected it ({reason}); copy the token from @BotFather again, and check "
            "TELEGRAM_BASE_URL if you changed it"
        )

    def _polled(self, status: int, description: str | None) -> None:
        """The Bot API answered a getUpdates call (see UpdateGuardRequest)."""
        if status == 200:
            self._core.report_intake(PLATFORM, None)
        elif status in _TOKEN_REJECTED:
            self.lost.declare(
                f"setting TELEGRAM_BOT_TOKEN: Telegram rejected it while the bot ran "
                f"({self._masked(description or str(status))}), so no message can arrive any "
                "more; it was revoked or replaced in @BotFather: set the current one and "
                "start the bot again"
            )

    def _poll_failed(self, error: TelegramError) -> None:
        """python-telegram-bot polls again after a pause that grows to 30 s; its own report
        is a traceback per failure. One line says what the operator needs: no message
        arrives meanwhile, and a conflict lasts until the other process stops. The admin
        CLI shows it too, until a poll works again."""
        reason = self._masked(error.message)
        if isinstance(error, Conflict):
            problem = f"another process uses this TELEGRAM_BOT_TOKEN ({reason})"
            log.error(
                "Telegram sends no updates here: %s; only one process can receive its "
                "updates, polling or through a webhook, so no message arrives until that "
                "one stops",
                problem,
            )
        else:
            problem = f"fetching updates fails ({reason})"
            log.warning("%s; trying again", problem)
        self._core.report_intake(PLATFORM, problem)

    def _masked(self, text: str) -> str:
        token = self._settings.telegram_bot_token
        return text.replace(token.get_secret_value(), "***") if token else text

    def _failed(self, error: TelegramError) -> str:
        url = self._settings.telegram_base_url
        reason = self._masked(error.message)
        # BadRequest is a NetworkError to python-telegram-bot, but the API did answer.
        if isinstance(error, NetworkError) and not isinstance(error, BadRequest):
            return (
                f"could not reach the Telegram Bot API at {url} ({reason}); check the "
                "network, and TELEGRAM_BASE_URL if you changed it"
            )
        return f"the Telegram Bot API at {url} refused to start the bot ({reason})"

    def _unlistenable(self, error: OSError) -> str:
        where = f"{self._settings.telegram_webhook_listen}:{self._settings.telegram_webhook_port}"
        return (
            f"could not listen for Telegram's webhook calls on {where} ({error}); check "
            "TELEGRAM_WEBHOOK_LISTEN and TELEGRAM_WEBHOOK_PORT"
        )

    async def _start_updates(self) -> None:
        updater = self._app.updater
        assert updater is not None  # the builder always makes one
        webhook_url = self._settings.telegram_webhook_url
        if webhook_url:
            secret = self._settings.telegram_webhook_secret
            assert secret is not None  # check_telegram_webhook refuses to go on without
            # Ours, not python-telegram-bot's: that one answers a call once the update is
            # queued, this one once it is taken in (adapters.telegram.webhook). Listening
            # before Telegram is told where to call.
            self._webhook = WebhookServer(
                listen=self._settings.telegram_webhook_listen,
                port=self._settings.telegram_webhook_port,
                path=urlsplit(webhook_url).path,
                secret=secret.get_secret_value(),
                bot=self._app.bot,
                updates=self._app.update_queue,
                unconfirmed=self._unconfirmed,
            )
            await self._webhook.start()
            await self._app.bot.set_webhook(
                url=webhook_url,
                secret_token=secret.get_secret_value(),
                allowed_updates=_ALLOWED_UPDATES,
            )
        else:
            await updater.start_polling(
                timeout=int(self._poll_timeout),
                allowed_updates=_ALLOWED_UPDATES,
                error_callback=self._poll_failed,
            )

    async def _register_commands(self) -> None:
        bot = self._app.bot
        try:
            await bot.set_my_commands(_COMMANDS)
            await bot.set_my_commands(_GROUP_COMMANDS, scope=BotCommandScopeAllGroupChats())
        except TelegramError as error:
            # The menu is a convenience: typed commands work without it.
            log.warning("could not register the command menu: %s", error)

    async def stop_intake(self) -> None:
        """Stops fetching and lets in-flight updates finish; replies still go out until
        `stop`."""
        if self._webhook is not None:
            webhook, self._webhook = self._webhook, None
            await webhook.stop()
        updater = self._app.updater
        if updater is not None and updater.running:
            try:
                await updater.stop()
            except InvalidToken:
                if not self.lost.is_set():
                    raise
                # Polling ended on it already, and `lost` says so.
        if self._app.running:
            await self._app.stop()

    async def stop(self) -> None:
        """Stops taking messages in (if it still does), lets command answers in flight
        finish (for a few seconds), then closes the HTTP clients."""
        await self.stop_intake()
        await self._answers.finish(ANSWER_GRACE_SECONDS)
        self._running = False
        await self._app.shutdown()
        # After a failed start (bad token) the application never counted as initialized and
        # leaves the bot's HTTP clients open; closing them again is a no-op otherwise.
        await self._app.bot.shutdown()

    # --- updates -----------------------------------------------------------------------

    async def _on_update(self, update: Update, context: _Context) -> None:
        try:
            await self._take_in(update)
        finally:
            # Stored, refused or failed for good: Telegram may forget it now.
            self._unconfirmed.taken_in(update.update_id)

    async def _take_in(self, update: Update) -> None:
        """Hands the update's message to the core, or carries out its command."""
        if update.edited_message is not None:
            message = update.edited_message
            log.info(
                "ignoring an edit of message %s in chat %s", message.message_id, message.chat.id
            )
            return
        if update.message is None:
            log.debug("ignoring update %s: no new message", update.update_id)
            return
        decision = route(update.message, self.identity)
        if isinstance(decision, Ignore):
            log.debug("ignoring message %s: %s", update.message.message_id, decision.reason)
        elif isinstance(decision, Submit):
            outcome = await self._core.submit(decision.message)
            log.debug("message %s: %s", decision.message.dedupe_key, outcome)
        elif isinstance(decision, Command):
            await self._carry_out(decision)

    async def _carry_out(self, command: Command) -> None:
        """Carried out here, in order with the chat's messages (a /reset before "hello" is
        done before "hello" is submitted); its answer is posted in a task of its own, as
        it can wait long on Telegram's flood limits, and the chat's next messages, and
        the poll that confirms them, must not wait with it."""
        request = command.request
        try:
            answer = await self._core.command(request)
        except Exception:
            # Unanswered, the person would wait for nothing: they had better hear it failed.
            log.exception("could not carry out /%s in %s", request.name, request.conversation)
            answer = COMMAND_FAILED
        if answer is not None:
            self._answers.spawn(self._post_answer(command, answer), f"answer-{command.message_id}")

    async def _post_answer(self, command: Command, answer: str) -> None:
        request = command.request
        try:
            await self._delivery.post(request.conversation, answer, str(command.message_id))
        except DeliveryError as error:
            log.warning("could not answer /%s in %s: %s", request.name, request.conversation, error)

    async def _on_error(self, update: object, context: _Context) -> None:
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("update %s failed; going on", update_id, exc_info=context.error)
