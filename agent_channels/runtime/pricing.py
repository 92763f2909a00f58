"""Estimated cost of runs from their token usage and ``AGENT_CHANNELS["MODEL_PRICES"]``.

Prices are USD per million tokens, ``[prompt, completion]`` per model name.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, QuerySet, Sum

from agent_channels.conf import get_config
from agent_channels.models import Run

__all__ = ["UsageTotals", "cost", "estimated_cost", "usage_totals"]


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for these tokens of ``model``, or None when the model has no configured price."""
    prices = get_config()["MODEL_PRICES"].get(model)
    if not prices or len(prices) != 2:
        return None
    prompt, completion = (float(p) for p in prices)
    return (prompt_tokens * prompt + completion_tokens * completion) / 1_000_000


def estimated_cost(run: Run) -> float | None:
    """USD, or None when the run's model has no configured price."""
    return cost(run.model, run.prompt_tokens, run.completion_tokens)


@dataclass(frozen=True)
class UsageTotals:
    """Token usage and estimated cost of a set of runs."""

    runs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: USD, over the runs whose model has a price.
    cost: float = 0.0
    #: Tokens of runs whose model has no price (not in :attr:`cost`).
    unpriced_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_totals(runs: QuerySet[Run]) -> UsageTotals:
    """Totals of ``runs`` in one query: sums grouped by model, priced here per model."""
    rows = (
        runs.order_by()
        .values("model")
        .annotate(n=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    )
    count = prompt_total = completion_total = unpriced = 0
    total = 0.0
    for row in rows:
        prompt, completion = int(row["prompt"] or 0), int(row["completion"] or 0)
        count += int(row["n"])
        prompt_total += prompt
        completion_total += completion
        priced = cost(row["model"], prompt, completion)
        if priced is None:
            unpriced += prompt + completion
        else:
            total += priced
    return UsageTotals(count, prompt_total, completion_total, total, unpriced)
