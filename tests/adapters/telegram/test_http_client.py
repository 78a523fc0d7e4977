"""The aiohttp transport sends what python-telegram-bot's own httpx transport sends, and
fails as it fails: TimedOut for every timeout, NetworkError for anything else. Real HTTP
against a server on 127.0.0.1, through the real `telegram.Bot`."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from telegram import Bot, InputFile
from telegram.error import BadRequest, NetworkError, TimedOut
from telegram.request import BaseRequest, HTTPXRequest

from adapters.telegram.http_client import AiohttpRequest

TOKEN = "42:TestToken"
ME = {"id": 42, "is_bot": True, "first_name": "Bot", "username": "bot"}


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    content_type: str
    fields: dict[str, str]
    files: dict[str, tuple[str | None, bytes]] = field(default_factory=dict)


@dataclass
class Api:
    url: str
    seen: list[Seen]
    release: asyncio.Event


async def _answer(request: web.Request, api: Api) -> web.Response:
    fields: dict[str, str] = {}
    files: dict[str, tuple[str | None, bytes]] = {}
    for name, value in (await request.post()).items():
        if isinstance(value, web.FileField):
            files[name] = (value.filename, value.file.read())
        else:
            fields[name] = str(value)
    method = request.match_info["method"]
    api.seen.append(Seen(method, request.content_type, fields, files))
    if method == "getMe":
        return web.json_response({"ok": True, "result": ME})
    if method == "hang":
        await api.release.wait()
    if method == "refuse":
        return web.json_response(
            {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
            status=400,
        )
    message = {"message_id": 7, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "x"}
    return web.json_response({"ok": True, "result": message})


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    app = web.Application()
    runner = web.AppRunner(app)
    seen: list[Seen] = []
    state = Api("", seen, asyncio.Event())

    async def handler(request: web.Request) -> web.Response:
        return await _answer(request, state)

    app.router.add_post(f"/bot{TOKEN}/{{method}}", handler)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


async def _with_bot(api: Api, request: BaseRequest, use: Callable[[Bot], Awaitable[Any]]) -> Any:
    bot = Bot(TOKEN, base_url=f"{api.url}/bot", request=request)
    async with bot:
        return await use(bot)


async def _send_both_ways(api: Api, use: Callable[[Bot], Awaitable[Any]]) -> tuple[Seen, Seen]:
    await _with_bot(api, HTTPXRequest(), use)
    ours_from = len(api.seen)
    await _with_bot(api, AiohttpRequest(), use)
    theirs, ours = api.seen[ours_from - 1], api.seen[-1]
    return theirs, ours


async def test_a_message_is_sent_as_httpx_sends_it(api: Api) -> None:
    async def send(bot: Bot) -> Any:
        return await bot.send_message(
            5, "¿Sigues ahí? <b>1 & 2</b>", parse_mode="HTML", reply_parameters={"message_id": 3}
        )

    theirs, ours = await _send_both_ways(api, send)
    assert ours == theirs
    assert ours.method == "sendMessage" and ours.fields["text"] == "¿Sigues ahí? <b>1 & 2</b>"
    assert ours.content_type == "application/x-www-form-urlencoded"


async def test_a_file_is_uploaded_as_httpx_uploads_it(api: Api) -> None:
    async def upload(bot: Bot) -> Any:
        document = InputFile(io.BytesIO(b"\x00 log \xff"), filename="run.log")
        return await bot.send_document(5, document, caption="the log")

    theirs, ours = await _send_both_ways(api, upload)
    assert ours == theirs
    assert ours.files == {"document": ("run.log", b"\x00 log \xff")}
    assert ours.fields["caption"] == "the log"


async def test_an_api_error_reaches_the_bot_as_the_library_raises_it(api: Api) -> None:
    request = AiohttpRequest()
    await request.initialize()
    try:
        with pytest.raises(BadRequest, match="Chat not found"):
            await request.post(f"{api.url}/bot{TOKEN}/refuse")
    finally:
        await request.shutdown()


async def test_a_slow_answer_is_a_timeout(api: Api) -> None:
    request = AiohttpRequest(read_timeout=0.2)
    await request.initialize()
    try:
        with pytest.raises(TimedOut):
            await request.post(f"{api.url}/bot{TOKEN}/hang")
        # A long poll asks for a longer read than the default, and gets it.
        waiting = asyncio.create_task(request.post(f"{api.url}/bot{TOKEN}/hang", read_timeout=30))
        await asyncio.sleep(0.4)
        assert not waiting.done()
        api.release.set()
        assert (await waiting)["message_id"] == 7
    finally:
        await request.shutdown()


async def test_waiting_too_long_for_a_free_connection_is_a_timeout(api: Api) -> None:
    request = AiohttpRequest(connection_pool_size=1, pool_timeout=0.2, connect_timeout=0.2)
    await request.initialize()
    try:
        holding = asyncio.create_task(request.post(f"{api.url}/bot{TOKEN}/hang"))
        while not api.seen:
            await asyncio.sleep(0.01)
        with pytest.raises(TimedOut):
            await request.post(f"{api.url}/bot{TOKEN}/sendMessage")
        api.release.set()
        await holding
    finally:
        await request.shutdown()


async def test_no_server_is_a_network_error_naming_the_cause() -> None:
    request = AiohttpRequest()
    await request.initialize()
    try:
        with pytest.raises(NetworkError, match=r"aiohttp\.Client\w+Error") as caught:
            await request.post(f"http://127.0.0.1:1/bot{TOKEN}/getMe")
        assert not isinstance(caught.value, TimedOut)
    finally:
        await request.shutdown()


async def test_it_must_be_initialized_and_shuts_down_once() -> None:
    request = AiohttpRequest()
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request("http://127.0.0.1:1/", "POST")
    await request.initialize()
    await request.shutdown()
    await request.shutdown()
    await request.initialize()  # as python-telegram-bot does after a restart
    await request.shutdown()


async def test_the_proxy_the_environment_names_carries_the_requests(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test server plays the proxy: a request to a host that does not exist reaches it.
    monkeypatch.setenv("HTTP_PROXY", api.url)
    monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
    request = AiohttpRequest(connect_timeout=1)
    await request.initialize()
    try:
        await request.post(f"http://api.telegram.invalid/bot{TOKEN}/getMe")
        assert [seen.method for seen in api.seen] == ["getMe"]
        with pytest.raises(NetworkError):  # NO_PROXY: straight to a host that does not exist
            await request.post(f"http://bypassed.invalid/bot{TOKEN}/getMe")
        assert len(api.seen) == 1
    finally:
        await request.shutdown()
