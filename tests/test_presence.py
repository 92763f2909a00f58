"""Presence: who watches a channel, with no ghosts left by a server process that dies."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from urllib.parse import quote

import pytest
import websockets
from channels.db import database_sync_to_async as sync_to_async
from django.test import Client
from django.utils import timezone

from agent_channels import publish
from agent_channels.channel.presence import Watchers, join, leave, refresh, watchers
from agent_channels.models import Presence

from .test_sse import SSEDaphne


@pytest.mark.django_db
def test_watchers_count_connections_and_name_distinct_users(django_user_model):
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    publish("room", "tick")
    assert join("room", "c1", alice.pk) and join("room", "c2", alice.pk)
    assert join("room", "c3", bob.pk) and join("room", "c4", None)
    assert watchers("room") == Watchers(4, ["alice", "bob"])
    leave("c3")
    assert watchers("room") == Watchers(3, ["alice"])
    assert not join("no-such-channel", "c5", None), "a channel that does not exist has no watchers"


@pytest.mark.django_db
def test_rows_that_are_not_refreshed_stop_counting_and_are_swept(django_user_model):
    publish("room", "tick")
    join("room", "dead", None)
    join("room", "alive", None)
    Presence.objects.filter(connection="dead").update(
        expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert watchers("room").count == 1
    assert refresh("alive") and not refresh("gone")
    join("room", "newcomer", None)
    assert not Presence.objects.filter(connection="dead").exists()


def test_users_are_only_in_frames_for_those_who_may_send():
    assert Watchers(2, ["a"]).frame(with_users=False) == {"type": "presence", "count": 2}
    assert Watchers(2, ["a"]).frame(with_users=True)["users"] == ["a"]




@pytest.fixture
def server():
    daphne = SSEDaphne()
    yield daphne
    daphne.stop()


@pytest.fixture
def cookie(django_user_model):
    user = django_user_model.objects.create_user("watcher", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def open_socket(server, channel, cookie, presence=True):
    query = "?presence=1" if presence else ""
    return await websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/agent-channels/{quote(channel, safe='')}/{query}",
        origin="http://127.0.0.1", additional_headers={"Cookie": cookie})


async def next_presence(socket, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
        if frame["type"] == "presence":
            return frame


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_sockets_see_each_other_come_and_go(server, cookie):
    await sync_to_async(publish)("live-room", "tick")
    first = await open_socket(server, "live-room", cookie)
    assert await next_presence(first) == {"type": "presence", "count": 1, "users": ["watcher"]}
    second = await open_socket(server, "live-room", cookie)
    assert (await next_presence(second))["count"] == 2
    assert (await next_presence(first))["count"] == 2
    quiet = await open_socket(server, "live-room", cookie, presence=False)
    await second.close()
    assert (await next_presence(first))["count"] == 1, "a socket without presence=1 is not counted"
    for socket in (first, quiet):
        await socket.close()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_a_killed_server_leaves_no_ghosts(server, cookie):
    await sync_to_async(publish)("ghost-room", "tick")
    socket = await open_socket(server, "ghost-room", cookie)
    await next_presence(socket)
    assert (await sync_to_async(watchers)("ghost-room")).count == 1
    server.proc.kill()  # SIGKILL: no disconnect handler, no cleanup
    server.proc.wait(10)
    await asyncio.sleep(2.0)  # PRESENCE_TTL_SECONDS is 1.5 in tests.sse_settings
    assert (await sync_to_async(watchers)("ghost-room")).count == 0
