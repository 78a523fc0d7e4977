"""What the engine asks of a model, and the thin wrapper over the official AsyncOpenAI
client that answers it in production.

The client turns a response into plain data the engine stores, and every failure (after
the SDK's own retries with backoff) into one `LLMError`, so the engine has a single path for
"the model could not answer". The built-in offline model (`bot.offline.OfflineModel`)
answers the same protocol in process.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    call_id: str
    name: str
    arguments: str  # raw JSON text, exactly as the model sent it

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    content: str | None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    usage: Usage = field(default_factory=Usage)


class LLMError(Exception):
    """The model could not answer, after retries. `kind` is a short tag for logs and admin."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


ToolChoice = Literal["auto", "none"]


class ChatModel(ABC):
    """A chat completions model: one answer to a request, or an `LLMError`."""

    def __init__(self, model: str) -> None:
        self.model = model

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = tool_choice
        return await self.answer(body)

    @abstractmethod
    async def answer(self, body: dict[str, Any]) -> Completion:
        """The answer to a chat completions request body, as OpenAI's API takes it."""

    @abstractmethod
    async def close(self) -> None: ...


class LLMClient(ChatModel):
    """OpenAI, or a server that speaks its API, through the official SDK."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        timeout: float,
        max_retries: int,
    ) -> None:
        super().__init__(model)
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    async def close(self) -> None:
        await self._client.close()

    async def answer(self, body: dict[str, Any]) -> Completion:
        try:
            # Posted as is through the SDK's client (its retries, errors and parsing), not
            # through `chat.completions.create`, which first walks the whole request through
            # its typed-parameter transform: for a body that is plain JSON already, that
            # walk over every history message cost 8 ms of CPU per call (bench/RESULTS.md).
            # Bearer auth only, as `create` asks: the default would fall back to an admin
            # key from the environment (OPENAI_ADMIN_KEY) if the API key were ever empty.
            response = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                options={"security": {"bearer_auth": True}},
            )
        except openai.APIStatusError as exc:
            error = exc.body if isinstance(exc.body, dict) else {}
            detail = str(error.get("message") or exc.message)
            raise LLMError(f"http_{exc.status_code}", detail) from exc
        except openai.APITimeoutError as exc:
            raise LLMError("timeout", str(exc)) from exc
        except openai.APIConnectionError as exc:
            raise LLMError("connection", str(exc)) from exc
        except (openai.APIError, ValueError) as exc:
            # Covers bodies that are not the JSON the SDK expects (truncated, wrong shape).
            raise LLMError("bad_response", f"{type(exc).__name__}: {exc}") from exc
        if not response.choices:
            raise LLMError("bad_response", "the response has no choices")
        message = response.choices[0].message
        calls = tuple(
            ToolCallRequest(call.id, call.function.name, call.function.arguments or "")
            for call in (message.tool_calls or [])
            if call.type == "function"
        )
        usage = Usage()
        if response.usage is not None:
            usage = Usage(response.usage.prompt_tokens, response.usage.completion_tokens)
        return Completion(content=message.content, tool_calls=calls, usage=usage)
