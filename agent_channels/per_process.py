"""Objects that belong to one OS process: threads, event loops and sockets do not survive
a fork, so a Celery prefork child or a forked test process must build its own.

Every long-lived helper of the package (the live wire, the delta flusher, the run
backend, the control listener, the run monitor) is a :class:`PerProcess`, and those
that need an event loop share :func:`background_loop`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess", "background_loop"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A lazily built instance per process, rebuilt after a fork, closable on reset."""

    def __init__(self, factory: Callable[[], T], close: Callable[[T], None] | None = None) -> None:
        self._factory = factory
        self._close = close
        self._lock = threading.Lock()
        self._instance: T | None = None
        self._pid = 0

    def get(self) -> T:
        with self._lock:
            if self._instance is None or self._pid != os.getpid():
                self._instance = self._factory()
                self._pid = os.getpid()
            return self._instance

    def peek(self) -> T | None:
        """The instance this process built, if it built one (never builds)."""
        with self._lock:
            return self._instance if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget the instance; close it when this process built it (not a parent's)."""
        with self._lock:
            old, mine = self._instance, self._pid == os.getpid()
            self._instance = None
        if old is not None and mine and self._close is not None:
            self._close(old)


def _start_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="agent-channels-loop", daemon=True).start()
    return loop


_loop: PerProcess[asyncio.AbstractEventLoop] = PerProcess(_start_loop)


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's one background event loop, running in a daemon thread.

    Sync code (Celery tasks, views, the monitor) hands coroutines to it with
    ``asyncio.run_coroutine_threadsafe``: one loop and one connection pool per process
    instead of an ``async_to_sync`` loop per call.
    """
    return _loop.get()
