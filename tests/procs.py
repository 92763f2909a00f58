"""Starting real OS processes against the test database and channel layer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that must share the test database."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["AGCH_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example_project")])
    env.update(extra)
    return env


def run_python(code: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=child_env(**extra), capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {port} within {timeout} s")


class Daphne:
    """A real daphne process serving tests.asgi on a loopback port."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.log_path = ROOT / f".daphne-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "tests.asgi:application"],
            env=child_env(**env), cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def ws_url(self, channel_path: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/agent-channels/{channel_path}/"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.log.closed:
            self.log.close()


class CeleryWorker:
    """A real Celery worker process executing runs from ``queue``.

    ``pool``: "solo" (one run at a time), "threads" (``concurrency`` runs in threads of one
    process) or "prefork" (``concurrency`` child processes). The worker leads a process
    group of its own, so :meth:`kill_group` can take out it and its children at once.
    """

    def __init__(self, queue: str, pool: str = "solo", concurrency: int = 1, **env: str) -> None:
        self.queue = queue
        self.log_path = ROOT / f".celery-{queue}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", f"--pool={pool}",
             f"--concurrency={concurrency}", "-Q", queue, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "info", "-n", f"{queue}-{time.monotonic_ns()}@%h"],
            env=child_env(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue, **env),
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready()

    def kill_group(self) -> None:
        """SIGKILL the worker's whole process group: a lost machine, children included."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery exited with {self.proc.returncode}:\n{self.output()}")
            if "ready." in self.output():
                return
            time.sleep(0.1)
        raise TimeoutError(f"celery was not ready within {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no acknowledgement, like a machine that lost power."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
