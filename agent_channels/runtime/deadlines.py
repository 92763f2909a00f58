"""Calling a tool with a deadline: the call runs in a thread the run can walk away from.

Python cannot stop a thread. A tool that overruns its deadline is *abandoned*: the run
goes on (the model gets a time-limit error as the tool's result) while the thread runs
to its end in the background, holding whatever it holds (CPU, the GIL in a C loop,
memory). What reclaims such a thread is the process: Celery's hard time limit
(``CELERY_TIME_LIMIT_MARGIN``) kills the worker child a runaway run lives in. Under the
in-process backend nothing does, so tools that may not end belong on Celery's prefork
pool; see docs/runtime.rst.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

from django.db import connections

__all__ = ["Abandoned", "ToolTimeout", "call_with_deadline"]

#: How often the waiting run looks at its control (cancel, its own time limit).
_POLL_SECONDS = 0.1


class ToolTimeout(Exception):
    """The tool did not return within its deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The tool did not finish within its time limit of {seconds:g} s.")
        self.seconds = seconds


class Abandoned(Exception):
    """``should_stop()`` said the run must stop while the tool was still running."""


def call_with_deadline(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    seconds: float | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Any:
    """``fn(**kwargs)``, or :class:`ToolTimeout` after ``seconds`` (None: no deadline) or
    :class:`Abandoned` as soon as ``should_stop()`` is true."""
    outcome: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(fn, **kwargs)
        except BaseException as exc:  # handed to the caller, who reports it to the model
            outcome["error"] = exc
        finally:
            # A tool that used the ORM opened a connection in this thread: give it back.
            connections.close_all()
            done.set()

    thread = threading.Thread(target=target, name="agent-channels-tool", daemon=True)
    thread.start()
    waited = 0.0
    while not done.wait(_POLL_SECONDS):
        waited += _POLL_SECONDS
        if should_stop():
            raise Abandoned()
        if seconds is not None and waited >= seconds:
            raise ToolTimeout(seconds)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
