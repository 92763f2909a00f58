"""The run, channel and event lists: columns, filters, search, and what a page costs."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agent_channels.models import Channel, Event, Run, RunStatus

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:agent_channels_run_changelist")
XSS = "<script>alert('pwned')</script>"


def _runs(count: int, channels: int = 10, users: int = 5) -> list[Run]:
    owners = [User.objects.create_user(f"owner{i}") for i in range(users)]
    rows = [
        Channel.objects.create(name=f"list:{i}", owner=owners[i % users]) for i in range(channels)
    ]
    start = timezone.now() - datetime.timedelta(hours=1)
    return Run.objects.bulk_create(
        Run(
            channel=rows[i % channels],
            agent="echo" if i % 2 else "demo",
            status=RunStatus.COMPLETED if i % 3 else RunStatus.FAILED,
            created_by=owners[i % users],
            started_at=start,
            finished_at=start + datetime.timedelta(seconds=75),
            model="gpt-test",
            prompt_tokens=1000,
            completion_tokens=500,
            attempts=1 + i % 2,
        )
        for i in range(count)
    )


def _page_ids(response) -> set[str]:
    return {str(run.pk) for run in response.context["cl"].result_list}


def test_the_run_list_shows_what_an_operator_needs(admin_client, settings):
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "MODEL_PRICES": {"gpt-test": [2, 8]}}
    [run] = _runs(1)
    content = admin_client.get(RUNS).content.decode()
    channel_url = reverse("admin:agent_channels_channel_change", args=[run.channel_id])
    assert f'<a href="{channel_url}">list:0</a>' in content
    assert "owner0" in content
    assert "0:01:15" in content  # duration
    assert ">1500<" in content  # tokens
    assert "0.0060" in content  # 1000 × 2 + 500 × 8 per million
    for column in ("Owner", "Duration", "Tokens", "Est. cost (USD)", "Attempts", "Started at"):
        assert column in content


def test_an_active_run_has_a_running_duration_and_a_queued_one_none(admin_client):
    [run] = _runs(1)
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        started_at=timezone.now() - datetime.timedelta(seconds=3725),
        finished_at=None,
    )
    assert "1:02:0" in admin_client.get(RUNS).content.decode()
    Run.objects.filter(pk=run.pk).update(status=RunStatus.QUEUED, started_at=None)
    response = admin_client.get(RUNS)
    assert response.status_code == 200


@pytest.mark.parametrize("count", [10, 100])
def test_a_page_of_runs_costs_the_same_few_queries_however_many_rows(
    admin_client, django_assert_max_num_queries, count
):
    _runs(count)
    # session, user, the filtered runs' count and usage totals (one aggregate), the page
    # (with channel and owner joined), the watchers of the page's channels (one batch):
    # no query per row, and no second count of the whole table.
    with django_assert_max_num_queries(5):
        response = admin_client.get(RUNS)
    assert len(response.context["cl"].result_list) == count


def test_no_full_table_count_when_filtering(admin_client):
    _runs(30)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(RUNS, {"status__exact": "failed"})
    assert response.status_code == 200
    counts = [
        q["sql"]
        for q in queries
        if "COUNT(" in q["sql"].upper() and 'FROM "agent_channels_run"' in q["sql"]
    ]
    # Only the filtered count pagination needs (it is the totals' query too):
    # show_full_result_count = False drops the second, unfiltered COUNT(*) over the table.
    assert len(counts) == 1, counts
    assert response.context["cl"].full_result_count is None


def test_filters_status_agent_and_date(admin_client):
    runs = _runs(12)
    failed = {str(r.pk) for r in runs if r.status == RunStatus.FAILED}
    assert _page_ids(admin_client.get(RUNS, {"status__exact": "failed"})) == failed
    echo = {str(r.pk) for r in runs if r.agent == "echo"}
    assert _page_ids(admin_client.get(RUNS, {"agent": "echo"})) == echo
    old = runs[0]
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=40))
    now = timezone.now()
    # What the filter's "Past 7 days" link sends.
    recent = admin_client.get(
        RUNS,
        {
            "created_at__gte": str(now - datetime.timedelta(days=7)),
            "created_at__lt": str(now + datetime.timedelta(days=1)),
        },
    )
    assert _page_ids(recent) == {str(r.pk) for r in runs} - {str(old.pk)}
    # The agent choices come from the registry, with no query over the runs.
    assert "?agent=listener" in admin_client.get(RUNS).content.decode()


def test_search_by_channel_owner_and_run_id(admin_client):
    runs = _runs(10)
    on_three = {str(r.pk) for r in runs if r.channel.name == "list:3"}
    assert _page_ids(admin_client.get(RUNS, {"q": "list:3"})) == on_three
    by_owner = {str(r.pk) for r in runs if r.created_by.username == "owner2"}
    assert _page_ids(admin_client.get(RUNS, {"q": "owner2"})) == by_owner
    assert _page_ids(admin_client.get(RUNS, {"q": f" {runs[7].pk} "})) == {str(runs[7].pk)}
    assert _page_ids(admin_client.get(RUNS, {"q": "nothing-like-this"})) == set()


def test_links_from_a_channel_to_its_runs_and_events(admin_client):
    runs = _runs(6, channels=2)
    channel = runs[0].channel
    Event.objects.create(channel=channel, seq=1, name="custom.x", created_at=timezone.now())
    page = admin_client.get(reverse("admin:agent_channels_channel_changelist")).content.decode()
    assert f"?channel={channel.pk}" in page
    mine = admin_client.get(RUNS, {"channel": channel.pk})
    assert _page_ids(mine) == {str(r.pk) for r in runs if r.channel_id == channel.pk}
    events = admin_client.get(
        reverse("admin:agent_channels_event_changelist"), {"channel": channel.pk}
    )
    assert [e.name for e in events.context["cl"].result_list] == ["custom.x"]


def test_untrusted_names_are_escaped_in_the_lists(admin_client):
    channel = Channel.objects.create(name=XSS)
    run = Run.objects.create(channel=channel, agent=XSS)
    Event.objects.create(channel=channel, seq=1, name="x", run=run, created_at=timezone.now())
    for model in ("run", "channel", "event"):
        content = admin_client.get(reverse(f"admin:agent_channels_{model}_changelist")).content
        assert XSS.encode() not in content
        assert b"&lt;script&gt;" in content


def test_events_cannot_be_deleted_one_by_one(admin_client):
    channel = Channel.objects.create(name="log:keep")
    event = Event.objects.create(channel=channel, seq=1, name="x", created_at=timezone.now())
    delete = reverse("admin:agent_channels_event_delete", args=[event.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    changelist = admin_client.get(reverse("admin:agent_channels_event_changelist")).content
    assert b"delete_selected" not in changelist
    assert Event.objects.filter(pk=event.pk).exists()
