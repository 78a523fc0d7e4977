"""A strict fake of the Telegram Bot API, served by aiohttp on 127.0.0.1 (random port).

Clients talk to it over real HTTP exactly as they talk to api.telegram.org: form-encoded
requests, `{"ok": ..., "result": ...}` answers, the real error descriptions. It is strict
where the real API is strict (4096 characters after entity parsing, HTML that must parse,
unknown chats, topics and replied-to messages) so a test fails when the client would fail in
production; an unknown method answers 404 so a test notices a call the fake does not model.

Tests push updates with the `push_*` helpers (long polling returns them at once, or they are
POSTed to the webhook when one is set) and look at what the client did through `calls`,
`calls_to()` and `sent_messages()`; `wait_for()` waits on those without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

TEXT_LIMIT = 4096
DEFAULT_TOKEN = "123456789:AAFakeTokenForTestsOnly_abcdefghij"

# Sent as JSON inside form fields; everything else (text, caption, parse_mode...) stays a
# string, so a user text "123" is never turned into a number.
_STRUCTURED = frozenset(
    {
        "chat_id",
        "message_id",
        "offset",
        "timeout",
        "limit",
        "reply_markup",
        "entities",
        "caption_entities",
        "reply_parameters",
        "message_thread_id",
        "allowed_updates",
        "commands",
        "scope",
        "disable_notification",
        "protect_content",
        "drop_pending_updates",
        "link_preview_options",
        "max_connections",
        "reply_to_message_id",
        "allow_sending_without_reply",
    }
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_HTML_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "span",
        "tg-spoiler",
        "tg-emoji",
        "blockquote",
    }
)
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_AUTO_COMMAND = re.compile(r"^/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?")
_AUTO_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{3,32}")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


class HtmlParseError(ValueError):
    """Why Telegram would refuse this HTML (the text after "can't parse entities: ")."""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(source: str) -> str:
    """Returns the visible text of Telegram-flavoured HTML, or raises HtmlParseError.

    Follows Telegram's rules: only its tags, every tag closed in order, `<` always starts a
    tag; `&` starts an entity only when one is recognised (otherwise it is kept as is).
    """
    out: list[str] = []
    stack: list[str] = []
    i = 0
    n = len(source)
    while i < n:
        char = source[i]
        if char == "&":
            match = re.match(r"&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);", source[i:])
            if match:
                name = match.group(1)
                if name.startswith("#x"):
                    out.append(chr(int(name[2:], 16)))
                elif name.startswith("#"):
                    out.append(chr(int(name[1:])))
                elif name in _NAMED_ENTITIES:
                    out.append(_NAMED_ENTITIES[name])
                else:
                    out.append(match.group(0))
                i += match.end()
                continue
            out.append(char)
            i += 1
            continue
        if char != "<":
            out.append(char)
            i += 1
            continue
        offset = len(source[:i].encode("utf-8"))
        close = source.find(">", i)
        if close == -1:
            raise HtmlParseError(f"Unclosed start tag at byte offset {offset}")
        inner = source[i + 1 : close]
        if inner.startswith("/"):
            name = inner[1:].strip().lower()
            if not stack:
                raise HtmlParseError(f"Unexpected end tag at byte offset {offset}")
            if name != stack[-1]:
                raise HtmlParseError(
                    f'Unmatched end tag at byte offset {offset}, expected "</{stack[-1]}>", '
                    f'found "</{name}>"'
                )
            stack.pop()
        else:
            name_match = re.match(r"[a-zA-Z0-9-]*", inner)
            name = name_match.group(0).lower() if name_match else ""
            if name not in _HTML_TAGS:
                raise HtmlParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
            rest = inner[len(name) :]
            if rest and not rest[0].isspace():
                raise HtmlParseError(f'Unsupported start tag "{inner}" at byte offset {offset}')
            if rest.count('"') % 2 or rest.count("'") % 2:
                raise HtmlParseError(f"Unclosed start tag at byte offset {offset}")
            stack.append(name)
        i = close + 1
    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def auto_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram's servers would attach: a leading command, @mentions."""
    entities: list[dict[str, Any]] = []
    command = _AUTO_COMMAND.match(text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command[0])})
    for mention in _AUTO_MENTION.finditer(text):
        entities.append(
            {
                "type": "mention",
                "offset": utf16_len(text[: mention.start()]),
                "length": utf16_len(mention.group(0)),
            }
        )
    return entities


