"""Token budgets per user and per chat, per day and per month, and a global daily cap,
counted from the usage the API returns (stored with every LLM call)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from bot.events import ConversationKey, InboundMessage
from bot.policies import Verdict
from bot.settings import Settings


@dataclass(frozen=True)
class TokenTotals:
    user_day: int
    user_month: int
    chat_day: int
    chat_month: int
    global_day: int


class UsageLedger(Protocol):
    async def token_totals(
        self, user_id: str, chat_key: str, day_start: datetime, month_start: datetime
    ) -> TokenTotals: ...


def chat_key(conversation: ConversationKey) -> str:
    return f"{conversation.platform}:{conversation.chat_id}"


def period_starts(now: datetime) -> tuple[datetime, datetime]:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


def next_month(month_start: datetime) -> datetime:
    return (month_start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class BudgetGate:
    ledger: UsageLedger
    user_daily: int
    user_monthly: int
    chat_daily: int
    chat_monthly: int
    global_daily: int

    @classmethod
    def from_settings(cls, settings: Settings, ledger: UsageLedger) -> BudgetGate:
        return cls(
            ledger,
            settings.token_budget_user_daily,
            settings.token_budget_user_monthly,
            settings.token_budget_chat_daily,
            settings.token_budget_chat_monthly,
            settings.token_budget_global_daily,
        )

    @property
    def enabled(self) -> bool:
        return any(
            (
                self.user_daily,
                self.user_monthly,
                self.chat_daily,
                self.chat_monthly,
                self.global_daily,
            )
        )

    async def _totals(self, user_id: str, conversation: ConversationKey) -> TokenTotals:
        day, month = period_starts(datetime.now(UTC))
        return await self.ledger.token_totals(user_id, chat_key(conversation), day, month)

    async def check(self, message: InboundMessage) -> Verdict:
        if not self.enabled or message.is_admin:
            return Verdict.ALLOW
        totals = await self._totals(message.user_id, message.conversation)
        day, month = period_starts(datetime.now(UTC))
        over = [
            ("user daily", self.user_daily, totals.user_day, day + timedelta(days=1)),
            ("chat daily", self.chat_daily, totals.chat_day, day + timedelta(days=1)),
            ("global daily", self.global_daily, totals.global_day, day + timedelta(days=1)),
            ("user monthly", self.user_monthly, totals.user_month, next_month(month)),
            ("chat monthly", self.chat_monthly, totals.chat_month, next_month(month)),
        ]
        for name, limit, used, resets in over:
            if limit and used >= limit:
                return Verdict(
                    reason=f"{name} token budget used ({used}/{limit})",
                    notice_key="over_budget",
                    values={"reset": resets.strftime("%Y-%m-%d %H:%M UTC")},
                )
        return Verdict.ALLOW

    async def usage(self, user_id: str, conversation: ConversationKey) -> dict[str, object] | None:
        totals = await self._totals(user_id, conversation)

        def limit(value: int) -> str:
            return str(value) if value else "∞"

        return {
            "day": totals.user_day,
            "day_limit": limit(self.user_daily),
            "month": totals.user_month,
            "month_limit": limit(self.user_monthly),
        }
