"""Database blips: a run rides out a reset or a few seconds' outage; web requests meanwhile
get a clean ``unavailable``; everything works again afterwards without a restart.

The integration test takes the test's own PostgreSQL database away (``ALLOW_CONNECTIONS
false`` and ``pg_terminate_backend`` of its sessions, from a connection to another database)
while a demo run streams from a real Celery worker to a client of a real daphne; the server
itself is never stopped (other suites share it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import OperationalError, connection

from agent_channels.channel.log import EventDraft, append
from agent_channels.models import Event, Run
from agent_channels.routing import UnavailableMiddleware
from agent_channels.runtime import start_run
from agent_channels.runtime.backends import reset_backend

from .helpers import create_operator, wait_for
from .procs import CeleryWorker, Daphne

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = ("run.completed", "run.failed", "run.cancelled", "run.interrupted")


# -- the log's writes stay exactly-once across a lost connection (both passes) ---------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_append_whose_connection_breaks_is_retried_exactly_once(when):
    """``after``: the INSERT ran (and, outside a transaction, committed) but its answer was
    lost with the connection; the retry finds the events instead of writing them again."""
    append("blip-log", [EventDraft("first", {})])
    failed = []

    def breaker(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "INSERT" in sql.upper() and not failed:
            failed.append(sql)
            if when == "before":
                raise OperationalError("server closed the connection unexpectedly")
            execute(sql, params, many, context)  # it happened; the answer is lost
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(breaker):
        events = append("blip-log", [EventDraft("a", {"i": 1}), EventDraft("b", {"i": 2})])
    assert failed, "the write did not go through the breaker"
    assert [(e.seq, e.name) for e in events] == [(2, "a"), (3, "b")]
    rows = list(Event.objects.filter(channel__name="blip-log").values_list("seq", "name", "data"))
    assert rows == [(1, "first", {}), (2, "a", {"i": 1}), (3, "b", {"i": 2})]


def test_an_append_gives_up_after_the_retry_window(settings):
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "DB_RETRY_SECONDS": 0.3}
    calls = []

    def down(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        calls.append(sql)
        raise OperationalError("the database system is shutting down")

    started = time.monotonic()
    with connection.execute_wrapper(down), pytest.raises(OperationalError):
        append("blip-gives-up", [EventDraft("a", {})])
    assert 0.1 < time.monotonic() - started < 3 and len(calls) >= 3
    assert not Event.objects.filter(channel__name="blip-gives-up").exists()


async def test_a_handshake_whose_session_lookup_fails_gets_unavailable_not_a_500():
    async def auth_stack_with_database_down(scope: Any, receive: Any, send: Any) -> None:
        raise OperationalError('database "x" is not currently accepting connections')

    communicator = WebsocketCommunicator(
        UnavailableMiddleware(auth_stack_with_database_down), "/ws/agent-channels/x/"
    )
    connected, _ = await communicator.connect()
    assert connected
    frame = json.loads(await communicator.receive_from())
    assert frame["type"] == "error" and frame["code"] == "unavailable"
    assert (await communicator.receive_output())["code"] == 4500


# -- a real outage under a real worker and daphne (PostgreSQL) -----------------------------


class Outage:
    """Takes the test's own database away and gives it back; nothing else is touched."""

    def __init__(self) -> None:
        import psycopg

        self.name = str(connection.settings_dict["NAME"])
        assert self.name.startswith("test_"), self.name
        params = connection.settings_dict
        # A session on another database of the server: the test database refuses ours.
        self.admin = psycopg.connect(
            host=params["HOST"] or "127.0.0.1", port=params["PORT"] or 5432,
            user=params["USER"], password=params["PASSWORD"] or None,
            dbname=settings.POSTGRES_URL.rsplit("/", 1)[-1] or "postgres", autocommit=True,
        )
        self.down = False

    def begin(self) -> int:
        from psycopg import sql

        self.admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
            sql.Identifier(self.name)))
        self.down = True
        rows = self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", [self.name]).fetchall()
        return len(rows)

    def end(self) -> None:
        from psycopg import sql

        if self.down:
            self.admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(self.name)))
            self.down = False
        connection.close()  # ours was terminated too

    def close(self) -> None:
        self.end()
        self.admin.close()


class Follower(threading.Thread):
    """A client that follows a channel and reconnects with ``since`` whenever it is closed."""

    def __init__(self, server: Daphne, cookie: str, channel: str) -> None:
        super().__init__(daemon=True)
        self.server, self.cookie, self.channel = server, cookie, channel
        self.frames: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    @property
    def last(self) -> int:
        return self.frames[-1]["seq"] if self.frames else 0

    def done(self) -> bool:
        return any(f["event"] in TERMINAL for f in self.frames)

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        while not self.stop.is_set() and not self.done():
            url = self.server.ws_url(self.channel) + f"?since={self.last}"
            try:
                async with websockets.connect(url, additional_headers={
                    "Cookie": self.cookie, "Origin": f"http://127.0.0.1:{self.server.port}"},
                        open_timeout=5) as ws:
                    while not self.stop.is_set() and not self.done():
                        try:
                            frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        except TimeoutError:
                            continue
                        if frame["type"] == "error":
                            self.errors.append(frame["code"])
                        elif frame["type"] == "event":
                            self.frames.append(frame)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                self.errors.append(type(exc).__name__)
            await asyncio.sleep(0.2)


