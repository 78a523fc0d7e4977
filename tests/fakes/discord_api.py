"""A fake Discord for driving the real discord.py client over the wire.

One aiohttp server on 127.0.0.1 (random port) serves both the REST API (under /api/v10) and
a real websocket gateway. It keeps just enough state to behave like Discord where the
adapter depends on it: snowflake ids, one guild with channels, a thread and members, DM
channels, the bot's own posts echoed back as MESSAGE_CREATE, enforce_nonce dedupe, resumable
sessions that replay missed events, close codes 4004/4014, 429s shaped like the real
ones, interactions that must be acknowledged once, within 3 s, before any followup, and
calls held unanswered until a test lets them through.
Anything it does not know answers 404 so a test fails loudly instead of passing by accident.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
GATEWAY_PATH = "/gateway"
RESUME_GATEWAY_PATH = "/resume-gateway"
DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT_INTENT = 1 << 15
DEFAULT_TOKEN = "MTAxNjk0fake.bot-token_for.tests_0123456789"
EPHEMERAL = 64
# Interaction callbacks and webhooks authenticate by the token in their URL, not the header.
_TOKEN_IN_URL = ("/interactions/", "/webhooks/")

Json = dict[str, Any]


@dataclass(frozen=True)
class FakeUser:
    id: str
    username: str
    bot: bool = False
    roles: tuple[str, ...] = ()

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "username": self.username,
            "global_name": self.username.capitalize(),
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass(frozen=True)
class RestCall:
    method: str
    path: str  # relative to the API prefix, e.g. "/channels/1/messages"
    route: str  # the route pattern, e.g. "POST /channels/{channel_id}/messages"
    body: Any
    status: int


@dataclass
class _Failure:
    status: int
    body: Json
    headers: dict[str, str]
    times: int


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    path: str
    ready: bool = False


@dataclass
class _Interaction:
    token: str
    created: float  # time.monotonic() when it was dispatched
    acknowledged: bool = False


@dataclass
class _Session:
    session_id: str
    seq: int = 0
    # Every dispatch of the session, so a RESUME can replay what the client missed.
    log: list[Json] = field(default_factory=list)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # discord.py only parses bodies whose Content-Type is exactly "application/json";
    # json_response, and Response(text=...), add "; charset=utf-8".
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _error(status: int, message: str, code: int, errors: Json | None = None) -> web.Response:
    body: Json = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return _json_response(body, status)


class FakeDiscord:
    """Start with `async with FakeDiscord() as fake:`; point the client at `api_base_url`
    and `gateway_url`."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        message_content_enabled: bool = True,
        heartbeat_interval_ms: int = 1000,
        interaction_ack_seconds: float = 3.0,
    ) -> None:
        self.token = token
        self.message_content_enabled = message_content_enabled
        # The token the gateway accepts, when a test wants it to differ from REST's.
        self.gateway_token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Discord forgets an interaction not acknowledged within 3 s ("Unknown interaction").
        self.interaction_ack_seconds = interaction_ack_seconds
        self._ids = itertools.count(1)
        self.bot = FakeUser(self.snowflake(), "stillhere", bot=True)
        self.application_id = self.bot.id
        self.owner = FakeUser(self.snowflake(), "owner")
        self.guild_id = self.snowflake()
        self.bot_role_id = self.snowflake()
        self.mod_role_id = self.snowflake()
        self.general_id = self.snowflake()
        self.random_id = self.snowflake()
        self.thread_id = self.snowflake()
        self.alice = FakeUser(self.snowflake(), "alice", roles=(self.mod_role_id,))
        self.bob = FakeUser(self.snowflake(), "bob")
        self.other_bot = FakeUser(self.snowflake(), "otherbot", bot=True)
        self.users: dict[str, FakeUser] = {
            u.id: u for u in (self.bot, self.owner, self.alice, self.bob, self.other_bot)
        }
        self._dm_channels: dict[str, FakeUser] = {}
        self.messages: dict[str, Json] = {}
        self.rest_calls: list[RestCall] = []
        self.identify_payloads: list[Json] = []
        self.resume_payloads: list[Json] = []
        self.connection_paths: list[str] = []
        # Accepted interaction callbacks ({"interaction_id", "type", "data"}) and followups
        # ({"followup": True, "content", "flags", ...}), in the order they arrived.
        self.interaction_callbacks: list[Json] = []
        self._interactions: dict[str, _Interaction] = {}
        self.synced_commands: dict[str, list[Json]] = {}
        self._nonces: dict[tuple[str, str], str] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._holds: dict[str, asyncio.Event] = {}
        # "METHOD path" of every call that had to wait for a hold, in the order they came.
        self.held_calls: list[str] = []
        # The server's own tasks, which a call held at a test's end leaves running.
        self._serving: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._session: _Session | None = None
        self._connection: _Connection | None = None
        self._connections: set[web.WebSocketResponse] = set()
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_and_fail])
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        # aiohttp waits for running handlers at cleanup, so nothing may stay held.
        for gate in self._holds.values():
            gate.set()
        for ws in list(self._connections):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{GATEWAY_PATH}"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{RESUME_GATEWAY_PATH}"

    # --- ids and payloads ------------------------------------------------------------

    def snowflake(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._ids) & 0x3FFFFF))

    def dm_channel(self, user: FakeUser) -> str:
        """The id of the DM channel between `user` and the bot (created on first use)."""
        for channel_id, recipient in self._dm_channels.items():
            if recipient == user:
                return channel_id
        channel_id = self.snowflake()
        self._dm_channels[channel_id] = user
        return channel_id

    def _member_json(self, user: FakeUser, *, with_user: bool = True) -> Json:
        roles = list(user.roles)
        if user == self.bot:
            roles.append(self.bot_role_id)
        member: Json = {
            "roles": roles,
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "pending": False,
        }
        if with_user:
            member["user"] = user.to_json()
        return member

    def _text_channel_json(self, channel_id: str, name: str, position: int) -> Json:
        return {
            "id": channel_id,
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def _thread_json(self) -> Json:
        return {
            "id": self.thread_id,
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": self.general_id,
            "owner_id": self.alice.id,
            "name": "planning",
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 2,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": "2024-01-01T00:00:00+00:00",
                "locked": False,
            },
        }

    def _role_json(self, role_id: str, name: str, *, permissions: int, position: int) -> Json:
        role: Json = {
            "id": role_id,
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "hoist": False,
            "managed": role_id == self.bot_role_id,
            "mentionable": True,
            "flags": 0,
        }
        if role_id == self.bot_role_id:
            role["tags"] = {"bot_id": self.bot.id}
        return role

    def guild_json(self) -> Json:
        view_send_read = (1 << 10) | (1 << 11) | (1 << 16)
        members = [self.bot, self.owner, self.alice, self.bob, self.other_bot]
        return {
            "id": self.guild_id,
            "name": "Test Server",
            "icon": None,
            "owner_id": self.owner.id,
            "unavailable": False,
            "large": False,
            "member_count": len(members),
            "joined_at": "2024-01-01T00:00:00+00:00",
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                self._role_json(self.guild_id, "@everyone", permissions=view_send_read, position=0),
                self._role_json(self.mod_role_id, "mods", permissions=1 << 5, position=1),
                self._role_json(
                    self.bot_role_id, "stillhere", permissions=view_send_read, position=2
                ),
            ],
            "members": [self._member_json(u) for u in members],
            "channels": [
                self._text_channel_json(self.general_id, "general", 0),
                self._text_channel_json(self.random_id, "random", 1),
            ],
            "threads": [self._thread_json()],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "mfa_level": 0,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "system_channel_id": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
        }

    def _channel_guild(self, channel_id: str) -> str | None:
        if channel_id in (self.general_id, self.random_id, self.thread_id):
            return self.guild_id
        return None

    def _known_channel(self, channel_id: str) -> bool:
        return self._channel_guild(channel_id) is not None or channel_id in self._dm_channels

    def _message_json(
        self,
        channel_id: str,
        author: FakeUser,
        content: str,
        *,
        mentions: list[FakeUser],
        reference: str | None,
        attachments: list[Json],
        sticker: bool,
        nonce: str | None = None,
    ) -> Json:
        guild_id = self._channel_guild(channel_id)
        message: Json = {
            "id": self.snowflake(),
            "channel_id": channel_id,
            "author": author.to_json(),
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [u.to_json() for u in mentions],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if guild_id is not None:
            message["guild_id"] = guild_id
            message["member"] = self._member_json(author, with_user=False)
        if nonce is not None:
            message["nonce"] = nonce
        if reference is not None and reference in self.messages:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": reference,
                "channel_id": channel_id,
                "guild_id": guild_id,
            }
            message["referenced_message"] = self.messages[reference]
        if sticker:
            message["sticker_items"] = [{"id": self.snowflake(), "name": "wave", "format_type": 1}]
        self.messages[message["id"]] = message
        return message

    # --- driving the fake from tests -------------------------------------------------

    async def push_message(
        self,
        channel_id: str,
        author: FakeUser,
        content: str,
        *,
        guild: bool = True,
        mentions_bot: bool = False,
        reply_to: str | None = None,
        attachments: list[Json] | None = None,
        sticker: bool = False,
    ) -> Json:
        """A person writes in a channel (guild=True) or in their DM with the bot."""
        if guild and self._channel_guild(channel_id) is None:
            raise ValueError(f"{channel_id} is not a channel of the fake guild")
        if not guild:
            if self._channel_guild(channel_id) is not None:
                raise ValueError(f"{channel_id} is a guild channel, not a DM")
            self._dm_channels.setdefault(channel_id, author)
        mentions = [self.bot] if mentions_bot else []
        if mentions_bot:
            content = f"<@{self.bot.id}> {content}"
        full_attachments = [
            {
                "id": self.snowflake(),
                "filename": a.get("filename", "file.bin"),
                "size": a.get("size", 1024),
                "url": f"https://cdn.example/{a.get('filename', 'file.bin')}",
                "proxy_url": f"https://media.example/{a.get('filename', 'file.bin')}",
                **({"content_type": a["content_type"]} if "content_type" in a else {}),
                **({"flags": a["flags"]} if "flags" in a else {}),
            }
            for a in attachments or []
        ]
        message = self._message_json(
            channel_id,
            author,
            content,
            mentions=mentions,
            reference=reply_to,
            attachments=full_attachments,
            sticker=sticker,
        )
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def edit_message(self, message_id: str, content: str) -> None:
        """Its author edits a message (MESSAGE_UPDATE with an edited_timestamp)."""
        message = self.messages[message_id]
        message["content"] = content
        message["edited_timestamp"] = _now_iso()
        await self.dispatch("MESSAGE_UPDATE", message)

    async def delete_message(self, message_id: str) -> None:
        message = self.messages.pop(message_id)
        data: Json = {"id": message_id, "channel_id": message["channel_id"]}
        if "guild_id" in message:
            data["guild_id"] = message["guild_id"]
        await self.dispatch("MESSAGE_DELETE", data)

    async def push_slash(self, name: str, channel_id: str, user: FakeUser) -> Json:
        """A person runs one of the bot's synced slash commands."""
        interaction = self.new_interaction(name, channel_id, user)
        await self.dispatch("INTERACTION_CREATE", interaction)
        return interaction

    def new_interaction(self, name: str, channel_id: str, user: FakeUser) -> Json:
        """The INTERACTION_CREATE payload of `user` running /`name`, from now on awaiting its
        acknowledgement; push_slash sends it."""
        command = self._synced_command(name)
        guild_id = self._channel_guild(channel_id)
        interaction: Json = {
            "id": self.snowflake(),
            "application_id": self.application_id,
            "type": 2,
            "token": secrets.token_urlsafe(24),
            "version": 1,
            "locale": "en-US",
            "app_permissions": str((1 << 10) | (1 << 11)),
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id if guild_id else "0"},
            "data": {"id": command["id"], "name": name, "type": 1, "options": []},
            "channel_id": channel_id,
        }
        if guild_id is not None:
            interaction["guild_id"] = guild_id
            interaction["guild_locale"] = "en-US"
            interaction["context"] = 0
            channel = (
                self._thread_json()
                if channel_id == self.thread_id
                else next(c for c in self.guild_json()["channels"] if c["id"] == channel_id)
            )
            interaction["channel"] = channel
            member = self._member_json(user)
            member["permissions"] = str((1 << 10) | (1 << 11))
            interaction["member"] = member
        else:
            self._dm_channels.setdefault(channel_id, user)
            interaction["context"] = 1
            interaction["channel"] = {"id": channel_id, "type": 1, "recipients": [user.to_json()]}
            interaction["user"] = user.to_json()
        self._interactions[interaction["id"]] = _Interaction(interaction["token"], time.monotonic())
        return interaction

    def _synced_command(self, name: str) -> Json:
        for commands in self.synced_commands.values():
            for command in commands:
                if command["name"] == name:
                    return command
        raise AssertionError(f"slash command /{name} was never synced")

    def fail_next(
        self,
        route: str,
        status: int,
        *,
        retry_after: float = 0.05,
        times: int = 1,
        via: bool = True,
        code: int = 0,
        message: str | None = None,
    ) -> None:
        """The next `times` calls of `route` ("POST /channels/{channel_id}/messages", or a
        concrete "POST /channels/123/messages") answer `status` instead."""
        headers: dict[str, str] = {}
        body: Json
        if status == 429:
            body = {
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": False,
            }
            headers["Retry-After"] = str(max(1, round(retry_after)))
            if via:
                headers["Via"] = "1.1 google"
        else:
            body = {"message": message or f"{status}: error", "code": code}
        self._failures.setdefault(route, []).append(_Failure(status, body, headers, times))

    def hold(self, route: str) -> asyncio.Event:
        """Calls of `route` (as for fail_next) wait, from now on, until the returned event is
        set: a request Discord is slow to answer, as one a client sits out a 429 for.
        held_calls says when one is waiting; close() releases them all."""
        gate = self._holds[route] = asyncio.Event()
        return gate

    def is_serving(self, task: asyncio.Task[Any]) -> bool:
        """Whether `task` is the fake's own, answering a held call: a test counting what the
        client left running leaves those out."""
        return task in self._serving

    async def drop_connection(self, *, code: int = 4000, replay_overlap: int = 0) -> None:
        """Closes the gateway socket as a network hiccup would. With `replay_overlap`, the
        resume replays that many events the client had already seen (a real gateway may)."""
        async with self._lock:
            connection, self._connection = self._connection, None
            self._replay_overlap = replay_overlap
        if connection is not None:
            await connection.ws.close(code=code)

    def posted_messages(self, channel_id: str) -> list[Json]:
        """The messages the bot posted in a channel, oldest first."""
        return [
            m
            for m in self.messages.values()
            if m["channel_id"] == channel_id and m["author"]["id"] == self.bot.id
        ]

    def calls(self, route: str) -> list[RestCall]:
        return [c for c in self.rest_calls if route in (c.route, f"{c.method} {c.path}")]

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.ready

    async def wait_for(
        self, predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0
    ) -> None:
        """Polls `predicate` until it holds; fails the test after `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    # --- gateway ---------------------------------------------------------------------

    _replay_overlap = 0

    async def dispatch(self, event: str, data: Json) -> None:
        """Sends an event on the session, or keeps it for the resume when disconnected."""
        async with self._lock:
            if self._session is None:
                raise AssertionError("no gateway session: is the client connected?")
            await self._send_dispatch(self._session, event, data)

    async def _send_dispatch(self, session: _Session, event: str, data: Json) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.log.append(payload)
        connection = self._connection
        if connection is not None and connection.ready and not connection.ws.closed:
            await connection.ws.send_str(json.dumps(payload))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._connections.add(ws)
        self.connection_paths.append(request.path)
        connection = _Connection(ws, request.path)
        try:
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                await self._on_gateway_payload(connection, json.loads(msg.data))
        finally:
            self._connections.discard(ws)
            async with self._lock:
                if self._connection is connection:
                    self._connection = None
        return ws

    async def _on_gateway_payload(self, connection: _Connection, payload: Json) -> None:
        op = payload.get("op")
        data: Json = payload.get("d") or {}
        if op == 1:
            await connection.ws.send_str(json.dumps({"op": 11}))
        elif op == 2:
            await self._identify(connection, data)
        elif op == 6:
            await self._resume(connection, data)

    async def _identify(self, connection: _Connection, data: Json) -> None:
        self.identify_payloads.append(data)
        if data.get("token") != self.gateway_token:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        if data.get("intents", 0) & MESSAGE_CONTENT_INTENT and not self.message_content_enabled:
            await connection.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        async with self._lock:
            session = _Session(secrets.token_hex(16))
            self._session = session
            self._connection = connection
            connection.ready = True
            ready = {
                "v": 10,
                "user": self.bot.to_json(),
                "guilds": [{"id": self.guild_id, "unavailable": True}],
                "session_id": session.session_id,
                "resume_gateway_url": self.resume_gateway_url,
                "application": {"id": self.application_id, "flags": self._application_flags()},
                "private_channels": [],
                "relationships": [],
            }
            await self._send_dispatch(session, "READY", ready)
            await self._send_dispatch(session, "GUILD_CREATE", self.guild_json())

    async def _resume(self, connection: _Connection, data: Json) -> None:
        self.resume_payloads.append(data)
        async with self._lock:
            session = self._session
            if data.get("token") != self.gateway_token:
                await connection.ws.close(code=4004, message=b"Authentication failed.")
                return
            if session is None or data.get("session_id") != session.session_id:
                await connection.ws.send_str(json.dumps({"op": 9, "d": False}))
                return
            last_seen = (data.get("seq") or 0) - self._replay_overlap
            self._replay_overlap = 0
            for payload in session.log:
                if payload["s"] > last_seen:
                    await connection.ws.send_str(json.dumps(payload))
            self._connection = connection
            connection.ready = True
            await self._send_dispatch(session, "RESUMED", {})

    def _application_flags(self) -> int:
        # GATEWAY_MESSAGE_CONTENT: what the Developer Portal toggle sets on a real app.
        return (1 << 19) if self.message_content_enabled else 0

    # --- REST ------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get(GATEWAY_PATH, self._gateway)
        app.router.add_get(RESUME_GATEWAY_PATH, self._gateway)
        p = API_PREFIX
        app.router.add_get(p + "/users/@me", self._get_me)
        app.router.add_get(p + "/oauth2/applications/@me", self._get_application)
        app.router.add_post(p + "/channels/{channel_id}/messages", self._create_message)
        app.router.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        app.router.add_post(p + "/channels/{channel_id}/typing", self._typing)
        app.router.add_put(p + "/applications/{app_id}/commands", self._sync_commands)
        app.router.add_put(
            p + "/applications/{app_id}/guilds/{guild_id}/commands", self._sync_commands
        )
        app.router.add_post(
            p + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback
        )
        app.router.add_post(p + "/webhooks/{app_id}/{token}", self._followup)
        app.router.add_route("*", p + "/{tail:.*}", self._unknown)

    @web.middleware
    async def _record_and_fail(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        path = request.path.removeprefix(API_PREFIX)
        resource = request.match_info.route.resource
        pattern = resource.canonical.removeprefix(API_PREFIX) if resource else path
        route = f"{request.method} {pattern}"
        body = await request.json() if request.can_read_body else None
        for key in (route, f"{request.method} {path}"):
            gate = self._holds.get(key)
            if gate is not None and not gate.is_set():
                self._serving.update(
                    t for t in (request.task, asyncio.current_task()) if t is not None
                )
                self.held_calls.append(f"{request.method} {path}")
                await gate.wait()
        response: web.StreamResponse
        failure = self._take_failure(route, f"{request.method} {path}")
        if failure is not None:
            response = _json_response(failure.body, failure.status, failure.headers)
        elif not path.startswith(_TOKEN_IN_URL) and (
            request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            response = _error(401, "401: Unauthorized", 0)
        else:
            response = await handler(request)
        self.rest_calls.append(RestCall(request.method, path, route, body, response.status))
        return response

    def _take_failure(self, *keys: str) -> _Failure | None:
        for key in keys:
            queue = self._failures.get(key)
            if queue:
                failure = queue[0]
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
                return failure
        return None

    async def _unknown(self, request: web.Request) -> web.Response:
        return _error(404, "404: Not Found", 0)

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json_response(
            {**self.bot.to_json(), "verified": True, "mfa_enabled": False, "flags": 0}
        )

    async def _get_application(self, request: web.Request) -> web.Response:
        return _json_response(
            {
                "id": self.application_id,
                "name": "stillhere",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.to_json(),
                "verify_key": "0" * 64,
                "flags": self._application_flags(),
                "team": None,
            }
        )

    async def _create_message(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["channel_id"]
        body = await request.json()
        if not self._known_channel(channel_id):
            return _error(404, "Unknown Channel", 10003)
        content = body.get("content") or ""
        if not content.strip() and not body.get("embeds") and not body.get("sticker_ids"):
            return _error(400, "Cannot send an empty message", 50006)
        if len(content) > 2000:
            return _error(
                400,
                "Invalid Form Body",
                50035,
                {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": "Must be 2000 or fewer in length.",
                            }
                        ]
                    }
                },
            )
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            existing = self._nonces.get((channel_id, str(nonce)))
            if existing is not None:
                return _json_response(self.messages[existing])
        reference = (body.get("message_reference") or {}).get("message_id")
        if reference is not None and str(reference) not in self.messages:
            if (body.get("message_reference") or {}).get("fail_if_not_exists", True):
                return _error(
                    400,
                    "Invalid Form Body",
                    50035,
                    {"message_reference": {"_errors": [{"code": "REPLIES_UNKNOWN_MESSAGE"}]}},
                )
            reference = None
        message = self._message_json(
            channel_id,
            self.bot,
            content,
            mentions=[],
            reference=None if reference is None else str(reference),
            attachments=[],
            sticker=False,
            nonce=None if nonce is None else str(nonce),
        )
        if nonce is not None:
            self._nonces[(channel_id, str(nonce))] = message["id"]
        # Real Discord echoes the bot's own messages on the gateway.
        if self._session is not None:
            await self.dispatch("MESSAGE_CREATE", message)
        return _json_response(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message_id"])
        if message is None or message["channel_id"] != request.match_info["channel_id"]:
            return _error(404, "Unknown Message", 10008)
        if message["author"]["id"] != self.bot.id:
            return _error(403, "Cannot edit a message authored by another user", 50005)
        body = await request.json()
        if "content" in body:
            message["content"] = body["content"]
        message["edited_timestamp"] = _now_iso()
        if self._session is not None:
            await self.dispatch("MESSAGE_UPDATE", message)
        return _json_response(message)

    async def _typing(self, request: web.Request) -> web.Response:
        if not self._known_channel(request.match_info["channel_id"]):
            return _error(404, "Unknown Channel", 10003)
        return web.Response(status=204)

    async def _sync_commands(self, request: web.Request) -> web.Response:
        if request.match_info["app_id"] != self.application_id:
            return _error(403, "Missing Access", 50001)
        body = await request.json()
        scope = request.match_info.get("guild_id", "global")
        commands = [
            {
                **command,
                "id": self.snowflake(),
                "application_id": self.application_id,
                "version": self.snowflake(),
                "type": command.get("type", 1),
                "description": command.get("description", ""),
                "options": command.get("options", []),
                "default_member_permissions": command.get("default_member_permissions"),
                "nsfw": command.get("nsfw", False),
            }
            for command in body
        ]
        self.synced_commands[scope] = commands
        return _json_response(commands)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self._interactions.get(request.match_info["interaction_id"])
        if (
            interaction is None
            or interaction.token != request.match_info["token"]
            or time.monotonic() - interaction.created > self.interaction_ack_seconds
        ):
            return _error(404, "Unknown interaction", 10062)
        if interaction.acknowledged:
            return _error(400, "Interaction has already been acknowledged.", 40060)
        interaction.acknowledged = True
        body = await request.json()
        self.interaction_callbacks.append(
            {"interaction_id": request.match_info["interaction_id"], **body}
        )
        data = body.get("data") or {}
        return _json_response(
            {
                "interaction": {
                    "id": request.match_info["interaction_id"],
                    "type": 2,
                    "response_message_id": self.snowflake(),
                    "response_message_loading": False,
                    "response_message_ephemeral": bool((data.get("flags") or 0) & EPHEMERAL),
                },
            }
        )

    async def _followup(self, request: web.Request) -> web.Response:
        # An interaction's webhook exists only once the interaction has been acknowledged.
        token = request.match_info["token"]
        if request.match_info["app_id"] != self.application_id or not any(
            i.token == token and i.acknowledged for i in self._interactions.values()
        ):
            return _error(404, "Unknown Webhook", 10015)
        body = await request.json()
        self.interaction_callbacks.append({"followup": True, **body})
        message: Json = {
            "id": self.snowflake(),
            "channel_id": "0",
            "author": self.bot.to_json(),
            "content": body.get("content") or "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": body.get("flags") or 0,
            "components": [],
        }
        return _json_response(message)
