"""The Celery task. acks_late + reject_on_worker_lost: a run whose worker dies is redelivered;
the claim in :func:`~agent_channels.runtime.lifecycle.claim` makes duplicates harmless."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.backends.base import DisabledBackend
from celery.signals import worker_ready

from agent_channels.runtime.backends import TASK_NAME
from agent_channels.runtime.executor import execute_run
from agent_channels.runtime.monitor import get_monitor

__all__ = ["execute_run_task"]


class ResultlessTask(Task):  # type: ignore[misc]
    """A task whose result is never kept, so it never touches the app's result backend.

    The run's row is the result. Celery still asks ``task.backend`` after every task, and
    the app builds its backend once per *thread* (an entry-points scan, ~5-10 ms of CPU):
    on a thread pool of 100 that is a second of CPU spent on the first runs a worker takes,
    exactly when they all start at once.
    """

    @property
    def backend(self) -> Any:
        backend = self.__dict__.get("_resultless")
        if backend is None:
            backend = self.__dict__["_resultless"] = DisabledBackend(self.app)
        return backend

    @backend.setter
    def backend(self, value: Any) -> None:
        self.__dict__["_resultless"] = value


@shared_task(  # type: ignore[untyped-decorator]
    name=TASK_NAME,
    base=ResultlessTask,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def execute_run_task(run_id: str) -> str:
    return execute_run(run_id)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_monitor(**kwargs: Any) -> None:
    # The reaper runs in every worker, so a run whose worker died is restarted even when
    # no other run is executing.
    get_monitor()