async def handshake(server: Daphne, cookie: str, channel: str) -> tuple[dict[str, Any], int | None]:
    """The first frame a new socket gets, and the close code if it was closed right after."""
    async with websockets.connect(server.ws_url(channel) + "?since=0", additional_headers={
            "Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"}, open_timeout=10) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        code = None
        if frame["type"] == "error":
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            code = ws.close_code
        return frame, code


def http_get(server: Daphne, cookie: str, path: str) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}",
                                     headers={"Cookie": cookie, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, dict(exc.headers), json.loads(body)
        except ValueError:
            return exc.code, dict(exc.headers), body[:200]


@pytest.fixture
def queue(settings: Any) -> Any:
    """A queue of the test's own, so no other test's message reaches its worker."""
    name = f"agch-blip-{uuid.uuid4().hex[:8]}"
    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS,
        "RUN_BACKEND": "agent_channels.runtime.backends.celery.CeleryBackend",
        "CELERY_QUEUE": name,
    }
    reset_backend()
    yield name
    reset_backend()


@pytest.fixture
def session_cookie(django_user_model: Any) -> str:
    from django.test import Client

    client = Client()
    client.force_login(create_operator(django_user_model, "staff"))
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.redis
@pytest.mark.integration
@pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)")
@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_run_rides_out_a_database_outage_and_clients_get_unavailable_meanwhile(
    queue: str, session_cookie: str, pool: str
) -> None:
    options: dict[str, Any] = (
        {"pool": "threads", "concurrency": 4, "AGCH_DB_POOL": "2"} if pool == "threads" else {}
    )
    # The heartbeat goes stale only well after the outage: this test is about the run's own
    # writes, not about the reaper taking the run over.
    worker = CeleryWorker(queue, AGCH_STALE_AFTER="15", **options)
    server = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue)
    outage = Outage()
    follower = Follower(server, session_cookie, "blip")
    try:
        run = start_run("blip", "demo", {"tokens": 200, "interval_ms": 25})
        follower.start()
        wait_for(lambda: Event.objects.filter(channel__name="blip", name="message.delta").exists(),
                 20)
        terminated = outage.begin()
        down_at = time.monotonic()
        frame, code = asyncio.run(handshake(server, session_cookie, "blip"))
        status, headers, body = http_get(server, session_cookie, f"/agent-channels/blip/runs/{run.pk}/")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
        outage.end()

        # During the outage: clean refusals, not HTTP 500 nor a hung socket.
        assert terminated >= 2, "the worker's and daphne's sessions were cut"
        assert frame["type"] == "error" and frame["code"] == "unavailable", frame
        assert code == 4500
        assert status == 503 and body["code"] == "unavailable", (status, body)
        assert int(headers["Retry-After"]) > 0

        # The run went on where it was, and ended well.
        wait_for(lambda: Run.objects.filter(pk=run.pk, status="completed").exists()
                 or Run.objects.filter(pk=run.pk, status="failed").exists(), 60, 0.1)
        run.refresh_from_db()
        assert run.status == "completed", (run.status, run.error, worker.output()[-3000:])
        assert run.attempts == 1, "the run was not restarted: it rode the outage out"
        stamps = list(Event.objects.filter(channel__name="blip", name="message.delta")
                      .order_by("seq").values_list("created_at", flat=True))
        stall = max((b - a).total_seconds() for a, b in itertools.pairwise(stamps))
        assert stall > 2.0, "the outage never held up the run's writes"

        # Every event once, in order, with the text the agent wrote.
        wait_for(follower.done, 30, 0.1)
        seqs = [f["seq"] for f in follower.frames]
        assert seqs == list(range(1, len(seqs) + 1))
        log = list(Event.objects.filter(channel__name="blip").order_by("seq")
                   .values_list("seq", "name"))
        assert [(f["seq"], f["event"]) for f in follower.frames] == log
        deltas = "".join(f["data"]["text"] for f in follower.frames
                         if f["event"] == "message.delta")
        completed = next(f for f in follower.frames if f["event"] == "message.completed")
        assert deltas == completed["data"]["text"] == "".join(f"tok{i} " for i in range(200))

        # Afterwards everything works again, without a restart.
        status, _, body = http_get(server, session_cookie, f"/agent-channels/blip/runs/{run.pk}/")
        assert status == 200 and body["status"] == "completed"
        frame, code = asyncio.run(handshake(server, session_cookie, "blip"))
        assert frame["type"] == "hello" and code is None
    finally:
        follower.stop.set()
        outage.close()
        follower.join(10)
        worker.stop()
        server.stop()
