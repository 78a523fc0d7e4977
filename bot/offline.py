"""The offline model: an OpenAI-compatible chat completions server (the tests' fake, and
`stillhere fake-openai`) and the same model in process (`OfflineModel`, the built-in model
the bot uses when it has no API key).

The real `openai` SDK reaches the server, so the tests exercise the same client code as
production. The model in process is a `ChatModel` the engine calls directly: a
model with no think time should cost the engine next to nothing, and the SDK's own work
(about 1 ms of CPU a call, bench/RESULTS.md) is the network client's, which the server's
tests measure and check. Both are strict on purpose: every history is checked with
`bot.history.validate` and a broken one gets the 400 OpenAI would send, so a bug that
only a real OpenAI would reveal shows up offline too.

Answers come from a small set of deterministic rules (ask for the time or to wait, and it
calls the matching tool; give it tool results, and it reports them), unless a test queued a
scripted answer or fault for the next request (server only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

from aiohttp import web

from bot.history import compact_json_chars, estimate_tokens, validate
from bot.llm import ChatModel, Completion, LLMError, ToolCallRequest, Usage

log = logging.getLogger(__name__)

Language = Literal["es", "en"]
JSON = dict[str, Any]

_ID_ALPHABET: Final = string.ascii_letters + string.digits
_FUNCTION_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_QUOTE: Final = 300


def _random_id(prefix: str, length: int) -> str:
    # One read of the OS's randomness per id, not one per character (secrets.choice):
    # every reply carries one, and that read was a tenth of an in-process model call.
    alphabet = len(_ID_ALPHABET)
    return prefix + "".join(_ID_ALPHABET[byte % alphabet] for byte in secrets.token_bytes(length))


def _error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> JSON:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> JSON:
    return _error_body(message, "invalid_request_error", param, code)


def _unauthorized() -> JSON:
    return _invalid(
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        code=None,
    )


# --- request checks --------------------------------------------------------------------------


def _tools_error(tools: Any) -> JSON | None:
    if not isinstance(tools, list):
        return _invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    if not tools:
        return _invalid(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            "tools",
            "empty_array",
        )
    names: set[str] = set()
    for k, entry in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(entry, Mapping) or entry.get("type") != "function":
            return _invalid(f"Invalid '{where}': expected an object of type 'function'.", where)
        function = entry.get("function")
        if not isinstance(function, Mapping):
            return _invalid(f"Missing required parameter: '{where}.function'.", where)
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            return _invalid(
                f"Invalid '{where}.function.name': expected 1 to 64 characters among "
                "a-z, A-Z, 0-9, '_' and '-'.",
                f"{where}.function.name",
            )
        if name in names:
            return _invalid(f"Invalid 'tools': the function name {name!r} appears twice.", "tools")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and (
            not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object"
        ):
            return _invalid(
                f"Invalid schema for function '{name}': the parameters must be a JSON Schema "
                "object with 'type': 'object'.",
                f"{where}.function.parameters",
            )
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            return _invalid(
                f"Invalid '{where}.function.description': expected a string.",
                f"{where}.function.description",
            )
    return None


def _tool_choice_error(choice: Any, tools: Any) -> JSON | None:
    if choice is None:
        return None
    if tools is None:
        return _invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    if choice in ("none", "auto", "required"):
        return None
    offered = {t["function"]["name"] for t in tools}
    if (
        isinstance(choice, Mapping)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), Mapping)
        and choice["function"].get("name") in offered
    ):
        return None
    return _invalid(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function "
        "offered in 'tools'.",
        "tool_choice",
    )


def request_error(body: Any) -> JSON | None:
    """The 400 body OpenAI would answer this request with, or None when it is acceptable."""
    if not isinstance(body, Mapping):
        return _invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("you must provide a model parameter")
    if "messages" not in body:
        return _invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        return _invalid(
            "Invalid type for 'messages': expected an array of objects.", "messages", "invalid_type"
        )
    violations = validate(messages)
    if violations:
        first = violations[0]
        return _invalid(first.message, first.param, first.code)
    if body.get("stream"):
        return _invalid("The offline model does not stream: send 'stream': false.", "stream")
    tools = body.get("tools")
    if tools is not None:
        problem = _tools_error(tools)
        if problem is not None:
            return problem
    return _tool_choice_error(body.get("tool_choice"), tools)


# --- the rules model -------------------------------------------------------------------------

_SPANISH_MARKS: Final = re.compile(r"[¿¡ñáéíóúü]", re.IGNORECASE)
_COMMON_SPANISH = (
    "hola que qué dame dime hora gracias sigues como cómo estas estás por favor buenos buenas "
    "dias días espera esperar segundos ahi ahí si sí esta está eres puedes oye vale el la los "
    "las una de en es y"
)
_SPANISH_WORDS: Final = frozenset(_COMMON_SPANISH.split())
# Groups prefix each user's text with "Name: "; a name is a few words, no sentence.
_NAME_PREFIX: Final = re.compile(r"^\s*[\w.'-]+(?: [\w.'-]+){0,2}:\s+")
_TIME_ASK: Final = re.compile(r"\b(?:hora|time)\b", re.IGNORECASE)
_WAIT_ASK: Final = re.compile(
    r"\b(?:wait|espera|esperar|espere|aguarda)\b\D{0,12}?(\d+(?:[.,]\d+)?)\s*"
    r"(?:s|secs?|seconds?|seg|segundos?)\b",
    re.IGNORECASE,
)
_IANA_ZONE: Final = re.compile(r"\b([A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_-]+)+)\b")
_PLACES: Final = (
    ("nueva york", "America/New_York"),
    ("new york", "America/New_York"),
    ("buenos aires", "America/Argentina/Buenos_Aires"),
    ("madrid", "Europe/Madrid"),
    ("london", "Europe/London"),
    ("londres", "Europe/London"),
    ("paris", "Europe/Paris"),
    ("parís", "Europe/Paris"),
    ("berlin", "Europe/Berlin"),
    ("berlín", "Europe/Berlin"),
    ("tokyo", "Asia/Tokyo"),
    ("tokio", "Asia/Tokyo"),
)
_ISO_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T(\d{2}):(\d{2})[^\s(]*(?:\s*\(([^)]+)\))?")
_FAILURE: Final = re.compile(
    r"\b(?:error|failed|timed out|timeout|cancel+ed|interrupted|no result|unknown tool|"
    r"invalid arguments)\b",
    re.IGNORECASE,
)


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _said(message: Mapping[str, Any]) -> str:
    """What a user wrote, without the "Name: " prefix the engine adds in groups."""
    return _NAME_PREFIX.sub("", _text(message), count=1).strip()


def detect_language(text: str) -> Language:
    if _SPANISH_MARKS.search(text):
        return "es"
    words = re.findall(r"\w+", text.lower())
    return "es" if any(word in _SPANISH_WORDS for word in words) else "en"


def _quote(text: str, language: Language) -> str:
    if len(text) > _MAX_QUOTE:
        text = text[:_MAX_QUOTE] + "…"
    return f"«{text}»" if language == "es" else f'"{text}"'


def _quotes(texts: Sequence[str], language: Language) -> str:
    return ", ".join(_quote(t, language) for t in texts)


def _time_zone(text: str) -> str:
    named = _IANA_ZONE.search(text)
    if named:
        return named.group(1)
    lowered = text.lower()
    return next((zone for place, zone in _PLACES if place in lowered), "UTC")


def _number(text: str) -> int | float:
    value = float(text.replace(",", "."))
    return int(value) if value.is_integer() else value


def _asks(text: str) -> list[tuple[int, str, JSON]]:
    """The tool calls one user message asks for, with where in the text each ask is."""
    found: list[tuple[int, str, JSON]] = [
        (m.start(), "wait_seconds", {"seconds": _number(m.group(1))})
        for m in _WAIT_ASK.finditer(text)
    ]
    time_ask = _TIME_ASK.search(text)
    if time_ask:
        found.append((time_ask.start(), "get_current_time", {"timezone": _time_zone(text)}))
    return sorted(found, key=lambda ask: ask[0])


def _callable_tools(body: Mapping[str, Any]) -> set[str]:
    choice = body.get("tool_choice")
    if choice == "none":
        return set()
    offered = {t["function"]["name"] for t in body.get("tools") or ()}
    if isinstance(choice, Mapping):
        return offered & {choice["function"]["name"]}
    return offered


def _role(message: Mapping[str, Any]) -> Any:
    return message.get("role")


@dataclass(frozen=True)
class _ToolRound:
    """The last tool calls, their results, and what users wrote while the tools ran."""

    names: Mapping[str, str]
    results: Sequence[Mapping[str, Any]]
    later_users: Sequence[str]


def _last_index(
    messages: Sequence[Mapping[str, Any]], wanted: Callable[[Mapping[str, Any]], bool]
) -> int:
    """The index of the last message `wanted`, or -1. From the end: a request carries the
    whole history, and the rules only look at its last turn."""
    return next((i for i in range(len(messages) - 1, -1, -1) if wanted(messages[i])), -1)


def _ended_tool_round(messages: Sequence[Mapping[str, Any]]) -> _ToolRound | None:
    # Only the last assistant message can open it: any answer after a round ends it.
    last = _last_index(messages, lambda m: _role(m) == "assistant")
    if last < 0 or not messages[last].get("tool_calls"):
        return None
    tail = messages[last + 1 :]
    replies = 0
    while replies < len(tail) and _role(tail[replies]) == "tool":
        replies += 1
    after = tail[replies:]
    # System notes (e.g. replies already sent) may follow; anything else means answered.
    if not replies or any(_role(m) not in ("user", "system", "developer") for m in after):
        return None
    names = {c["id"]: c["function"]["name"] for c in messages[last]["tool_calls"]}
    users = [_said(m) for m in after if _role(m) == "user"]
    return _ToolRound(names, tail[:replies], users)


def _result_sentence(name: str, result: str, language: Language) -> str:
    stamp = _ISO_TIME.search(result) if name == "get_current_time" else None
    if stamp and not _FAILURE.search(result):
        hours, minutes, zone = stamp.groups()
        clock = f"{hours}:{minutes}" + (f" ({zone})" if zone else "")
        if language == "en":
            return f"It is {clock}."
        return f"Es la {clock}." if hours == "01" else f"Son las {clock}."
    quoted = _quote(result, language)
    if _FAILURE.search(result):
        if language == "es":
            return f"La herramienta {name} no pudo terminar: {quoted}."
        return f"The tool {name} could not finish: {quoted}."
    return f"Resultado de {name}: {quoted}." if language == "es" else f"{name} returned: {quoted}."


def _report(round_: _ToolRound, language: Language) -> str:
    sentences = [
        _result_sentence(
            round_.names.get(str(result.get("tool_call_id")), "tool"), _text(result), language
        )
        for result in round_.results
    ]
    if round_.later_users:
        quoted = _quotes(round_.later_users, language)
        if language == "es":
            sentences.append(f"También me escribiste: {quoted}.")
        else:
            sentences.append(f"You also wrote: {quoted}.")
    return " ".join(sentences)


def _echo(users: Sequence[str], language: Language) -> str:
    if not users:
        return "Hola, ¿en qué puedo ayudarte?" if language == "es" else "Hi! How can I help?"
    quoted = _quotes(users, language)
    return f"Recibido: {quoted}." if language == "es" else f"Got it: {quoted}."


def rules_reply(body: Mapping[str, Any]) -> JSON:
    """The assistant message the rules model answers a (valid) request with."""
    messages: Sequence[Mapping[str, Any]] = body["messages"]
    last_user = _last_index(messages, lambda m: _role(m) == "user")
    language = detect_language(_said(messages[last_user])) if last_user >= 0 else "en"
    round_ = _ended_tool_round(messages)
    if round_ is not None:
        return {"role": "assistant", "content": _report(round_, language)}
    last_assistant = _last_index(messages, lambda m: _role(m) == "assistant")
    turn = [_said(m) for m in messages[last_assistant + 1 :] if _role(m) == "user"]
    allowed = _callable_tools(body)
    calls = [
        _tool_call(name, arguments)
        for text in turn
        for _, name, arguments in _asks(text)
        if name in allowed
    ]
    if calls:
        return {"role": "assistant", "content": None, "tool_calls": calls}
    return {"role": "assistant", "content": _echo(turn, language)}


def _tool_call(name: str, arguments: JSON | str) -> JSON:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {
        "id": _random_id("call_", 24),
        "type": "function",
        "function": {"name": name, "arguments": raw},
    }


def _token_counts(body: Mapping[str, Any], message: JSON) -> tuple[int, int]:
    """The prompt's and the answer's tokens, for a request already accepted: each message
    priced as the engine's `trim` prices it (`estimate_tokens`, about four characters a
    token) and the tools' schemas at four characters a token. Encoding the whole body to
    measure it cost more than the rest of an answer; the server and the model in process
    count alike, on the same body."""
    prompt_tokens = sum(estimate_tokens(m) for m in body["messages"])
    tools = body.get("tools")
    if tools:
        prompt_tokens += compact_json_chars(tools) // 4
    return prompt_tokens, estimate_tokens(message)


def completion(body: Mapping[str, Any], message: JSON) -> JSON:
    """A chat.completion object, shaped as the SDK parses it."""
    prompt_tokens, completion_tokens = _token_counts(body, message)
    reply = {"content": None, "refusal": None, "annotations": [], **message}
    return {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_stillhere_offline",
    }


# --- scripted answers and faults -------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    content: str


@dataclass(frozen=True)
class _ToolCalls:
    calls: tuple[tuple[str, JSON | str], ...]


@dataclass(frozen=True)
class _Error:
    status: int
    message: str | None
    retry_after_ms: int | None


@dataclass(frozen=True)
class _Delay:
    seconds: float


class _Truncated:
    pass


class _Disconnect:
    pass


_Scripted = _Reply | _ToolCalls | _Error | _Delay | _Truncated | _Disconnect


def _scripted_error(status: int, message: str | None) -> JSON:
    if status == 429:
        return _error_body(
            message or "Rate limit reached (scripted by the offline model).",
            "requests",
            code="rate_limit_exceeded",
        )
    if status >= 500:
        return _error_body(
            message or "The server had an error while processing your request. Sorry about that!",
            "server_error",
        )
    return _invalid(message or f"Scripted error {status}.")


def refusal(body: Any, authorization: str | None) -> tuple[int, JSON] | None:
    """The status and error OpenAI would answer this chat request with, logged; None for a
    request it would take."""
    if not (authorization or "").removeprefix("Bearer ").strip():
        # OpenAI's answer to a request without a key: the SDK must always send one.
        return _logged(401, _unauthorized())
    return rejection(body)


def rejection(body: Any) -> tuple[int, JSON] | None:
    """The 400 OpenAI would answer this request with, logged; None for one it would take."""
    problem = request_error(body)
    return None if problem is None else _logged(400, problem)


def _logged(status: int, error: JSON) -> tuple[int, JSON]:
    log.warning("offline model rejected a request: %s", error["error"]["message"])
    return status, error


def _json_body(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# --- in process ------------------------------------------------------------------------------


class OfflineModel(ChatModel):
    """The offline model in process: the server's checks and rules, with no HTTP client and
    no server. It answers at once; the bot's own console chat and the benchmarks use it."""

    async def answer(self, body: dict[str, Any]) -> Completion:
        refused = rejection(body)
        if refused is not None:
            status, error = refused
            raise LLMError(f"http_{status}", error["error"]["message"])
        message = rules_reply(body)
        prompt_tokens, completion_tokens = _token_counts(body, message)
        return Completion(
            content=message.get("content"),
            tool_calls=tuple(
                ToolCallRequest(call["id"], call["function"]["name"], call["function"]["arguments"])
                for call in message.get("tool_calls", ())
            ),
            usage=Usage(prompt_tokens, completion_tokens),
        )

    async def close(self) -> None:
        """Nothing to close: it holds no connection."""


