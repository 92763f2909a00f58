"""Real daphne processes, real WebSocket clients, publishers in other OS processes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from urllib.parse import quote

import pytest
import websockets
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from django.test import Client

from agent_channels.channel.log import EventDraft, append

from .helpers import create_operator
from .procs import Daphne, child_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHANNEL = "tenant:7/workflow 42 ✓"


@pytest.fixture
def cookie(django_user_model):
    user = create_operator(django_user_model, "ops")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
def daphnes(request):
    started: list[Daphne] = []

    def start(**env: str) -> Daphne:
        server = Daphne(**env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def url(server: Daphne, since: int | None = None) -> str:
    base = server.ws_url(quote(CHANNEL, safe=""))
    return base if since is None else f"{base}?since={since}"


async def open_ws(server: Daphne, cookie: str, since: int | None = None, stalled: bool = False):
    sock = None
    if stalled:
        # A small receive buffer and a tiny client queue: the client stops reading the socket.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
    ws = await websockets.connect(url(server, since), origin=f"http://127.0.0.1:{server.port}",
                                  additional_headers={"Cookie": cookie}, sock=sock,
                                  max_queue=1 if stalled else None, max_size=None)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert hello["type"] == "hello", hello
    return ws


async def read_events(ws, count: int, timeout: float = 30) -> list[dict]:
    frames: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(frames) < count:
            frame = json.loads(await ws.recv())
            assert frame["type"] == "event", frame
            frames.append(frame)
    return frames


PUBLISHER = """
import logging, sys, time, django
django.setup()
# channels-redis reports the messages it drops at INFO: the drop test reads this.
logging.getLogger("channels_redis").setLevel(logging.INFO)
logging.getLogger("channels_redis").addHandler(logging.StreamHandler())
from agent_channels import publish
from agent_channels.channel.wire import get_wire
channel, start, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
from agent_channels.channel.log import EventDraft, append
pad = "x" * int(sys.argv[5])
if interval < 0:  # bulk: batches of 100
    for b in range(start, start + count, 100):
        append(channel, [EventDraft("tick", {"i": i, "pad": pad}) for i in range(b, min(b + 100, start + count))])
for i in range(start, start + count) if interval >= 0 else ():
    publish(channel, "tick", {"i": i, "pad": pad})
    if interval:
        time.sleep(interval)
get_wire().drain()
"""


def start_publisher(start: int, count: int, interval: float, pad: int = 200,
                    **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, CHANNEL, str(start), str(count), str(interval),
         str(pad)],
        env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


def check_sequence(frames: list[dict], first: int, last: int) -> None:
    assert [f["seq"] for f in frames] == list(range(first, last + 1))
    assert [f["data"]["i"] for f in frames] == list(range(first - 1, last))


async def test_history_replays_through_daphne_and_resumes_on_a_second_daphne(daphnes, cookie):
    await sync_to_async(append)(CHANNEL, [EventDraft("tick", {"i": i}) for i in range(120)])
    first, second = daphnes(), daphnes()
    ws = await open_ws(first, cookie)
    frames = await read_events(ws, 50)
    ws.transport.abort()  # the connection drops without a close handshake
    ws = await open_ws(second, cookie, since=frames[-1]["seq"])
    frames += await read_events(ws, 70)
    check_sequence(frames, 1, 120)
    await ws.close()


@pytest.mark.redis
async def test_kill_a_client_mid_stream_and_resume_on_another_server(daphnes, cookie):
    first, second = daphnes(), daphnes()
    ws = await open_ws(first, cookie)
    publisher = await asyncio.to_thread(start_publisher, 0, 300, 0.002)
    frames = await read_events(ws, 100)
    ws.transport.abort()
    await asyncio.sleep(0.2)  # events keep coming while the client is away
    ws = await open_ws(second, cookie, since=frames[-1]["seq"])
    frames += await read_events(ws, 200)
    await asyncio.to_thread(finish, publisher)
    check_sequence(frames, 1, 300)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)  # nothing duplicated afterwards
    await ws.close()


@pytest.mark.redis
@pytest.mark.skipif(settings.LAYER_BACKEND == "pubsub",
                    reason="needs a layer that drops messages at capacity; PUB/SUB has none")
async def test_a_layer_that_drops_messages_still_delivers_every_event_in_order(daphnes, cookie):
    # capacity=2: channels-redis drops most of a burst; the consumer heals from the log.
    server = daphnes(AGCH_LAYER_CAPACITY="2")
    clients = [await open_ws(server, cookie) for _ in range(3)]
    publisher = await asyncio.to_thread(start_publisher, 0, 400, 0, 200, AGCH_LAYER_CAPACITY="2")
    results = await asyncio.gather(*(read_events(ws, 400, timeout=60) for ws in clients))
    log = await asyncio.to_thread(finish, publisher)
    assert "over capacity" in log, "the layer must really have dropped messages"
    for frames in results:
        check_sequence(frames, 1, 400)
    for ws in clients:
        await ws.close()


@pytest.mark.redis
async def test_a_stalled_client_catches_up_from_the_log(daphnes, cookie):
    server = daphnes(AGCH_SEND_BUFFER_BYTES="50000")
    ws = await open_ws(server, cookie, stalled=True)
    # The client reads nothing while ~8 MB of events are published.
    publisher = await asyncio.to_thread(start_publisher, 0, 2000, -1, 4000)
    await asyncio.to_thread(finish, publisher)
    await asyncio.sleep(1)
    frames = await read_events(ws, 2000, timeout=90)
    check_sequence(frames, 1, 2000)
    await ws.close()
    server.stop()
    assert "fell behind" in server.log_text(), "the server must have stopped sending and caught up"


@pytest.mark.redis
async def test_an_idle_socket_outlives_the_layers_blocking_receive(daphnes, cookie):
    # channels-redis blocks 5 s per receive; with redis-py 8's default 5 s socket timeout
    # the consumer died here (check agent_channels.E004). The suite's layer sets 30 s.
    server = daphnes()
    ws = await open_ws(server, cookie)
    await asyncio.sleep(7)
    publisher = await asyncio.to_thread(start_publisher, 0, 1, 0)
    await asyncio.to_thread(finish, publisher)
    check_sequence(await read_events(ws, 1), 1, 1)
    await ws.close()
    server.stop()
    assert "Timeout reading" not in server.log_text()


@pytest.mark.redis
async def test_a_process_that_publishes_and_exits_at_once_still_sends_live():
    from channels.layers import get_channel_layer

    from agent_channels.channel.names import event_group

    layer = get_channel_layer()
    inbox = await layer.new_channel()
    await layer.group_add(event_group("short-lived"), inbox)
    code = "import django; django.setup()\nfrom agent_channels import publish\n" \
           "publish('short-lived', 'tick', {})\n"  # no drain(): the exit hook must send it
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], env=child_env(),
                                   capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    message = await asyncio.wait_for(layer.receive(inbox), 10)
    assert (message["first"], message["last"]) == (1, 1)