@dataclass(frozen=True, slots=True)
class TgUser:
    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    is_bot: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.last_name:
            data["last_name"] = self.last_name
        if self.username:
            data["username"] = self.username
        return data


@dataclass(slots=True)
class ApiCall:
    method: str
    params: dict[str, Any]
    # The HTTP status answered: 0 while the request is open, -1 if the connection dropped.
    status: int = 0
    # When the request arrived (time.monotonic()), for tests about what waited on what.
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class SentMessage:
    chat_id: int
    message_id: int
    text: str  # as the client sent it (HTML source when parse_mode is HTML)
    plain_text: str  # what users see
    parse_mode: str | None
    thread_id: int | None
    reply_to: int | None


@dataclass(slots=True)
class _Failure:
    error_code: int
    description: str
    retry_after: int | None
    count: int
    after: int
    chat_id: int | None


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass
class _State:
    updates: list[dict[str, Any]] = field(default_factory=list)
    chats: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    threads: set[tuple[int, int]] = field(default_factory=set)
    next_message_id: dict[int, int] = field(default_factory=lambda: defaultdict(lambda: 1))
    commands: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    webhook: dict[str, Any] | None = None


class FakeTelegram:
    """The fake Bot API server. `async with FakeTelegram() as tg:` or start()/stop()."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_username: str = "stillhere_bot",
        bot_name: str = "Stillhere",
    ) -> None:
        self.token = token
        self.bot = TgUser(int(token.split(":")[0]), bot_name, username=bot_username, is_bot=True)
        self.calls: list[ApiCall] = []
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status)
        self._state = _State()
        self._update_ids = itertools.count(1)
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._hangs: dict[str, int] = defaultdict(int)
        self._release = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._webhook_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._webhook_task: asyncio.Task[None] | None = None
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._client = aiohttp.ClientSession()
        self._webhook_task = asyncio.create_task(self._deliver_webhooks(), name="fake-tg-webhook")

    async def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._release.set()
        self._notify()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # --- test controls ---------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        retry_after: int | None = None,
        count: int = 1,
        *,
        after: int = 0,
        chat_id: int | None = None,
    ) -> None:
        """The next `count` calls of `method` (once `after` calls went through) answer this
        error instead of working; with `chat_id`, only calls for that chat count."""
        failure = _Failure(error_code, description, retry_after, count, after, chat_id)
        self._failures[method].append(failure)

    def hang_next(self, method: str) -> None:
        """The next call of `method` stays open: until release_hangs() (then it is answered),
        or until the fake stops (then its connection drops unanswered, like a crash)."""
        self._hangs[method] += 1

    def release_hangs(self) -> None:
        self._release.set()

    def calls_to(self, method: str) -> list[ApiCall]:
        return [call for call in self.calls if call.method == method]

    def sent_messages(self, chat_id: int, thread_id: int | None = None) -> list[SentMessage]:
        """Messages the bot posted successfully in a chat (and topic, when given)."""
        sent = []
        for (chat, _), message in self._state.messages.items():
            if chat != chat_id or message["from"]["id"] != self.bot.id:
                continue
            if thread_id is not None and message.get("message_thread_id") != thread_id:
                continue
            sent.append(message["_sent"])
        return sorted(sent, key=lambda m: m.message_id)

    def commands(self, scope: dict[str, Any] | None = None, language_code: str = "") -> list[str]:
        key = self._scope_key(scope, language_code)
        return [c["command"] for c in self._state.commands.get(key, [])]

    @property
    def queued_updates(self) -> list[dict[str, Any]]:
        """Updates pushed and not yet confirmed by a getUpdates offset."""
        return list(self._state.updates)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Waits until predicate() holds, re-checking after every call and push (and every
        few milliseconds, for conditions on the client's side such as a core double)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = [f"{c.method}:{c.status}" for c in self.calls[-15:]]
                raise AssertionError(f"condition not met within {timeout}s; last calls {recent}")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await self._wait(waiter, min(remaining, 0.02))

    # --- pushing updates -------------------------------------------------------------

    def push_text(
        self,
        chat: int,
        user: TgUser,
        text: str,
        *,
        chat_type: str = "private",
        thread_id: int | None = None,
        reply_to: int | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> int:
        """Queues a text message; entities default to what Telegram would detect."""
        message = self._new_message(chat, user, chat_type, thread_id, reply_to)
        message["text"] = text
        found = auto_entities(text) if entities is None else entities
        if found:
            message["entities"] = found
        return self._push_message(message)

    def push_sticker(
        self,
        chat: int,
        user: TgUser,
        *,
        chat_type: str = "private",
        thread_id: int | None = None,
        emoji: str = "👍",
    ) -> int:
        message = self._new_message(chat, user, chat_type, thread_id, None)
        message["sticker"] = {
            "file_id": f"sticker-{message['message_id']}",
            "file_unique_id": f"u-sticker-{message['message_id']}",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
        }
        return self._push_message(message)

    def push_photo(
        self,
        chat: int,
        user: TgUser,
        caption: str | None = None,
        *,
        chat_type: str = "private",
        thread_id: int | None = None,
    ) -> int:
        message = self._new_message(chat, user, chat_type, thread_id, None)
        message["photo"] = [
            {
                "file_id": f"photo-{message['message_id']}-{size}",
                "file_unique_id": f"u-photo-{message['message_id']}-{size}",
                "width": size,
                "height": size,
            }
            for size in (90, 320, 800)
        ]
        if caption is not None:
            message["caption"] = caption
            found = auto_entities(caption)
            if found:
                message["caption_entities"] = found
        return self._push_message(message)

    def push_edited(
        self,
        chat: int,
        user: TgUser,
        message_id: int,
        text: str,
        *,
        chat_type: str = "private",
    ) -> int:
        """Queues an edited_message update for an earlier message; returns the update id."""
        original = self._state.messages.get((chat, message_id))
        if original is None:
            raise ValueError(f"no message {message_id} in chat {chat} to edit")
        edited = {k: v for k, v in original.items() if k != "_sent"}
        edited.update(text=text, edit_date=int(time.time()), chat=self._chat(chat, user, chat_type))
        edited["from"] = user.to_dict()
        self._state.messages[(chat, message_id)] = edited
        return self._enqueue({"edited_message": edited})

    def push_raw(self, update: dict[str, Any]) -> int:
        """Queues any dict as an update (an update_id is added when missing)."""
        return self._enqueue(dict(update))

    # --- internals: chats and messages -----------------------------------------------

    def _chat(self, chat_id: int, user: TgUser, chat_type: str) -> dict[str, Any]:
        chat = self._state.chats.get(chat_id)
        if chat is None:
            if chat_type == "private":
                chat = {"id": chat_id, "type": "private", "first_name": user.first_name}
                if user.username:
                    chat["username"] = user.username
            else:
                chat = {"id": chat_id, "type": chat_type, "title": f"Group {chat_id}"}
            self._state.chats[chat_id] = chat
        return chat

    def _take_message_id(self, chat_id: int) -> int:
        ids = self._state.next_message_id
        message_id = ids[chat_id]
        ids[chat_id] = message_id + 1
        return message_id

    def _topic_root(self, chat_id: int, thread_id: int, user: TgUser) -> dict[str, Any]:
        """The forum_topic_created service message a topic starts with."""
        key = (chat_id, thread_id)
        if key not in self._state.threads:
            self._state.threads.add(key)
            self._state.chats[chat_id]["is_forum"] = True
            ids = self._state.next_message_id
            ids[chat_id] = max(ids[chat_id], thread_id + 1)
            self._state.messages[key] = {
                "message_id": thread_id,
                "date": int(time.time()),
                "chat": self._state.chats[chat_id],
                "from": user.to_dict(),
                "message_thread_id": thread_id,
                "forum_topic_created": {"name": f"Topic {thread_id}", "icon_color": 7322096},
            }
        return self._state.messages[key]

    def _new_message(
        self,
        chat_id: int,
        user: TgUser,
        chat_type: str,
        thread_id: int | None,
        reply_to: int | None,
    ) -> dict[str, Any]:
        chat = self._chat(chat_id, user, chat_type)
        root = self._topic_root(chat_id, thread_id, user) if thread_id is not None else None
        message: dict[str, Any] = {
            "message_id": self._take_message_id(chat_id),
            "date": int(time.time()),
            "chat": chat,
            "from": user.to_dict(),
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if reply_to is not None:
            replied = self._state.messages.get((chat_id, reply_to))
            if replied is None:
                raise ValueError(f"no message {reply_to} in chat {chat_id} to reply to")
            message["reply_to_message"] = self._shallow(replied)
        elif root is not None:
            # Telegram marks every topic message as a reply to the topic's first message.
            message["reply_to_message"] = self._shallow(root)
        return message

    @staticmethod
    def _shallow(message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if k not in ("reply_to_message", "_sent")}

    def _push_message(self, message: dict[str, Any]) -> int:
        self._state.messages[(message["chat"]["id"], message["message_id"])] = message
        self._enqueue({"message": message})
        return int(message["message_id"])

    def _enqueue(self, update: dict[str, Any]) -> int:
        update.setdefault("update_id", next(self._update_ids))
        if self._state.webhook is not None:
            self._webhook_queue.put_nowait(update)
        else:
            self._state.updates.append(update)
        self._notify()
        return int(update["update_id"])

    async def _wait(self, waiter: asyncio.Future[None], seconds: float) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, seconds)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _deliver_webhooks(self) -> None:
        while True:
            update = await self._webhook_queue.get()
            webhook = self._state.webhook
            if webhook is None or self._client is None:
                self._state.updates.append(update)
                continue
            headers = {}
            if webhook.get("secret_token"):
                headers["X-Telegram-Bot-Api-Secret-Token"] = webhook["secret_token"]
            try:
                async with self._client.post(webhook["url"], json=update, headers=headers) as resp:
                    status = resp.status
            except aiohttp.ClientError:
                status = 0
            self.webhook_deliveries.append((int(update["update_id"]), status))
            self._notify()

    # --- HTTP ------------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
            return params
        if request.can_read_body:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    params[key] = {"filename": value.filename}
                elif key in _STRUCTURED:
                    try:
                        params[key] = json.loads(value)
                    except ValueError:
                        params[key] = value
                else:
                    params[key] = value
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return await self._not_found(request)
        call = ApiCall(method, await self._params(request))
        self.calls.append(call)
        self._notify()
        try:
            if self._hangs[method]:
                self._hangs[method] -= 1
                await self._release.wait()
                transport = request.transport
                if transport is None or transport.is_closing():
                    # The client died while its request was held: it counts as lost in
                    # transit, never processed (otherwise the test could not tell a crash
                    # that lost a send from one that did not).
                    call.status = -1
                    return web.Response(status=502)
                if self._closing:
                    # The API went away mid-request: the client sees the connection drop.
                    transport.abort()
                    call.status = -1
                    return web.Response(status=502)
            self._inject_failure(method, call.params)
            result = await handler(call.params)
        except ApiError as error:
            call.status = error.code
            body: dict[str, Any] = {
                "ok": False,
                "error_code": error.code,
                "description": error.description,
            }
            if error.retry_after is not None:
                body["parameters"] = {"retry_after": error.retry_after}
            self._notify()
            return web.json_response(body, status=error.code)
        call.status = 200
        self._notify()
        return web.json_response({"ok": True, "result": result})

    def _inject_failure(self, method: str, params: dict[str, Any]) -> None:
        queue = self._failures[method]
        failure = next(
            (f for f in queue if f.chat_id is None or f.chat_id == params.get("chat_id")), None
        )
        if failure is None:
            return
        if failure.after > 0:
            failure.after -= 1
            return
        failure.count -= 1
        if failure.count <= 0:
            queue.remove(failure)
        raise ApiError(failure.error_code, failure.description, failure.retry_after)

    def _known_chat(self, params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise _bad("chat_id is empty")
        if not isinstance(chat_id, int) or chat_id not in self._state.chats:
            raise _bad("chat not found")
        return chat_id

    def _known_thread(self, chat_id: int, params: dict[str, Any]) -> int | None:
        thread_id = params.get("message_thread_id")
        if thread_id is None:
            return None
        if (chat_id, thread_id) not in self._state.threads:
            raise _bad("message thread not found")
        return int(thread_id)

    def _visible_text(self, params: dict[str, Any]) -> str:
        text = params.get("text", "")
        if not isinstance(text, str) or not text.strip():
            raise _bad("message text is empty")
        parse_mode = params.get("parse_mode")
        if parse_mode in (None, ""):
            plain = text
        elif str(parse_mode).lower() == "html":
            try:
                plain = parse_html(text)
            except HtmlParseError as error:
                raise _bad(f"can't parse entities: {error}") from None
        else:
            raise _bad("unsupported parse_mode")
        if not plain.strip():
            raise _bad("message text is empty")
        if utf16_len(plain) > TEXT_LIMIT:
            raise _bad("message is too long")
        return plain

    # --- API methods -----------------------------------------------------------------

    async def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot.to_dict() | {
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self._state.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        if offset:
            # Asking from `offset` confirms every update before it.
            self._state.updates = [u for u in self._state.updates if u["update_id"] >= offset]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._state.updates and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await self._wait(waiter, remaining)
        return self._state.updates[:limit]

    async def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._known_chat(params)
        thread_id = self._known_thread(chat_id, params)
        plain = self._visible_text(params)
        reply = params.get("reply_parameters") or {}
        if "reply_to_message_id" in params:
            reply = {"message_id": params["reply_to_message_id"]}
        reply_to = reply.get("message_id")
        replied = self._state.messages.get((chat_id, reply_to)) if reply_to else None
        if reply_to and replied is None and not reply.get("allow_sending_without_reply"):
            raise _bad("message to be replied not found")
        message_id = self._take_message_id(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self._state.chats[chat_id],
            "from": self.bot.to_dict(),
            "text": plain,
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if replied is not None:
            message["reply_to_message"] = self._shallow(replied)
        parse_mode = params.get("parse_mode") or None
        message["_sent"] = SentMessage(
            chat_id=chat_id,
            message_id=message_id,
            text=params["text"],
            plain_text=plain,
            parse_mode=parse_mode,
            thread_id=thread_id,
            reply_to=replied["message_id"] if replied is not None else None,
        )
        self._state.messages[(chat_id, message_id)] = message
        return self._shallow(message)

    async def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        chat_id = self._known_chat(params)
        self._known_thread(chat_id, params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    async def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._known_chat(params)
        message = self._state.messages.get((chat_id, int(params.get("message_id") or 0)))
        if message is None:
            raise _bad("message to edit not found")
        if message["from"]["id"] != self.bot.id:
            raise _bad("message can't be edited")
        plain = self._visible_text(params)
        if plain == message.get("text"):
            raise _bad(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message"
            )
        sent: SentMessage = message["_sent"]
        message["text"] = plain
        message["edit_date"] = int(time.time())
        message["_sent"] = SentMessage(
            chat_id=chat_id,
            message_id=sent.message_id,
            text=params["text"],
            plain_text=plain,
            parse_mode=params.get("parse_mode") or None,
            thread_id=sent.thread_id,
            reply_to=sent.reply_to,
        )
        return self._shallow(message)

    @staticmethod
    def _scope_key(scope: Any, language_code: Any) -> str:
        scope = scope or {"type": "default"}
        return json.dumps([scope, language_code or ""], sort_keys=True)

    async def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad("commands must be an array")
        for command in commands:
            if not _COMMAND_RE.match(str(command.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        key = self._scope_key(params.get("scope"), params.get("language_code"))
        self._state.commands[key] = commands
        return True

    async def _api_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, str]]:
        key = self._scope_key(params.get("scope"), params.get("language_code"))
        return self._state.commands.get(key, [])

    async def _api_deleteMyCommands(self, params: dict[str, Any]) -> bool:
        key = self._scope_key(params.get("scope"), params.get("language_code"))
        self._state.commands.pop(key, None)
        return True

    async def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        url = params.get("url", "")
        if not url:
            return await self._api_deleteWebhook(params)
        if not re.match(r"^https?://", url):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        if params.get("drop_pending_updates"):
            self._state.updates.clear()
        self._state.webhook = {"url": url, "secret_token": params.get("secret_token")}
        # Updates that waited for a poll go to the new webhook, oldest first.
        pending, self._state.updates = self._state.updates, []
        for update in pending:
            self._webhook_queue.put_nowait(update)
        return True

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates"):
            self._state.updates.clear()
        self._state.webhook = None
        return True

    async def _api_close(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_logOut(self, params: dict[str, Any]) -> bool:
        return True
