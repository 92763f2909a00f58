"""Starting real OS processes against the test database and channel layer."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
            # daphne drops a handshake the application has not answered within 5 s; on a
            # test machine whose 2 cores also run workers, PostgreSQL and 100 clients, a
            # burst of handshakes can take longer than that without anything being wrong.
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "--websocket_connect_timeout", "30", "tests.asgi:application"],
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


#: The nginx configuration shipped as an example, which :class:`Nginx` runs.
NGINX_EXAMPLE = ROOT / "example_project" / "deploy" / "nginx.conf"
#: What the example says that a test must change: two daphne addresses and the port.
_NGINX_PLACEHOLDERS = ("127.0.0.1:8001", "127.0.0.1:8002", "listen 8080;")


class Nginx:
    """nginx as a child of the test: the shipped example config in front of ``upstreams``.

    Everything it writes (pid, logs, temporary files) goes to a directory of its own; it
    listens on a free loopback port. The access log names the daphne that served each
    request (``$upstream_addr``), so a test can tell where a reconnect landed.
    """

    def __init__(self, upstreams: list[int]) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise FileNotFoundError("nginx is not installed")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="agch-nginx-"))
        # Worker processes run as nobody when the test is root: let them into the directory.
        self.dir.chmod(0o755)
        site = NGINX_EXAMPLE.read_text()
        first, second, listen = _NGINX_PLACEHOLDERS
        assert len(upstreams) == 2 and all(site.count(p) == 1 for p in _NGINX_PLACEHOLDERS)
        site = site.replace(first, f"127.0.0.1:{upstreams[0]}").replace(
            second, f"127.0.0.1:{upstreams[1]}").replace(listen, f"listen 127.0.0.1:{self.port};")
        (self.dir / "site.conf").write_text(site)
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(f"    {kind}_temp_path {self.dir}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.dir}/nginx.pid;\n"
            f"error_log {self.dir}/error.log info;\nevents {{ worker_connections 512; }}\n"
            "http {\n"
            "    log_format upstreams '$request_method $request_uri $status "
            "$http_last_event_id $upstream_addr';\n"
            f"    access_log {self.dir}/access.log upstreams;\n{temp}\n"
            f"    include {self.dir}/site.conf;\n}}\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
             "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"),  # noqa: SIM115
        )
        try:
            wait_for_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def access_log(self) -> list[list[str]]:
        """``[method, uri, status, Last-Event-ID or "-", upstream address(es)...]`` per
        request logged so far (a request is logged when it ends)."""
        path = self.dir / "access.log"
        if not path.exists():
            return []
        return [line.replace(",", " ").split() for line in path.read_text().splitlines()]

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown: open WebSockets need not finish
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A redis-server of the test's own on a free loopback port; no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(f"/tmp/agch-chaos-redis-{os.getpid()}-{self.port}")
        self.dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
