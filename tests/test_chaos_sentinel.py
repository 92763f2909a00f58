"""Chaos: the Redis primary dies mid-stream and Sentinel promotes its replica.

The test starts a Redis primary, a replica and three sentinels of its own (loopback ports,
no persistence), and a daphne and a Celery worker whose channel layer *and* broker reach
Redis only through the sentinels (``example_project.env.channel_layers`` and
``celery_sentinel_broker``, the same code the example project runs). WebSocket clients
follow a channel while a run streams; the primary is SIGKILLed. After the failover the run
goes on, a second run is started through the new primary, and each client, reconnecting
with ``?since=<last seq>`` whenever its socket dies, must have seen every event exactly
once, in order, with the content the log holds: the log heals what the wire dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import Client

from agent_channels.models import Channel, Event, Run

from .helpers import Seen, follow_socket, wait_for
from .procs import CeleryWorker, Daphne, free_port, wait_for_port

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
    pytest.mark.skipif(settings.LAYER_KIND != "redis", reason="needs the Redis channel layer"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None and os.environ.get("CI") != "true",
        reason="needs redis-server on PATH to run a primary, a replica and sentinels",
    ),
]

MASTER_NAME = "agch"
TERMINAL = {"completed", "failed", "cancelled", "interrupted"}
#: About 6 s of tokens: the failover (about 2-4 s) happens in the middle.
RUN_INPUT = {"tokens": 240, "interval_ms": 25}
CLIENTS = 3
#: A hard bound on the whole test, whatever goes wrong.
DEADLINE_SECONDS = 100


class RedisGroup:
    """A primary, a replica and three sentinels watching them, all children of the test."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agch-sentinel-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        try:
            self.primary = self._server()
            self.replica = self._server("--replicaof", "127.0.0.1", str(self.primary))
            self.sentinels = [self._sentinel() for _ in range(3)]
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _start(self, port: int, args: list[str]) -> int:
        proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        self.procs[port] = proc
        wait_for_port(port, proc)
        return port

    def _server(self, *extra: str) -> int:
        port = free_port()
        return self._start(port, [
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.dir), "--dbfilename", f"{port}.rdb",
            "--logfile", str(self.dir / f"redis-{port}.log"), *extra,
        ])

    def _sentinel(self) -> int:
        port = free_port()
        config = self.dir / f"sentinel-{port}.conf"  # sentinels rewrite their file: their own
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"logfile {self.dir}/sentinel-{port}.log\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary} 2\n"
            # Seconds, not the default 30: the test waits for the failover.
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        )
        return self._start(port, [str(config), "--sentinel"])

    def _wait_ready(self) -> None:
        """Replica in sync; every sentinel knows the replica and the other two sentinels."""
        replica = redis.Redis(port=self.replica, socket_timeout=2)
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up", timeout=20)

        def sentinels_agree() -> bool:
            for port in self.sentinels:
                state = redis.Redis(port=port, socket_timeout=2).sentinel_master(MASTER_NAME)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
            return True

        wait_for(sentinels_agree, timeout=30, interval=0.2)

    def primary_port(self) -> int:
        """The primary the sentinels name now."""
        _, port = redis.Redis(port=self.sentinels[0], socket_timeout=2).sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    @property
    def env(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels)

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)




