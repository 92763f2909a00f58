"""A run's page follows an active run live; watchers, totals and channel deletion."""

from __future__ import annotations

import datetime
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.presence import watcher_counts
from agent_channels.models import Channel, Event, Presence, Run, RunStatus, Step

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:agent_channels_run_changelist")
CHANNELS = reverse("admin:agent_channels_channel_changelist")
XSS = "<script>alert('pwned')</script>"


def _staff(username: str, *perms: str) -> Client:
    user = User.objects.create_user(username, is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="agent_channels", codename__in=perms)
    )
    client = Client()
    client.force_login(user)
    return client


def _run(channel: str, status: str = RunStatus.RUNNING, **fields: object) -> Run:
    row, _ = Channel.objects.get_or_create(name=channel)
    return Run.objects.create(channel=row, agent="chat", status=status, **fields)


def _page(client: Client, run: Run) -> str:
    response = client.get(reverse("admin:agent_channels_run_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def _watch(channel: Channel, connections: int, user: User | None = None) -> None:
    expires = timezone.now() + datetime.timedelta(seconds=60)
    for i in range(connections):
        Presence.objects.create(
            channel=channel, connection=f"{channel.pk}-{i}", user=user, expires_at=expires
        )


# -- the live view --------------------------------------------------------------------------


def test_an_active_run_is_followed_live_from_its_first_event(admin_client):
    append("live:a", [EventDraft("message.delta", {"message_id": "old", "text": "before"})])
    run = _run("live:a")
    append(
        "live:a",
        [
            EventDraft("run.started", {"attempt": 1}, run.pk),
            EventDraft("message.delta", {"message_id": "m", "text": XSS}, run.pk),
        ],
    )
    content = _page(admin_client, run)
    assert "<agent-channel" in content and 'since="3"' in content  # the head the page holds
    assert "agent_channels/client.js" in content and "agent_channels/admin_run.js" in content
    assert f'data-run="{run.pk}"' in content
    # Rendered from the run's first event on: the earlier run's message is not there.
    assert "before" not in content
    assert XSS not in content and "&lt;script&gt;alert" in content
    # The stream is read-only; the controls are the Actions above it.
    assert "agch-controls" not in content and 'value="cancel"' in content
    assert 'id="agch-run-history"' not in content


def test_a_finished_run_shows_its_history_and_no_live_view(admin_client):
    run = _run("live:done", RunStatus.COMPLETED)
    append("live:done", [EventDraft("run.completed", {"output": 1}, run.pk)])
    content = _page(admin_client, run)
    assert 'id="agch-run-history"' in content and "Run completed" in content
    assert "<agent-channel" not in content and "admin_run.js" not in content


def test_staff_without_send_permission_follow_live_but_see_no_controls():
    client = _staff("reader", "view_run", "view_all_channels")
    run = _run("live:reader")
    append(
        "live:reader",
        [EventDraft("input.requested", {"prompt": "ok?", "choices": ["yes", "no"]}, run.pk)],
    )
    content = _page(client, run)
    assert "<agent-channel" in content
    assert "You may not control runs." in content
    for control in ('value="cancel"', 'value="interrupt"', "agch-controls", "data-agch-answer"):
        assert control not in content, control


def test_staff_who_may_not_follow_the_channel_get_the_history_instead():
    # view_run shows the admin page; following a channel is the access policy's call.
    client = _staff("runs-only", "view_run", "change_run")
    run = _run("live:hidden")
    append("live:hidden", [EventDraft("run.started", {"attempt": 1}, run.pk)])
    content = _page(client, run)
    assert "<agent-channel" not in content
    assert "Run started (attempt 1)" in content


# -- watchers now ---------------------------------------------------------------------------


def test_watchers_are_counted_per_channel_in_one_query(django_assert_num_queries):
    channels = [Channel.objects.create(name=f"watch:{i}") for i in range(3)]
    _watch(channels[0], 2)
    _watch(channels[2], 1)
    Presence.objects.create(  # expired: a dead server's ghost does not count
        channel=channels[1], connection="ghost", expires_at=timezone.now()
    )
    with django_assert_num_queries(1):
        counts = watcher_counts(c.pk for c in channels)
    assert counts == {channels[0].pk: 2, channels[2].pk: 1}
    assert watcher_counts([]) == {}


@pytest.mark.parametrize("count", [5, 40])
def test_the_channel_list_shows_watchers_without_a_query_per_row(
    admin_client, django_assert_max_num_queries, count
):
    channels = [Channel.objects.create(name=f"wl:{i}") for i in range(count)]
    _watch(channels[0], 3)
    # session, user, count, page, one watchers batch.
    with django_assert_max_num_queries(5):
        response = admin_client.get(CHANNELS)
    assert "Watchers now" in response.content.decode()
    shown = {c.pk: c._agch_watchers for c in response.context["cl"].result_list}
    assert shown[channels[0].pk] == 3 and sum(shown.values()) == 3


def test_the_run_list_and_page_show_who_watches(admin_client):
    run = _run("watch:run")
    _watch(run.channel, 2, User.objects.create_user("alice"))
    response = admin_client.get(RUNS)
    assert [r._agch_watchers for r in response.context["cl"].result_list] == [2]
    content = _page(admin_client, run)
    assert re.search(r'field-watchers_now.*?<div class="readonly">2 \(alice\)</div>', content, re.S)


# -- totals of the filtered list --------------------------------------------------------------


def test_the_run_list_totals_the_filtered_runs_in_one_query(admin_client, settings):
    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS,
        "MODEL_PRICES": {"gpt-a": [2, 8], "gpt-b": [1, 1]},
    }
    for i in range(150):  # more than a page: the totals cover every page
        _run(
            f"tot:{i % 3}",
            RunStatus.COMPLETED if i % 2 else RunStatus.FAILED,
            model=("gpt-a", "gpt-b", "unpriced")[i % 3],
            prompt_tokens=1000,
            completion_tokens=100,
        )
    content = admin_client.get(RUNS).content.decode()
    assert "Totals of the 150 selected runs:" in content
    assert "150000 prompt" in content and "15000 completion" in content
    assert "165000 tokens" in content
    # 50 runs × (1000×2 + 100×8) + 50 × (1000 + 100), per million tokens.
    assert "0.1950 USD" in content
    assert "55000 tokens</span> of models without a price" in content
    failed = admin_client.get(RUNS, {"status__exact": "failed"}).content.decode()
    assert "Totals of the 75 selected runs:" in failed
    searched = admin_client.get(RUNS, {"q": "tot:1"}).content.decode()
    assert "Totals of the 50 selected runs:" in searched and "0.0550 USD" in searched


def test_the_totals_and_the_page_count_are_one_query(admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _run("tot:q", RunStatus.COMPLETED, model="m", prompt_tokens=5)
    with CaptureQueriesContext(connection) as queries:
        content = admin_client.get(RUNS).content.decode()
    on_runs = [q["sql"] for q in queries if re.search(r'FROM "agent_channels_run"', q["sql"])]
    assert len(on_runs) == 2, on_runs  # the aggregate (count + sums), then the page
    assert "SUM(" in on_runs[0].upper() and "Totals of the 1 selected run:" in content


# -- deleting a channel -------------------------------------------------------------------------


def _channel_with_log(name: str, events: int, runs: int) -> Channel:
    created = [_run(name, RunStatus.COMPLETED) for _ in range(runs)]
    Step.objects.create(run=created[0], index=0, kind="model", name="s", status="completed")
    append(name, [EventDraft("custom.tick", {"n": i}) for i in range(events)])
    return Channel.objects.get(name=name)


@pytest.mark.parametrize("events", [3, 300])
def test_the_delete_confirmation_says_how_much_of_the_log_goes(
    admin_client, django_assert_max_num_queries, events
):
    channel = _channel_with_log("del:one", events, runs=2)
    url = reverse("admin:agent_channels_channel_delete", args=[channel.pk])
    # Counted, not listed: the page costs the same whatever the log's length.
    with django_assert_max_num_queries(10):
        response = admin_client.get(url)
    content = response.content.decode()
    assert response.status_code == 200
    assert f"{events} events of their log" in content
    assert "2 runs and their 1 journal step" in content
    assert "custom.tick" not in content  # no event is listed one by one
    assert "Events: " + str(events) in content.replace("</li>", "")  # Django's summary


def test_deleting_a_channel_takes_its_log_and_runs(admin_client):
    channel = _channel_with_log("del:go", 5, runs=2)
    keep = _channel_with_log("del:keep", 2, runs=1)
    url = reverse("admin:agent_channels_channel_delete", args=[channel.pk])
    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not Channel.objects.filter(pk=channel.pk).exists()
    assert not Event.objects.filter(channel_id=channel.pk).exists()
    assert not Run.objects.filter(channel_id=channel.pk).exists()
    assert Event.objects.filter(channel=keep).count() == 2 and keep.runs.count() == 1


def test_the_bulk_delete_counts_every_selected_channel(admin_client):
    one = _channel_with_log("del:b1", 4, runs=1)
    two = _channel_with_log("del:b2", 6, runs=2)
    response = admin_client.post(
        CHANNELS, {"action": "delete_selected", "_selected_action": [one.pk, two.pk]}
    )
    content = response.content.decode()
    assert "10 events of their log" in content and "3 runs and their 2 journal steps" in content
    admin_client.post(
        CHANNELS,
        {"action": "delete_selected", "_selected_action": [one.pk, two.pk], "post": "yes"},
    )
    assert not Channel.objects.filter(name__startswith="del:b").exists()
    assert not Event.objects.filter(channel_id__in=[one.pk, two.pk]).exists()


def test_deleting_a_channel_needs_the_delete_permission():
    client = _staff("viewer", "view_channel")
    channel = _channel_with_log("del:no", 1, runs=1)
    url = reverse("admin:agent_channels_channel_delete", args=[channel.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert Channel.objects.filter(pk=channel.pk).exists()
    # delete_channel alone is enough: the events go with it, not one by one.
    deleter = _staff("deleter", "view_channel", "delete_channel")
    assert deleter.post(url, {"post": "yes"}).status_code == 302
    assert not Event.objects.filter(channel_id=channel.pk).exists()


def test_a_project_can_turn_the_totals_off(admin_client, monkeypatch):
    from agent_channels.admin import RunAdmin

    _run("tot:off", RunStatus.COMPLETED, model="m", prompt_tokens=5)
    monkeypatch.setattr(RunAdmin, "show_totals", False)
    response = admin_client.get(RUNS)
    assert "run_totals" not in response.context and b"agch-run-totals" not in response.content
    assert response.context["cl"].result_count == 1


@pytest.mark.parametrize("inputs", [2, 60])
def test_a_run_page_costs_the_same_queries_however_long_its_history(
    admin_client, django_assert_max_num_queries, inputs
):
    run = _run("cost:page", RunStatus.COMPLETED)
    senders = [User.objects.create_user(f"sender{i}") for i in range(inputs)]
    drafts = [EventDraft("run.started", {"attempt": 1}, run.pk)]
    for i, sender in enumerate(senders):
        drafts += [
            EventDraft("client.input", {"data": f"in {i}", "user": sender.pk}, run.pk),
            EventDraft("message.delta", {"message_id": f"m{i}", "text": "x"}, run.pk),
        ]
    append("cost:page", drafts)
    # session, user, the run with its channel, its event bounds, the steps, the history
    # page's count and rows, the senders' names (one query for all), the watchers, and
    # Django's content type lookup (Django 5.1 makes one more): none per event or per sender.
    with django_assert_max_num_queries(11):
        content = _page(admin_client, run)
    assert f"by sender{inputs - 1}" in content
