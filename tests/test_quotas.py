"""Quotas and throttles: what one user may hold or ask for, each refused with a clear code."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache
from django.test import Client

from agent_channels import publish
from agent_channels.models import Run, RunStatus

from .helpers import wait_for
from .wsclient import connect, recv

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]

TOKEN = "a" * 32


def logged_in(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = TOKEN
    client.user = user
    client.ns = f"user:{user.pk}/"
    return client


def post(client, path, body):
    return client.post(path, json.dumps(body), content_type="application/json",
                       headers={"X-CSRFToken": TOKEN})


@pytest.fixture
def alice(django_user_model):
    return logged_in(django_user_model.objects.create_user("alice"))


@pytest.fixture
def bob(django_user_model):
    return logged_in(django_user_model.objects.create_user("bob"))


@pytest.fixture
def quotas(settings):
    def configure(**values):
        settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, **values}

    # The throttles' buckets live in the (per-process, in-memory) default cache.
    cache.clear()
    yield configure
    cache.clear()


def cancel_all(client, channels):
    for channel in channels:
        post(client, f"/agent-channels/{channel}/messages/", {"type": "cancel"})
    wait_for(lambda: not Run.objects.active().filter(channel__name__in=channels).exists())


# -- active runs per user ------------------------------------------------------------------


def test_a_user_may_hold_only_so_many_active_runs(alice, bob, quotas):
    quotas(MAX_ACTIVE_RUNS_PER_USER=2)
    channels = [f"{alice.ns}ask-{i}" for i in range(3)]
    for channel in channels[:2]:
        assert post(alice, f"/agent-channels/{channel}/runs/", {"agent": "approval"}).status_code == 201
    wait_for(lambda: Run.objects.filter(status=RunStatus.WAITING).count() == 2)
    refused = post(alice, f"/agent-channels/{channels[2]}/runs/", {"agent": "approval"})
    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_runs" and "at most 2" in refused.json()["message"]
    # Queuing behind one's own run counts too; other users have their own quota.
    queued = post(alice, f"/agent-channels/{channels[0]}/runs/", {"agent": "echo", "on_active": "enqueue"})
    assert queued.json()["code"] == "too_many_runs"
    assert post(bob, f"/agent-channels/{bob.ns}x/runs/", {"agent": "echo"}).status_code == 201
    # A finished run frees its slot.
    cancel_all(alice, channels[:1])
    assert post(alice, f"/agent-channels/{channels[2]}/runs/", {"agent": "echo"}).status_code == 201
    cancel_all(alice, channels)
    assert Run.objects.filter(created_by__username="alice").count() == 3


# -- queued runs per channel ---------------------------------------------------------------


def test_a_channel_queues_only_so_many_runs(alice, quotas):
    from agent_channels.runtime import QuotaExceeded, start_run

    quotas(MAX_QUEUED_RUNS_PER_CHANNEL=2)
    url = f"/agent-channels/{alice.ns}busy/runs/"
    assert post(alice, url, {"agent": "approval"}).status_code == 201
    wait_for(lambda: Run.objects.filter(status=RunStatus.WAITING).exists())
    for _ in range(2):
        assert post(alice, url, {"agent": "echo", "on_active": "enqueue"}).status_code == 201
    refused = post(alice, url, {"agent": "echo", "on_active": "enqueue"})
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_queued"
    # Server code without a user is held to the same bound: the queue never grows unbounded.
    with pytest.raises(QuotaExceeded) as caught:
        start_run(f"{alice.ns}busy", "echo", on_active="enqueue")
    assert caught.value.code == "too_many_queued"
    assert Run.objects.count() == 3
    cancel_all(alice, [f"{alice.ns}busy"])


# -- HTTP throttles ------------------------------------------------------------------------


def test_starting_runs_is_throttled_per_user_with_retry_after(alice, bob, quotas):
    quotas(HTTP_RUNS_RATE=0.01, HTTP_RUNS_BURST=3)
    answers = [post(alice, f"/agent-channels/{alice.ns}t{i}/runs/", {"agent": "echo"})
               for i in range(4)]
    assert [answer.status_code for answer in answers] == [201, 201, 201, 429]
    refused = answers[-1]
    assert refused.json()["code"] == "throttled"
    # One token comes back every 100 s.
    assert 90 <= int(refused["Retry-After"]) <= 100
    assert refused.json()["retry_after"] == int(refused["Retry-After"])
    # The throttle answers before the access check: it says nothing about other names.
    foreign = post(alice, "/agent-channels/someone-elses/runs/", {"agent": "echo"})
    assert foreign.status_code == 429 and foreign.json()["code"] == "throttled"
    assert post(bob, f"/agent-channels/{bob.ns}t/runs/", {"agent": "echo"}).status_code == 201
    assert Run.objects.count() == 4


def test_messages_are_throttled_per_user(alice, quotas):
    quotas(HTTP_MESSAGES_RATE=0.5, HTTP_MESSAGES_BURST=2)
    publish(f"{alice.ns}m", "tick", owner=alice.user)
    url = f"/agent-channels/{alice.ns}m/messages/"
    codes = [post(alice, url, {"type": "input", "data": i}).status_code for i in range(3)]
    assert codes == [202, 202, 429]
    refused = post(alice, url, {"type": "input", "data": "again"})
    assert refused.json()["code"] == "throttled" and 1 <= int(refused["Retry-After"]) <= 2


def test_a_bucket_refills_at_its_rate():
    from agent_channels.views.throttle import retry_after

    cache.clear()
    now = 1000.0
    assert [retry_after("k", 2.0, 2, now) for _ in range(2)] == [0.0, 0.0]
    assert retry_after("k", 2.0, 2, now) == pytest.approx(0.5)
    assert retry_after("k", 2.0, 2, now + 0.5) == 0.0
    assert retry_after("k", 2.0, 2, now + 0.5) == pytest.approx(0.5)
    assert retry_after("k", 2.0, 2, now + 10) == 0.0  # a full bucket again, no more
    assert retry_after("k", 2.0, 2, now + 10) == 0.0
    assert retry_after("k", 2.0, 2, now + 10) > 0
    cache.clear()


# -- the byte cap on event pages -----------------------------------------------------------


def test_event_pages_stop_at_max_page_bytes(alice, quotas):
    quotas(MAX_PAGE_BYTES=25_000)
    user = alice.user
    channel = f"{alice.ns}big"
    for i in range(10):
        publish(channel, "blob", {"i": i, "text": "x" * 10_000}, owner=user)
    publish(channel, "huge", {"text": "y" * 60_000}, owner=user)
    publish(channel, "small", {"i": 11}, owner=user)
    seen, since, sizes = [], 0, []
    while True:
        response = alice.get(f"/agent-channels/{channel}/events/", {"since": since, "limit": 1000})
        assert response.status_code == 200 and response["Content-Type"] == "application/json"
        sizes.append(len(response.content))
        page = response.json()
        seen += [frame["seq"] for frame in page["events"]]
        since = page["last_seq"]
        assert page["head_seq"] == 12
        if not page["has_more"]:
            break
    assert seen == list(range(1, 13))
    # Two 10 kB events per page; the 60 kB event alone on its page (a page always moves on).
    assert len(sizes) == 7
    assert max(size for size in sizes if size < 60_000) < 25_000 + 1_000


def test_event_pages_serve_the_same_frames_as_before(alice, quotas):
    user = alice.user
    publish(f"{alice.ns}same", "tick", {"text": "é \u2028 </script>", "n": [1, 2.5, None]}, owner=user)
    page = alice.get(f"/agent-channels/{alice.ns}same/events/").json()
    assert page["channel"] == f"{alice.ns}same" and page["has_more"] is False
    assert page["events"][0]["data"] == {"text": "é \u2028 </script>", "n": [1, 2.5, None]}
    assert set(page["events"][0]) == {"type", "seq", "event", "run", "data", "ts"}


# -- WebSockets per user -------------------------------------------------------------------


async def test_a_user_may_hold_only_so_many_sockets(django_user_model, quotas):
    from agent_channels.ws.sockets import open_sockets

    quotas(MAX_SOCKETS_PER_USER=2)
    user = await database_sync_to_async(django_user_model.objects.create_user)("carol")
    await database_sync_to_async(publish)("carols", "tick", owner=user)
    await database_sync_to_async(publish)("not-carols", "tick")
    first, second = await connect("carols", user), await connect("carols", user)
    assert (await recv(first))["type"] == "hello" and (await recv(second))["type"] == "hello"
    third = await connect("carols", user)
    frame = await recv(third)
    assert frame["type"] == "error" and frame["code"] == "too_many_sockets"
    assert (await third.receive_output(5))["code"] == 4429
    # A channel the user may not read answers as always, whatever the count.
    foreign = await connect("not-carols", user)
    assert (await recv(foreign))["code"] == "forbidden"
    await foreign.disconnect()
    # Closing one frees its slot.
    await first.disconnect()
    assert open_sockets(user.pk) == 1
    again = await connect("carols", user)
    assert (await recv(again))["type"] == "hello"
    await again.disconnect()
    await second.disconnect()
    await third.disconnect()
    assert open_sockets(user.pk) == 0


# -- the same through a real daphne --------------------------------------------------------


@pytest.mark.integration
def test_daphne_refuses_a_users_socket_past_the_limit_and_throttles_starts(django_user_model):
    import asyncio
    import time
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    import websockets

    from .procs import Daphne

    user = django_user_model.objects.create_user("dave")
    client = logged_in(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={TOKEN}"
    channel = f"{client.ns}sockets"
    publish(channel, "tick", owner=user)
    server = Daphne(AGCH_MAX_SOCKETS="2", AGCH_HTTP_RUNS_RATE="0.01", AGCH_HTTP_RUNS_BURST="1")

    async def sockets() -> list[object]:
        url = server.ws_url(quote(channel, safe=""))
        opened, answers = [], []
        for _ in range(3):
            ws = await websockets.connect(url, origin=f"http://127.0.0.1:{server.port}",
                                          additional_headers={"Cookie": cookie})
            opened.append(ws)
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(opened[2].recv(), 10)
        answers.append(closed.value.rcvd.code)
        await opened[0].close()
        await asyncio.sleep(0.2)
        again = await websockets.connect(url, origin=f"http://127.0.0.1:{server.port}",
                                         additional_headers={"Cookie": cookie})
        answers.append(json.loads(await asyncio.wait_for(again.recv(), 10))["type"])
        for ws in [*opened[1:], again]:
            await ws.close()
        return answers

    def start_run_over_http(name: str) -> tuple[int, dict, str | None]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/agent-channels/{quote(name, safe='')}/runs/",
            data=json.dumps({"agent": "echo"}).encode(), method="POST",
            headers={"Cookie": cookie, "X-CSRFToken": TOKEN, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response), None
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc), exc.headers.get("Retry-After")

    def streams_opened_and_closed(times: int) -> list[int]:
        # Each stream ends before the next opens: a leaked slot would refuse the third.
        statuses = []
        for _ in range(times):
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/agent-channels/{quote(channel, safe='')}/events/",
                headers={"Cookie": cookie, "Accept": "text/event-stream"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.readline()
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            time.sleep(0.3)
        return statuses

    try:
        first, second, third, code, reopened = asyncio.run(sockets())
        assert streams_opened_and_closed(4) == [200, 200, 200, 200]
        assert first["type"] == second["type"] == "hello"
        assert third["type"] == "error" and third["code"] == "too_many_sockets"
        assert code == 4429 and reopened == "hello"
        assert start_run_over_http(f"{client.ns}a")[0] == 201
        status, body, retry = start_run_over_http(f"{client.ns}b")
        assert (status, body["code"]) == (429, "throttled") and int(retry) >= 90
    finally:
        server.stop()
    wait_for(lambda: not Run.objects.active().exists())


# -- slots in a shared cache ---------------------------------------------------------------


def test_cache_slots_hold_the_limit_expire_and_free():
    import time

    from django.core.cache.backends.locmem import LocMemCache

    from agent_channels.ws.sockets import CacheSlots

    shared = LocMemCache("agch-slots-test", {})
    first, second, third = (CacheSlots(shared, 7, ttl=1) for _ in range(3))
    assert first.take(2) and second.take(2) and not third.take(2)
    assert first.key != second.key and first.count(2) == 2
    # Refreshing keeps a slot past its first time-out; one not refreshed lapses.
    time.sleep(0.6)
    first.refresh()
    time.sleep(0.6)
    assert first.count(2) == 1 and third.take(2) and third.key == second.key
    # Releasing frees the slot at once; a lapsed holder's release leaves the new holder alone.
    first.release()
    second.release()
    assert first.count(2) == 1 and CacheSlots(shared, 8, ttl=1).take(1)


async def test_sockets_are_served_uncounted_while_the_shared_cache_is_down(settings):
    from types import SimpleNamespace

    from agent_channels.ws.sockets import SocketSlots

    settings.CACHES = {
        **settings.CACHES,
        # Nothing listens on port 1: every cache call fails at once.
        "down": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                 "LOCATION": "redis://127.0.0.1:1/0"},
    }
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "THROTTLE_CACHE": "down"}
    slots = SocketSlots()
    assert await slots.take(SimpleNamespace(pk=1, is_authenticated=True), 1)
    await slots.give_back()


async def test_an_event_stream_counts_against_the_socket_limit(django_user_model, quotas):
    from django.test import AsyncClient

    quotas(MAX_SOCKETS_PER_USER=1)
    user = await database_sync_to_async(django_user_model.objects.create_user)("erin")
    await database_sync_to_async(publish)("erins", "tick", owner=user)
    ws = await connect("erins", user)
    assert (await recv(ws))["type"] == "hello"
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/agent-channels/erins/events/", headers={"Accept": "text/event-stream"})
    assert response.status_code == 429 and response.json()["code"] == "too_many_sockets"
    await ws.disconnect()


@pytest.mark.integration
@pytest.mark.redis
def test_two_daphnes_share_a_users_socket_slots(django_user_model):
    import asyncio
    import signal
    import time
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    import websockets

    from .procs import Daphne

    user = django_user_model.objects.create_user("frank")
    client = logged_in(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={TOKEN}"
    channel = f"{client.ns}slots"
    publish(channel, "tick", owner=user)
    env = {"AGCH_SHARED_CACHE": "1", "AGCH_MAX_SOCKETS": "2", "AGCH_SOCKET_SLOT_SECONDS": "3"}
    a, b = Daphne(**env), Daphne(**env)

    def stream(server):
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/agent-channels/{quote(channel, safe='')}/events/",
            headers={"Cookie": cookie, "Accept": "text/event-stream"},
        )
        try:
            response = urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
        assert response.readline().startswith(b"retry:")
        return 200, response

    async def open_ws(server):
        ws = await websockets.connect(server.ws_url(quote(channel, safe="")),
                                      origin=f"http://127.0.0.1:{server.port}",
                                      additional_headers={"Cookie": cookie})
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return ws, frame.get("code", frame["type"])

    async def scenario():
        on_a, hello = await open_ws(a)
        status, sse_on_a = await asyncio.to_thread(stream, a)
        assert (hello, status) == ("hello", 200)
        # The user holds two on A: B refuses a socket and a stream.
        refused, code = await open_ws(b)
        assert code == "too_many_sockets"
        await refused.close()
        status, body = await asyncio.to_thread(stream, b)
        assert (status, body["code"]) == (429, "too_many_sockets")
        # Closing A's socket frees its slot for B.
        await on_a.close()
        await asyncio.sleep(0.3)
        on_b, hello = await open_ws(b)
        assert hello == "hello"
        # A dies holding the stream's slot: refused until the slot expires, then let in.
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        sse_on_a.close()
        refused, code = await open_ws(b)
        assert code == "too_many_sockets"
        await refused.close()
        started = time.monotonic()
        while True:
            ws, code = await open_ws(b)
            await ws.close()
            if code == "hello":
                break
            assert time.monotonic() - started < 8, "the dead process's slot never expired"
            await asyncio.sleep(0.5)
        # A stream that ends frees its slot too.
        status, sse_on_b = await asyncio.to_thread(stream, b)
        refused, code = await open_ws(b)
        assert (status, code) == (200, "too_many_sockets")
        await refused.close()
        sse_on_b.close()
        started = time.monotonic()
        while True:
            ws, code = await open_ws(b)
            await ws.close()
            if code == "hello":
                break
            assert time.monotonic() - started < 2, "a closed stream kept its slot"
            await asyncio.sleep(0.2)
        await on_b.close()

    try:
        asyncio.run(scenario())
    finally:
        a.stop()
        b.stop()
