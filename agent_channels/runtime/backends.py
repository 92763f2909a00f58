"""Where runs execute: Celery workers, or threads of the current process.

Backends are classes with capability flags (like django-tasks' backends), chosen by
``AGENT_CHANNELS["RUN_BACKEND"]``; by default Celery when a broker is configured and
the in-process pool otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from django.conf import settings
from django.utils.module_loading import import_string

from agent_channels.conf import get_config

__all__ = ["CeleryBackend", "InProcessBackend", "RunBackend", "get_backend", "reset_backend"]

logger = logging.getLogger(__name__)

TASK_NAME = "agent_channels.execute_run"


class RunBackend:
    """Executes runs by id. Subclasses implement :meth:`enqueue`."""

    #: Runs survive the death of the process that started them (another process resumes them).
    survives_process_exit: ClassVar[bool] = False
    #: Runs execute in other processes than the one that starts them.
    runs_in_other_processes: ClassVar[bool] = False
    #: A waiting run holds no thread or worker slot while it waits for input.
    releases_while_waiting: ClassVar[bool] = True

    def enqueue(self, run_id: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting runs (tests, shutdown)."""


class InProcessBackend(RunBackend):
    """Threads of this process: the embedded default for development without a broker.

    Runs share the web process; if it exits, they are restarted by the reaper the next
    time a process with this backend starts.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._pool = ThreadPoolExecutor(
            max_workers=int(get_config()["INPROCESS_WORKERS"]),
            thread_name_prefix="agent-channels-run",
        )
        from agent_channels.runtime.monitor import get_monitor

        get_monitor()

    def enqueue(self, run_id: str) -> None:
        from agent_channels.runtime.executor import execute_run

        self._pool.submit(execute_run, run_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
            from celery import current_app

            self.app = current_app
        self.queue = config["CELERY_QUEUE"]

    def enqueue(self, run_id: str) -> None:
        options: dict[str, Any] = {"queue": self.queue} if self.queue else {}
        self.app.send_task(TASK_NAME, args=[run_id], **options)


def default_backend_path() -> str:
    if getattr(settings, "CELERY_BROKER_URL", None):
        return "agent_channels.runtime.backends.CeleryBackend"
    return "agent_channels.runtime.backends.InProcessBackend"


_backend: RunBackend | None = None
_backend_lock = threading.Lock()


def get_backend() -> RunBackend:
    """The configured backend instance for this process."""
    global _backend
    with _backend_lock:
        if _backend is None or getattr(_backend, "pid", os.getpid()) != os.getpid():
            path = get_config()["RUN_BACKEND"] or default_backend_path()
            backend_class = import_string(path)
            _backend = backend_class()
        assert _backend is not None
        return _backend


def reset_backend() -> None:
    global _backend
    with _backend_lock:
        old, _backend = _backend, None
    if old is not None:
        old.close()
