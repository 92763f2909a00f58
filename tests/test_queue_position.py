"""A queued run says why it waits and how many runs are ahead of it."""

from __future__ import annotations

import pytest
from django.test import Client

from agent_channels.models import Event, Run, RunStatus
from agent_channels.runtime import start_run
from agent_channels.runtime.backends import RunBackend, reset_backend

pytestmark = pytest.mark.django_db(transaction=True)

parked: list[str] = []


class Parked(RunBackend):
    """A backend with no free worker: runs stay queued."""

    def enqueue(self, run_id: str) -> None:
        parked.append(run_id)


@pytest.fixture
def client(settings, django_user_model):
    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS, "RUN_BACKEND": "tests.test_queue_position.Parked"
    }
    reset_backend()
    user = django_user_model.objects.create_user("alice", password="pw")
    client = Client()
    client.force_login(user)
    client.user = user
    yield client
    reset_backend()


def queue(client, run: Run):
    response = client.get(f"/agent-channels/{run.channel.name}/runs/{run.pk}/")
    assert response.status_code == 200, response.content
    return response.json()["queue"]


def test_queued_runs_report_their_reason_and_the_runs_ahead(client):
    user = client.user
    a = start_run("q-one", "echo", 1, user=user)
    b = start_run("q-two", "echo", 2, user=user)
    c = start_run("q-two", "echo", 3, user=user, on_active="enqueue")
    d = start_run("q-three", "echo", 4, user=user)
    assert parked == [str(a.pk), str(b.pk), str(d.pk)]  # c waits for b, not for a worker
    assert queue(client, a) == {"reason": "waiting_for_worker", "ahead": 0}
    assert queue(client, b) == {"reason": "waiting_for_worker", "ahead": 1}
    assert queue(client, c) == {"reason": "channel_busy", "ahead": 1}
    assert queue(client, d) == {"reason": "waiting_for_worker", "ahead": 2}

    Run.objects.filter(pk=a.pk).update(status=RunStatus.RUNNING)
    Run.objects.filter(pk=b.pk).update(status=RunStatus.WAITING)
    assert queue(client, a) is None
    assert queue(client, c) == {"reason": "channel_busy", "ahead": 1}
    assert queue(client, d) == {"reason": "waiting_for_worker", "ahead": 0}

    reasons = {
        e.run_id: e.data["reason"] for e in Event.objects.filter(name="run.queued")
    }
    assert reasons == {
        a.pk: "waiting_for_worker",
        b.pk: "waiting_for_worker",
        c.pk: "channel_busy",
        d.pk: "waiting_for_worker",
    }
