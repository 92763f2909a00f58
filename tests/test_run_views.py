"""The HTTP run API, through Django's test client with CSRF checks on."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from agent_channels.models import Channel, Event, Run, RunStatus

from .helpers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]

TOKEN = "a" * 32


@pytest.fixture
def client(django_user_model):
    user = django_user_model.objects.create_user("alice", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = TOKEN
    client.user = user
    # The namespace the default policy lets alice create channels in.
    client.ns = f"user:{user.pk}/"
    return client


def post(client, path, body, csrf=True):
    headers = {"X-CSRFToken": TOKEN} if csrf else {}
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(path, data, content_type="application/json", headers=headers)


def test_start_a_run_and_read_its_status(client):
    response = post(client, f"/agent-channels/{client.ns}team/a b:c/runs/", {"agent": "echo", "input": [1]})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued"
    url = f"/agent-channels/{client.ns}team/a b:c/runs/{body['id']}/"
    wait_for(lambda: client.get(url).json()["status"] == "completed")
    detail = client.get(url).json()
    assert detail["output"] == [1] and detail["usage"]["total_tokens"] == 0
    assert Run.objects.get().channel.owner == client.user


def test_csrf_protection_stays_on(client):
    response = post(client, f"/agent-channels/{client.ns}c/runs/", {"agent": "echo"}, csrf=False)
    assert response.status_code == 403
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 400, "invalid_json"),
        ([1, 2], 400, "invalid_body"),
        ({"input": 1}, 400, "invalid_body"),
        ({"agent": "nope"}, 400, "unknown_agent"),
        ({"agent": "echo", "on_active": "sometimes"}, 400, "invalid_body"),
        # JSON that Python parses but no database stores: never a 500.
        ('{"agent": "echo", "input": NaN}', 400, "invalid_run"),
        ('{"agent": "echo", "input": {"x": 1e400}}', 400, "invalid_run"),
        ('{"agent": "echo", "input": "nul\\u0000"}', 400, "invalid_run"),
        ('{"agent": "echo", "input": "\\ud800"}', 400, "invalid_run"),
    ],
)
def test_bad_run_requests_get_json_errors(client, body, status, code):
    response = post(client, f"/agent-channels/{client.ns}c/runs/", body)
    assert response.status_code == status
    assert response.json()["type"] == "error" and response.json()["code"] == code


def test_anonymous_and_other_users_are_refused(client, django_user_model):
    post(client, f"/agent-channels/{client.ns}mine/runs/", {"agent": "echo"})
    anonymous = Client()
    assert anonymous.post(f"/agent-channels/{client.ns}mine/runs/", "{}", content_type="application/json").status_code in (401, 403)
    other = Client(enforce_csrf_checks=True)
    other.force_login(django_user_model.objects.create_user("bob"))
    other.cookies["csrftoken"] = TOKEN
    response = post(other, f"/agent-channels/{client.ns}mine/runs/", {"agent": "echo"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    run = Run.objects.get()
    assert other.get(f"/agent-channels/{client.ns}mine/runs/{run.pk}/").status_code == 403
    assert client.get(f"/agent-channels/{client.ns}mine/runs/not-a-uuid/").status_code == 404


def test_a_second_run_is_rejected_with_409_by_default(client):
    assert post(client, f"/agent-channels/{client.ns}busy/runs/", {"agent": "demo", "input": {"tokens": 1000, "interval_ms": 5}}).status_code == 201
    response = post(client, f"/agent-channels/{client.ns}busy/runs/", {"agent": "echo"})
    assert response.status_code == 409 and response.json()["code"] == "run_active"
    assert post(client, f"/agent-channels/{client.ns}busy/messages/", {"type": "cancel"}).status_code == 202
    wait_for(lambda: not Run.objects.active().exists())


def test_messages_answer_and_cancel_a_run(client):
    run_id = post(client, f"/agent-channels/{client.ns}ask/runs/", {"agent": "approval"}).json()["id"]
    wait_for(lambda: Run.objects.get(pk=run_id).status == RunStatus.WAITING)
    response = post(client, f"/agent-channels/{client.ns}ask/messages/", {"type": "input", "data": "yes", "id": "m1"})
    assert response.status_code == 202 and response.json()["id"] == "m1"
    event = Event.objects.get(seq=response.json()["seq"], channel__name=client.ns + "ask")
    assert event.name == "client.input" and event.data["data"] == "yes"
    wait_for(lambda: Run.objects.get(pk=run_id).status == RunStatus.COMPLETED)
    assert Run.objects.get(pk=run_id).output["approved"] is True


@pytest.mark.parametrize(
    ("body", "code"),
    [({"type": "shout"}, "unknown_type"), ({"type": "input"}, "invalid_frame"), ("[", "invalid_json"),
     ({"type": "ping"}, "unknown_type")],
)
def test_bad_messages_get_json_errors(client, body, code):
    post(client, f"/agent-channels/{client.ns}m/runs/", {"agent": "echo"})
    response = post(client, f"/agent-channels/{client.ns}m/messages/", body)
    assert response.status_code == 400 and response.json()["code"] == code


# -- nobody starts a run in someone else's channel ----------------------------------------


def test_start_run_refuses_a_channel_owned_by_someone_else(client, django_user_model):
    from agent_channels import publish
    from agent_channels.runtime import RunForbidden, start_run

    from .helpers import create_operator

    publish("alices", "tick", owner=client.user)
    bob = django_user_model.objects.create_user("bob")
    with pytest.raises(RunForbidden):
        start_run("alices", "echo", user=bob)
    assert not Run.objects.exists()
    # The owner, an operator who may control every run, and server code (no user) may.
    operator = create_operator(django_user_model, "op", ("control_all_runs",))
    for user in (client.user, operator, None):
        run = start_run("alices", "echo", user=user, on_active="enqueue")
        assert run.channel.owner == client.user
    assert Run.objects.count() == 3


def test_a_channel_claimed_between_the_check_and_the_start_is_refused(client, django_user_model,
                                                                    monkeypatch):
    from agent_channels import publish
    from agent_channels.views import runs

    real_check = runs.check_send
    bob = django_user_model.objects.create_user("bob")

    def check_then_race(request, name, create=False):
        # The name is free when the view checks it; another user takes it right after.
        denied = real_check(request, name, create=create)
        publish(name, "tick", owner=bob)
        return denied

    monkeypatch.setattr(runs, "check_send", check_then_race)
    response = post(client, f"/agent-channels/{client.ns}contested/runs/", {"agent": "echo"})
    assert response.status_code == 403
    assert response.json() == {"type": "error", "code": "forbidden",
                               "message": "You may not send to this channel."}
    assert not Run.objects.exists()


def test_an_existing_channel_and_a_refused_name_get_the_same_answer(client, django_user_model):
    from agent_channels import publish

    bob = django_user_model.objects.create_user("bob")
    publish("taken", "tick", owner=bob)
    publish(f"user:{bob.pk}/taken", "tick", owner=bob)
    names = ["taken", "free", f"user:{bob.pk}/taken", f"user:{bob.pk}/free"]
    answers = [post(client, f"/agent-channels/{name}/runs/", {"agent": "echo"}) for name in names]
    # Under the default policy: nothing tells an existing channel from a refused name.
    assert {(answer.status_code, answer.content) for answer in answers} == {
        (403, b'{"type": "error", "code": "forbidden", "message": "You may not send to this channel."}')
    }
    # Even a body the view would refuse tells nothing: access is decided first.
    assert post(client, "/agent-channels/taken/runs/", "not json").content == answers[1].content
    assert not Run.objects.exists()
    assert not Channel.objects.filter(name__in=["free", f"user:{bob.pk}/free"]).exists()


@pytest.mark.parametrize("name", ["order:42/support", "free", "user:/x", "users:1/x"])
def test_users_cannot_claim_names_outside_their_namespace(client, name):
    """A user who names a channel first no longer becomes its owner (issue 7, item 1)."""
    response = post(client, f"/agent-channels/{name}/runs/", {"agent": "echo"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert post(client, f"/agent-channels/{name}/messages/", {"type": "cancel"}).status_code == 403
    assert not Channel.objects.filter(name=name).exists()


def test_handed_out_names_are_unguessable_and_in_the_users_namespace(client, django_user_model):
    from agent_channels import new_channel_name

    names = {new_channel_name(client.user, "chat-") for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith(f"{client.ns}chat-") and len(name) >= len(client.ns) + 5 + 22
               for name in names)
    name = names.pop()
    assert post(client, f"/agent-channels/{name}/runs/", {"agent": "echo"}).status_code == 201
    assert Channel.objects.get(name=name).owner == client.user
    # The bare namespace is no channel name of its own.
    for bare in (client.ns, client.ns.rstrip("/")):
        assert post(client, f"/agent-channels/{bare}/runs/", {"agent": "echo"}).status_code == 403


def test_operators_may_start_runs_on_any_name(django_user_model):
    from .helpers import create_operator

    operator = create_operator(django_user_model, "op", ("control_all_runs",))
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    client.cookies["csrftoken"] = TOKEN
    assert post(client, "/agent-channels/order:42/support/runs/", {"agent": "echo"}).status_code == 201
    assert Channel.objects.get(name="order:42/support").owner == operator


def test_without_namespaces_only_operators_create_channels(client, settings):
    from agent_channels import new_channel_name

    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "USER_CHANNEL_PREFIX": None}
    name = new_channel_name(client.user)
    assert not name.startswith("user:")
    assert post(client, f"/agent-channels/{name}/runs/", {"agent": "echo"}).status_code == 403
    assert post(client, f"/agent-channels/{client.ns}x/runs/", {"agent": "echo"}).status_code == 403
    assert not Channel.objects.exists()


def test_reading_a_missing_and_a_foreign_channel_looks_the_same(client, django_user_model):
    from agent_channels import publish

    publish("taken", "tick", owner=django_user_model.objects.create_user("bob"))
    taken, free = client.get("/agent-channels/taken/events/"), client.get("/agent-channels/free/events/")
    assert (taken.status_code, taken.content) == (free.status_code, free.content)
    assert taken.status_code == 403


# -- which agents a user may start (the policy's can_run) ---------------------------------


def test_can_run_keeps_agents_to_some_users(client, django_user_model, settings):
    from agent_channels.runtime import AgentForbidden, start_run

    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS,
                               "ACCESS_POLICY": "tests.policies.NoEchoPolicy"}
    response = post(client, f"/agent-channels/{client.ns}a/runs/", {"agent": "echo"})
    assert response.status_code == 403
    assert response.json() == {"type": "error", "code": "agent_forbidden",
                               "message": "You may not run the agent 'echo' here."}
    assert not Run.objects.exists() and not Channel.objects.exists()
    assert post(client, f"/agent-channels/{client.ns}a/runs/", {"agent": "demo",
                "input": {"tokens": 0}}).status_code == 201
    # start_run(user=...) asks too; your own code (no user) is not asked.
    with pytest.raises(AgentForbidden):
        start_run(f"{client.ns}b", "echo", user=client.user)
    assert start_run(f"{client.ns}b", "echo").agent == "echo"


def test_can_run_is_asked_for_anonymous_users_too(settings):
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS,
                               "ACCESS_POLICY": "tests.policies.OpenNoEchoPolicy"}
    anonymous = Client()
    refused = anonymous.post("/agent-channels/open/runs/", {"agent": "echo"},
                             content_type="application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "agent_forbidden"
    allowed = anonymous.post("/agent-channels/open/runs/", {"agent": "demo", "input": {"tokens": 0}},
                             content_type="application/json")
    assert allowed.status_code == 201
