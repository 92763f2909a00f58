"""Cancel, interrupt, input and retry from the admin: permissions, the log, new runs."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from agent_channels.models import Channel, Event, Run, RunStatus
from agent_channels.runtime import start_run

from .helpers import wait_for

CHANGELIST = "admin:agent_channels_run_changelist"


def _staff(username: str, *perms: str) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="agent_channels", codename__in=perms)
    )
    client = Client()
    client.force_login(user)
    return client


def _run(channel: str, status: str = RunStatus.RUNNING, **kwargs: object) -> Run:
    row, _ = Channel.objects.get_or_create(name=channel)
    return Run.objects.create(channel=row, agent="echo", status=status, **kwargs)


def _control_events(channel: str) -> list[Event]:
    return list(
        Event.objects.filter(channel__name=channel, name__startswith="client.").order_by("seq")
    )


@pytest.mark.django_db
class TestPermissions:
    def test_a_viewer_sees_the_run_but_no_controls(self):
        client = _staff("viewer", "view_run")
        run = _run("perm:view")
        page = client.get(reverse("admin:agent_channels_run_change", args=[run.pk]))
        assert page.status_code == 200
        assert b"You may not control runs." in page.content
        assert b'value="cancel"' not in page.content
        changelist = client.get(reverse(CHANGELIST))
        assert b"cancel_runs" not in changelist.content
        assert b"retry_runs" not in changelist.content

    @pytest.mark.parametrize("kind", ["cancel", "interrupt", "input"])
    def test_a_viewer_cannot_send_control(self, kind):
        client = _staff("viewer", "view_run")
        run = _run("perm:control")
        response = client.post(
            reverse("admin:agent_channels_run_control", args=[run.pk]),
            {"kind": kind, "input": "x"},
        )
        assert response.status_code == 403
        assert _control_events("perm:control") == []

    def test_a_viewer_cannot_retry(self):
        client = _staff("viewer", "view_run")
        run = _run("perm:retry", RunStatus.FAILED)
        response = client.post(reverse("admin:agent_channels_run_retry", args=[run.pk]))
        assert response.status_code == 403
        assert Run.objects.count() == 1

    def test_a_bulk_action_without_its_permission_does_nothing(self):
        # change_run lets one cancel, not retry: the action is refused, not run.
        client = _staff("controller", "view_run", "change_run")
        run = _run("perm:bulk", RunStatus.FAILED)
        client.post(
            reverse(CHANGELIST), {"action": "retry_runs", "_selected_action": [str(run.pk)]}
        )
        assert Run.objects.count() == 1

    def test_someone_who_cannot_view_runs_gets_nothing(self):
        client = _staff("stranger")
        run = _run("perm:none")
        response = client.post(
            reverse("admin:agent_channels_run_control", args=[run.pk]), {"kind": "cancel"}
        )
        assert response.status_code in (403, 404)
        assert _control_events("perm:none") == []

    def test_control_needs_post(self):
        client = _staff("controller", "view_run", "change_run")
        run = _run("perm:get")
        assert (
            client.get(reverse("admin:agent_channels_run_control", args=[run.pk])).status_code
            == 405
        )
        assert (
            client.get(reverse("admin:agent_channels_run_retry", args=[run.pk])).status_code == 405
        )


@pytest.mark.django_db
class TestControlFromTheChangePage:
    @pytest.mark.parametrize("kind", ["cancel", "interrupt"])
    def test_the_control_event_is_in_the_log_with_who_sent_it(self, kind):
        client = _staff("operator", "view_run", "change_run")
        run = _run("page:stop")
        page = client.get(reverse("admin:agent_channels_run_change", args=[run.pk]))
        assert f'value="{kind}"'.encode() in page.content
        response = client.post(
            reverse("admin:agent_channels_run_control", args=[run.pk]), {"kind": kind}
        )
        assert response.status_code == 302
        assert response["Location"] == reverse("admin:agent_channels_run_change", args=[run.pk])
        [event] = _control_events("page:stop")
        assert event.name == f"client.{kind}"
        assert event.run_id == run.pk
        assert event.data["user"] == User.objects.get(username="operator").pk

    def test_input_as_text_and_as_json(self):
        client = _staff("operator", "view_run", "change_run")
        run = _run("page:input", RunStatus.WAITING)
        url = reverse("admin:agent_channels_run_control", args=[run.pk])
        client.post(url, {"kind": "input", "input": "yes, go on"})
        client.post(url, {"kind": "input", "input": '{"approve": true}', "json": "1"})
        events = _control_events("page:input")
        assert [(e.name, e.data["data"]) for e in events] == [
            ("client.input", "yes, go on"),
            ("client.input", {"approve": True}),
        ]

    def test_input_that_is_not_json_is_refused_with_a_message(self):
        client = _staff("operator", "view_run", "change_run")
        run = _run("page:badjson", RunStatus.WAITING)
        response = client.post(
            reverse("admin:agent_channels_run_control", args=[run.pk]),
            {"kind": "input", "input": "{nope", "json": "1"},
            follow=True,
        )
        assert b"The input is not JSON" in response.content
        assert _control_events("page:badjson") == []

    def test_a_finished_run_is_not_sent_anything(self):
        client = _staff("operator", "view_run", "change_run")
        run = _run("page:done", RunStatus.COMPLETED)
        response = client.post(
            reverse("admin:agent_channels_run_control", args=[run.pk]),
            {"kind": "cancel"},
            follow=True,
        )
        assert b"Nothing sent: the run is completed." in response.content
        assert _control_events("page:done") == []

    def test_an_unknown_kind_is_refused(self):
        client = _staff("operator", "view_run", "change_run")
        run = _run("page:kind")
        client.post(
            reverse("admin:agent_channels_run_control", args=[run.pk]), {"kind": "supersede"}
        )
        assert not Event.objects.filter(channel__name="page:kind").exists()


@pytest.mark.django_db
class TestBulkActions:
    def test_cancel_sends_one_message_per_channel_of_the_active_runs(self):
        client = _staff("operator", "view_run", "change_run")
        a1, a2 = _run("bulk:a"), _run("bulk:a", RunStatus.QUEUED)
        b = _run("bulk:b", RunStatus.WAITING)
        done = _run("bulk:c", RunStatus.COMPLETED)
        response = client.post(
            reverse(CHANGELIST),
            {"action": "cancel_runs", "_selected_action": [str(r.pk) for r in (a1, a2, b, done)]},
            follow=True,
        )
        assert b"Sent cancel to 2 channel(s)." in response.content
        user_id = User.objects.get(username="operator").pk
        for channel in ("bulk:a", "bulk:b"):
            [event] = _control_events(channel)
            assert event.name == "client.cancel" and event.data["user"] == user_id
        assert _control_events("bulk:c") == []

    def test_interrupt(self):
        client = _staff("operator", "view_run", "change_run")
        run = _run("bulk:intr")
        client.post(
            reverse(CHANGELIST), {"action": "interrupt_runs", "_selected_action": [str(run.pk)]}
        )
        assert [e.name for e in _control_events("bulk:intr")] == ["client.interrupt"]

    def test_retry_starts_new_runs_with_the_same_agent_and_input(self):
        client = _staff("operator", "view_run", "add_run")
        old = [
            _run("bulk:retry1", RunStatus.FAILED, input={"x": 1}),
            _run("bulk:retry2", RunStatus.CANCELLED, input=["<b>2</b>"]),
        ]
        response = client.post(
            reverse(CHANGELIST),
            {"action": "retry_runs", "_selected_action": [str(r.pk) for r in old]},
            follow=True,
        )
        assert b"Started 2 new run(s)." in response.content
        operator = User.objects.get(username="operator")
        for run in old:
            [new] = Run.objects.filter(channel=run.channel).exclude(pk=run.pk)
            assert (new.agent, new.input, new.status) == (run.agent, run.input, RunStatus.QUEUED)
            assert new.created_by == operator


@pytest.mark.django_db
def test_retry_from_the_page_opens_the_new_run():
    client = _staff("operator", "view_run", "add_run")
    run = _run("page:retry", RunStatus.FAILED, input={"q": "again"})
    response = client.post(reverse("admin:agent_channels_run_retry", args=[run.pk]))
    new = Run.objects.exclude(pk=run.pk).get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:agent_channels_run_change", args=[new.pk])
    assert (new.agent, new.input, new.channel_id) == ("echo", {"q": "again"}, run.channel_id)


@pytest.mark.django_db
def test_a_retry_the_runtime_refuses_is_a_message_not_a_500():
    client = _staff("operator", "view_run", "add_run")
    run = _run("page:gone", RunStatus.FAILED)
    Run.objects.filter(pk=run.pk).update(agent="no-such-agent")
    response = client.post(reverse("admin:agent_channels_run_retry", args=[run.pk]), follow=True)
    assert response.status_code == 200
    assert b"was not retried" in response.content
    assert Run.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("inprocess_runtime")
def test_cancel_from_the_admin_stops_a_running_run():
    """The real path: the in-process worker runs the agent, the admin's cancel stops it."""
    client = _staff("operator", "view_run", "change_run")
    run = start_run("live:cancel", "listener", {"seconds": 30})

    def running() -> bool:
        run.refresh_from_db()
        return run.status == RunStatus.RUNNING

    wait_for(running)
    client.post(reverse("admin:agent_channels_run_control", args=[run.pk]), {"kind": "cancel"})

    def stopped() -> bool:
        run.refresh_from_db()
        return not run.is_active

    wait_for(stopped, 10)
    assert run.status == RunStatus.CANCELLED
