"""python-telegram-bot's HTTP transport on aiohttp instead of httpx.

Every Bot API call goes through `BaseRequest.do_request`; python-telegram-bot's own
implementation (HTTPXRequest) spends about 0.5 ms of CPU per call in httpx and httpcore,
more than the rest of a sendMessage (bench/RESULTS.md, "Measured in session 17"). An
instant reply is one call, so that was the largest single cost of answering a message
after storing it. aiohttp is already here (discord.py runs on it). Everything above the
transport (the Bot methods, the JSON parsing, the errors raised for each HTTP status) is
still python-telegram-bot's, as a `BaseRequest` subclass is meant to be used.

Kept from HTTPXRequest: its defaults (5 s read, write and connect; 1 s to wait for a
free connection; 20 s to write an upload), proxies from the environment (HTTPS_PROXY,
HTTP_PROXY, ALL_PROXY, NO_PROXY) and certifi's certificates; a timeout raises TimedOut,
any other failure NetworkError. The proxy is looked up once per host: aiohttp's own
lookup (`trust_env`) reads the environment and ~/.netrc in a worker thread for every
request, a thread hop per message. aiohttp has no write timeout of its own: the whole
request is bounded by the sum of its phases' timeouts instead, so a stalled write still
ends.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
import certifi
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL_TIMEOUT = 1.0
DEFAULT_MEDIA_WRITE_TIMEOUT = 20.0


def _chosen(value: ODVInput[float], default: float | None) -> float | None:
    return default if isinstance(value, DefaultValue) else value


def _total(*phases: float | None) -> float | None:
    """No phase unbounded, no bound on the whole (a long poll may wait as long as it asked)."""
    if any(phase is None for phase in phases):
        return None
    return sum(phase for phase in phases if phase is not None)


class AiohttpRequest(BaseRequest):
    """A `BaseRequest` on one aiohttp session, opened by `initialize` and closed by
    `shutdown` (python-telegram-bot calls both, as for its own transport)."""

    __slots__ = (
        "_connect_timeout",
        "_media_write_timeout",
        "_pool_size",
        "_pool_timeout",
        "_proxies",
        "_read_timeout",
        "_session",
        "_write_timeout",
    )

    def __init__(
        self,
        connection_pool_size: int = 256,
        read_timeout: float | None = DEFAULT_TIMEOUT,
        write_timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_TIMEOUT,
        pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
        media_write_timeout: float | None = DEFAULT_MEDIA_WRITE_TIMEOUT,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._pool_size,
                    ssl=ssl.create_default_context(cafile=certifi.where()),
                ),
            )
            self._proxies.clear()

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

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
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data.multipart_data if request_data and request_data.contains_files else {}
        read = _chosen(read_timeout, self._read_timeout)
        connect = _chosen(connect_timeout, self._connect_timeout)
        pool = _chosen(pool_timeout, self._pool_timeout)
        write = _chosen(write_timeout, self._media_write_timeout if files else self._write_timeout)
        timeout = aiohttp.ClientTimeout(
            total=_total(pool, connect, write, read),
            # aiohttp's `connect` is the wait for a pooled connection plus opening one.
            connect=_total(pool, connect),
            sock_connect=connect,
            sock_read=read,
        )
        try:
            async with self._session.request(
                method,
                url,
                data=_body(request_data, files),
                headers=_FORM if request_data is not None and not files else _OTHER,
                timeout=timeout,
                proxy=self._proxy(url),
            ) as response:
                return response.status, await response.read()
        except TimeoutError as error:  # aiohttp's own timeouts are TimeoutErrors too
            raise TimedOut from error
        except aiohttp.ClientError as error:
            raise NetworkError(f"aiohttp.{type(error).__name__}: {error}") from error

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for this URL's scheme and host, if any."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            proxies = getproxies()
            bypass = proxy_bypass_environment(key[1], proxies)
            self._proxies[key] = None if bypass else proxies.get(key[0]) or proxies.get("all")
        return self._proxies[key]


_OTHER = {"User-Agent": BaseRequest.USER_AGENT}
# Encoded here: given a dict, aiohttp builds a multipart writer it then does not use.
_FORM = {**_OTHER, "Content-Type": "application/x-www-form-urlencoded"}


def _body(request_data: RequestData | None, files: dict[str, Any]) -> Any:
    """Form fields, url-encoded as HTTPXRequest sends them, or multipart with the files."""
    if request_data is None:
        return None
    if not files:
        return request_data.url_encoded_parameters().encode()
    form = aiohttp.FormData()
    for name, value in request_data.json_parameters.items():
        form.add_field(name, value)
    for name, (filename, content, mimetype) in files.items():
        form.add_field(name, content, filename=filename, content_type=mimetype)
    return form
