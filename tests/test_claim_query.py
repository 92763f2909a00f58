"""The claim's "must another run go first, and where did the last one end" query.

Written in SQL for speed; checked here against the same question asked with the ORM, over
every mix of other runs' states, queue order and terminal events (with and without a run).
"""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.db.models import Exists, Q, Subquery
from django.utils import timezone

from agent_channels.channel.log import EventDraft, append
from agent_channels.models import Channel, Event, Run, RunStatus
from agent_channels.runtime.lifecycle import TERMINAL_EVENTS, _busy_and_previous_end, _lock_run

pytestmark = pytest.mark.django_db(transaction=True)


def asked_with_the_orm(run: Run) -> tuple[bool, int | None]:
    busy = (
        Run.objects.filter(channel_id=run.channel_id)
        .exclude(pk=run.pk)
        .filter(
            Q(status__in=[RunStatus.RUNNING, RunStatus.WAITING])
            | Q(status=RunStatus.QUEUED, created_at__lt=run.created_at)
        )
    )
    previous_end = (
        Event.objects.filter(channel_id=run.channel_id, name__in=TERMINAL_EVENTS.values())
        .exclude(run_id=run.pk)
        .order_by("-seq")
        .values_list("seq")[:1]
    )
    row = (
        Channel.objects.filter(pk=run.channel_id)
        .annotate(busy=Exists(busy), previous_end=Subquery(previous_end))
        .values_list("busy", "previous_end")
        .get()
    )
    return bool(row[0]), row[1]


def make_run(channel: Channel, status: str, created_offset: float) -> Run:
    run = Run.objects.create(channel=channel, agent="demo", status=status)
    Run.objects.filter(pk=run.pk).update(
        created_at=timezone.now() + timedelta(seconds=created_offset)
    )
    run.refresh_from_db()
    return run


@pytest.mark.parametrize(
    ("other_status", "other_earlier"),
    list(itertools.product([s for s, _ in RunStatus.choices], [True, False])),
)
def test_the_sql_answers_what_the_orm_does(other_status, other_earlier):
    channel = Channel.objects.create(name=f"claim-{other_status}-{other_earlier}")
    mine = make_run(channel, RunStatus.QUEUED, 0)
    assert _busy_and_previous_end(mine) == asked_with_the_orm(mine) == (False, None)

    other = make_run(channel, other_status, -5 if other_earlier else 5)
    expected_busy = other_status in (RunStatus.RUNNING, RunStatus.WAITING) or (
        other_status == RunStatus.QUEUED and other_earlier
    )
    assert _busy_and_previous_end(mine) == asked_with_the_orm(mine) == (expected_busy, None)

    # Terminal events: another run's counts, this run's own does not, one without a run
    # (published by hand) counts, and so does only the newest.
    ended = append(channel.name, [EventDraft("run.completed", {}, other.pk)])[0]
    append(channel.name, [EventDraft("run.failed", {}, mine.pk)])
    assert _busy_and_previous_end(mine) == asked_with_the_orm(mine) == (expected_busy, ended.seq)
    loose = append(channel.name, [EventDraft("run.cancelled", {})])[0]
    append(channel.name, [EventDraft("message.delta", {"text": "x"}, other.pk)])
    assert _busy_and_previous_end(mine) == asked_with_the_orm(mine) == (expected_busy, loose.seq)


def test_another_channels_runs_and_events_do_not_count():
    channel = Channel.objects.create(name="claim-mine")
    elsewhere = Channel.objects.create(name="claim-elsewhere")
    mine = make_run(channel, RunStatus.QUEUED, 0)
    busy_elsewhere = make_run(elsewhere, RunStatus.RUNNING, -5)
    append(elsewhere.name, [EventDraft("run.completed", {}, busy_elsewhere.pk)])
    assert _busy_and_previous_end(mine) == asked_with_the_orm(mine) == (False, None)


class ReadsElsewhere:
    """A router whose read database must not see a run being locked."""

    def db_for_read(self, model, **hints):
        if model is Run:
            raise AssertionError("a locking read went to the read database")
        return None

    def db_for_write(self, model, **hints):
        return None


def test_the_run_lock_is_taken_on_the_write_database(settings):
    channel = Channel.objects.create(name="claim-routed")
    run = make_run(channel, RunStatus.QUEUED, 0)
    settings.DATABASE_ROUTERS = ["tests.test_claim_query.ReadsElsewhere"]
    with transaction.atomic():
        locked, name = _lock_run(run.pk)
    assert (locked.pk, locked.status, name) == (run.pk, RunStatus.QUEUED, "claim-routed")
    assert _lock_run(uuid.uuid4()) is None
