"""HTTP-level guards around python-telegram-bot: bad updates and rate limits."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import Update
from telegram._utils.types import ODVInput
from telegram.error import RetryAfter
from telegram.ext import AIORateLimiter
from telegram.request import BaseRequest, RequestData

from adapters.telegram.confirmation import UnconfirmedUpdates
from adapters.telegram.http_client import AiohttpRequest

log = logging.getLogger(__name__)

JSONDict = dict[str, Any]
ApiResult = bool | JSONDict | list[JSONDict]


def sanitize_updates(payload: JSONDict) -> JSONDict:
    """Replaces each update the library cannot parse by an empty one with the same id.

    python-telegram-bot parses a whole getUpdates batch at once; one malformed update makes
    the batch fail without confirming it, and polling would fetch the same batch forever.
    An empty update keeps the id (so the offset moves past it) and is ignored by handlers.
    """
    result = payload.get("result")
    if not payload.get("ok") or not isinstance(result, list):
        return payload
    cleaned: list[Any] = []
    for raw in result:
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if not isinstance(update_id, int):
            log.error("dropping an update without a usable update_id: %.500r", raw)
            continue
        try:
            Update.de_json(raw, None)
        except Exception:
            log.exception("skipping malformed update %s: %.500r", update_id, raw)
            cleaned.append({"update_id": update_id})
        else:
            cleaned.append(raw)
    return {**payload, "result": cleaned}


class UpdateGuardRequest(AiohttpRequest):
    """The request object used for getUpdates only.

    A batch goes to python-telegram-bot as Telegram sent it, parsed by the library alone
    (parsing an update costs about 60 µs, paid before any of its batch is handled). If the
    library cannot parse it, it logs that and asks again from the same offset, and this
    time the batch goes through `sanitize_updates` first: an update it cannot parse
    becomes an empty one with its id, and polling moves past it.

    `on_answer` hears of every answer the Bot API gives: its HTTP status, and for an error
    the API's description. python-telegram-bot tells the application of neither a poll
    that worked again after failures, nor a 401 or 404 (InvalidToken), on which its
    polling gives up for good.

    `unconfirmed` learns of every update fetched, and a call that would confirm some it
    has not seen taken in waits for them first (adapters.telegram.confirmation).
    """

    def __init__(
        self,
        *,
        on_answer: Callable[[int, str | None], None] | None = None,
        unconfirmed: UnconfirmedUpdates | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._on_answer = on_answer
        self._unconfirmed = unconfirmed
        # The offset of the call being answered, and of the last call that fetched
        # updates: asked again from there, the library could not parse them.
        self._offset: int | None = None
        self._fetched_from: int | None = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        offset = request_data.parameters.get("offset") if request_data is not None else None
        self._offset = offset if isinstance(offset, int) else None
        if self._unconfirmed is not None and isinstance(offset, int):
            await self._unconfirmed.before_confirming(offset)
            # One turn of the loop before this poll is built (a third of a millisecond of
            # CPU): the replies to what was just taken in are on their way, and aiohttp
            # writes a request in a task of its own (before Python 3.12), queued by now.
            # Built first, the poll would hold up what a person waits for.
            await asyncio.sleep(0)
        code, payload = await super().do_request(
            url, method, request_data, read_timeout, write_timeout, connect_timeout, pool_timeout
        )
        if self._on_answer is not None:
            self._on_answer(code, None if code == 200 else _description(code, payload))
        return code, payload

    def parse_json_payload(self, payload: bytes) -> JSONDict:  # type: ignore[override]
        # python-telegram-bot declares it static but calls it on the request object.
        parsed = BaseRequest.parse_json_payload(payload)
        result = parsed.get("result")
        if not parsed.get("ok") or not isinstance(result, list):
            return parsed
        if self._offset is not None and self._offset == self._fetched_from:
            parsed = sanitize_updates(parsed)
            result = parsed["result"]
        self._fetched_from = self._offset if result else None
        if self._unconfirmed is not None:
            self._unconfirmed.fetched(
                update["update_id"]
                for update in result
                if isinstance(update, dict) and isinstance(update.get("update_id"), int)
            )
        return parsed


def _description(code: int, payload: bytes) -> str:
    try:
        description = json.loads(payload).get("description")
    except (ValueError, AttributeError):
        description = None
    return description if isinstance(description, str) and description else f"HTTP {code}"


class _PassedOn(Exception):
    """Carries a RetryAfter past AIORateLimiter's own handling of it."""

    def __init__(self, error: RetryAfter) -> None:
        super().__init__(error.message)
        self.error = error


class ChatActionExemptRateLimiter(AIORateLimiter):
    """AIORateLimiter's throttling, without its 429 handling, and none for typing indicators.

    On a RetryAfter AIORateLimiter holds back every request, to every chat, for the wait
    Telegram asked of one chat (and logs an error when it gives up). Here the RetryAfter goes
    straight back to the caller instead: Delivery waits it out in that chat's task alone.

    Telegram's 20-per-minute group limit counts messages; typing every few seconds would
    otherwise use up that budget and delay the replies themselves.
    """

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, ApiResult]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> ApiResult:
        if endpoint == "sendChatAction":
            return await callback(*args, **kwargs)

        async def passing_429s_on(*call_args: Any, **call_kwargs: Any) -> ApiResult:
            try:
                return await callback(*call_args, **call_kwargs)
            except RetryAfter as error:
                raise _PassedOn(error) from None

        try:
            return await super().process_request(
                passing_429s_on, args, kwargs, endpoint, data, rate_limit_args
            )
        except _PassedOn as passed:
            raise passed.error from None
