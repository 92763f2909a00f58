"""Chaos: a running run still hears interrupts after Redis lost everything.

A run joins its channel's control group when it starts. Redis restarted empty (no
persistence), or a failover that lost the newest writes, forgets that membership; so does
``group_expiry`` for a run that lives longer. The worker must notice and join again, and
read the control events it missed from the log, or a client's interrupt or cancel would
be stored and never reach the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
import urllib.request
import uuid

import pytest
import websockets
from django.conf import settings
from django.test import Client

from agent_channels.models import Event, Run

from .helpers import wait_for
from .procs import CeleryWorker, Daphne, RedisServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
    pytest.mark.skipif(settings.LAYER_KIND != "redis", reason="needs the Redis channel layer"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None and os.environ.get("CI") != "true",
        reason="needs redis-server on PATH to run a Redis of its own",
    ),
]


@pytest.fixture
def session_cookie(django_user_model) -> str:
    user = django_user_model.objects.create_user("control", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def post_run(port: int, cookie: str, channel: str, seconds: float = 15) -> str:
    csrf, origin = secrets.token_hex(16), f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{origin}/agent-channels/{channel}/runs/",
        data=json.dumps({"agent": "listener", "input": {"seconds": seconds}}).encode(),
        headers={"Cookie": f"{cookie}; csrftoken={csrf}", "X-CSRFToken": csrf, "Origin": origin,
                 "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["id"])


def interrupt(port: int, cookie: str, channel: str, n: int) -> None:
    """Send an interrupt frame through daphne and wait for its ack (stored in the log)."""

    async def send() -> None:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/agent-channels/{channel}/",
            additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"},
            open_timeout=5,
        ) as ws:
            await ws.send(json.dumps({"type": "interrupt", "data": {"n": n}, "id": n}))
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "ack" and frame.get("id") == n:
                        return
                    assert frame["type"] in ("hello", "event"), frame

    deadline = time.monotonic() + 20
    while True:  # daphne's own layer connections come back a moment after Redis does
        try:
            asyncio.run(send())
            return
        except (OSError, TimeoutError, AssertionError, websockets.exceptions.WebSocketException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def seen(channel: str) -> list[int]:
    return [data["data"]["n"] for data in Event.objects.filter(
        channel__name=channel, name="custom.seen").order_by("seq").values_list("data", flat=True)]


def test_a_running_run_hears_interrupts_after_redis_restarted_empty(session_cookie: str) -> None:
    redis = RedisServer()
    queue = f"control-{uuid.uuid4().hex[:8]}"
    env = {"AGCH_REDIS_URL": f"{redis.url}/0", "AGCH_BROKER_URL": f"{redis.url}/1"}
    channel = f"control-{uuid.uuid4().hex[:6]}"
    daphne: Daphne | None = None
    worker: CeleryWorker | None = None
    try:
        daphne = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue, **env)
        worker = CeleryWorker(queue, pool="threads", concurrency=2, AGCH_DB_POOL="2", **env)
        run_id = post_run(daphne.port, session_cookie, channel)
        wait_for(lambda: Run.objects.get(pk=run_id).status == "running", timeout=30)
        interrupt(daphne.port, session_cookie, channel, 1)
        wait_for(lambda: seen(channel) == [1], timeout=10)

        redis.kill()
        time.sleep(1.0)
        redis.start()  # empty: the run's control-group membership is gone
        interrupt(daphne.port, session_cookie, channel, 2)
        wait_for(lambda: seen(channel) == [1, 2], timeout=15)
        assert Run.objects.get(pk=run_id).status == "running"
    finally:
        for proc in (worker, daphne):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        redis.stop()


def test_a_run_that_outlives_group_expiry_still_hears_interrupts(session_cookie: str) -> None:
    # group_expiry of 2 s: without joining again, the run's membership is gone after 2 s.
    queue = f"control-{uuid.uuid4().hex[:8]}"
    channel = f"expiry-{uuid.uuid4().hex[:6]}"
    env = {"AGCH_GROUP_EXPIRY": "2"}
    daphne: Daphne | None = None
    worker: CeleryWorker | None = None
    try:
        daphne = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue, **env)
        worker = CeleryWorker(queue, pool="threads", concurrency=2, AGCH_DB_POOL="2", **env)
        run_id = post_run(daphne.port, session_cookie, channel, seconds=10)
        wait_for(lambda: Run.objects.get(pk=run_id).status == "running", timeout=30)
        time.sleep(4)  # twice group_expiry
        interrupt(daphne.port, session_cookie, channel, 1)
        wait_for(lambda: seen(channel) == [1], timeout=5)
    finally:
        for proc in (worker, daphne):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
