"""Where runs execute: the backend interface and the handler that loads one.

Backends are classes with capability flags (like django-tasks' backends), chosen by
``AGENT_CHANNELS["RUN_BACKEND"]`` as a dotted path; by default Celery when a broker is
configured and the in-process pool otherwise. Nothing imports an implementation
statically: they import the executor, and the executor must not import them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, ClassVar

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from agent_channels.conf import get_config
from agent_channels.per_process import PerProcess

__all__ = ["TASK_NAME", "RunBackend", "get_backend", "reset_backend"]

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


def default_backend_path() -> str:
    if getattr(settings, "CELERY_BROKER_URL", None):
        return "agent_channels.runtime.backends.celery.CeleryBackend"
    return "agent_channels.runtime.backends.inprocess.InProcessBackend"


def _build() -> RunBackend:
    path = get_config()["RUN_BACKEND"] or default_backend_path()
    backend: RunBackend = import_string(path)()
    return backend


_backend: PerProcess[RunBackend] = PerProcess(_build, close=lambda backend: backend.close())


def get_backend() -> RunBackend:
    """The configured backend instance for this process."""
    return _backend.get()


def reset_backend() -> None:
    _backend.reset()


def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("AGENT_CHANNELS", "CELERY_BROKER_URL"):
        reset_backend()


setting_changed.connect(_reset_on_setting_changed)


_MOVED = {
    "CeleryBackend": "agent_channels.runtime.backends.celery",
    "InProcessBackend": "agent_channels.runtime.backends.inprocess",
}


def __getattr__(name: str) -> Any:
    # Settings written before the backends became modules of their own name
    # "agent_channels.runtime.backends.celery.CeleryBackend": load the implementation on demand.
    if name in _MOVED:
        return getattr(import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
