"""Size limits on what is published and on what followers are sent (docs/settings.rst)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
import websockets
from django.test import Client, override_settings

from agent_channels.channel.log import EventDraft, InvalidEvent

from .helpers import create_operator
from .procs import Daphne

TOKEN = "c" * 32
ANSWER_BYTES = 1_500_000  # over the 1 MiB a websockets client (and many proxies) accepts


def test_event_data_over_max_event_bytes_is_refused_at_publish_time():
    with override_settings(AGENT_CHANNELS={"MAX_EVENT_BYTES": 1000}):
        EventDraft("ok", {"text": "é" * 400})  # 800 bytes of UTF-8
        with pytest.raises(InvalidEvent, match="at most 1000 bytes"):
            EventDraft("big", {"text": "é" * 600})  # 600 characters, 1,200 bytes


@pytest.fixture
def daphne():
    server = Daphne()  # the in-process backend: the run streams inside daphne
    yield server
    server.stop()


def _get(daphne: Daphne, cookie: str, url: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daphne.port}{url}",
        headers={"Cookie": cookie, "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


async def _follow(daphne: Daphne, cookie: str, channel: str, timeout: float = 60) -> list[dict]:
    """Every event frame until the run ends, with a client that refuses messages over 1 MiB."""
    frames: list[dict] = []
    async with websockets.connect(
        daphne.ws_url(channel) + "?since=0",
        additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{daphne.port}"},
        max_size=2**20,
    ) as ws:
        async with asyncio.timeout(timeout):
            while not frames or frames[-1].get("event") not in ("run.completed", "run.failed"):
                frame = json.loads(await ws.recv())
                if frame["type"] == "event":
                    assert not frames or frame["seq"] == frames[-1]["seq"] + 1
                    frames.append(frame)
    return frames


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_long_answer_reaches_followers_live_and_on_replay_without_wedging(
    daphne, django_user_model
):
    client = Client()
    client.force_login(create_operator(django_user_model, "staff"))
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={TOKEN}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{daphne.port}/agent-channels/big/runs/",
        data=json.dumps({"agent": "long_answer", "input": {"bytes": ANSWER_BYTES}}).encode(),
        headers={"Cookie": cookie, "X-CSRFToken": TOKEN, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201

    for _attempt in ("live", "replay"):
        frames = asyncio.run(_follow(daphne, cookie, "big"))
        assert frames[-1]["event"] == "run.completed"
        large = {f["event"]: f for f in frames if f.get("too_large")}
        assert {"message.completed", "run.completed"} <= set(large), [
            (f["event"], f.get("too_large")) for f in frames
        ]
        for name, stub in large.items():
            assert stub["bytes"] > 512 * 1024 and "data" not in stub
            page = _get(daphne, cookie, stub["url"])
            (event,) = page["events"]
            assert event["seq"] == stub["seq"] and event["event"] == name
        completed = _get(daphne, cookie, large["run.completed"]["url"])["events"][0]
        assert len(completed["data"]["output"]["text"]) == ANSWER_BYTES
        # The deltas that fit still arrive whole, and all of them add up to the answer.
        texts = []
        for frame in frames:
            if frame["event"] != "message.delta":
                continue
            if frame.get("too_large"):
                frame = _get(daphne, cookie, frame["url"])["events"][0]
            texts.append(frame["data"]["text"])
        assert len("".join(texts)) == ANSWER_BYTES

    # Server-Sent Events: the same placeholders, in order.
    sse = _sse_until_run_ends(daphne, cookie, "big")
    assert {"message.completed", "run.completed"} <= {
        f["event"] for f in sse if f.get("too_large") and f["url"]
    }
    assert [f["seq"] for f in sse] == list(range(1, len(sse) + 1))


def _sse_until_run_ends(daphne: Daphne, cookie: str, channel: str) -> list[dict]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=30)
    connection.request(
        "GET", f"/agent-channels/{channel}/events/?since=0",
        headers={"Cookie": cookie, "Accept": "text/event-stream"},
    )
    response = connection.getresponse()
    assert response.status == 200
    frames: list[dict] = []
    deadline = time.monotonic() + 60
    try:
        while not frames or frames[-1]["event"] != "run.completed":
            assert time.monotonic() < deadline, [f["event"] for f in frames]
            line = response.fp.readline(4 * 1024 * 1024)
            if line.startswith(b"data: "):
                frames.append(json.loads(line[6:]))
    finally:
        connection.close()
    return frames
