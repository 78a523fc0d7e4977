"""What-if switches: each stands for one change recommended to the core, applied as a
benchmark-only patch of this process's modules, so its effect is measured before anyone
edits the core. Nothing on disk changes; `applied()` restores everything on exit.

  nolimit      python-telegram-bot's flood limiter without its 30/s and 20/min caps (not a
               recommendation: it separates our own cost from Telegram's published limit).
  notyping     no typing indicator while tools run (bot/presence.py, bot/session.py); every
               measured session has a tool running, so this is simply "no typing".
  sdkbypass    the openai SDK's request transform skipped (bot/llm.py: post the body we
               already built as plain JSON; the transform walks every history message).

Switches applied to the core are gone from here: one SQLite connection per process
(storage/database.py, was "onewriter"), tool schemas built once (bot/tools/registry.py, was
"schemacache") and recovery in waves (bot/engine.py RECOVERY_CONCURRENCY, was
"recoverwaves"); RESULTS.md has their figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

EXPERIMENTS = ("nolimit", "notyping", "sdkbypass")


def check(names: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(names)
    unknown = chosen - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"unknown experiment(s) {sorted(unknown)}; use {', '.join(EXPERIMENTS)}")
    return chosen


def _unlimited(max_retries: int) -> Any:
    from adapters.telegram.transport import ChatActionExemptRateLimiter

    return ChatActionExemptRateLimiter(
        overall_max_rate=0, group_max_rate=0, max_retries=max_retries
    )


def _no_typing(self: object, session_id: int, key: object, sink: object) -> None:
    return None


async def _as_is(data: object, expected_type: object) -> object:
    """The request body without the SDK's walk over it: only the parameters left unset
    (the SDK's omit/not-given markers) are dropped, as `client.post(body=...)` would get."""
    from openai._utils import is_given

    if isinstance(data, dict):
        return {key: value for key, value in data.items() if is_given(value)}
    return data


def _targets(name: str) -> list[tuple[object, str, object]]:
    """(object, attribute, new value) for each patch of one experiment."""
    if name == "nolimit":
        import adapters.telegram.adapter as telegram_adapter

        return [(telegram_adapter, "ChatActionExemptRateLimiter", _unlimited)]
    if name == "notyping":
        from bot.presence import TypingKeeper

        return [(TypingKeeper, "start", _no_typing)]
    if name == "sdkbypass":
        import openai.resources.chat.completions.completions as completions

        return [(completions, "async_maybe_transform", _as_is)]
    raise ValueError(f"unknown experiment {name!r}")


@contextmanager
def applied(names: Iterable[str]) -> Iterator[None]:
    saved: list[tuple[object, str, object]] = []
    try:
        for name in sorted(check(names)):
            for target, attribute, value in _targets(name):
                if not hasattr(target, attribute):
                    raise AttributeError(
                        f"{target!r} has no {attribute}: experiment {name} is out of date"
                    )
                saved.append((target, attribute, getattr(target, attribute)))
                setattr(target, attribute, value)
        yield
    finally:
        for target, attribute, value in reversed(saved):
            setattr(target, attribute, value)