def start_run(port: int, cookie: str, channel: str) -> str:
    csrf, origin = secrets.token_hex(16), f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{origin}/agent-channels/{channel}/runs/",
        data=json.dumps({"agent": "demo", "input": RUN_INPUT, "on_active": "enqueue"}).encode(),
        headers={"Cookie": f"{cookie}; csrftoken={csrf}", "X-CSRFToken": csrf, "Origin": origin,
                 "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 201
        return str(json.loads(response.read())["id"])


@pytest.fixture
def session_cookie(django_user_model) -> str:
    user = django_user_model.objects.create_user("sentinel", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_a_sentinel_failover_mid_stream_loses_duplicates_and_reorders_nothing(
    session_cookie: str,
) -> None:
    started_at = time.monotonic()
    group = RedisGroup()
    queue = f"sentinel-{uuid.uuid4().hex[:8]}"
    env = {"AGCH_REDIS_SENTINELS": group.env, "AGCH_REDIS_MASTER": MASTER_NAME}
    daphne: Daphne | None = None
    worker: CeleryWorker | None = None
    channel = f"sentinel-{uuid.uuid4().hex[:6]}"
    clients = [Seen("ws") for _ in range(CLIENTS)]
    done = threading.Event()
    loop_errors: list[BaseException] = []
    failover_seconds = -1.0
    worker_restarts = 0

    def run_clients() -> None:
        async def main() -> None:
            await asyncio.gather(*(follow_socket(s, daphne.port, session_cookie, channel, done)  # type: ignore[union-attr]
                                   for s in clients))
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the assertions below
            loop_errors.append(exc)

    thread = threading.Thread(target=run_clients, daemon=True)
    try:
        daphne = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue, **env)
        worker = CeleryWorker(queue, pool="threads", concurrency=4, AGCH_DB_POOL="3", **env)
        first = start_run(daphne.port, session_cookie, channel)
        thread.start()
        wait_for(lambda: all(s.last >= 20 for s in clients), timeout=30)
        assert Run.objects.get(pk=first).status == "running"

        old_primary = group.primary
        group.kill(old_primary)
        killed_at = time.monotonic()
        wait_for(lambda: group.primary_port() == group.replica, timeout=30, interval=0.1)
        failover_seconds = time.monotonic() - killed_at

        def supervise() -> None:
            """What systemd's Restart=always does, so that a worker that exits after losing
            the primary fails the assertion below rather than the wait."""
            nonlocal worker, worker_restarts
            if worker is not None and worker.proc.poll() is not None:
                worker.stop()
                worker = CeleryWorker(queue, pool="threads", concurrency=4, AGCH_DB_POOL="3", **env)
                worker_restarts += 1

        def ended(run_id: str) -> Run | None:
            supervise()
            return Run.objects.filter(pk=run_id, status__in=TERMINAL).first()

        run = wait_for(lambda: ended(first), timeout=40, interval=0.1)
        assert run.status == "completed", (run.status, run.error)
        # The broker now is the promoted replica: a run started through it completes too.
        second = start_run(daphne.port, session_cookie, channel)
        run = wait_for(lambda: ended(second), timeout=40, interval=0.1)
        assert run.status == "completed", (run.status, run.error)
        last_seq = Channel.objects.get(name=channel).last_seq
        remaining = DEADLINE_SECONDS - (time.monotonic() - started_at)
        wait_for(lambda: all(s.last >= last_seq for s in clients), timeout=max(remaining, 5))
        # The layer's state lives on the new primary now: the core layer's group memberships,
        # or (PUB/SUB keeps no keys) the daphne's subscriptions to the clients' groups.
        prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
        promoted = redis.Redis(port=group.replica, db=0, socket_timeout=2)
        if settings.LAYER_BACKEND == "pubsub":
            keys = promoted.pubsub_channels(f"{prefix}*")
        else:
            keys = promoted.keys(f"{prefix}*")
    finally:
        done.set()
        thread.join(10)
        for proc in (worker, daphne):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        group.stop()

    print(
        f"\nsentinel: primary SIGKILLed mid-stream; replica promoted after {failover_seconds:.1f} s; "
        f"{worker_restarts} worker restarts; {CLIENTS} clients, "
        f"{sum(s.connects for s in clients)} connects "
        f"({sum(len(s.errors) for s in clients)} refused 'unavailable' during the failover); {last_seq} events "
        f"checked per client; {time.monotonic() - started_at:.0f} s"
    )
    assert not loop_errors, loop_errors
    # Celery 5.7.0 ended the worker here ("Unrecoverable error: AttributeError" restoring
    # unacknowledged messages); pyproject.toml excludes it.
    assert worker_restarts == 0, "the Celery worker exited after losing the Redis primary"
    assert keys, f"nothing of the channel layer ({settings.LAYER_BACKEND}) on the promoted replica"
    log = {seq: (name, data) for seq, name, data in
           Event.objects.filter(channel__name=channel).values_list("seq", "name", "data")}
    for seen in clients:
        # While no primary is known, opening a socket fails with a coded error frame and a
        # close; the client reconnects. Nothing else may go wrong.
        assert set(seen.errors) <= {"unavailable"}, seen.errors
        assert seen.duplicates == 0 and seen.gaps == 0, (seen.duplicates, seen.gaps)
        assert seen.seqs == list(range(1, last_seq + 1)), (seen.last, last_seq)
        assert seen.frames == log, "what the client saw is not what the log holds"
