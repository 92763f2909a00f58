"""Estimated cost of a run from its token usage and ``AGENT_CHANNELS["MODEL_PRICES"]``."""

from __future__ import annotations

from agent_channels.conf import get_config
from agent_channels.models import Run

__all__ = ["estimated_cost"]


def estimated_cost(run: Run) -> float | None:
    """USD, or None when the run's model has no configured price."""
    prices = get_config()["MODEL_PRICES"].get(run.model)
    if not prices or len(prices) != 2:
        return None
    prompt, completion = (float(p) for p in prices)
    return (run.prompt_tokens * prompt + run.completion_tokens * completion) / 1_000_000
