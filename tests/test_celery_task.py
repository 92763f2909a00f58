"""The run task as a worker thread executes it: no result backend is built or written."""

from __future__ import annotations

import threading
import uuid
from typing import Any
from unittest import mock

import celery.app.backends
from celery.app.trace import build_tracer
from celery.backends.base import DisabledBackend

from agent_channels.runtime.backends import TASK_NAME
from agent_channels.runtime.tasks import execute_run_task

from .celery_app import app


def run_in_new_thread(task: Any, *args: Any) -> Any:
    # A worker's pool thread: Celery keeps the app's result backend per thread.
    tracer = build_tracer(task.name, task, app=app)
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(tracer(uuid.uuid4().hex, args, {}, {"delivery_info": {}}))
    )
    thread.start()
    thread.join(10)
    return result[0]


def test_the_run_task_never_sets_up_the_result_backend() -> None:
    task = app.tasks[TASK_NAME]
    assert isinstance(task.backend, DisabledBackend)
    with (
        mock.patch.object(
            celery.app.backends, "by_url", side_effect=celery.app.backends.by_url
        ) as by_url,
        mock.patch("agent_channels.runtime.tasks.execute_run", return_value="completed") as run,
    ):
        traced = run_in_new_thread(task, "run-1")
    run.assert_called_once_with("run-1")
    assert traced.retval == "completed"
    assert by_url.call_count == 0


def test_a_failing_run_task_is_reported_without_a_result_backend() -> None:
    task = app.tasks[TASK_NAME]
    with (
        mock.patch.object(
            celery.app.backends, "by_url", side_effect=celery.app.backends.by_url
        ) as by_url,
        mock.patch(
            "agent_channels.runtime.tasks.execute_run", side_effect=RuntimeError("boom")
        ),
    ):
        traced = run_in_new_thread(task, "run-2")
    assert isinstance(traced.retval.exception, RuntimeError)
    assert by_url.call_count == 0


def test_the_backend_can_still_be_set() -> None:
    task = app.tasks[TASK_NAME]
    saved = task.backend
    other = DisabledBackend(app)
    try:
        task.backend = other
        assert task.backend is other
    finally:
        task.backend = saved
    assert execute_run_task.name == TASK_NAME
