"""Chaos with model runs: Celery workers SIGKILLed mid-answer, again and again.

Two daphne, two thread-pool Celery workers, Redis and PostgreSQL, and the test model
server (tests/llm_server.py), which logs every request with its arrival time. ``turns``
runs (a calculator tool call, then model answers streamed slowly) follow one another on a
few channels, each watched by a WebSocket client. Repeatedly, the worker that carries a run
whose model call is streaming loses its whole process group to SIGKILL, and a new worker
takes its place; the survivor's reaper restarts the run from its journal.

Asserted: every run ends in a terminal state; no model call the journal had completed is
requested again (each request is matched to its journaled step by the prompt, and none
arrives after that step's ``finished_at``); each client sees every event exactly once, in
order, with the content the log holds. The counts are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from agent_channels.models import Channel, Event, Run, Step

from .helpers import Seen, follow_socket
from .procs import CeleryWorker, Daphne

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
]

#: Worker kills: two per round.
ROUNDS = int(os.environ.get("AGCH_CHAOS_ROUNDS", "2"))
CHANNELS = 3
TURNS = 3
TERMINAL = {"completed", "failed", "cancelled", "interrupted"}
#: A hard bound on the whole test, whatever goes wrong.
DEADLINE_SECONDS = 150


class Cluster:
    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.env = {"AGCH_RUN_BACKEND": "celery", "AGCH_CELERY_QUEUE": queue}
        self.daphnes: list[Daphne] = []
        self.workers: list[CeleryWorker] = []
        try:
            self.daphnes = [Daphne(**self.env) for _ in range(2)]
            self.workers = [self.new_worker() for _ in range(2)]
        except BaseException:
            self.stop()
            raise

    def new_worker(self) -> CeleryWorker:
        return CeleryWorker(self.queue, pool="threads", concurrency=4, AGCH_DB_POOL="3")

    def stop(self) -> None:
        for proc in [*self.workers, *self.daphnes]:
            with contextlib.suppress(Exception):
                proc.stop()




def post_run(port: int, cookie: str, channel: str, tag: str) -> bool:
    csrf, origin = secrets.token_hex(16), f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{origin}/agent-channels/{channel}/runs/",
        data=json.dumps({"agent": "turns", "input": {"tag": tag, "turns": TURNS},
                         "on_active": "enqueue"}).encode(),
        headers={"Cookie": f"{cookie}; csrftoken={csrf}", "X-CSRFToken": csrf, "Origin": origin,
                 "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status == 201
    except (OSError, urllib.error.HTTPError):
        return False


def request_identity(body: dict[str, Any]) -> tuple[str, str, int] | None:
    """(run tag, turn, messages sent) of a model request: one journaled model step each."""
    messages = body.get("messages") or []
    first = str((messages[0] if messages else {}).get("content") or "")
    tag, _, turn = first.partition(" turn ")
    if not turn:
        return None
    return tag, turn.split(":")[0], len(messages)


@pytest.fixture
def session_cookie(django_user_model) -> str:
    user = django_user_model.objects.create_user("chaosllm", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_workers_killed_mid_answer_never_repeat_a_completed_model_call(llm, session_cookie) -> None:
    started_at = time.monotonic()
    # Slow answers: 40 tokens, 30 ms apart, so a kill lands inside a streaming model call.
    llm.reply_tokens, llm.delay = 40, 0.03
    cluster = Cluster(f"chaosllm-{uuid.uuid4().hex[:8]}")
    prefix = uuid.uuid4().hex[:6]
    channels = [f"chaosllm-{prefix}-{i}" for i in range(CHANNELS)]
    clients = {name: Seen("ws") for name in channels}
    done = threading.Event()
    loop_errors: list[BaseException] = []
    runs_started = kills = kills_mid_answer = 0
    keep_starting = True

    def run_clients() -> None:
        async def main() -> None:
            await asyncio.gather(*(
                follow_socket(seen, cluster.daphnes[i % 2].port, session_cookie, name, done)
                for i, (name, seen) in enumerate(clients.items())
            ))
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the assertions below
            loop_errors.append(exc)

    def drive_runs() -> None:
        nonlocal runs_started
        for i, name in enumerate(channels):
            active = Run.objects.filter(channel__name=name, status__in=["queued", "running", "waiting"])
            if keep_starting and not active.exists():
                tag = f"{name}-r{runs_started}"
                if post_run(cluster.daphnes[i % 2].port, session_cookie, name, tag):
                    runs_started += 1

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            drive_runs()
            time.sleep(0.2)

    def victim_mid_answer() -> CeleryWorker | None:
        """A worker carrying a run whose model call is streaming right now."""
        streaming = Step.objects.filter(kind="model", status="started", run__status="running",
                                        run__channel__name__in=channels)
        pids = {int(w.split(":")[1]) for w in streaming.values_list("run__worker", flat=True) if w}
        return next((w for w in cluster.workers if w.proc.pid in pids), None)

    thread = threading.Thread(target=run_clients, daemon=True)
    try:
        thread.start()
        settle(2)
        for _ in range(2 * ROUNDS):
            end = time.monotonic() + 4
            victim = None
            while victim is None and time.monotonic() < end:
                drive_runs()
                victim = victim_mid_answer()
                time.sleep(0.1)
            victim = victim or cluster.workers[0]
            kills_mid_answer += victim_mid_answer() is victim
            cluster.workers.remove(victim)
            victim.kill_group()
            victim.stop()
            kills += 1
            cluster.workers.append(cluster.new_worker())
            settle(2.5)
        keep_starting = False

        end = started_at + DEADLINE_SECONDS - 30
        ours = Run.objects.filter(channel__name__in=channels)
        while ours.exclude(status__in=TERMINAL).exists() and time.monotonic() < end:
            time.sleep(0.25)
        runs = list(ours)
        final = dict(Channel.objects.filter(name__in=channels).values_list("name", "last_seq"))
        end = started_at + DEADLINE_SECONDS
        while time.monotonic() < end and any(clients[n].last < final.get(n, 0) for n in channels):
            time.sleep(0.2)
        with llm.lock:
            requests = list(zip(llm.requests, llm.arrivals, strict=True))
            cut_streams = len(llm.disconnects)
    finally:
        done.set()
        thread.join(15)
        cluster.stop()

    # Each model request, matched to its journaled model step.
    arrivals: dict[str, dict[tuple[str, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for body, at in requests:
        identity = request_identity(body)
        if identity is not None:
            tag, turn, sent = identity
            arrivals[tag][(turn, sent)].append(at)
    repeated_after_completion: list[tuple[str, tuple[str, int]]] = []
    asked_again_unfinished = completed_steps = 0
    for run in runs:
        tag = run.input["tag"]
        steps = list(Step.objects.filter(run=run, kind="model").order_by("index"))
        # The agent is deterministic: its n-th distinct request is its n-th model step.
        order = sorted(arrivals[tag], key=lambda key: arrivals[tag][key][0])
        assert len(order) == len(steps), (tag, order, [(s.index, s.status) for s in steps])
        for step, key in zip(steps, order, strict=True):
            asked_again_unfinished += len(arrivals[tag][key]) - 1
            if step.status != "completed":
                continue
            completed_steps += 1
            done_at = step.finished_at.timestamp()
            if any(at > done_at for at in arrivals[tag][key]):
                repeated_after_completion.append((tag, key))

    statuses = sorted(run.status for run in runs)
    recovered = sum(run.attempts > 1 for run in runs)
    checked = sum(len(seen.seqs) for seen in clients.values())
    print(
        f"\nchaos (models): {kills} workers SIGKILLed ({kills_mid_answer} mid-answer, {cut_streams} "
        f"model streams cut); {len(runs)} runs ({', '.join(sorted(set(statuses)))}), {recovered} "
        f"restarted from their journal; {len(requests)} model requests for {completed_steps} "
        f"completed model steps ({asked_again_unfinished} asked again after being cut, "
        f"{len(repeated_after_completion)} after completing); {checked} events checked by "
        f"{len(clients)} clients; {time.monotonic() - started_at:.0f} s"
    )
    assert not loop_errors, loop_errors
    assert runs_started >= CHANNELS * 2, "too few runs to have been hit by the kills"
    assert kills_mid_answer >= 1 and recovered >= 1, "no kill landed inside a run"
    assert all(status in TERMINAL for status in statuses), statuses
    assert not repeated_after_completion, repeated_after_completion
    for name, seen in clients.items():
        log = {seq: (event, data) for seq, event, data in
               Event.objects.filter(channel__name=name).values_list("seq", "name", "data")}
        assert not seen.errors, (name, seen.errors)
        assert seen.duplicates == 0 and seen.gaps == 0, (name, seen.duplicates, seen.gaps)
        assert seen.seqs == list(range(1, final[name] + 1)), (name, seen.last, final[name])
        assert seen.frames == log, f"{name}: what the client saw is not what the log holds"
