"""Runs one tool call and always comes back with exactly one outcome.

Whatever the model sent and whatever the tool does (bad JSON, unknown name, exception,
hang), the caller gets a `ToolOutcome` whose text the model can read. Stack traces go to
the log, never to the chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from bot.storable import storable
from bot.tasks import TaskSet
from bot.tools.registry import Registry, ToolSpec

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 16_000
MAX_QUOTED_ARGUMENTS = 200
# How long a cancelled or timed-out tool gets to end before its call ends without it: a
# tool that swallows CancelledError would otherwise hold its conversation (and a reset,
# and a shutdown) forever.
CANCEL_GRACE_SECONDS = 2.0


class _CancelledItself(Exception):
    """A tool ended cancelled though nobody cancelled it."""


class ToolStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (ToolStatus.PENDING, ToolStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    status: ToolStatus
    result: str


CANCELLED_BY_USER = ToolOutcome(ToolStatus.CANCELLED, "cancelled by the user")
CANCELLED_BY_OPERATOR = ToolOutcome(ToolStatus.CANCELLED, "cancelled by an operator")
INTERRUPTED = ToolOutcome(ToolStatus.INTERRUPTED, "interrupted by a restart")


def _render(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"… [cut: {len(text)} characters in all]"
    return text


def _sent(raw: str) -> str:
    """The arguments as the model sent them, quoted: the request history carries "{}" in
    their place (see bot.prompt), so this result is where the model reads what it sent."""
    if len(raw) > MAX_QUOTED_ARGUMENTS:
        raw = raw[:MAX_QUOTED_ARGUMENTS] + "…"
    return repr(raw)


def _parse_arguments(spec: ToolSpec, raw: str) -> dict[str, Any] | ToolOutcome:
    try:
        decoded = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        return ToolOutcome(
            ToolStatus.FAILED,
            f"invalid arguments: not valid JSON ({exc.msg}) in {_sent(raw)}; send a JSON object",
        )
    if not isinstance(decoded, dict):
        return ToolOutcome(
            ToolStatus.FAILED, f"invalid arguments: expected a JSON object, got {_sent(raw)}"
        )
    try:
        model = spec.arguments.model_validate(decoded)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
            for err in exc.errors()
        )
        return ToolOutcome(ToolStatus.FAILED, f"invalid arguments for {spec.name}: {problems}")
    return {name: getattr(model, name) for name in type(model).model_fields}


class ToolRunner:
    def __init__(self, registry: Registry, default_timeout: float) -> None:
        self.registry = registry
        self.default_timeout = default_timeout
        # Tools that did not end when cancelled: `stop` cancels them again, and an
        # exception they end with is logged.
        self.left_running = TaskSet("left-running")
        # Sync tools' threads while they run (nothing can stop a thread: `stop` names them).
        self.threads: set[threading.Thread] = set()

    def timeout_for(self, name: str) -> float:
        spec = self.registry.get(name)
        if spec is None or spec.timeout is None:
            return self.default_timeout
        return spec.timeout

    async def run(self, name: str, raw_arguments: str, *, admin: bool) -> ToolOutcome:
        """Runs the call. `admin`: whether the turn is an admin's. Cancelling the awaiting
        task cancels the tool (the caller decides which cancellation text it records).
        The result is text a database stores (bot.storable), whatever the tool returned or
        raised: it could not be recorded otherwise, and the call would have none."""
        outcome = await self._run(name, raw_arguments, admin=admin)
        return ToolOutcome(outcome.status, storable(outcome.result))

    async def _run(self, name: str, raw_arguments: str, *, admin: bool) -> ToolOutcome:
        spec = self.registry.get(name)
        if spec is None:
            offered = (s.name for s in self.registry if admin or not s.admin_only)
            known = ", ".join(sorted(offered)) or "none"
            return ToolOutcome(ToolStatus.FAILED, f"unknown tool {name!r}; available: {known}")
        if spec.admin_only and not admin:
            # Not offering the tool is not enough: once an admin used it, it is in the
            # history, and the model may call it again in anyone's turn.
            return ToolOutcome(
                ToolStatus.FAILED,
                f"tool {name!r} is for admins only; this message is not an admin's",
            )
        arguments = _parse_arguments(spec, raw_arguments)
        if isinstance(arguments, ToolOutcome):
            return arguments
        timeout = self.timeout_for(name)
        if spec.is_async:
            call = spec.function(**arguments)
        else:
            # A sync tool must not block the loop; the thread cannot be killed on
            # timeout, but the turn stops waiting for it.
            call = _in_daemon_thread(
                name, functools.partial(spec.function, **arguments), self.threads
            )
        try:
            value = await self._await_tool(name, call, timeout)
        except TimeoutError:
            return ToolOutcome(ToolStatus.TIMED_OUT, f"timed out after {timeout:g} s")
        except _CancelledItself:
            log.error("tool %s raised CancelledError of its own", name, extra={"tool": name})
            return ToolOutcome(
                ToolStatus.FAILED, "error: the tool was cancelled by its own code, not by anyone"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("tool %s raised", name, extra={"tool": name})
            return ToolOutcome(ToolStatus.FAILED, f"error: {type(exc).__name__}: {exc}")
        return ToolOutcome(ToolStatus.DONE, _render(value))

    async def _await_tool(self, name: str, call: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """The tool's value, or TimeoutError. The tool runs in a task of its own so that
        one that ignores its cancel can be left behind, as a sync tool's thread is."""
        task = asyncio.create_task(call, name=f"tool-{name}")
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            await self._end(name, task)
            raise
        if not done:
            await self._end(name, task)
            raise TimeoutError
        if task.cancelled():
            # Not by this call's cancel, which lands in the wait above: the tool's own
            # code let a CancelledError out. Raised on, it would end the session's work
            # as if it were stopped, and leave the call without a result.
            raise _CancelledItself
        return task.result()

    async def _end(self, name: str, task: asyncio.Task[Any]) -> None:
        # Owned before it is cancelled: whatever it ends with from now on is logged.
        self.left_running.adopt(task)
        task.cancel()
        try:
            await asyncio.wait((task,), timeout=CANCEL_GRACE_SECONDS)
        finally:
            if not task.done():
                log.warning(
                    "tool %s did not end within %g s of being cancelled; left running, "
                    "its call no longer waits for it",
                    name,
                    CANCEL_GRACE_SECONDS,
                    extra={"tool": name},
                )

    async def stop(self) -> None:
        """Shutdown: cancels again the tools left running; one that still does not end is
        logged and left, as nothing can force it."""
        await self.left_running.cancel_all(CANCEL_GRACE_SECONDS)
        for thread in list(self.threads):
            log.warning(
                "%s: a sync tool still running in its thread; the process will not wait for it",
                thread.name,
            )


async def _in_daemon_thread(
    name: str, function: Callable[[], Any], threads: set[threading.Thread]
) -> Any:
    """A sync tool's call, in a daemon thread of its own rather than the loop's default
    executor: the interpreter joins the executor's threads at exit, so one tool that never
    returns would keep a stopped bot from exiting. Runs in a copy of the caller's context,
    as `asyncio.to_thread` does."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if outcome.done():  # the call was cancelled or timed out meanwhile
            return
        if error is None:
            outcome.set_result(value)
        else:
            outcome.set_exception(error)

    def work() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(function)
        except Exception as exc:
            error = exc
        finally:
            threads.discard(thread)
        # Closed once the bot stopped: nobody waits for this call any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, error)

    thread = threading.Thread(target=work, name=f"tool-{name}", daemon=True)
    threads.add(thread)
    thread.start()
    return await outcome
