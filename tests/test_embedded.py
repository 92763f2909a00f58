"""The embedded default: no broker, runs execute in threads of the web process (daphne)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from django.test import Client

from .helpers import create_operator
from .procs import Daphne
from .test_celery_runs import ended, follow

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

TOKEN = "b" * 32


@pytest.fixture
def daphne():
    server = Daphne()  # no AGCH_RUN_BACKEND: the in-process backend
    yield server
    server.stop()


def test_a_run_started_over_http_asks_and_gets_its_answer_in_the_web_process(
    daphne, django_user_model
):
    client = Client()
    client.force_login(create_operator(django_user_model, "staff"))
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={TOKEN}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{daphne.port}/agent-channels/emb/runs/",
        data=json.dumps({"agent": "approval", "input": {"action": "go"}}).encode(),
        headers={"Cookie": cookie, "X-CSRFToken": TOKEN, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        assert json.load(response)["status"] == "queued"

    def send(frames):
        if frames[-1]["event"] == "input.requested":
            return {"type": "input", "data": "yes"}
        return None

    frames = asyncio.run(follow(daphne, cookie, "emb", ended, send))
    assert frames[-1]["event"] == "run.completed", frames[-1]
    assert frames[-1]["data"]["output"]["approved"] is True
    events = [f["event"] for f in frames]
    assert events.index("run.waiting") < events.index("input.received")
