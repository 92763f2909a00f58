"""Celery autodiscovery finds the runtime's task here (``app.autodiscover_tasks()``)."""

from agent_channels.runtime.tasks import execute_run_task

__all__ = ["execute_run_task"]
