"""Events over ``MAX_SENT_FRAME_BYTES`` on the HTTP protocols: AG-UI and Durable Streams.

The limit guards WebSocket messages (a client closes a socket whose message is over its own
limit, and would resume at the same seq for ever). HTTP bodies, chunked or not, have no
per-message limit: these endpoints serve such an event whole, and the reader moves past it.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client, override_settings

from agent_channels import publish
from agent_channels.conf import get_config
from agent_channels.durable_streams.store import format_offset

from .test_agui import EVENT, run_input

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]

LIMIT = 1000
BIG = "é" * 3000  # 6000 bytes of UTF-8: six times the limit


def small_frames(**extra):
    return override_settings(AGENT_CHANNELS={**get_config(), "MAX_SENT_FRAME_BYTES": LIMIT, **extra})


async def collect(response) -> str:
    return b"".join([chunk async for chunk in response.streaming_content]).decode()


@pytest.fixture
def reader(django_user_model):
    user = django_user_model.objects.create_user("reader")
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def test_durable_streams_serve_a_large_event_whole_and_read_past_it(reader):
    channel = f"user:{reader.user.pk}/big"
    url = f"/streams/channels/{quote(channel)}"
    with small_frames(DURABLE_STREAMS_SSE_SECONDS=0.5, DURABLE_STREAMS_LONG_POLL_SECONDS=0.5):
        publish(channel, "custom.big", {"text": BIG}, owner=reader.user)
        publish(channel, "custom.after", {"n": 1}, owner=reader.user)
        # Catch-up: both events, the large one whole (no placeholder), and the offset past it.
        page = reader.get(url, {"offset": "-1"})
        assert page.status_code == 200
        frames = json.loads(page.content)
        assert [f["event"] for f in frames] == ["custom.big", "custom.after"]
        assert frames[0]["data"] == {"text": BIG} and "too_large" not in frames[0]
        assert page["Stream-Next-Offset"] == format_offset(2)
        # Long-poll from before it answers with it at once.
        poll = reader.get(url, {"offset": format_offset(0), "live": "long-poll"})
        assert json.loads(poll.content)[0]["data"] == {"text": BIG}
        # SSE: one data event carries it whole; the control event moves past it.
        sse = reader.get(url, {"offset": "-1", "live": "sse"})
        text = async_to_sync(collect)(sse)
    blocks = [b for b in text.split("\n\n") if b.startswith("event: data")]
    data = "\n".join(line[len("data:") :] for line in blocks[0].split("\n")[1:])
    assert json.loads(data)[0]["data"] == {"text": BIG}
    assert f'"streamNextOffset": "{format_offset(2)}"' in text


async def test_ag_ui_streams_a_large_answer_whole(django_user_model):
    user = await database_sync_to_async(django_user_model.objects.create_user)("agui-big")
    client = AsyncClient()
    await client.aforce_login(user)
    body = run_input(f"user:{user.pk}/big", forwardedProps={"input": {"bytes": 20_000}})
    with small_frames():
        response = await client.post("/ag-ui/long_answer/", body, content_type="application/json")
        assert response.status_code == 200, response.content
        text = await collect(response)
    events = [EVENT.validate_json(b[len("data: ") :]) for b in text.split("\n\n") if b.startswith("data: ")]
    kinds = [e.type.value for e in events]
    assert kinds[-1] == "RUN_FINISHED", kinds
    answer = "".join(e.delta for e in events if e.type.value == "TEXT_MESSAGE_CONTENT")
    assert len(answer) == 20_000 and set(answer) == {"x", "\n"}
    # At least one event went out larger than the WebSocket limit, whole.
    assert max(len(b.encode()) for b in text.split("\n\n")) > LIMIT
