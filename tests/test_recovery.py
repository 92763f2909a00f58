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
