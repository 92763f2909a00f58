"""Chaos: runs stream to WebSocket clients while the processes under them die.

Real processes throughout: two daphne servers, two Celery workers, a Redis server of the
test's own (channel layer and broker; the shared one is never touched) and PostgreSQL behind
a TCP proxy the test can cut. Demo runs stream on a few channels, one after the other; a
client per channel follows it and, whenever its socket dies, reconnects through the *other*
daphne with ``?since=<last seq it saw>``; one more client stops reading for seconds at a time.

Faults, repeated ``AGCH_CHAOS_ROUNDS`` times (2 by default): SIGKILL a daphne (a new one
takes its place), SIGKILL a worker (the survivor's reaper restarts its run), SIGKILL and
restart Redis (empty: no persistence), cut every PostgreSQL connection and refuse new ones
for a few seconds.

Asserted at the clients: every event in the log arrives exactly once, in order, with the
content the log holds; every run ends in a terminal state. The counts are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from django.conf import settings
from django.db import connection
from django.test import Client

from agent_channels.models import Channel, Event, Run

from .procs import CeleryWorker, Daphne, RedisServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None and os.environ.get("CI") != "true",
        reason="needs redis-server on PATH to run a Redis of its own",
    ),
]

ROUNDS = int(os.environ.get("AGCH_CHAOS_ROUNDS", "2"))
CHANNELS = 3
TERMINAL = {"completed", "failed", "cancelled", "interrupted"}
RUN_INPUT = {"tokens": 120, "interval_ms": 15}
#: A hard bound on the whole test, whatever goes wrong.
DEADLINE_SECONDS = 170


class TcpProxy:
    """A loopback TCP forwarder whose connections the test can cut (PostgreSQL "down")."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.pairs: set[tuple[socket.socket, socket.socket]] = set()
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self.lock:
                self.pairs.add(pair)
            threading.Thread(target=self._pipe, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, pair), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(pair)

    def _close(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self.lock:
            self.pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> int:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        self.up.clear()
        with self.lock:
            pairs = list(self.pairs)
        for pair in pairs:
            self._close(pair)
        return len(pairs)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@dataclass
class Follower:
    """One WebSocket client: what it saw, and what was wrong with it."""

    channel: str
    slow: bool = False
    seqs: list[int] = field(default_factory=list)
    frames: dict[int, tuple[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    gaps: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0


class Cluster:
    """The processes under test, and the faults done to them."""

    def __init__(self, queue: str) -> None:
        self.redis = RedisServer()
        self.proxy = TcpProxy(int(connection.settings_dict["PORT"] or 5432))
        self.env = {
            "AGCH_LAYER": "redis",
            "AGCH_REDIS_URL": f"{self.redis.url}/0",
            "AGCH_BROKER_URL": f"{self.redis.url}/1",
            "AGCH_POSTGRES_URL": f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{self.proxy.port}/x",
            "AGCH_RUN_BACKEND": "celery",
            "AGCH_CELERY_QUEUE": queue,
            # Small, so that the client that stops reading is soon "behind" on the server.
            "AGCH_SEND_BUFFER_BYTES": "4096",
        }
        self.queue = queue
        self.daphnes: list[Daphne] = []
        self.workers: list[CeleryWorker] = []
        self.faults: dict[str, int] = {}
        try:
            for _ in range(2):
                self.daphnes.append(Daphne(**self.env))
                self.workers.append(self.new_worker())
        except BaseException:
            self.stop()
            raise

    def new_worker(self) -> CeleryWorker:
        # CeleryWorker sets the run backend and queue itself.
        env = {k: v for k, v in self.env.items() if k not in ("AGCH_RUN_BACKEND", "AGCH_CELERY_QUEUE")}
        return CeleryWorker(self.queue, **env)

    def count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    def urls(self) -> list[str]:
        return [f"127.0.0.1:{d.port}" for d in self.daphnes]

    def kill_daphne(self) -> None:
        victim = self.daphnes.pop(0)
        victim.proc.kill()
        victim.proc.wait(10)
        victim.stop()
        self.daphnes.append(Daphne(**self.env))
        self.count("daphne SIGKILL")

    def kill_worker(self) -> None:
        victim = self.workers.pop(0)
        victim.kill()
        victim.stop()
        self.workers.append(self.new_worker())
        self.count("worker SIGKILL")

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(1.0)
        self.redis.start()
        self.count("Redis restart")

    def cut_postgres(self, seconds: float = 3.0) -> None:
        self.proxy.cut()
        time.sleep(seconds)
        self.proxy.restore()
        self.count(f"PostgreSQL cut {seconds:g} s")

    def stop(self) -> None:
        for proc in [*self.workers, *self.daphnes]:
            with contextlib.suppress(Exception):
                proc.stop()
        self.proxy.close()
        self.redis.stop()


async def follow(follower: Follower, cluster: Cluster, cookie: str, stop: threading.Event,
                 final: dict[str, int], start: int) -> None:
    """Follow a channel across faults, like a browser: on any close, reconnect elsewhere."""
    server = start
    while not stop.is_set():
        urls = cluster.urls()
        host = urls[server % len(urls)]
        url = f"ws://{host}/ws/agent-channels/{follower.channel}/?since={follower.last}"
        try:
            async with websockets.connect(
                url, additional_headers={"Cookie": cookie, "Origin": f"http://{host}"},
                open_timeout=5, max_queue=4 if follower.slow else 64,
            ) as ws:
                while not stop.is_set():
                    if follower.channel in final and follower.last >= final[follower.channel]:
                        return
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue  # not a reconnect: a live socket that is merely quiet
                    frame = json.loads(text)
                    if frame["type"] == "error":
                        follower.errors.append(frame["code"])
                        break
                    if frame["type"] != "event":
                        continue
                    seq = frame["seq"]
                    if seq <= follower.last:
                        follower.duplicates += 1
                        continue
                    if seq != follower.last + 1:
                        follower.gaps += 1
                    follower.seqs.append(seq)
                    follower.frames[seq] = (frame["event"], frame["data"])
                    if follower.slow and seq % 40 == 0:
                        await asyncio.sleep(2.0)  # stops reading; the server must cope
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
            pass
        follower.reconnects += 1
        server += 1  # through the other daphne
        await asyncio.sleep(0.2)


def post_run(cluster: Cluster, cookie: str, channel: str) -> bool:
    """Start a demo run over HTTP through whichever daphne answers; False if none did."""
    csrf = secrets.token_hex(16)
    for host in cluster.urls():
        request = urllib.request.Request(
            f"http://{host}/agent-channels/{channel}/runs/",
            data=json.dumps({"agent": "demo", "input": RUN_INPUT, "on_active": "enqueue"}).encode(),
            headers={"Cookie": f"{cookie}; csrftoken={csrf}", "X-CSRFToken": csrf,
                     "Origin": f"http://{host}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 201:
                    return True
        except (OSError, urllib.error.HTTPError):
            continue
    return False


@pytest.fixture
def session_cookie(django_user_model) -> str:
    user = django_user_model.objects.create_user("chaos", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_no_event_is_lost_duplicated_or_reordered_while_processes_die(session_cookie: str) -> None:
    started_at = time.monotonic()
    cluster = Cluster(f"chaos-{uuid.uuid4().hex[:8]}")
    channels = [f"chaos-{i}" for i in range(CHANNELS)]
    followers = [Follower(name) for name in channels] + [Follower(channels[0], slow=True)]
    stop, final = threading.Event(), {}
    loop_errors: list[BaseException] = []

    def clients() -> None:
        async def main() -> None:
            await asyncio.gather(*(
                follow(f, cluster, session_cookie, stop, final, i) for i, f in enumerate(followers)
            ))
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the assertion below
            loop_errors.append(exc)

    thread = threading.Thread(target=clients, daemon=True)
    runs_started = refused = 0
    keep_starting = True

    def drive_runs() -> None:
        """One run after another on every channel, until the faults are over."""
        nonlocal runs_started, refused
        for name in channels:
            active = Run.objects.filter(channel__name=name, status__in=["queued", "running", "waiting"])
            if keep_starting and not active.exists():
                if post_run(cluster, session_cookie, name):
                    runs_started += 1
                else:
                    refused += 1  # no daphne could start it just then (retried next tick)

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            drive_runs()
            time.sleep(0.25)

    try:
        thread.start()
        settle(3)
        for _ in range(ROUNDS):
            for fault in (cluster.kill_daphne, cluster.kill_worker, cluster.restart_redis,
                          cluster.cut_postgres):
                fault()
                settle(4)
        keep_starting = False

        # Every run ends, on a worker that survived or on its replacement.
        end = started_at + DEADLINE_SECONDS - 30
        while Run.objects.exclude(status__in=TERMINAL).exists() and time.monotonic() < end:
            time.sleep(0.25)
        statuses = list(Run.objects.values_list("status", flat=True))
        failures = sorted({str(e)[:120] for e in Run.objects.filter(status="failed").values_list("error", flat=True)})
        open_runs = [s for s in statuses if s not in TERMINAL]
        final.update(dict(Channel.objects.filter(name__in=channels).values_list("name", "last_seq")))
        end = started_at + DEADLINE_SECONDS
        while time.monotonic() < end and any(f.last < final.get(f.channel, 0) for f in followers):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(15)
        cluster.stop()

    checked = sum(len(f.seqs) for f in followers)
    print(
        f"\nchaos: {sum(cluster.faults.values())} faults injected {cluster.faults}; "
        f"{runs_started} runs ({', '.join(sorted(set(statuses)))}); {checked} events checked "
        f"by {len(followers)} clients; {sum(f.reconnects for f in followers)} reconnects; "
        f"{cluster.proxy.refused} PostgreSQL connections refused; {refused} run starts refused; "
        f"{time.monotonic() - started_at:.0f} s"
    )
    for reason in failures:
        print(f"chaos: a run failed with: {reason}")
    assert not loop_errors, loop_errors
    assert runs_started >= CHANNELS * ROUNDS, "too few runs to have been hit by the faults"
    assert not open_runs, f"runs that never ended: {open_runs}"
    # A Redis restart costs live frames (the log has them), never a run.
    assert not [r for r in failures if "redis" in r.lower() or "ConnectionError" in r], failures
    for f in followers:
        log = dict(
            (seq, (name, data)) for seq, name, data in
            Event.objects.filter(channel__name=f.channel).values_list("seq", "name", "data")
        )
        assert f.duplicates == 0 and f.gaps == 0, (f.channel, f.slow, f.duplicates, f.gaps)
        assert f.seqs == list(range(1, final[f.channel] + 1)), (f.channel, f.slow, f.last, final)
        assert f.frames == log, f"{f.channel}: what the client saw is not what the log holds"
