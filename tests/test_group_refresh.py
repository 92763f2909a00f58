"""Group memberships the channel layer forgot (a Redis restarted empty) come back.

In-process tests on both passes drop a membership by hand; the integration test flushes a
redis-server of its own under a real daphne and a real Celery worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from agent_channels import publish
from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.names import event_group
from agent_channels.models import Event, Run
from agent_channels.runtime import start_run
from agent_channels.runtime.backends import reset_backend
from agent_channels.runtime.control import Inbox, catch_up_all, register_inbox, unregister_inbox
from agent_channels.ws import refresh

from .helpers import create_operator, wait_for
from .procs import CeleryWorker, Daphne, free_port, wait_for_port
from .wsclient import connect, recv, recv_events

pytestmark = pytest.mark.django_db(transaction=True)

apublish = database_sync_to_async(publish)


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return create_operator(django_user_model, "staff")


async def test_a_socket_whose_membership_was_lost_is_added_again_and_caught_up(staff):
    await apublish("forgotten", "tick", {"i": 0})
    ws = await connect("forgotten", staff)
    await recv(ws)
    assert [f["seq"] for f in await recv_events(ws, 1)] == [1]
    layer = get_channel_layer()
    # What a Redis that restarted empty does to every membership.
    member = next(m for m in list(refresh._members) if m.channel == "forgotten")
    await layer.group_discard(event_group("forgotten"), member.channel_name)
    await apublish("forgotten", "tick", {"i": 1})
    assert await ws.receive_nothing(0.8), "the lost membership should cost the live event"

    assert await refresh.refresh_once() >= 1
    assert [f["seq"] for f in await recv_events(ws, 1)] == [2]  # from the log
    await apublish("forgotten", "tick", {"i": 2})
    assert [f["seq"] for f in await recv_events(ws, 1, timeout=2)] == [3]  # live again
    await ws.disconnect()
    assert member not in refresh._members


def test_control_the_layer_lost_is_read_from_the_log():
    append("lost-control", [EventDraft("run.started", {})])
    inbox = Inbox("lost-control", after_seq=1)
    register_inbox(inbox)
    try:
        # Persisted, never sent on the layer: what a flushed membership loses.
        # (Input is read from the log by request_input itself, not through the inbox.)
        append("lost-control", [EventDraft("client.interrupt", {"data": {"why": "x"}, "id": 7}),
                                EventDraft("client.input", {"data": "hi"}),
                                EventDraft("client.cancel", {"data": "stop"})])
        assert catch_up_all() == 2
        assert [(m.data, m.id) for m in inbox.interrupts] == [({"why": "x"}, 7)]
        assert inbox.cancel is not None and inbox.cancel.data == "stop"
        assert catch_up_all() == 0  # each once
    finally:
        unregister_inbox(inbox)


def test_a_live_message_that_overtook_a_lost_one_does_not_hide_it():
    from agent_channels.runtime.control import ControlMessage

    append("overtaken", [EventDraft("run.started", {})])
    inbox = Inbox("overtaken", after_seq=1)
    register_inbox(inbox)
    try:
        lost, live = append("overtaken", [EventDraft("client.interrupt", {"data": "first"}),
                                          EventDraft("client.interrupt", {"data": "second"})])
        # The layer dropped the first; the second arrived live before any catch-up.
        assert inbox.deliver(ControlMessage(kind="interrupt", seq=live.seq, data="second"))
        assert catch_up_all() == 1
        assert [(m.seq, m.data) for m in inbox.interrupts] == [(live.seq, "second"),
                                                              (lost.seq, "first")]
        assert inbox.last_seq == live.seq and catch_up_all() == 0
    finally:
        unregister_inbox(inbox)


# -- a real Redis that loses everything under a running run --------------------------------


class RedisServer:
    """A redis-server of the test's own on a free loopback port (the shared one is never
    flushed)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(f"/tmp/agch-refresh-redis-{os.getpid()}-{self.port}")
        self.dir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def flushall(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def queue(settings: Any) -> Any:
    name = f"agch-refresh-{uuid.uuid4().hex[:8]}"
    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS,
        "RUN_BACKEND": "agent_channels.runtime.backends.celery.CeleryBackend",
        "CELERY_QUEUE": name,
    }
    reset_backend()
    yield name
    reset_backend()


@pytest.mark.integration
@pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)")
@pytest.mark.skipif(shutil.which("redis-server") is None and os.environ.get("CI") != "true",
                    reason="needs redis-server on PATH to run a Redis of its own")
