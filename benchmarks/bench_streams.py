"""Durable Streams readers woken over the layer, against clients polling the database.

    .venv/bin/python benchmarks/bench_streams.py

Real daphne on PostgreSQL + channels-redis (a scratch database), the stream endpoint open
to anonymous clients (``AGCH_DS_CONFORMANCE``) with a long-poll of 20 s.

* candidate: ``--readers`` clients each looping ``GET ?offset=<tail>&live=long-poll``;
* baseline: as many clients each looping a catch-up ``GET ?offset=<tail>`` every 100 ms
  (what apps do today, BASELINES.md "poll the database").

Two figures per round, legs alternating (order swapped each round), medians of rounds:

1. **idle cost** — nothing is appended for ``--idle`` seconds; PostgreSQL transactions
   committed per second in the scratch database (``pg_stat_database.xact_commit``);
2. **delivery latency** — one writer appends ``--appends`` messages at 5/s, each carrying
   ``time.time()``; every reader records when it received each one (one machine, one clock).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import banner, configure_env, fmt, median, pct, scratch_database, table

LEG_CAP_SECONDS = 60.0


def commits() -> int:
    import psycopg

    name = os.environ["AGCH_DB_NAME"]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        # Counters are flushed by backends at most once a second: ask for a fresh snapshot.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [name]
        ).fetchone()
    return int(row[0]) if row else 0


async def reader(client, url: str, mode: str, stop: asyncio.Event, seen: list[float]) -> None:
    offset = (await client.get(url, params={"offset": "now"})).headers["Stream-Next-Offset"]
    while not stop.is_set():
        if mode == "long-poll":
            response = await client.get(url, params={"offset": offset, "live": "long-poll"})
        else:
            response = await client.get(url, params={"offset": offset})
        if response.status_code == 200 and response.content:
            now = time.time()
            seen += [now - float(t) for t in response.text.split()]
        offset = response.headers.get("Stream-Next-Offset", offset)
        if mode == "poll":
            await asyncio.sleep(0.1)


async def leg(base: str, mode: str, readers: int, idle: float, appends: int) -> tuple[float, list]:
    import httpx

    url = f"{base}/streams/bench/{mode}-{time.monotonic_ns()}"
    limits = httpx.Limits(max_connections=readers + 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        assert (await client.put(url, headers={"Content-Type": "text/plain"})).status_code == 201
        stop = asyncio.Event()
        seen: list[list[float]] = [[] for _ in range(readers)]
        tasks = [asyncio.create_task(reader(client, url, mode, stop, s)) for s in seen]
        await asyncio.sleep(1.5)  # readers settled; counters flushed
        before, started = await asyncio.to_thread(commits), time.monotonic()
        await asyncio.sleep(idle)
        await asyncio.sleep(1.2)  # let the backends flush their counters
        after = await asyncio.to_thread(commits)
        idle_rate = (after - before) / (time.monotonic() - started)
        deadline = time.monotonic() + LEG_CAP_SECONDS
        for _ in range(appends):
            if time.monotonic() > deadline:
                break
            await client.post(
                url, content=f"{time.time()} ", headers={"Content-Type": "text/plain"}
            )
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        await client.post(url, headers={"Stream-Closed": "true"})
        await asyncio.wait(tasks, timeout=25)
        for task in tasks:
            task.cancel()
    return idle_rate, [x for s in seen for x in s]


async def main_async(args: argparse.Namespace) -> None:
    from tests.procs import Daphne

    server = Daphne(AGCH_DS_CONFORMANCE="1", AGCH_DS_LONG_POLL="20")
    base = f"http://127.0.0.1:{server.port}"
    results: dict[str, list[tuple[float, float, float]]] = {"long-poll": [], "poll": []}
    try:
        banner(f"bench_streams: {args.readers} readers, PostgreSQL + channels-redis")
        for round_ in range(args.rounds):
            order = ["long-poll", "poll"] if round_ % 2 == 0 else ["poll", "long-poll"]
            for mode in order:
                rate, latencies = await leg(base, mode, args.readers, args.idle, args.appends)
                latencies_ms = [x * 1000 for x in latencies]
                results[mode].append((rate, pct(latencies_ms, 50), pct(latencies_ms, 99)))
                print(
                    f"round {round_ + 1} {mode}: {fmt(rate)} commits/s idle, "
                    f"p50 {fmt(pct(latencies_ms, 50))} ms, {len(latencies)} deliveries",
                    flush=True,
                )
    finally:
        server.stop()
    rows = []
    for mode, label in (
        ("poll", "poll every 100 ms (baseline)"),
        ("long-poll", "long-poll, layer wake-ups"),
    ):
        runs = results[mode]
        rows.append(
            [
                label,
                fmt(median([r[0] for r in runs])),
                fmt(median([r[1] for r in runs])),
                fmt(median([r[2] for r in runs])),
            ]
        )
    print()
    print(table(["readers", "idle DB commits/s", "p50 ms", "p99 ms"], rows))
    idle = median([r[0] for r in results["long-poll"]])
    base = median([r[0] for r in results["poll"]])
    if idle > 0:
        print(f"\nidle DB work, baseline / candidate: {fmt(base / idle)}x")
    else:
        print(f"\nidle DB work: {fmt(base)} commits/s polling, none with long-poll wake-ups")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--appends", type=int, default=25)
    args = parser.parse_args()
    configure_env("postgres", "redis")
    with scratch_database():
        from django.db import connection

        connection.close()
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
