"""Noticing a dead worker on this machine at once, without waiting for its heartbeat."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from agent_channels.models import Channel, Run, RunStatus
from agent_channels.runtime import lifecycle
from agent_channels.runtime.lifecycle import machine, worker_gone


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(autouse=True)
def _only_the_tests_reaper(settings):
    # A monitor thread left running in this process would reap too, and one reaper at a
    # time means the test's own pass could find nothing left to do.
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "REAP_EVERY_SECONDS": 0}


def test_a_worker_of_this_machine_whose_process_exited_is_gone():
    assert worker_gone(f"{machine()}:{dead_pid()}:abcd1234")


@pytest.mark.parametrize(
    "worker",
    [
        lambda: lifecycle.worker_id(),  # this process
        lambda: f"{machine()}:{os.getppid()}:abcd1234",  # alive
        lambda: f"elsewhere~1:{dead_pid()}:abcd1234",  # another machine: only its heartbeat says
        lambda: f"{machine()}:not-a-pid:abcd1234",
        lambda: "",
    ],
)
def test_live_foreign_or_unreadable_workers_are_not_gone(worker):
    assert not worker_gone(worker())


@pytest.mark.django_db(transaction=True)
def test_the_reaper_takes_back_a_dead_neighbours_run_before_its_heartbeat_is_stale(
    settings, monkeypatch
):
    enqueued: list[str] = []

    class Recorder:
        def enqueue(self, run_id: str) -> None:
            enqueued.append(run_id)

    monkeypatch.setattr(lifecycle, "get_backend", Recorder)
    channel = Channel.objects.create(name="reap-neighbour")
    fresh = timezone.now() - timedelta(seconds=0.1)

    def running(worker: str) -> Run:
        return Run.objects.create(
            channel=channel, agent="echo", status=RunStatus.RUNNING, worker=worker,
            heartbeat_at=fresh,
        )

    dead = running(f"{machine()}:{dead_pid()}:abcd1234")
    running(f"{machine()}:{os.getppid()}:abcd1234")
    running(f"elsewhere~1:{dead_pid()}:abcd1234")
    running(lifecycle.worker_id())
    assert lifecycle.reap() == 1
    assert enqueued == [str(dead.pk)]


# -- one reaper at a time, each run re-sent once per staleness window -------------------------

_REAP_IN_CHILD = """
import django, time
django.setup()
from agent_channels.runtime import lifecycle
sent = []

class Recorder:
    def enqueue(self, run_id):
        sent.append(run_id)

lifecycle.get_backend = Recorder
time.sleep(max(0.0, {start} - time.time()))  # both processes reap at the same moment
for _ in range(3):
    lifecycle.reap()
print("SENT", " ".join(sent))
"""


def _lost_queued_runs(count: int) -> list[Run]:
    old = timezone.now() - timedelta(minutes=5)
    runs = []
    for i in range(count):
        channel = Channel.objects.create(name=f"reap-once-{i}")
        run = Run.objects.create(channel=channel, agent="echo", status=RunStatus.QUEUED)
        Run.objects.filter(pk=run.pk).update(created_at=old, enqueued_at=old)
        runs.append(run)
    return runs


@pytest.mark.django_db(transaction=True)
def test_reapers_in_two_processes_resend_each_lost_run_once():
    import time

    from .procs import child_env

    runs = _lost_queued_runs(5)
    code = _REAP_IN_CHILD.format(start=time.time() + 3.0)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    sent: list[str] = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        line = next(x for x in out.splitlines() if x.startswith("SENT"))
        sent += line.split()[1:]
    assert sorted(sent) == sorted(str(r.pk) for r in runs)


@pytest.mark.django_db(transaction=True)
def test_a_second_pass_within_the_window_resends_nothing(monkeypatch):
    enqueued: list[str] = []

    class Recorder:
        def enqueue(self, run_id: str) -> None:
            enqueued.append(run_id)

    monkeypatch.setattr(lifecycle, "get_backend", Recorder)
    runs = _lost_queued_runs(2)
    dead = Run.objects.create(
        channel=Channel.objects.create(name="reap-once-dead"), agent="echo",
        status=RunStatus.RUNNING, worker="elsewhere~1:1:abcd1234",
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    assert lifecycle.reap() == 3
    assert lifecycle.reap() == 0
    assert sorted(enqueued) == sorted(str(r.pk) for r in [*runs, dead])
    # After the window the task counts as lost again and is sent once more.
    Run.objects.update(enqueued_at=timezone.now() - timedelta(minutes=1))
    assert lifecycle.reap() == 3
    assert len(enqueued) == 6


@pytest.mark.django_db(transaction=True)
def test_a_run_just_enqueued_is_not_sent_again_by_the_reaper(monkeypatch, django_user_model):
    from agent_channels.runtime import start_run

    enqueued: list[str] = []

    class Recorder:
        def enqueue(self, run_id: str) -> None:
            enqueued.append(run_id)

    monkeypatch.setattr(lifecycle, "get_backend", Recorder)
    run = start_run("reap-fresh", "echo", 1)
    run.refresh_from_db()
    assert enqueued == [str(run.pk)] and run.enqueued_at is not None
    # Old enough to look lost by its creation time, but its task was sent just now.
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert lifecycle.reap() == 0
    assert enqueued == [str(run.pk)]