def test_after_redis_forgets_everything_live_events_and_interrupts_flow_again(
    queue: str, staff: Any
) -> None:
    from django.test import Client

    client = Client()
    client.force_login(staff)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    redis_server = RedisServer()
    env = {"AGCH_LAYER": "redis", "AGCH_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
           "AGCH_GROUP_REFRESH": "1"}
    worker = daphne = None
    seen: list[int] = []
    stop = threading.Event()
    try:
        worker = CeleryWorker(queue, **env)
        daphne = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue, **env)
        origin = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{daphne.port}"}

        async def follow() -> None:
            async with websockets.connect(daphne.ws_url("flushed") + "?since=0",
                                          additional_headers=origin) as ws:
                while not stop.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                    except TimeoutError:
                        continue
                    if frame["type"] == "event":
                        seen.append(frame["seq"])

        follower = threading.Thread(target=lambda: asyncio.run(follow()), daemon=True)
        follower.start()
        run = start_run("flushed", "demo", {"tokens": 1500, "interval_ms": 20})
        wait_for(lambda: len(seen) >= 3, 20)
        redis_server.flushall()
        flushed_at = time.monotonic()

        # Live events reach the socket again (the one head check after a quiet spell would
        # catch up once, then the socket would hear nothing more).
        time.sleep(3)
        head = Event.objects.filter(channel__name="flushed").count()
        wait_for(lambda: seen and seen[-1] >= head, 5, 0.05)
        assert seen == list(range(1, len(seen) + 1))

        # An interrupt sent now still reaches the running agent, within a bounded time.
        async def interrupt() -> None:
            async with websockets.connect(daphne.ws_url("flushed"), additional_headers=origin) as ws:
                await ws.send(json.dumps({"type": "interrupt", "id": 1, "data": {"why": "t"}}))
                async with asyncio.timeout(10):
                    while json.loads(await ws.recv()).get("type") != "ack":
                        pass

        sent_at = time.monotonic()
        asyncio.run(interrupt())
        wait_for(lambda: Run.objects.filter(pk=run.pk).exclude(status="running").exists(), 8, 0.05)
        took = time.monotonic() - sent_at
        run.refresh_from_db()
        assert run.status == "interrupted", run.status
        print(f"\nrefresh: live again after the flush; interrupt reached the run in {took:.2f} s "
              f"({time.monotonic() - flushed_at:.1f} s after the flush)")
    finally:
        stop.set()
        for proc in (worker, daphne):
            if proc is not None:
                proc.stop()
        redis_server.stop()


@pytest.mark.integration
@pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)")
@pytest.mark.skipif(shutil.which("redis-server") is None and os.environ.get("CI") != "true",
                    reason="needs redis-server on PATH to run a Redis of its own")
def test_an_event_stream_hears_live_events_again_after_redis_forgets_everything(staff: Any) -> None:
    """Live, not by the keep-alive's look at the log: that comes every 15 s (the default)."""
    import http.client
    import secrets

    from django.test import Client

    client = Client()
    client.force_login(staff)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    redis_server = RedisServer()
    daphne = None
    try:
        daphne = Daphne(AGCH_LAYER="redis", AGCH_GROUP_REFRESH="1",
                        AGCH_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0")
        publish("sse-flushed", "tick", {"i": 0})
        stream = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=30)
        stream.request("GET", "/agent-channels/sse-flushed/events/?since=0",
                       headers={"Accept": "text/event-stream", "Cookie": cookie})
        response = stream.getresponse()
        assert response.status == 200
        seqs: list[int] = []

        def read() -> None:
            try:
                for raw in response:
                    line = raw.decode()
                    if line.startswith("id: "):
                        seqs.append(int(line[4:]))
            except (OSError, AttributeError, ValueError, http.client.HTTPException):
                pass  # the test closed the stream

        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: seqs == [1], 10)
        redis_server.flushall()
        time.sleep(2.5)  # a refresh or two

        # Sent by daphne on the (flushed) layer: a control frame over HTTP is event 2.
        csrf = secrets.token_hex(16)
        poster = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=10)
        poster.request("POST", "/agent-channels/sse-flushed/messages/",
                       body=json.dumps({"type": "input", "data": "hi"}),
                       headers={"Cookie": f"{cookie}; csrftoken={csrf}", "X-CSRFToken": csrf,
                                "Origin": f"http://127.0.0.1:{daphne.port}",
                                "Content-Type": "application/json"})
        assert poster.getresponse().status in (200, 201, 202)
        sent_at = time.monotonic()
        wait_for(lambda: seqs == [1, 2], 5, 0.02)
        assert time.monotonic() - sent_at < 3, "live again, not found by a later look at the log"
        stream.close()
    finally:
        if daphne is not None:
            daphne.stop()
        redis_server.stop()
