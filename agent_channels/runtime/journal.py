"""The step journal: what a run already did, so a restarted run does not do it again.

Every model call, tool call, input wait and emitted event is a step with an index
that counts up from 0 in the order the agent takes them. Agents are expected to be
deterministic given the results of their steps, so on a restart step *i* is the same
step as before: if it completed, its recorded result is returned instead of running
it again; if it had only started, it runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agent_channels.channel.connections import release, retrying
from agent_channels.models import Step, StepStatus
from agent_channels.runtime.errors import NonDeterministicReplay

__all__ = ["Journal", "StepRecord"]


@dataclass
class StepRecord:
    """One step as the journal knows it."""

    index: int
    kind: str
    name: str
    completed: bool
    result: Any


class Journal:
    """The journal of one run, loaded once per attempt."""

    def __init__(self, run_id: Any, attempt: int) -> None:
        self.run_id = run_id
        self.attempt = attempt
        # A run's first attempt has no steps yet (only an executing attempt writes them,
        # and claiming counts the attempt): one query less before its first event.
        self._steps = (
            {}
            if attempt <= 1
            else {
                s.index: StepRecord(
                    s.index, s.kind, s.name, s.status == StepStatus.COMPLETED, s.result
                )
                for s in retrying(lambda: list(Step.objects.filter(run_id=run_id)))
            }
        )
        self._next = 0

    @property
    def replaying(self) -> bool:
        """True while the agent is still re-walking steps that completed before."""
        record = self._steps.get(self._next)
        return record is not None and record.completed

    def next(self, kind: str, name: str = "") -> StepRecord:
        """The next step: the recorded one when there is one, else a fresh record."""
        index = self._next
        self._next += 1
        record = self._steps.get(index)
        if record is None:
            return StepRecord(index, kind, name, False, None)
        if record.kind != kind or record.name != name[:200]:
            raise NonDeterministicReplay(
                f"Step {index} was {record.kind} {record.name!r} when the run first executed "
                f"but is now {kind} {name!r}; an agent must take the same steps when replayed."
            )
        return record

    def _save(self, record: StepRecord, status: str, result: Any, **extra: Any) -> None:
        fields = {
            "kind": record.kind,
            "name": record.name[:200],
            "status": status,
            "result": result,
            "attempt": self.attempt,
            **extra,
        }
        steps = Step.objects.filter(run_id=self.run_id, index=record.index)
        # One statement in the usual cases (update_or_create takes a row lock and a
        # savepoint first): a step this attempt has not recorded yet is new, one it has is
        # updated. The fallbacks cover a retry after a write whose answer was lost.
        if record.index not in self._steps and not connection.in_atomic_block:
            try:
                Step.objects.create(run_id=self.run_id, index=record.index, **fields)
                return
            except IntegrityError:
                pass
        if not steps.update(**fields):
            Step.objects.update_or_create(run_id=self.run_id, index=record.index, defaults=fields)

    def start(self, record: StepRecord, state: Any = None) -> None:
        """Note that a step began (``state``: what a resumed step needs, e.g. a cursor)."""
        retrying(lambda: self._save(record, StepStatus.STARTED, state))
        # A step starts just before a model or tool call: wait without a pooled connection.
        release()
        record.result = state
        self._steps[record.index] = record

    def complete(
        self, record: StepRecord, result: Any, also: Callable[[], None] | None = None
    ) -> None:
        """Record a step's result; ``also`` runs in the same transaction (usage, say).

        Retried whole on a lost connection (the step row is written idempotently)."""

        def write() -> None:
            with transaction.atomic():
                self._save(record, StepStatus.COMPLETED, result, finished_at=timezone.now())
                if also is not None:
                    also()

        retrying(write)
        release()
        record.completed = True
        record.result = result
        self._steps[record.index] = record
