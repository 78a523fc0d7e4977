"""What-if switches: each stands for one change recommended to the core, applied as a
benchmark-only patch of this process's modules, so its effect is measured before anyone
edits the core. Nothing on disk changes; `applied()` restores everything on exit.

  nolimit      python-telegram-bot's flood limiter without its 30/s and 20/min caps (not a
               recommendation: it separates our own cost from Telegram's published limit).
  notyping     no typing indicator at all, not even while the model writes
               (bot/presence.py).

Switches applied to the core are gone from here: one SQLite connection per process
(storage/database.py, was "onewriter"), tool schemas built once (bot/tools/registry.py, was
"schemacache"), recovery in waves (bot/engine.py RECOVERY_CONCURRENCY, was "recoverwaves"),
the request posted without the SDK's transform (bot/llm.py, was "sdkbypass") and each
update parsed once, checked apart only in a batch python-telegram-bot could not parse
(adapters/telegram/transport.py, was "noguard"); RESULTS.md has their figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

EXPERIMENTS = ("nolimit", "notyping")


def check(names: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(names)
    unknown = chosen - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"unknown experiment(s) {sorted(unknown)}; use {', '.join(EXPERIMENTS)}")
    return chosen


def _unlimited() -> Any:
    from adapters.telegram.transport import ChatActionExemptRateLimiter

    return ChatActionExemptRateLimiter(overall_max_rate=0, group_max_rate=0)


def _no_typing(self: object, session_id: int, key: object, sink: object) -> None:
    return None


def _targets(name: str) -> list[tuple[object, str, object]]:
    """(object, attribute, new value) for each patch of one experiment."""
    if name == "nolimit":
        import adapters.telegram.adapter as telegram_adapter

        return [(telegram_adapter, "ChatActionExemptRateLimiter", _unlimited)]
    if name == "notyping":
        from bot.presence import TypingKeeper

        return [(TypingKeeper, "start", _no_typing)]
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
