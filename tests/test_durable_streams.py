"""Durable Streams: agent channels as read-only JSON streams, access, and live wake-ups.

The protocol itself is proven by the official suite (test_durable_streams_conformance.py);
these tests cover what is ours: channels as streams, the policies, CSRF, limits, and
readers woken over the channel layer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from urllib.parse import quote

import pytest
from django.test import AsyncClient, Client, override_settings

from agent_channels import publish
from agent_channels.conf import get_config
from agent_channels.durable_streams.store import format_offset

from .procs import Daphne

pytestmark = pytest.mark.django_db(transaction=True)

CHANNEL = "tenant:7/stream ✓"
OPEN = {"DURABLE_STREAMS_POLICY": "agent_channels.durable_streams.access.OpenStreamPolicy"}


def channel_url(channel: str = CHANNEL, query: str = "") -> str:
    return f"/streams/channels/{quote(channel)}" + (f"?{query}" if query else "")


def settings_with(**extra):
    return override_settings(AGENT_CHANNELS={**get_config(), **extra})


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw")


@pytest.fixture
def owner_client(owner):
    client = Client()
    client.force_login(owner)
    return client


def test_a_channel_reads_as_a_json_stream_one_event_per_message(owner, owner_client):
    for i in range(3):
        publish(CHANNEL, "custom.step", {"i": i}, owner=owner)
    response = owner_client.get(channel_url(query="offset=-1"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    frames = json.loads(response.content)
    assert [(f["seq"], f["event"], f["data"]) for f in frames] == [
        (1, "custom.step", {"i": 0}),
        (2, "custom.step", {"i": 1}),
        (3, "custom.step", {"i": 2}),
    ]
    assert response["Stream-Next-Offset"] == format_offset(3)
    assert response["Stream-Up-To-Date"] == "true"

    # The offset after seq 1 resumes with seq 2; offsets sort as strings like seqs as numbers.
    rest = owner_client.get(channel_url(query=f"offset={format_offset(1)}"))
    assert [f["seq"] for f in json.loads(rest.content)] == [2, 3]
    assert sorted([format_offset(10), format_offset(9)]) == [format_offset(9), format_offset(10)]

    head = owner_client.head(channel_url())
    assert head.status_code == 200
    assert head["Stream-Next-Offset"] == format_offset(3)
    assert "Stream-Closed" not in head


def test_channel_streams_follow_the_access_policy_and_are_read_only(
    owner, owner_client, django_user_model
):
    publish(CHANNEL, "custom.step", {}, owner=owner)
    assert Client().get(channel_url(query="offset=-1")).status_code == 401
    stranger = Client()
    stranger.force_login(django_user_model.objects.create_user("stranger"))
    assert stranger.get(channel_url(query="offset=-1")).status_code == 403
    for method in ("put", "post", "delete"):
        response = getattr(owner_client, method)(channel_url(), b"[1]", "application/json")
        assert response.status_code == 405, method
        assert response["Allow"] == "GET, HEAD, OPTIONS"
    # Whether a channel exists is only told to those who could read it.
    assert owner_client.get(channel_url("no such channel", "offset=-1")).status_code == 403
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("ops", is_staff=True, is_superuser=True))
    assert staff.get(channel_url("no such channel", "offset=-1")).status_code == 404


def test_pruned_history_is_gone_and_bad_offsets_are_400(owner, owner_client):
    from agent_channels.models import Channel

    for i in range(5):
        publish(CHANNEL, "custom.step", {"i": i}, owner=owner)
    Channel.objects.filter(name=CHANNEL).update(pruned_seq=3)
    gone = owner_client.get(channel_url(query=f"offset={format_offset(1)}"))
    assert gone.status_code == 410
    # "From the start" means from the oldest event still kept.
    start = owner_client.get(channel_url(query="offset=-1"))
    Channel.objects.filter(name=CHANNEL).update(pruned_seq=0)
    assert start.status_code == 200
    for bad in ("abc", "1/2", "", "-2"):
        assert owner_client.get(channel_url(query=f"offset={bad}")).status_code == 400, bad


def test_other_streams_default_to_staff_only(django_user_model):
    assert Client().put("/streams/a/b", b"x", "text/plain").status_code == 401
    user = Client()
    user.force_login(django_user_model.objects.create_user("someone"))
    assert user.put("/streams/a/b", b"x", "text/plain").status_code == 403
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    assert staff.put("/streams/a/b", b"x", "text/plain").status_code == 201
    assert staff.get("/streams/a/b").content == b"x"


def test_session_users_must_send_the_csrf_token(django_user_model):
    user = django_user_model.objects.create_user("ops", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.put("/streams/csrf", b"x", "text/plain").status_code == 403
    client.get("/streams/csrf")  # no stream yet, but the response need not set the cookie
    from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret

    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    response = client.put(
        "/streams/csrf", b"x", "text/plain", headers={"X-CSRFToken": _mask_cipher_secret(secret)}
    )
    assert response.status_code == 201


def test_appends_over_the_limit_are_413():
    with settings_with(DURABLE_STREAMS_MAX_APPEND_BYTES=10, **OPEN):
        client = Client()
        assert client.put("/streams/small", b"ab", "text/plain").status_code == 201
        assert client.post("/streams/small", b"x" * 11, "text/plain").status_code == 413
        assert client.post("/streams/small", b"x" * 10, "text/plain").status_code == 204
        assert client.get("/streams/small").content == b"ab" + b"x" * 10


async def test_a_long_poll_is_woken_by_an_append_not_by_its_timeout():
    with settings_with(DURABLE_STREAMS_LONG_POLL_SECONDS=60, **OPEN):
        client = AsyncClient()
        created = await client.put("/streams/wake", b"a", "text/plain")
        tail = created["Stream-Next-Offset"]
        poll = asyncio.create_task(client.get(f"/streams/wake?offset={tail}&live=long-poll"))
        await asyncio.sleep(0.3)  # let the reader join the group and find nothing
        assert not poll.done()
        await client.post("/streams/wake", b"b", "text/plain")
        # Far below the 60 s timeout: only the layer message can have ended the wait.
        response = await asyncio.wait_for(poll, 10)
        assert response.status_code == 200
        assert response.content == b"b"
        assert response["Stream-Cursor"]


@pytest.fixture
def staff_cookie(django_user_model):
    user = django_user_model.objects.create_user("ops", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.parametrize("live", ["sse", "long-poll"])
def test_the_durable_streams_python_client_follows_a_channel(live, staff_cookie):
    """The PyPI client against a real daphne: every event once, in order, live."""
    from durable_streams import stream

    count = 40
    publish(CHANNEL, "custom.step", {"i": -1})
    server = Daphne()
    received: list[dict] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            url = f"http://127.0.0.1:{server.port}{channel_url()}"
            with stream(url, offset="-1", live=live, headers={"Cookie": staff_cookie}) as res:
                for item in res.iter_json():
                    received.append(item)
                    if len(received) == count + 1:
                        return
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    try:
        reader.start()
        for i in range(count):
            publish(CHANNEL, "custom.step", {"i": i})
            if i % 10 == 0:
                threading.Event().wait(0.05)  # some arrive live, some in bursts
        reader.join(30)
    finally:
        server.stop()
    assert not errors, errors
    assert [item["seq"] for item in received] == list(range(1, count + 2))
    assert [item["data"]["i"] for item in received] == list(range(-1, count))


def test_stream_settings_are_checked():
    from django.core.checks import Error

    from agent_channels.durable_streams.checks import check_limits, check_stream_policy

    with settings_with(DURABLE_STREAMS_POLICY="agent_channels.access.OwnerAccessPolicy"):
        assert check_stream_policy() == [
            Error(
                "AGENT_CHANNELS['DURABLE_STREAMS_POLICY'] = "
                "'agent_channels.access.OwnerAccessPolicy' is not a StreamPolicy subclass.",
                hint="Give the dotted path of an agent_channels.durable_streams.access."
                "StreamPolicy subclass, as a string.",
                id="agent_channels.E201",
            )
        ]
    assert check_stream_policy() == []
    with settings_with(
        DURABLE_STREAMS_LONG_POLL_SECONDS=0,
        AGUI_MAX_INPUT_BYTES=1.5,
        DURABLE_STREAMS_CORS_ORIGINS="x",
    ):
        assert [(e.id, e.msg) for e in check_limits()] == [
            (
                "agent_channels.E202",
                "AGENT_CHANNELS['DURABLE_STREAMS_LONG_POLL_SECONDS'] = 0 is not a positive number.",
            ),
            (
                "agent_channels.E202",
                "AGENT_CHANNELS['AGUI_MAX_INPUT_BYTES'] = 1.5 is not a positive integer.",
            ),
            (
                "agent_channels.E203",
                "AGENT_CHANNELS['DURABLE_STREAMS_CORS_ORIGINS'] = 'x' is neither a list of "
                "origins nor '*'.",
            ),
        ]
    assert check_limits() == []


async def test_sse_heals_a_wake_up_the_layer_dropped_after_a_burst():
    """An append whose layer message is lost still reaches a reader that was just woken:
    after a wake-up the reader reads once more when HEAD_CHECK_MS passes quietly."""
    from channels.db import database_sync_to_async

    from agent_channels.durable_streams import store

    with settings_with(DURABLE_STREAMS_LONG_POLL_SECONDS=60, HEAD_CHECK_MS=200, **OPEN):
        client = AsyncClient()
        created = await client.put("/streams/heal", b"a", "text/plain")
        response = await client.get(
            f"/streams/heal?offset={created['Stream-Next-Offset']}&live=sse"
        )
        assert response["Content-Type"] == "text/event-stream"
        chunks = response.streaming_content

        async def until(text: str) -> str:
            seen = ""
            while text not in seen:
                seen += (await chunks.__anext__()).decode()
            return seen

        assert '"upToDate": true' in await asyncio.wait_for(until("control"), 10)
        await client.post("/streams/heal", b"b", "text/plain")  # announced: wakes the reader
        assert "data:b" in await asyncio.wait_for(until("data:b"), 10)
        # Appended without the layer message, as if the layer had dropped it.
        await database_sync_to_async(store.append)(
            "heal", b"c", content_type="text/plain", close=False, writer_seq=None, producer=None
        )
        # Far below the 60 s keep-alive: the quiet-period read found it.
        assert "data:c" in await asyncio.wait_for(until("data:c"), 10)
        await chunks.aclose()


def test_the_example_channel_page_shows_both_protocols(owner, owner_client):
    publish(CHANNEL, "custom.step", {}, owner=owner)
    page = owner_client.get(f"/c/{quote(CHANNEL)}/").content.decode()
    stream_url = "/streams/channels/tenant:7/stream%20%E2%9C%93"
    assert f'href="{stream_url}?offset=-1"' in page
    assert "POST /ag-ui/chat/" in page
    assert owner_client.get(f"{stream_url}?offset=-1").status_code == 200


def test_stream_paths_must_be_short_printable_text():
    with settings_with(**OPEN):
        client = Client()
        assert client.put("/streams/" + "é" * 513, b"x", "text/plain").status_code == 400
        assert client.put("/streams/" + "é" * 512, b"x", "text/plain").status_code == 201
        assert client.put("/streams/a%00b", b"x", "text/plain").status_code == 400
        assert client.get("/streams/a%0Ab").status_code == 400


def test_headers_no_column_or_date_can_hold_are_400():
    with settings_with(**OPEN):
        client = Client()
        assert client.put("/streams/h", b"x", "text/plain").status_code == 201
        long = "x" * 256
        too_long = [
            ("put", "/streams/h2", {"Stream-TTL": str(10**10 + 1)}),
            ("put", "/streams/h2", {"Stream-Expires-At": "2030-01-01T00:00:00" + "0" * 60}),
            ("put", "/streams/h2", {"Content-Type": "text/" + long}),
            ("post", "/streams/h", {"Stream-Seq": long}),
            (
                "post",
                "/streams/h",
                {"Producer-Id": long, "Producer-Epoch": "0", "Producer-Seq": "0"},
            ),
        ]
        for method, url, headers in too_long:
            content_type = headers.pop("Content-Type", "text/plain")
            response = getattr(client, method)(url, b"y", content_type, headers=headers)
            assert response.status_code == 400, (method, headers)
        assert (
            client.put(
                "/streams/h3", b"x", "text/plain", headers={"Stream-TTL": str(10**10)}
            ).status_code
            == 201
        )


def test_json_streams_refuse_what_is_not_json():
    with settings_with(**OPEN):
        client = Client()
        assert client.put("/streams/j", b"[]", "application/json").status_code == 201
        for body in (b"NaN", b"[1, Infinity]", b"{", b"\xff", b"[" * 100_000, b"[]"):
            assert client.post("/streams/j", body, "application/json").status_code == 400, body[:10]
        assert client.post("/streams/j", b'[{"a": 1}, [2]]', "application/json").status_code == 204
        assert json.loads(client.get("/streams/j?offset=-1").content) == [{"a": 1}, [2]]
