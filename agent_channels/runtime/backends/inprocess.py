"""Threads of the current process: the embedded default when no broker is configured."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from agent_channels.conf import get_config
from agent_channels.runtime.backends import RunBackend
from agent_channels.runtime.executor import execute_run
from agent_channels.runtime.monitor import get_monitor

__all__ = ["InProcessBackend"]


class InProcessBackend(RunBackend):
    """Threads of this process: the embedded default for development without a broker.

    Runs share the web process; if it exits, they are restarted by the reaper the next
    time a process with this backend starts.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=int(get_config()["INPROCESS_WORKERS"]),
            thread_name_prefix="agent-channels-run",
        )
        get_monitor()

    def enqueue(self, run_id: str) -> None:
        self._pool.submit(execute_run, run_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
