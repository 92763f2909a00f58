"""Load: 2 daphne + 2 Celery workers, 100 sockets, 20 runs, 2,000 concurrent POSTs.

What broke before (issue 7, item 8): with CONN_MAX_AGE=60 under daphne, each of daphne's
sync threads kept a PostgreSQL connection of its own; under this load the web processes
held almost every connection PostgreSQL allows, a quarter of the requests failed with
500 (``too many clients already``) and some runs never started. With Django's pool and
CONN_MAX_AGE=0 (the example project's settings) every request succeeds, every run starts
and ends, and the connections stay far below ``max_connections``. The peak is printed.

``AGCH_LOAD_PERSISTENT=1`` runs the same load with persistent connections and no pool,
to measure the baseline (it is expected to fail).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid

import httpx
import pytest
import websockets
from django.conf import settings
from django.db import connection
from django.test import Client

from agent_channels.models import Event, Run, RunStatus

from .helpers import create_operator
from .procs import CeleryWorker, Daphne

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.integration,
    pytest.mark.load,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
]

SOCKETS, RUNS, POSTS, CONCURRENCY = 100, 20, 2000, 50
TOKEN = "d" * 32
#: The whole load must finish within this (the test is bounded even when the server wedges).
BUDGET_SECONDS = 120


def _db_env() -> dict[str, str]:
    if os.environ.get("AGCH_LOAD_PERSISTENT") == "1":
        return {"AGCH_CONN_MAX_AGE": "60"}
    return {"AGCH_DB_POOL": "10"}


class PeakConnections(threading.Thread):
    """Polls pg_stat_activity for the test database every 50 ms; keeps the peak."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        import psycopg

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params["dbname"] = "postgres"
        with psycopg.connect(**params, autocommit=True) as conn:
            while not self.stopped.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                time.sleep(0.05)


async def _follow(url: str, cookie: str, origin: str, until_event: str) -> int:
    """Follows a channel until ``until_event``; returns how many event frames it saw."""
    seen = 0
    async with websockets.connect(
        url + "?since=0", additional_headers={"Cookie": cookie, "Origin": origin},
        max_size=2**20,
    ) as ws:
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "event":
                seen += 1
                if frame["event"] == until_event:
                    return seen


async def _load(servers: list[Daphne], cookie: str, channels: list[str]) -> dict[str, int]:
    statuses: dict[int, int] = {}
    headers = {"Cookie": cookie, "X-CSRFToken": TOKEN, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)

    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as http:

        async def post(i: int, path: str, body: dict) -> None:
            base = f"http://127.0.0.1:{servers[i % len(servers)].port}/agent-channels/"
            async with gate:
                try:
                    response = await http.post(base + path, content=json.dumps(body))
                    status = response.status_code
                except httpx.HTTPError:
                    status = 599  # no answer at all counts as a server failure
            statuses[status] = statuses.get(status, 0) + 1

        # The runs start first (their channels exist before anyone posts to them)...
        await asyncio.gather(*(
            post(i, f"{name}/runs/", {"agent": "demo", "input": {"tokens": 40, "interval_ms": 25}})
            for i, name in enumerate(channels)
        ))
        # ...100 sockets follow them, 5 per channel, spread over both servers...
        followers = [
            asyncio.create_task(_follow(
                servers[i % len(servers)].ws_url(channels[i % len(channels)]), cookie,
                f"http://127.0.0.1:{servers[i % len(servers)].port}", "run.completed",
            ))
            for i in range(SOCKETS)
        ]
        # ...while 2,000 inputs are posted, 50 at a time.
        await asyncio.gather(*(
            post(i, f"{channels[i % len(channels)]}/messages/", {"type": "input", "data": {"n": i}})
            for i in range(POSTS)
        ))
        seen = await asyncio.gather(*followers)
    statuses[-1] = min(seen)  # the fewest events a follower saw before its run completed
    return statuses


def test_two_daphne_two_workers_100_sockets_20_runs_2000_posts(django_user_model):
    queue = f"agch-load-{uuid.uuid4().hex[:8]}"
    settings_db = str(connection.settings_dict["NAME"])
    client = Client()
    client.force_login(create_operator(django_user_model, "loader"))
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={TOKEN}"
    env = {"AGCH_RUN_BACKEND": "celery", "AGCH_CELERY_QUEUE": queue, **_db_env()}
    servers: list[Daphne] = []
    workers: list[CeleryWorker] = []
    poller = PeakConnections(settings_db)
    try:
        servers = [Daphne(**env) for _ in range(2)]
        workers = [
            CeleryWorker(queue, pool="threads", concurrency=10, **_db_env()) for _ in range(2)
        ]
        poller.start()
        channels = [f"load-{i}" for i in range(RUNS)]
        started = time.monotonic()
        statuses = asyncio.run(
            asyncio.wait_for(_load(servers, cookie, channels), BUDGET_SECONDS)
        )
        elapsed = time.monotonic() - started
    finally:
        poller.stopped.set()
        for process in [*servers, *workers]:
            process.stop()
    poller.join(5)
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        max_connections = int(cursor.fetchone()[0])
    min_seen = statuses.pop(-1)
    print(
        f"\nload: {RUNS} runs, {SOCKETS} sockets, {POSTS} POSTs ({CONCURRENCY} at a time) on 2 "
        f"daphne + 2 workers in {elapsed:.1f} s; HTTP statuses {dict(sorted(statuses.items()))}; "
        f"peak PostgreSQL connections {poller.peak} of max_connections {max_connections}"
    )
    failures = {status: n for status, n in statuses.items() if status >= 500}
    assert not failures, statuses
    assert statuses.get(201) == RUNS and statuses.get(202) == POSTS, statuses
    runs = Run.objects.filter(channel__name__in=channels)
    assert runs.count() == RUNS
    assert set(runs.values_list("status", flat=True)) == {RunStatus.COMPLETED}
    for run in runs:
        names = set(Event.objects.filter(run=run).values_list("name", flat=True))
        assert {"run.started", "run.completed"} <= names
    assert min_seen >= 3  # each follower saw its run start, stream and complete
    assert poller.peak <= max_connections // 2, (poller.peak, max_connections)
