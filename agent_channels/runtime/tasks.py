"""The Celery task. acks_late + reject_on_worker_lost: a run whose worker dies is redelivered;
the claim in :func:`~agent_channels.runtime.lifecycle.claim` makes duplicates harmless."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_ready

from agent_channels.runtime.backends import TASK_NAME
from agent_channels.runtime.executor import execute_run
from agent_channels.runtime.monitor import get_monitor

__all__ = ["execute_run_task"]


@shared_task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def execute_run_task(run_id: str) -> str:
    return execute_run(run_id)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_monitor(**kwargs: Any) -> None:
    # The reaper runs in every worker, so a run whose worker died is restarted even when
    # no other run is executing.
    get_monitor()
