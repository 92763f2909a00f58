"""Run status transitions. Each one is a conditional UPDATE plus its ``run.*`` event,
committed together, so two processes racing for the same run cannot both win.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any

from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.utils import timezone

from agent_channels.channel.connections import retrying
from agent_channels.channel.log import EventDraft, append
from agent_channels.conf import get_config
from agent_channels.models import Channel, Event, Run, RunStatus
from agent_channels.runtime.backends import get_backend

__all__ = [
    "cancel_idle",
    "claim",
    "enqueue",
    "finish",
    "queue_position",
    "reap",
    "resume_waiting",
    "set_waiting",
    "start_next",
    "worker_id",
]

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = {
    RunStatus.COMPLETED: "run.completed",
    RunStatus.FAILED: "run.failed",
    RunStatus.CANCELLED: "run.cancelled",
    RunStatus.INTERRUPTED: "run.interrupted",
}


@cache
def machine() -> str:
    """This host and PID namespace: where a worker's pid can be checked with ``kill(pid, 0)``.

    Two containers may share a hostname but not their pids, so the namespace is part of it.
    """
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}~{namespace}"


@cache
def _worker_id(pid: int) -> str:
    return f"{machine()}:{pid}:{uuid.uuid4().hex[:8]}"


def worker_id() -> str:
    """Identifies this process in ``Run.worker`` (new after a fork)."""
    return _worker_id(os.getpid())


def worker_gone(worker: str) -> bool:
    """True when ``worker`` was a process of this machine that no longer exists.

    A prefork child or a whole worker killed next to a live one is then noticed at once
    instead of after ``STALE_AFTER_SECONDS``; workers on other machines still need the
    heartbeat to go stale.
    """
    where, _, rest = worker.partition(":")
    pid_text = rest.split(":", 1)[0]
    if where != machine() or not pid_text.isdigit() or "?" in where:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (EPERM: another user's process)
    return False


def _event(run: Run, channel: str, name: str, data: dict[str, Any]) -> None:
    append(channel, [EventDraft(name, data, run.pk)])


def enqueue(run_id: Any) -> None:
    """Hand a run to the configured backend once the current transaction commits."""
    Run.objects.filter(pk=run_id).update(enqueued_at=timezone.now())
    transaction.on_commit(lambda: get_backend().enqueue(str(run_id)))


def claim(run_id: Any) -> tuple[Run, str, bool] | None:
    """Mark the run running in this process; returns ``(run, channel, recovering)`` or None.

    None means there is nothing to do here: the run is finished, another worker holds
    it and is alive, or another run of its channel is still active (it starts later).
    ``recovering`` means its previous worker died mid-run. Retried on a lost connection.
    """
    return retrying(lambda: _claim(run_id))


def _lock_run(run_id: Any) -> tuple[Run, str] | None:
    """The run and its channel's name, both rows locked in one statement (run first).

    Written out, not built with the ORM each time: compiling the ``select_related``
    query (every column of both tables) was a tenth of the CPU a short run costs in its
    worker, paid at its start and again at its end.
    """
    connection = connections[router.db_for_write(Run)]
    run_pk = Run._meta.pk.get_db_prep_value(run_id, connection)
    sql = _sql(connection, "lock_run", _write_lock_run_sql)
    # using: a raw query would go to the router's read database; this one locks rows.
    for run in Run.objects.raw(sql, [run_pk], using=connection.alias):
        return run, run.__dict__["agch_channel_name"]
    return None


def _write_lock_run_sql(connection: BaseDatabaseWrapper) -> str:
    quote = connection.ops.quote_name
    run_table, channel_table = quote(Run._meta.db_table), quote(Channel._meta.db_table)
    run_columns = ", ".join(f"r.{quote(str(field.column))}" for field in Run._meta.concrete_fields)
    features = connection.features
    lock = (
        " FOR UPDATE OF r, c"
        if features.has_select_for_update_of
        else " FOR UPDATE"
        if features.has_select_for_update
        else ""
    )
    channel_name = quote(str(Channel._meta.get_field("name").column))
    channel_pk = quote(str(Channel._meta.pk.column))
    run_channel = quote(str(Run._meta.get_field("channel").column))
    run_pk = quote(str(Run._meta.pk.column))
    return (
        f"SELECT {run_columns}, c.{channel_name} AS agch_channel_name "  # noqa: S608
        f"FROM {run_table} r INNER JOIN {channel_table} c ON c.{channel_pk} = r.{run_channel} "
        f"WHERE r.{run_pk} = %s{lock}"
    )


def _claim(run_id: Any) -> tuple[Run, str, bool] | None:
    config = get_config()
    now = timezone.now()
    stale = now - timedelta(seconds=config["STALE_AFTER_SECONDS"])
    with transaction.atomic():
        # The channel row lock serialises claims of one channel's runs: two workers cannot
        # both see "nothing running" and start two runs side by side.
        locked = _lock_run(run_id)
        if locked is None:
            logger.warning("agent_channels: run %s does not exist; skipped", run_id)
            return None
        run, channel = locked
        previous_end = None
        if run.status == RunStatus.QUEUED:
            # One query, after the locks (so it sees what their last holder committed): an
            # active run or one queued before this one (it starts first), and where the
            # channel's previous run ended (see control_seq below).
            busy, previous_end = _busy_and_previous_end(run)
            if busy:
                return None
            recovering = False
        elif run.status == RunStatus.RUNNING and (
            run.heartbeat_at is None or run.heartbeat_at < stale or worker_gone(run.worker)
        ):
            recovering = True
        else:
            return None
        if recovering and run.attempts >= config["MAX_ATTEMPTS"]:
            _finish_locked(
                run,
                channel,
                RunStatus.FAILED,
                {"error": f"The run's worker was lost {run.attempts} times; giving up."},
            )
            return None
        if not recovering:
            # Control sent while an earlier run of the channel was still going was meant
            # for that run; control sent after this run was queued is for this one, even
            # if it arrives before the run starts (a stop racing the start is not lost).
            run.control_seq = max(run.control_seq, previous_end or 0)
        run.status = RunStatus.RUNNING
        run.attempts += 1
        run.worker = worker_id()
        run.heartbeat_at = now
        run.started_at = run.started_at or now
        # The task was delivered: none is in flight any more, so a reaper that finds this
        # run stale later sends one at once (see reap()).
        run.enqueued_at = None
        run.save(
            update_fields=[
                "status",
                "attempts",
                "worker",
                "heartbeat_at",
                "started_at",
                "control_seq",
                "enqueued_at",
            ]
        )
        _event(run, channel, "run.started", {"attempt": run.attempts, "recovered": recovering})
    return run, channel, recovering


def _busy_and_previous_end(run: Run) -> tuple[bool, int | None]:
    """Whether another run of ``run``'s channel must go first, and the seq of the last
    terminal event of another run of the channel (None: there is none)."""
    connection = connections[router.db_for_write(Run)]
    ops = connection.ops
    created_at = ops.adapt_datetimefield_value(run.created_at)
    run_pk = Run._meta.pk.get_db_prep_value(run.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            _sql(connection, "busy_and_previous_end", _write_busy_and_previous_end_sql),
            [
                run.channel_id,
                run_pk,
                RunStatus.RUNNING.value,
                RunStatus.WAITING.value,
                RunStatus.QUEUED.value,
                created_at,
                run.channel_id,
                *TERMINAL_EVENTS.values(),
                run_pk,
            ],
        )
        busy, previous_end = cursor.fetchone()
    return bool(busy), previous_end


_written_sql: dict[tuple[str, str], str] = {}


def _sql(
    connection: BaseDatabaseWrapper, name: str, write: Callable[[BaseDatabaseWrapper], str]
) -> str:
    """``write(connection)``, once per database vendor (connections are per thread)."""
    key = (connection.vendor, name)
    sql = _written_sql.get(key)
    if sql is None:
        sql = _written_sql[key] = write(connection)
    return sql


def _write_busy_and_previous_end_sql(connection: BaseDatabaseWrapper) -> str:
    # Written out, not built with the ORM each time: compiling that query (an Exists, a
    # Subquery, an OR) was a fifth of the worker CPU a short run costs, and every run
    # pays it once at the start, when a burst of runs is starting together.
    quote = connection.ops.quote_name
    run_table, event_table = quote(Run._meta.db_table), quote(Event._meta.db_table)
    run_column = {f.name: quote(str(f.column)) for f in Run._meta.concrete_fields}
    event_column = {f.name: quote(str(f.column)) for f in Event._meta.concrete_fields}
    terminal = ", ".join(["%s"] * len(TERMINAL_EVENTS))
    return (
        f"SELECT EXISTS (SELECT 1 FROM {run_table} WHERE {run_column['channel']} = %s "  # noqa: S608
        f"AND {run_column['id']} <> %s "
        f"AND ({run_column['status']} IN (%s, %s) "
        f"OR ({run_column['status']} = %s AND {run_column['created_at']} < %s))), "
        f"(SELECT {event_column['seq']} FROM {event_table} "
        f"WHERE {event_column['channel']} = %s AND {event_column['name']} IN ({terminal}) "
        f"AND ({event_column['run']} IS NULL OR {event_column['run']} <> %s) "
        f"ORDER BY {event_column['seq']} DESC LIMIT 1)"
    )


def _finish_locked(run: Run, channel: str, status: str, data: dict[str, Any]) -> None:
    run.status = status
    run.finished_at = timezone.now()
    if status == RunStatus.FAILED:
        run.error = str(data.get("error", ""))
    if status == RunStatus.COMPLETED:
        run.output = data.get("output")
    run.save(update_fields=["status", "finished_at", "error", "output"])
    _event(run, channel, TERMINAL_EVENTS[RunStatus(status)], {**data, "usage": run.usage})
    channel_id = run.channel_id
    transaction.on_commit(lambda: start_next(channel_id))


def finish(run_id: Any, status: str, data: dict[str, Any], *, only_if_mine: bool = True) -> bool:
    """End a run with a terminal status and event; False if it was no longer ours.

    Retried on a lost connection (a retry after a commit finds the run ended: False)."""
    return retrying(lambda: _finish(run_id, status, data, only_if_mine))


def _finish(run_id: Any, status: str, data: dict[str, Any], only_if_mine: bool) -> bool:
    with transaction.atomic():
        locked = _lock_run(run_id)
        if locked is None or not locked[0].is_active:
            return False
        run, channel = locked
        if only_if_mine and run.worker != worker_id():
            return False
        _finish_locked(run, channel, status, data)
    return True


def set_waiting(run_id: Any, data: dict[str, Any]) -> bool:
    return retrying(lambda: _set_waiting(run_id, data))


def _set_waiting(run_id: Any, data: dict[str, Any]) -> bool:
    with transaction.atomic():
        locked = _lock_run(run_id)
        if locked is None:
            return False
        run, channel = locked
        if run.status != RunStatus.RUNNING or run.worker != worker_id():
            return False
        run.status = RunStatus.WAITING
        run.save(update_fields=["status"])
        _event(run, channel, "run.waiting", data)
    return True


def take_back(run_id: Any) -> bool:
    """Waiting → running again in this process (the input arrived before anyone resumed it)."""
    return bool(
        retrying(
            lambda: Run.objects.filter(
                pk=run_id, status=RunStatus.WAITING, worker=worker_id()
            ).update(status=RunStatus.RUNNING, heartbeat_at=timezone.now())
        )
    )


def resume_waiting(channel: str) -> int:
    """Input arrived: queue the channel's waiting runs again."""
    resumed = 0
    for run_id in Run.objects.filter(channel__name=channel, status=RunStatus.WAITING).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            if Run.objects.filter(pk=run_id, status=RunStatus.WAITING).update(
                status=RunStatus.QUEUED
            ):
                append(
                    channel,
                    [
                        EventDraft(
                            "run.queued",
                            {"resumed": True, "reason": WAITING_FOR_WORKER, "behind": 0},
                            run_id,
                        )
                    ],
                )
                enqueue(run_id)
                resumed += 1
    return resumed


