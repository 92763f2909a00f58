"""Runs on real Celery worker processes, Redis broker and PostgreSQL, seen through daphne."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import pytest
import websockets
from django.conf import settings
from django.test import Client

from agent_channels.models import Event, Run, RunStatus
from agent_channels.runtime import start_run
from agent_channels.runtime.backends import reset_backend

from .helpers import create_operator, wait_for
from .procs import CeleryWorker, Daphne

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.integration,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
]


@pytest.fixture
def queue(settings, llm):
    """A fresh queue per test, so no message of another test reaches its workers."""
    name = f"agch-{uuid.uuid4().hex[:8]}"
    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS,
        "RUN_BACKEND": "agent_channels.runtime.backends.celery.CeleryBackend",
        "CELERY_QUEUE": name,
    }
    reset_backend()
    yield name
    reset_backend()


#: Worker pools every test here runs under: one run per process, and many runs in threads
#: of one process sharing a database pool smaller than the thread count (each run's
#: thread gives its connection back between writes; docs/deployment.rst).
POOLS = {
    "solo": {"pool": "solo", "concurrency": 1},
    "threads": {"pool": "threads", "concurrency": 8, "AGCH_DB_POOL": "3"},
    # Only where a test asks for it: child processes under a parent.
    "prefork": {"pool": "prefork", "concurrency": 2},
}


@pytest.fixture(params=["solo", "threads"])
def workers(request, queue):
    started: list[CeleryWorker] = []

    def start(**options) -> CeleryWorker:
        worker = CeleryWorker(queue, **{**POOLS[request.param], **options})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def daphne(queue):
    # The web process sends runs it resumes (input) to the same Celery queue.
    server = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue)
    yield server
    server.stop()


@pytest.fixture
def session_cookie(django_user_model):
    user = create_operator(django_user_model, "staff")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def finished(run: Run, timeout: float = 30) -> Run:
    def done() -> bool:
        run.refresh_from_db()
        return not run.is_active

    wait_for(done, timeout, 0.05)
    return run


def names(channel: str, prefix: str = "") -> list[str]:
    return list(
        Event.objects.filter(channel__name=channel, name__startswith=prefix)
        .order_by("seq").values_list("name", flat=True)
    )


async def follow(daphne: Daphne, cookie: str, channel: str, until, send=None, timeout: float = 30):
    """Collect event frames until ``until(frames)``; ``send(frames)`` may return a frame to send."""
    frames: list[dict] = []
    async with websockets.connect(
        daphne.ws_url(channel) + "?since=0",
        additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{daphne.port}"},
    ) as ws:
        async with asyncio.timeout(timeout):
            while not until(frames):
                frame = json.loads(await ws.recv())
                if frame["type"] != "event":
                    assert frame["type"] in ("hello", "ack"), frame
                    continue
                frames.append(frame)
                if send is not None:
                    out = send(frames)
                    if out is not None:
                        await ws.send(json.dumps(out))
    return frames


def ended(frames: list[dict]) -> bool:
    return any(f["event"] in ("run.completed", "run.failed", "run.cancelled", "run.interrupted")
               for f in frames)


def test_tokens_stream_from_a_celery_worker_to_a_websocket_client(workers, daphne, session_cookie):
    workers()
    run = start_run("ws-stream", "demo", {"tokens": 60, "interval_ms": 10})
    frames = asyncio.run(follow(daphne, session_cookie, "ws-stream", ended))
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    deltas = "".join(f["data"]["text"] for f in frames if f["event"] == "message.delta")
    completed = next(f for f in frames if f["event"] == "message.completed")
    assert deltas == completed["data"]["text"] == "".join(f"tok{i} " for i in range(60))
    assert frames[-1]["event"] == "run.completed" and frames[-1]["run"] == str(run.pk)
    assert len([f for f in frames if f["event"] == "message.delta"]) < 60, "deltas are coalesced"


@pytest.mark.parametrize(("kind", "status"), [("interrupt", "interrupted"), ("cancel", "cancelled")])
def test_interrupt_and_cancel_from_a_websocket_stop_the_worker_mid_stream(
    workers, daphne, session_cookie, kind, status
):
    workers()
    run = start_run(f"ws-{kind}", "demo", {"tokens": 100_000, "interval_ms": 2})
    sent_at: list[float] = []

    def send(frames):
        if not sent_at and any(f["event"] == "message.delta" for f in frames):
            sent_at.append(time.monotonic())
            return {"type": kind, "id": "stop-1"}
        return None

    frames = asyncio.run(follow(daphne, session_cookie, f"ws-{kind}", ended, send))
    stopped_after = time.monotonic() - sent_at[0]
    assert frames[-1]["event"] == f"run.{status}"
    assert stopped_after < 2.0, f"the run took {stopped_after:.2f} s to stop"
    aborted = next(f for f in frames if f["event"] == "message.aborted")
    assert aborted["data"]["reason"] in ("interrupted", "cancelled")
    finished(run)
    assert run.status == status


def test_input_round_trip_releases_the_worker_while_waiting(workers, daphne, session_cookie):
    workers()  # solo: one slot, so the second run can only run if the first let go
    asking = start_run("ws-ask", "approval", {"action": "merge"})
    wait_for(lambda: Run.objects.get(pk=asking.pk).status == RunStatus.WAITING, 30)
    other = finished(start_run("ws-other", "echo", "meanwhile"))
    assert other.status == RunStatus.COMPLETED

    def send(frames):
        if frames[-1]["event"] == "input.requested":
            return {"type": "input", "data": {"text": "yes"}, "id": 1}
        return None

    frames = asyncio.run(follow(daphne, session_cookie, "ws-ask", ended, send))
    assert frames[-1]["event"] == "run.completed"
    assert frames[-1]["data"]["output"]["approved"] is True
    assert "input.received" in [f["event"] for f in frames]


def crash_mid_stream(llm, channel: str) -> Run:
    """A run that has finished a tool call and a model call and is streaming the next."""
    run = start_run(channel, "chatty", {"prompt": "calculate 6*7", "pause_ms": 300})
    wait_for(lambda: "custom.between" in names(channel), 30)
    assert llm.count == 2  # the tool call and the answer after it
    llm.reply_tokens, llm.delay = 200, 0.02
    wait_for(lambda: llm.count == 3 and len(names(channel, "message.delta")) >= 2, 30)
    return run


def assert_recovered_from_the_journal(run: Run, llm, channel: str) -> None:
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempts == 2
    assert llm.count == 4, "only the model call that was cut off runs again"
    assert names(channel, "tool.") == ["tool.started", "tool.completed"]
    aborted = Event.objects.get(channel__name=channel, name="message.aborted")
    assert aborted.data["reason"] == "worker_lost" and aborted.data["text"].startswith("w0")
    started = list(Event.objects.filter(channel__name=channel, name="run.started").values_list("data", flat=True))
    assert started == [{"attempt": 1, "recovered": False}, {"attempt": 2, "recovered": True}]
    assert run.output["second"].startswith("w0 w1")


@pytest.mark.parametrize("workers", ["solo", "threads", "prefork"], indirect=True)
def test_a_worker_whose_process_group_is_sigkilled_costs_only_the_step_it_was_in(workers, llm):
    first = workers()
    run = crash_mid_stream(llm, "crash")
    first.kill_group()  # the worker and its children: a lost machine
    llm.delay = 0.0
    workers()  # its reaper finds the run's worker gone (or its heartbeat stale) and restarts it
    finished(run, 60)
    assert_recovered_from_the_journal(run, llm, "crash")


@pytest.mark.parametrize("workers", ["prefork"], indirect=True)
def test_a_pool_child_killed_alone_is_replaced_and_its_run_resumes(workers, llm):
    workers()
    run = crash_mid_stream(llm, "child")
    run.refresh_from_db()
    child = int(run.worker.split(":")[1])
    os.kill(child, signal.SIGKILL)  # the parent lives on, requeues the task, forks anew
    llm.delay = 0.0
    finished(run, 60)
    assert_recovered_from_the_journal(run, llm, "child")
    assert int(run.worker.split(":")[1]) != child


@pytest.mark.parametrize("workers", ["prefork"], indirect=True)
@pytest.mark.parametrize("agent", ["runaway", "stubborn"])
def test_celery_time_limits_reclaim_a_worker_whose_run_never_checks_its_deadline(
    workers, settings, agent
):
    # The soft limit comes 1 s after the run's 1 s deadline, the hard limit 1 s later.
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "CELERY_TIME_LIMIT_MARGIN": 1.0}
    workers()
    run = start_run(f"celery-{agent}", agent, None, time_limit=1)
    finished(run, 30)
    assert run.status == RunStatus.FAILED and "time limit" in run.error
    failed = Event.objects.get(run=run, name="run.failed")
    assert failed.data["code"] == "time_limit"


def test_double_texting_enqueue_and_interrupt_on_celery(workers):
    workers()
    first = start_run("dt", "demo", {"tokens": 100_000, "interval_ms": 2})
    wait_for(lambda: Run.objects.get(pk=first.pk).status == RunStatus.RUNNING, 30)
    queued = start_run("dt", "echo", "second", on_active="enqueue")
    time.sleep(0.3)
    assert Run.objects.get(pk=queued.pk).status == RunStatus.QUEUED
    third = start_run("dt", "echo", "third", on_active="interrupt")
    finished(third)
    first.refresh_from_db()
    queued.refresh_from_db()
    assert first.status == RunStatus.INTERRUPTED
    assert queued.status == RunStatus.INTERRUPTED  # superseded before it ever started
    assert third.status == RunStatus.COMPLETED


def overlap(runs: list[Run]) -> int:
    """The most runs that were streaming at once, in the order the database took their
    events (event ids), not in clock times taken before a thread got a connection."""
    edges = []
    for run in runs:
        ids = Event.objects.filter(run=run, name__in=["run.started", "run.completed"]).values_list(
            "id", flat=True)
        edges += [(min(ids), 1), (max(ids), -1)]
    most = current = 0
    for _id, step in sorted(edges):
        current += step
        most = max(most, current)
    return most


@pytest.mark.parametrize("workers", ["threads"], indirect=True)
def test_one_thread_pool_worker_carries_many_runs_on_few_connections(workers):
    # 12 runs of 2 s each on one process whose database pool has 3 connections: a thread
    # holding its connection for the whole run would leave 9 runs queuing for the pool.
    workers(concurrency=12, AGCH_DB_POOL="3")
    runs = [start_run(f"many-{i}", "demo", {"tokens": 40, "interval_ms": 50}) for i in range(12)]
    for run in runs:
        finished(run, 60)
    assert [run.status for run in runs] == [RunStatus.COMPLETED] * 12, [r.error for r in runs]
    assert overlap(runs) == 12
    for run in runs:
        text = Event.objects.get(run=run, name="message.completed").data["text"]
        assert text == "".join(f"tok{i} " for i in range(40))


@pytest.mark.parametrize("workers", ["threads"], indirect=True)
def test_runs_that_wait_without_writing_do_not_hold_pooled_connections(workers):
    # 6 runs sleep in ctx.sleep on a process with 2 pooled connections; one that kept the
    # connection it claimed with would leave the rest blocked in the pool.
    workers(concurrency=8, AGCH_DB_POOL="2")
    runs = [start_run(f"idle-{i}", "listener", {"seconds": 60}) for i in range(6)]
    wait_for(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status=RunStatus.RUNNING)
             .count() == 6, 30)
    for run in runs:
        start_run(run.channel.name, "echo", "next", on_active="interrupt")
    for run in runs:
        assert finished(run, 60).status == RunStatus.INTERRUPTED
