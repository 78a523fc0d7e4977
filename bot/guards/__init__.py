"""Guardrails for public groups: who may talk, how often, and how much the model may cost.

Each is a `bot.policies.Gate`; `build_gates` assembles them from settings in the order they
are asked (cheapest first).
"""

from __future__ import annotations

from bot.guards.access import AccessGate
from bot.guards.budget import BudgetGate, UsageLedger
from bot.guards.rates import RateGate
from bot.policies import Gate
from bot.settings import Settings


def build_gates(settings: Settings, ledger: UsageLedger, access: AccessGate) -> list[Gate]:
    return [access, RateGate.from_settings(settings), BudgetGate.from_settings(settings, ledger)]


__all__ = ["AccessGate", "BudgetGate", "RateGate", "UsageLedger", "build_gates"]
