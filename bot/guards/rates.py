"""Messages per minute, per user and per chat, in a sliding window (per process)."""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.events import ConversationKey, InboundMessage
from bot.policies import Verdict
from bot.settings import Settings

WINDOW_SECONDS = 60.0


@dataclass
class SlidingWindow:
    limit: int
    clock: Callable[[], float] = time.monotonic
    # Each key's hits in the last minute, oldest first. A list, not a deque: every user
    # and chat active in the last minute has one, and a deque takes 760 bytes even empty
    # (bench.scale: 2.3 KiB per session, a user and a chat each), a list of one hit 88.
    _hits: dict[str, list[float]] = field(default_factory=dict)

    def wait_seconds(self, key: str) -> float:
        """0 if one more hit fits (and records it); else seconds until one does."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = []
        elif hits and hits[0] <= now - WINDOW_SECONDS:
            del hits[: bisect_right(hits, now - WINDOW_SECONDS)]
        if len(hits) >= self.limit:
            return hits[0] + WINDOW_SECONDS - now
        hits.append(now)
        return 0.0

    def forget_idle(self) -> None:
        now = self.clock()
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - WINDOW_SECONDS]:
            del self._hits[key]


@dataclass
class RateGate:
    per_user: SlidingWindow
    per_chat: SlidingWindow
    _checks: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateGate:
        return cls(
            SlidingWindow(settings.rate_limit_user_per_minute),
            SlidingWindow(settings.rate_limit_chat_per_minute),
        )

    async def check(self, message: InboundMessage) -> Verdict:
        if message.is_admin:
            return Verdict.ALLOW
        self._checks += 1
        if self._checks % 1000 == 0:
            self.per_user.forget_idle()
            self.per_chat.forget_idle()
        c = message.conversation
        wait = self.per_user.wait_seconds(f"{c.platform}:{message.user_id}")
        scope = "user"
        if not wait:
            wait = self.per_chat.wait_seconds(str(c))
            scope = "chat"
        if not wait:
            return Verdict.ALLOW
        seconds = max(1, round(wait))
        return Verdict(
            reason=f"{scope} rate limit", notice_key="rate_limited", values={"seconds": seconds}
        )

    async def usage(self, user_id: str, conversation: ConversationKey) -> dict[str, object] | None:
        return None