# --- the server ------------------------------------------------------------------------------


class FakeOpenAI:
    """The OpenAI-compatible server. `record=False` keeps no requests (for long demo runs)."""

    def __init__(self, *, think_seconds: float = 0.0, record: bool = True) -> None:
        self.think_seconds = think_seconds
        self.record = record
        self.requests: list[JSON] = []
        # Each chat request's Authorization header (None when it had none), as recorded.
        self.authorizations: list[str | None] = []
        self.rejected: list[JSON] = []
        self._script: deque[_Scripted] = deque()
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0
        self._closing = asyncio.Event()

    # lifecycle

    @property
    def chat_requests(self) -> list[JSON]:
        """The requests recorded that carry a conversation (not those whose body was not
        JSON)."""
        return [r for r in self.requests if "messages" in r]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("the fake OpenAI server is already running")
        app = web.Application(middlewares=[self._openai_errors])
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # A client that gives up (timeout) cancels its handler instead of leaving it hanging.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._closing.clear()
        self._host = host
        self._port = int(runner.addresses[0][1])

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the fake OpenAI server is not running")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}/v1"

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._closing.set()  # ends scripted delays at once, so shutdown does not wait them out
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # the script for tests

    def script_reply(self, content: str) -> None:
        self._script.append(_Reply(content))

    def script_tool_calls(self, calls: list[tuple[str, JSON | str]]) -> None:
        """Each call is (name, arguments); string arguments are sent raw, valid JSON or not."""
        self._script.append(_ToolCalls(tuple(calls)))

    def script_error(
        self, status: int, message: str | None = None, retry_after_ms: int | None = None
    ) -> None:
        self._script.append(_Error(status, message, retry_after_ms))

    def script_delay(self, seconds: float) -> None:
        """Hang this long, then answer with the rules model."""
        self._script.append(_Delay(seconds))

    def script_truncated_json(self) -> None:
        self._script.append(_Truncated())

    def script_disconnect(self) -> None:
        self._script.append(_Disconnect())

    # handlers

    @web.middleware
    async def _openai_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Unknown routes answer in OpenAI's error shape, as the SDK expects."""
        try:
            response: web.StreamResponse = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            body = _invalid(f"Invalid URL ({request.method} {request.path})")
            return web.json_response(body, status=404)
        return response

    async def _models(self, request: web.Request) -> web.Response:
        models = [
            {"id": name, "object": "model", "created": 0, "owned_by": "stillhere"}
            for name in ("stillhere-offline", "gpt-4o-mini")
        ]
        return web.json_response({"object": "list", "data": models})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        body = _json_body(raw)
        authorization = request.headers.get("Authorization")
        if self.record:
            self.requests.append(body if isinstance(body, dict) else {"unparsed_body": raw})
            self.authorizations.append(authorization)
        refused = refusal(body, authorization)
        if refused is not None:
            status, error = refused
            self.rejected.append(error)
            return web.json_response(error, status=status)
        step = self._script.popleft() if self._script else None
        if isinstance(step, _Error):
            headers = {}
            if step.retry_after_ms is not None:
                headers["retry-after-ms"] = str(step.retry_after_ms)
            error = _scripted_error(step.status, step.message)
            return web.json_response(error, status=step.status, headers=headers)
        if isinstance(step, _Disconnect):
            if request.transport is not None:
                request.transport.abort()
            # Nothing reaches the client any more; returning keeps aiohttp's log quiet.
            return web.Response()
        if isinstance(step, _Truncated):
            text = json.dumps(completion(body, rules_reply(body)))
            return web.Response(
                text=text[: len(text) // 2], content_type="application/json", status=200
            )
        if isinstance(step, _Reply):
            message: JSON = {"role": "assistant", "content": step.content}
        elif isinstance(step, _ToolCalls):
            calls = [_tool_call(name, arguments) for name, arguments in step.calls]
            message = {"role": "assistant", "content": None, "tool_calls": calls}
        else:
            await self._pause(step.seconds if isinstance(step, _Delay) else 0.0)
            await self._pause(self.think_seconds)
            message = rules_reply(body)
        return web.json_response(completion(body, message))

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)


async def serve_forever(host: str, port: int) -> None:
    """Runs the offline model as a standalone server until cancelled."""
    fake = FakeOpenAI(record=False)
    await fake.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()