def cancel_idle(channel: str, data: Any) -> int:
    """Cancel the channel's queued and waiting runs: no worker holds them to tell."""
    cancelled = 0
    for run_id in Run.objects.filter(
        channel__name=channel, status__in=[RunStatus.QUEUED, RunStatus.WAITING]
    ).values_list("pk", flat=True):
        with transaction.atomic():
            run = (
                Run.objects.select_for_update()
                .filter(pk=run_id, status__in=[RunStatus.QUEUED, RunStatus.WAITING])
                .first()
            )
            if run is not None:
                _finish_locked(run, channel, RunStatus.CANCELLED, {"data": data})
                cancelled += 1
    return cancelled


def start_next(channel_id: int) -> None:
    """Enqueue the oldest queued run of a channel when nothing else there is active."""
    busy = Run.objects.filter(
        channel_id=channel_id, status__in=[RunStatus.RUNNING, RunStatus.WAITING]
    ).exists()
    if busy:
        return
    run_id = (
        Run.objects.filter(channel_id=channel_id, status=RunStatus.QUEUED)
        .order_by("created_at")
        .values_list("pk", flat=True)
        .first()
    )
    if run_id is not None:
        Run.objects.filter(pk=run_id).update(enqueued_at=timezone.now())
        get_backend().enqueue(str(run_id))


