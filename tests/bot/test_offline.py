"""The fake OpenAI server, driven by the real `openai` SDK over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from bot.llm import ChatModel, LLMClient, LLMError
from bot.offline import FakeOpenAI, OfflineModel, serve_forever
from bot.runtime import build_llm
from bot.settings import Settings
from tests.support.spanish_time import tells_the_time

Message = dict[str, Any]
ClientFactory = Callable[..., openai.AsyncOpenAI]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_time",
            "description": "Current time in a time zone.",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "wait_seconds",
            "parameters": {"type": "object", "properties": {"seconds": {"type": "number"}}},
        },
    },
]
SYSTEM: Message = {"role": "system", "content": "be brief"}
SEED_ID = "call_5J4llKvb0fa4AsN4hefoshH0"
OPENAI_CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")
NOON = "2026-11-24T17:30:05+00:00 (UTC)"


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def asks(*calls: tuple[str, str]) -> Message:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": name, "arguments": "{}"}}
            for i, name in calls
        ],
    }


def tool(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def make_client(fake: FakeOpenAI) -> AsyncIterator[ClientFactory]:
    clients: list[openai.AsyncOpenAI] = []

    def factory(max_retries: int = 0, timeout: float = 10.0) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=fake.base_url, api_key="x", max_retries=max_retries, timeout=timeout
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> openai.AsyncOpenAI:
    return make_client()


async def ask(client: openai.AsyncOpenAI, messages: list[Message], **kwargs: Any) -> ChatCompletion:
    return await client.chat.completions.create(model="gpt-4o-mini", messages=messages, **kwargs)  # type: ignore[arg-type]


async def answer(client: openai.AsyncOpenAI, messages: list[Message], **kwargs: Any) -> str | None:
    return (await ask(client, messages, **kwargs)).choices[0].message.content


def function_calls(completion: ChatCompletion) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = completion.choices[0].message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


# --- strictness ------------------------------------------------------------------------------


async def test_the_seed_history_from_the_bug_report_is_rejected(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    seed = [
        SYSTEM,
        user("Dame la hora actual"),
        asks((SEED_ID, "get_current_time")),
        user("¿Sigues ahí?"),
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(client, seed, tools=TOOLS)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == (
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        "call_5J4llKvb0fa4AsN4hefoshH0"
    )
    assert caught.value.type == "invalid_request_error"
    assert caught.value.status_code == 400
    assert len(fake.requests) == 1
    assert fake.requests[0]["messages"] == seed
    assert fake.rejected == [{"error": caught.value.body}]


TOO_LONG = "call_" + "x" * 41


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param(
            [user("hi"), tool("call_a", "x")],
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
            "message with 'tool_calls'.",
            id="orphan",
        ),
        pytest.param(
            [user("hi"), asks(("call_a", "f")), {"role": "tool", "content": "x"}],
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            "call_a",
            id="reply-without-id",
        ),
        pytest.param(
            [user("hi"), asks(("call_a", "f")), tool("call_a", "x"), tool("call_X", "y")],
            "Invalid parameter: 'tool_call_id' of 'call_X' not found in 'tool_calls' of previous "
            "message.",
            id="unknown-id",
        ),
        pytest.param(
            [user("hi"), {"role": "assistant", "content": "x", "tool_calls": []}],
            "Invalid 'messages[1].tool_calls': empty array. Expected an array with minimum length "
            "1, but got an empty array instead.",
            id="empty-tool-calls",
        ),
        pytest.param(
            [],
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            id="empty-messages",
        ),
        pytest.param(
            [{"role": "user", "content": None}],
            "Invalid value for 'content': expected a string, got null.",
            id="null-content",
        ),
        pytest.param(
            [user("hi"), asks((TOO_LONG, "f")), tool(TOO_LONG, "x")],
            "Invalid 'messages[1].tool_calls[0].id': string too long. Expected a string with "
            "maximum length 40, but got a string with length 46 instead.",
            id="id-too-long",
        ),
        pytest.param(
            [user("hi"), asks(("call_a", "")), tool("call_a", "x")],
            "Invalid 'messages[1].tool_calls[0].function.name': empty string. Expected a string "
            "with minimum length 1, but got an empty string instead.",
            id="empty-function-name",
        ),
    ],
)
async def test_each_history_rule_is_a_400_with_openais_text(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, messages: list[Message], expected: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(client, messages)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == expected
    assert caught.value.type == "invalid_request_error"
    assert len(fake.rejected) == 1


def tool_named(name: str, **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **function}}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        pytest.param({"tools": [tool_named("")]}, "tools[0].function.name", id="empty-tool-name"),
        pytest.param({"tools": [tool_named("a b")]}, "tools[0].function.name", id="bad-name"),
        pytest.param(
            {"tools": [tool_named("f", parameters={"type": "string"})]},
            "tools[0].function.parameters",
            id="parameters-not-object",
        ),
        pytest.param({"tools": [tool_named("f"), tool_named("f")]}, "tools", id="twice"),
        pytest.param({"tools": [{"type": "custom"}]}, "tools[0]", id="not-function"),
        pytest.param({"tools": []}, "tools", id="empty-tools"),
        pytest.param({"tool_choice": "auto"}, "tool_choice", id="choice-without-tools"),
        pytest.param(
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            id="choice-not-offered",
        ),
        pytest.param({"stream": True}, "stream", id="stream"),
    ],
)
async def test_request_shape_errors_are_400s(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(client, [user("hi")], **kwargs)
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == param
    assert len(fake.rejected) == 1


KEY = {"Authorization": "Bearer sk-test"}


async def post_raw(fake: FakeOpenAI, data: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=KEY) as session,
        session.post(f"{fake.base_url}/chat/completions", data=data) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "The request body must be a JSON object."),
        (json.dumps({"messages": [user("hi")]}), "you must provide a model parameter"),
        (json.dumps({"model": "m"}), "Missing required parameter: 'messages'."),
        (
            json.dumps({"model": "m", "messages": "hi"}),
            "Invalid type for 'messages': expected an array of objects.",
        ),
    ],
)
async def test_malformed_bodies_are_recorded_and_rejected(
    fake: FakeOpenAI, data: str, message: str
) -> None:
    status, body = await post_raw(fake, data)
    assert status == 400
    assert body["error"]["message"] == message
    assert body["error"]["type"] == "invalid_request_error"
    assert len(fake.requests) == 1
    if data == "not json":
        assert fake.requests[0] == {"unparsed_body": "not json"}


async def test_a_rejected_request_does_not_consume_the_script(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script_reply("scripted")
    with pytest.raises(openai.BadRequestError):
        await ask(client, [user("hi"), tool("call_a", "x")])
    assert await answer(client, [user("hi")]) == "scripted"


# --- the rules model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [("Dame la hora actual", "Son las 17:30 (UTC)."), ("what time is it", "It is 17:30 (UTC).")],
)
async def test_asking_the_time_calls_the_tool_then_reports_it(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, question: str, expected: str
) -> None:
    history = [SYSTEM, user(question)]
    first = await ask(client, history, tools=TOOLS, tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = function_calls(first)
    assert call.type == "function"
    assert call.function.name == "get_current_time"
    assert json.loads(call.function.arguments) == {"timezone": "UTC"}
    assert OPENAI_CALL_ID.match(call.id)

    history.append(choice.message.model_dump(exclude_none=True))
    history.append(tool(call.id, NOON))
    second = await ask(client, history, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == expected
    assert fake.rejected == []


@pytest.mark.parametrize(
    ("moment", "expected"),
    [("2026-11-25T01:08:00+00:00 (UTC)", "Es la 01:08 (UTC)."), (NOON, "Son las 17:30 (UTC).")],
)
async def test_the_spanish_time_is_singular_at_one_and_tests_accept_both(
    client: openai.AsyncOpenAI, moment: str, expected: str
) -> None:
    history = [SYSTEM, user("Dame la hora actual")]
    first = await ask(client, history, tools=TOOLS, tool_choice="auto")
    [call] = function_calls(first)
    history.append(first.choices[0].message.model_dump(exclude_none=True))
    history.append(tool(call.id, moment))
    text = (await ask(client, history, tools=TOOLS)).choices[0].message.content or ""
    assert text == expected
    assert tells_the_time(text)


async def test_a_named_zone_and_a_wait_become_calls_in_the_order_asked(
    client: openai.AsyncOpenAI,
) -> None:
    reply = await ask(
        client, [user("Ana: espera 5 segundos y dime la hora en Europe/Madrid")], tools=TOOLS
    )
    calls = function_calls(reply)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("wait_seconds", {"seconds": 5}),
        ("get_current_time", {"timezone": "Europe/Madrid"}),
    ]
    assert len({c.id for c in calls}) == 2


async def test_each_user_message_of_the_turn_can_ask(client: openai.AsyncOpenAI) -> None:
    turn = [user("what time is it in Tokyo?"), user("Bob: and wait 2 seconds please")]
    reply = await ask(client, turn, tools=TOOLS)
    calls = function_calls(reply)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_current_time", {"timezone": "Asia/Tokyo"}),
        ("wait_seconds", {"seconds": 2}),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"tools": TOOLS, "tool_choice": "none"}, {"tools": TOOLS[1:]}],
    ids=["no-tools", "choice-none", "not-offered"],
)
async def test_no_call_when_the_tool_is_not_available(
    client: openai.AsyncOpenAI, kwargs: dict[str, Any]
) -> None:
    reply = await ask(client, [user("what time is it")], **kwargs)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == 'Got it: "what time is it".'


async def test_messages_written_while_tools_ran_are_answered_too(
    client: openai.AsyncOpenAI,
) -> None:
    history = [
        user("Ana: Dame la hora actual"),
        asks(("call_a", "get_current_time")),
        tool("call_a", NOON),
        user("Ana: Hola"),
        user("Bob: ¿Cómo estás?"),
        {"role": "system", "content": "Already sent while the tools ran: «Un momento…»"},
    ]
    assert await answer(client, history, tools=TOOLS) == (
        "Son las 17:30 (UTC). También me escribiste: «Hola», «¿Cómo estás?»."
    )


async def test_english_follow_ups_and_failed_tools_are_reported(client: openai.AsyncOpenAI) -> None:
    history = [
        user("wait 5 seconds and tell me the time"),
        asks(("call_w", "wait_seconds"), ("call_t", "get_current_time")),
        tool("call_w", "timed out after 5 s"),
        tool("call_t", NOON),
        user("Hi"),
        user("How are you?"),
    ]
    assert await answer(client, history, tools=TOOLS) == (
        'The tool wait_seconds could not finish: "timed out after 5 s". It is 17:30 (UTC). '
        'You also wrote: "Hi", "How are you?".'
    )


async def test_other_tool_results_are_quoted(client: openai.AsyncOpenAI) -> None:
    history = [
        user("espera 1 segundo"),
        asks(("call_w", "wait_seconds")),
        tool("call_w", "waited 1 s"),
    ]
    assert await answer(client, history) == "Resultado de wait_seconds: «waited 1 s»."


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (["Ana: hola"], "Recibido: «hola»."),
        (["Hi there", "Bob: anyone?"], 'Got it: "Hi there", "anyone?".'),
    ],
)
async def test_plain_messages_are_echoed_in_their_language(
    client: openai.AsyncOpenAI, turn: list[str], expected: str
) -> None:
    earlier = [user("old"), {"role": "assistant", "content": "old answer"}]
    assert await answer(client, [SYSTEM, *earlier, *map(user, turn)], tools=TOOLS) == expected


async def test_usage_is_reported(client: openai.AsyncOpenAI) -> None:
    reply = await ask(client, [user("hi")])
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.object == "chat.completion"


async def test_usage_prices_the_whole_prompt_at_about_four_characters_a_token(
    client: openai.AsyncOpenAI,
) -> None:
    short = await ask(client, [user("hi")])
    long = await ask(client, [user("hi"), {"role": "assistant", "content": "x" * 4000}, user("?")])
    assert short.usage is not None and long.usage is not None
    assert 1000 <= long.usage.prompt_tokens - short.usage.prompt_tokens <= 1100


# --- scripts and faults ----------------------------------------------------------------------


async def test_scripted_reply_and_tool_calls_come_first_in_order(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script_reply("first")
    fake.script_tool_calls(
        [("get_current_time", '{"timezone": '), ("wait_seconds", {"seconds": 1})]
    )
    assert await answer(client, [user("hi")]) == "first"
    calls = function_calls(await ask(client, [user("hi")], tools=TOOLS))
    assert [c.function.arguments for c in calls] == ['{"timezone": ', '{"seconds": 1}']
    assert all(OPENAI_CALL_ID.match(c.id) for c in calls)
    assert await answer(client, [user("hi")]) == 'Got it: "hi".'


async def test_a_429_with_retry_after_is_retried_by_the_sdk(
    fake: FakeOpenAI, make_client: ClientFactory
) -> None:
    fake.script_error(429, retry_after_ms=10)
    assert await answer(make_client(max_retries=1), [user("hi")]) == 'Got it: "hi".'
    assert len(fake.requests) == 2


async def test_a_scripted_error_carries_openais_shape_and_retry_after_ms(
    fake: FakeOpenAI,
) -> None:
    fake.script_error(429, retry_after_ms=10)
    async with (
        aiohttp.ClientSession(headers=KEY) as session,
        session.post(
            f"{fake.base_url}/chat/completions",
            json={"model": "m", "messages": [user("hi")]},
        ) as response,
    ):
        assert response.status == 429
        assert response.headers["retry-after-ms"] == "10"
        body = await response.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_500s_until_retries_are_exhausted(
    fake: FakeOpenAI, make_client: ClientFactory
) -> None:
    for _ in range(3):
        fake.script_error(500, "boom", retry_after_ms=10)
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(make_client(max_retries=2), [user("hi")])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == "boom"
    assert len(fake.requests) == 3


async def test_a_delay_beyond_the_client_timeout(
    fake: FakeOpenAI, make_client: ClientFactory
) -> None:
    fake.script_delay(30)
    with pytest.raises(openai.APITimeoutError):
        await ask(make_client(timeout=0.2), [user("hi")])


async def test_think_seconds_slows_every_rules_answer(
    fake: FakeOpenAI, make_client: ClientFactory
) -> None:
    fake.think_seconds = 30
    with pytest.raises(openai.APITimeoutError):
        await ask(make_client(timeout=0.2), [user("hi")])


async def test_stop_ends_a_pending_delay(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.script_delay(60)
    pending = asyncio.create_task(ask(client, [user("hi")]))
    while not fake.requests:
        await asyncio.sleep(0.01)
    await fake.stop()
    reply = await pending
    assert reply.choices[0].message.content == 'Got it: "hi".'


async def test_truncated_json_surfaces_as_a_json_decode_error(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    """The SDK does not wrap it: `response.json()` raises straight through (a ValueError)."""
    fake.script_truncated_json()
    with pytest.raises(json.JSONDecodeError):
        await ask(client, [user("hi")])


async def test_a_dropped_connection_is_a_connection_error(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script_disconnect()
    with pytest.raises(openai.APIConnectionError):
        await ask(client, [user("hi")])
    assert await answer(client, [user("hi")]) == 'Got it: "hi".'


# --- other routes and the server's life --------------------------------------------------------


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]


async def test_unknown_routes_are_404s_in_openais_shape(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="m", input="x")
    assert caught.value.body == {
        "message": "Invalid URL (POST /v1/embeddings)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_base_url_needs_a_running_server() -> None:
    server = FakeOpenAI()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    async with server:
        assert re.match(r"^http://127\.0\.0\.1:\d+/v1$", server.base_url)
        with pytest.raises(RuntimeError):
            await server.start()


async def test_serve_forever_answers_until_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(serve_forever("127.0.0.1", port))
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=5, timeout=5
    )
    try:
        # Connection errors before the server listens are retried by the SDK.
        assert await answer(client, [user("hola")]) == "Recibido: «hola»."
    finally:
        await client.close()
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


async def test_a_request_without_a_bearer_key_is_refused_as_openai_would(
    fake_openai: FakeOpenAI,
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        refused = await http.post(f"{fake_openai.base_url}/chat/completions", json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "API key" in refused.json()["error"]["message"]
    assert fake_openai.authorizations == [None]


# --- in process ------------------------------------------------------------------------------


@pytest.fixture
async def both(fake: FakeOpenAI) -> AsyncIterator[tuple[ChatModel, ChatModel]]:
    """The model in process, and the server through the SDK wrapper the bot uses."""
    server = LLMClient(
        api_key="x", base_url=fake.base_url, model="gpt-4o-mini", timeout=10.0, max_retries=0
    )
    yield OfflineModel("gpt-4o-mini"), server
    await server.close()


async def test_the_model_in_process_answers_like_the_server(
    both: tuple[ChatModel, ChatModel],
) -> None:
    history = [SYSTEM, user("Dame la hora actual")]
    asked = [await model.complete(history, TOOLS) for model in both]
    assert [[c.name for c in a.tool_calls] for a in asked] == [["get_current_time"]] * 2
    assert all(OPENAI_CALL_ID.match(c.call_id) for a in asked for c in a.tool_calls)
    assert asked[0].tool_calls[0].arguments == asked[1].tool_calls[0].arguments
    told = [(await model.complete([user("hello there")], [])).content for model in both]
    assert told[0] is not None and "hello there" in told[0]
    assert told[0] == told[1]
    # Offered no tools ("none"), it answers in words as the server does.
    plain = [(await model.complete(history, TOOLS, tool_choice="none")) for model in both]
    assert [p.tool_calls for p in plain] == [(), ()]
    assert plain[0].content == plain[1].content


async def test_the_model_in_process_rejects_what_openai_rejects(
    both: tuple[ChatModel, ChatModel], caplog: pytest.LogCaptureFixture
) -> None:
    seed = [SYSTEM, user("Dame la hora actual"), asks((SEED_ID, "get_current_time")), user("?")]
    errors = []
    for model in both:
        with pytest.raises(LLMError) as caught:
            await model.complete(seed, TOOLS)
        errors.append(caught.value)
    assert [e.kind for e in errors] == ["http_400", "http_400"]
    assert errors[0].detail == errors[1].detail
    assert errors[0].detail.startswith(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        "each 'tool_call_id'."
    )
    assert "offline model rejected a request" in caplog.text


async def test_the_model_in_process_reports_usage_as_the_server_does(
    both: tuple[ChatModel, ChatModel],
) -> None:
    history = [SYSTEM, user("¿Qué hora es en Tokio? 東京は今何時? " * 40)]
    usages = [(await model.complete(history, [])).usage for model in both]
    # Characters, whatever the script: 31 a repeat, 1,240 in all (in bytes, 1,800).
    assert usages[0] == usages[1]
    assert 310 <= usages[0].prompt_tokens <= 350
    assert usages[0].completion_tokens > 0


async def test_the_bot_without_an_api_key_uses_the_model_in_process() -> None:
    settings = Settings(_env_file=None, openai_max_retries=0)
    llm = build_llm(settings)
    assert isinstance(llm, OfflineModel)
    try:
        completion = await llm.complete([user("hello there")], [])
    finally:
        await llm.close()
    assert completion.content is not None and "hello there" in completion.content
