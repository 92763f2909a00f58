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
    task.backend = None  # as in a worker that has run nothing yet
    with (
        mock.patch.object(
            celery.app.backends, "by_url", side_effect=celery.app.backends.by_url
        ) as by_url,
        mock.patch("agent_channels.runtime.tasks.execute_run", return_value="completed") as run,
    ):
        traced = run_in_new_thread(task, "run-1")
        again = run_in_new_thread(task, "run-1b")
    assert [call.args for call in run.call_args_list] == [("run-1",), ("run-1b",)]
    assert traced.retval == again.retval == "completed"
    assert by_url.call_count == 0
    assert isinstance(task.backend, DisabledBackend)


def test_a_failing_run_task_is_reported_without_a_result_backend() -> None:
    task = app.tasks[TASK_NAME]
    task.backend = None
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


def test_the_run_task_keeps_the_apps_task_base_class() -> None:
    # Projects customise app.Task (logging, context); the run task must inherit it.
    assert isinstance(app.tasks[TASK_NAME], app.Task)
    assert execute_run_task.name == TASK_NAME
