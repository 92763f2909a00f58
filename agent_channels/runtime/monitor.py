"""One thread per worker process: heartbeats for its runs, their time limits, the reaper."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from django.db import close_old_connections

from agent_channels.conf import get_config
from agent_channels.per_process import PerProcess
from agent_channels.runtime import lifecycle

__all__ = ["Monitor", "get_monitor", "stop_monitor"]

logger = logging.getLogger(__name__)


class Watched(Protocol):
    run_id: Any

    def tick(self) -> None:
        """Called every heartbeat from the monitor thread (time limits live here)."""


class Monitor:
    def __init__(self) -> None:
        self._runs: dict[Any, Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._loop, name="agent-channels-monitor", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (and its database connection): shutdown and tests."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout)

    def watch(self, item: Watched) -> None:
        with self._lock:
            self._runs[item.run_id] = item

    def unwatch(self, item: Watched) -> None:
        with self._lock:
            self._runs.pop(item.run_id, None)

    def _loop(self) -> None:
        last_reap = 0.0
        while not self._stopped:
            config = get_config()
            self._wake.wait(float(config["HEARTBEAT_SECONDS"]))
            if self._stopped:
                break
            try:
                close_old_connections()
                with self._lock:
                    items = list(self._runs.values())
                for item in items:
                    item.tick()
                lifecycle.heartbeat([item.run_id for item in items])
                every = float(config["REAP_EVERY_SECONDS"])
                if every > 0 and time.monotonic() - last_reap >= every:
                    last_reap = time.monotonic()
                    lifecycle.reap()
            except Exception:
                # A database outage must not kill the thread: the next beat tries again.
                logger.exception("agent_channels: heartbeat failed")
            finally:
                close_old_connections()


_monitor: PerProcess[Monitor] = PerProcess(Monitor, close=Monitor.stop)


def get_monitor() -> Monitor:
    """The process's monitor, started on first use (again after a fork)."""
    return _monitor.get()


def stop_monitor() -> None:
    _monitor.reset()
