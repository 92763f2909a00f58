"""Celery workers: runs are sent as tasks by name."""

from __future__ import annotations

import time
from typing import Any

from celery import current_app
from django.utils.module_loading import import_string

from agent_channels.conf import get_config
from agent_channels.models import Run
from agent_channels.runtime.backends import TASK_NAME, RunBackend

__all__ = ["CeleryBackend"]


class CeleryBackend(RunBackend):
    """Celery workers: ``celery -A <project> worker`` with ``agent_channels.tasks`` loaded.

    The task is sent by name, so the sending process does not import the worker's code.
    """

    survives_process_exit = True
    runs_in_other_processes = True

    def __init__(self) -> None:
        config = get_config()
        if config["CELERY_APP"]:
            self.app: Any = import_string(config["CELERY_APP"])
        else:
            self.app = current_app
        self.queue = config["CELERY_QUEUE"]

    def enqueue(self, run_id: str) -> None:
        options: dict[str, Any] = {"queue": self.queue} if self.queue else {}
        options.update(time_limits(run_id))
        # No result is kept (the run's row is the result), and none is built: Celery's
        # AsyncResult sets up the app's result backend once per *thread*, an entry-points
        # scan of ~4 ms, and an ASGI server runs every request in a fresh thread.
        self.app.send_task(
            TASK_NAME, args=[run_id], ignore_result=True, result_cls=_SentTask, **options
        )


class _SentTask:
    """What ``send_task`` returns here: the task id only."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id


def time_limits(run_id: str) -> dict[str, float]:
    """Celery's ``soft_time_limit`` and ``time_limit`` for a run's task, from its time limit.

    The run stops itself at its deadline wherever it checks (model streams, sleeps, tool
    waits); these reclaim a worker whose run never checks again (a tool holding the GIL,
    an agent in a loop): the soft limit raises in the task ``margin`` seconds after the
    deadline, the hard limit kills the worker child ``margin`` seconds later (the run is
    then redelivered and fails at once, past its deadline). Only the prefork pool enforces
    them; under ``-P threads`` a runaway thread keeps its worker (docs/runtime.rst).
    """
    config = get_config()
    row = Run.objects.filter(pk=run_id).values_list("time_limit", "started_at").first()
    limit, started = row if row is not None else (None, None)
    limit = limit or config["RUN_TIME_LIMIT"]
    if not limit:
        return {}
    remaining = float(limit)
    if started is not None:
        remaining = max(0.0, started.timestamp() + remaining - time.time())
    margin = float(config["CELERY_TIME_LIMIT_MARGIN"])
    return {"soft_time_limit": remaining + margin, "time_limit": remaining + 2 * margin}