def heartbeat(run_ids: list[Any]) -> int:
    if not run_ids:
        return 0
    return Run.objects.filter(pk__in=run_ids, status=RunStatus.RUNNING, worker=worker_id()).update(
        heartbeat_at=timezone.now()
    )


#: The advisory lock key of the reaper on PostgreSQL (any constant unique to this use).
REAPER_LOCK_KEY = 0x61676368_72656170  # "agchreap"
_local_reaper = threading.Lock()


def reap() -> int:
    """Re-send runs whose worker died or whose task was lost; returns how many.

    One reaper at a time: on PostgreSQL a transaction-level advisory lock
    (``pg_try_advisory_xact_lock``) that every other process skips its pass on; elsewhere
    a lock per process. And each run is re-sent at most once per ``STALE_AFTER_SECONDS``:
    ``Run.enqueued_at`` says when its task was last sent (the claim clears it), and the
    UPDATE that moves it forward is conditional, so of two reapers that race anyway only
    one sends. Duplicates no longer pile up in the broker while a worker is busy.
    """
    if not _local_reaper.acquire(blocking=False):
        return 0
    try:
        using = router.db_for_write(Run)
        with transaction.atomic(using=using):
            if connections[using].vendor == "postgresql":
                with connections[using].cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [REAPER_LOCK_KEY])
                    row = cursor.fetchone()
                if not (row and row[0]):
                    return 0  # another process is reaping right now
            run_ids = _claim_for_resend(_reapable())
            if run_ids:
                # Sent after the commit: the new enqueued_at is what other reapers see.
                transaction.on_commit(lambda: _resend(run_ids), using=using)
        return len(run_ids)
    finally:
        _local_reaper.release()


