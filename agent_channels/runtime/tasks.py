"""The Celery task. acks_late + reject_on_worker_lost: a run whose worker dies is redelivered;
the claim in :func:`~agent_channels.runtime.lifecycle.claim` makes duplicates harmless."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.backends.base import DisabledBackend
from celery.signals import worker_ready

from agent_channels.runtime.backends import TASK_NAME
from agent_channels.runtime.executor import execute_run
from agent_channels.runtime.monitor import get_monitor

__all__ = ["execute_run_task"]


@shared_task(  # type: ignore[untyped-decorator]
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def execute_run_task(task: Any, run_id: str) -> str:
    without_result_backend(task)
    return execute_run(run_id)


def without_result_backend(task: Any) -> None:
    """Give ``task`` a backend that stores nothing (the run's row is the result).

    Celery asks ``task.backend`` after every task even when it keeps no result, and the
    app builds its result backend once per *thread* (an entry-points scan, ~5-10 ms of
    CPU): on a thread pool of 100, a second of CPU spent on the first runs a worker takes,
    exactly when they all start at once. Set on the task instance (one per app and
    process), so the task keeps the app's own ``Task`` base class.
    """
    if task._backend is None:
        task.backend = DisabledBackend(task.app)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_monitor(**kwargs: Any) -> None:
    # The reaper runs in every worker, so a run whose worker died is restarted even when
    # no other run is executing.
    get_monitor()
