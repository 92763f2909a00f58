"""Start latency: ``POST runs/`` → the agent's first event on a watching WebSocket.

    .venv/bin/python benchmarks/bench_start.py [--runs 30]

PostgreSQL + channels-redis (a scratch database), one real daphne, sequential runs of the
demo agent with one token and no wait (no model call), each on a fresh channel that a
WebSocket client already follows. Two run backends:

* in-process: daphne runs the agent in its own thread pool (the embedded default);
* Celery: a real worker (threads pool) on Redis, daphne enqueues.

Baselines measured in the same run, interleaved with the runs:

* broker round trip: ``LPUSH`` on one Redis connection → ``BRPOP`` on another (the least a
  run handed to another process costs);
* HTTP round trip: ``GET runs/<id>/`` through the same daphne (request, session, one query).

daphne and the worker use Django's connection pool (``AGCH_DB_POOL``), as deployed.

Figures: p50/p99 ms of POST sent → first ``message.delta`` frame, also → ``run.started``,
and the ratios of the p50 to the broker round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import banner, configure_env, fmt, median, pct, record, scratch_database, table


class Http:
    """A keep-alive HTTP connection to daphne with the session and CSRF cookies."""

    def __init__(self, port: int, cookie: str) -> None:
        self.port = port
        self.csrf = secrets.token_hex(16)
        self.cookie = f"{cookie}; csrftoken={self.csrf}"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Cookie": self.cookie, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers.update({"Content-Type": "application/json", "X-CSRFToken": self.csrf,
                            "Origin": f"http://127.0.0.1:{self.port}"})
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        raise AssertionError("unreachable")


def broker_round_trip(count: int) -> list[float]:
    """ms from LPUSH on one connection to BRPOP returning on another."""
    import redis

    url = os.environ.get("AGCH_BROKER_URL", "redis://127.0.0.1:6379/7")
    key = f"agch-bench-rtt-{uuid.uuid4().hex[:8]}"
    pusher, popper = redis.Redis.from_url(url), redis.Redis.from_url(url)
    out: list[float] = []
    ready = threading.Event()

    def pop() -> None:
        for _ in range(count):
            ready.set()
            _, value = popper.brpop([key], timeout=5)
            out.append((time.perf_counter() - float(value)) * 1000)

    thread = threading.Thread(target=pop)
    thread.start()
    for _ in range(count):
        ready.wait(5)
        ready.clear()
        time.sleep(0.005)  # the popper is blocked in BRPOP, as a worker waits for a task
        pusher.lpush(key, repr(time.perf_counter()))
    thread.join(10)
    pusher.delete(key)
    return out


async def one_start(server: Any, cookie: str, http_conn: Http, channel: str
                    ) -> tuple[float, float, float]:
    """(→ run.started ms, → first delta ms, GET runs/<id>/ ms) for one run."""
    import websockets

    url = f"ws://127.0.0.1:{server.port}/ws/agent-channels/{quote(channel, safe='')}/?since=0"
    async with websockets.connect(url, additional_headers={
            "Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"}) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "hello":
            raise RuntimeError(f"no hello: {hello}")
        t0 = time.perf_counter()
        status, body = await asyncio.to_thread(
            http_conn.request, "POST", f"/agent-channels/{quote(channel, safe='')}/runs/",
            {"agent": "demo", "input": {"tokens": 1, "interval_ms": 0}})
        if status != 201:
            raise RuntimeError(f"POST runs/ answered {status}: {body}")
        answered = (time.perf_counter() - t0) * 1000
        started = first = None
        async with asyncio.timeout(20):
            while first is None:
                frame = json.loads(await ws.recv())
                if frame.get("type") != "event":
                    continue
                now = (time.perf_counter() - t0) * 1000
                if frame["event"] == "run.started" and started is None:
                    started = now
                if frame["event"] == "message.delta":
                    first = now
    t1 = time.perf_counter()
    status, _ = await asyncio.to_thread(
        http_conn.request, "GET", f"/agent-channels/{quote(channel, safe='')}/runs/{body['id']}/")
    get_ms = (time.perf_counter() - t1) * 1000
    assert status == 200 and started is not None
    return started, first, get_ms, answered


def leg(label: str, runs: int, cookie: str, backend_env: dict[str, str],
        worker: bool) -> dict[str, Any]:
    from tests.procs import CeleryWorker, Daphne

    queue = backend_env.get("AGCH_CELERY_QUEUE", "")
    # As deployed: Django's connection pool (the suite's settings otherwise open a connection
    # per request, CONN_MAX_AGE=0, which alone costs several ms per query burst).
    server = Daphne(AGCH_DB_POOL="4", **backend_env)
    proc = CeleryWorker(queue, pool="threads", concurrency=8, AGCH_DB_POOL="4") if worker else None
    http_conn = Http(server.port, cookie)
    started, first, get_ms, rtt, post = [], [], [], [], []
    try:
        async def main() -> None:
            for i in range(runs + 3):
                s, f, g, p = await one_start(server, cookie, http_conn, f"start-{label}-{i}")
                if i >= 3:  # warm-up: imports, first connections, the worker's first task
                    post.append(p)
                    started.append(s)
                    first.append(f)
                    get_ms.append(g)
                    rtt.extend(await asyncio.to_thread(broker_round_trip, 1))

        asyncio.run(main())
    finally:
        if proc is not None:
            proc.stop()
        server.stop()
    return {"label": label, "started": started, "first": first, "get": get_ms, "rtt": rtt,
            "post": post}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    args.runs = max(5, min(args.runs, 200))
    queue = f"agch-bench-start-{uuid.uuid4().hex[:8]}"
    configure_env("postgres", "redis")
    os.environ["AGCH_BROKER_URL"] = "redis://127.0.0.1:6379/7"
    os.environ.update(AGCH_HEARTBEAT="1.5", AGCH_STALE_AFTER="6", AGCH_REAP_EVERY="2")
    # Pooled processes as example_project.env deploys them: no health check per checkout.
    os.environ["AGCH_DB_HEALTH_CHECKS"] = "0"
    with scratch_database():
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test import Client

        user = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
        client = Client()
        client.force_login(user)
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        connection.close()
        banner(f"Start latency: POST runs/ → first agent event on the socket, {args.runs} runs "
               "per backend, demo agent (1 token, no model call)")
        legs = [
            leg("in-process", args.runs, cookie, {}, worker=False),
            leg("celery", args.runs, cookie,
                {"AGCH_RUN_BACKEND": "celery", "AGCH_CELERY_QUEUE": queue}, worker=True),
        ]
    rows = []
    for item in legs:
        floor = median(item["rtt"])
        rows.append([item["label"], len(item["first"]), fmt(median(item["post"])),
                     fmt(median(item["started"])),
                     fmt(median(item["first"])), fmt(pct(item["first"], 99)),
                     fmt(median(item["get"])), fmt(floor, 3),
                     fmt(median(item["first"]) / floor, 1)])
        record("start", backend=item["label"], runs=len(item["first"]),
               post_p50_ms=median(item["post"]), started_p50_ms=median(item["started"]), first_p50_ms=median(item["first"]),
               first_p99_ms=pct(item["first"], 99), http_get_p50_ms=median(item["get"]),
               broker_rtt_p50_ms=floor, ratio=median(item["first"]) / floor)
    print(table(["backend", "runs", "POST answered p50 ms", "→ run.started p50 ms", "→ first delta p50 ms",
                 "p99 ms", "HTTP GET runs/<id>/ p50 ms", "broker round trip p50 ms",
                 "first delta / broker RTT"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