def _reapable() -> list[Any]:
    """Runs that lost their worker or their task (before the once-per-window filter)."""
    config = get_config()
    stale = timezone.now() - timedelta(seconds=config["STALE_AFTER_SECONDS"])
    run_ids = list(
        Run.objects.filter(status=RunStatus.RUNNING)
        .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))
        .values_list("pk", flat=True)[:100]
    )
    # Runs of dead processes on this machine need not wait for their heartbeat to go stale.
    neighbours = (
        Run.objects.filter(status=RunStatus.RUNNING, worker__startswith=f"{machine()}:")
        .exclude(worker=worker_id())
        .exclude(pk__in=run_ids)
        .values_list("pk", "worker")[:1000]
    )
    gone: dict[str, bool] = {}
    for run_id, worker in neighbours:
        if gone.setdefault(worker, worker_gone(worker)):
            run_ids.append(run_id)
    # Queued runs whose task message was lost (a broker restart, a failed claim): old, and
    # nothing ahead of them on their channel. Enqueueing twice is harmless (the claim).
    busy_channels = Run.objects.filter(status__in=[RunStatus.RUNNING, RunStatus.WAITING]).values(
        "channel_id"
    )
    run_ids += list(
        Run.objects.filter(status=RunStatus.QUEUED, created_at__lt=stale)
        .exclude(channel_id__in=busy_channels)
        .order_by("created_at")
        .values_list("pk", flat=True)[:100]
    )
    return run_ids


def _claim_for_resend(run_ids: list[Any]) -> list[Any]:
    """The runs of ``run_ids`` not sent within the window, now marked sent (one UPDATE each)."""
    if not run_ids:
        return []
    now = timezone.now()
    window = now - timedelta(seconds=get_config()["STALE_AFTER_SECONDS"])
    due = Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=window)
    claimed = []
    for run_id in run_ids:
        if Run.objects.filter(due, pk=run_id).update(enqueued_at=now):
            claimed.append(run_id)
    return claimed


def _resend(run_ids: list[Any]) -> None:
    backend = get_backend()
    for run_id in run_ids:
        logger.warning("agent_channels: run %s lost its worker or task; enqueueing it", run_id)
        backend.enqueue(str(run_id))


#: Why a queued run has not started: another run of its channel is active (runs of one
#: channel never overlap), or it waits for a free worker slot.
CHANNEL_BUSY, WAITING_FOR_WORKER = "channel_busy", "waiting_for_worker"


def queue_position(run: Run) -> dict[str, Any] | None:
    """Why a queued run waits and how many runs are ahead of it; None unless it is queued.

    ``{"reason": "channel_busy", "ahead": n}``: n runs of its channel go first.
    ``{"reason": "waiting_for_worker", "ahead": n}``: n runs of other channels, queued
    earlier and free to start, wait for a worker too (a worker claims in queue order,
    roughly: brokers do not promise it).
    """
    if run.status != RunStatus.QUEUED:
        return None
    active = [RunStatus.RUNNING, RunStatus.WAITING]
    on_channel = (
        Run.objects.filter(channel_id=run.channel_id)
        .filter(Q(status__in=active) | Q(status=RunStatus.QUEUED, created_at__lt=run.created_at))
        .exclude(pk=run.pk)
        .count()
    )
    if on_channel:
        return {"reason": CHANNEL_BUSY, "ahead": on_channel}
    busy_channels = Run.objects.filter(status__in=active).values("channel_id")
    earlier = (
        Run.objects.filter(status=RunStatus.QUEUED, created_at__lt=run.created_at)
        .exclude(channel_id__in=busy_channels)
        .order_by()
        .values("channel_id")
        .distinct()
        .count()
    )
    return {"reason": WAITING_FOR_WORKER, "ahead": earlier}
