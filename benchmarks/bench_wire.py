"""Live delivery through a real daphne with the Redis layer, against two baselines.

    .venv/bin/python benchmarks/bench_wire.py

Runs on PostgreSQL + channels-redis (AGCH_DB=postgres AGCH_LAYER=redis, a scratch
database). One long-lived publisher process serves every run, so the candidate and the
baseline share its process, connections and loop:

* candidate: ``publish()`` in the publisher → commit → live wire → Redis → daphne →
  ``ChannelConsumer`` → WebSocket clients in this process;
* raw layer baseline: the same publisher doing ``await layer.group_send`` on one
  long-lived loop, read here by bare channels with ``layer.receive`` (no DB, no daphne);
* polling baseline: a thread here running ``SELECT ... WHERE seq > N`` every 100 ms
  during the candidate runs (what apps do today), seeing the same events.

Every event carries ``time.time()`` taken just before publish()/group_send; receivers
subtract it from their own ``time.time()`` (one machine, one clock). Rounds interleave
the baseline and candidate runs (order swapped each round); figures are medians of the
per-round p50/p99. Then the catch-up case: a client connecting with ``since=0`` to a
channel of 10,000 events, against reading the same events with ``read()`` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    banner,
    child_env,
    configure_env,
    fmt,
    median,
    pct,
    record,
    scratch_database,
    setup_child,
    table,
)

PAD = "x" * 200
RUN_CAP_SECONDS = 60.0


# -- the publisher process ---------------------------------------------------------------------


def publisher_main() -> None:
    """Reads one JSON command per line; runs it; answers with one JSON line."""
    setup_child()
    from channels.layers import get_channel_layer

    from agent_channels import publish
    from agent_channels.channel.wire import get_wire

    layer = get_channel_layer()
    costs: list[float] = []
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="raw-layer-loop", daemon=True).start()

    async def raw(group: str, rate: float, count: int) -> int:
        start = loop.time()
        sent = 0
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await layer.group_send(group, {"type": "bench.tick", "i": i, "t": time.time(),
                                           "pad": PAD})
            sent += 1
            if loop.time() - start > RUN_CAP_SECONDS:
                break
        return sent

    def via_publish(channel: str, rate: float, count: int) -> int:
        start = time.monotonic()
        sent = 0
        costs.clear()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            publish(channel, "tick", {"i": i, "t": time.time(), "pad": PAD})
            costs.append(time.perf_counter() - t0)
            sent += 1
            if time.monotonic() - start > RUN_CAP_SECONDS:
                break
        get_wire().drain()
        return sent

    # Warm both paths: the wire's loop and Redis pool, the raw loop's pool, the DB connection.
    publish("bench-warmup", "warmup", {})
    get_wire().drain()
    asyncio.run_coroutine_threadsafe(raw("bench-warmup", 1000, 1), loop).result(10)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        t0 = time.monotonic()
        if cmd["mode"] == "raw":
            fut = asyncio.run_coroutine_threadsafe(
                raw(cmd["target"], cmd["rate"], cmd["count"]), loop)
            sent = fut.result(RUN_CAP_SECONDS + 10)
        else:
            sent = via_publish(cmd["target"], cmd["rate"], cmd["count"])
        print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0,
                          "publish_s": costs if cmd["mode"] == "publish" else []}), flush=True)


class Publisher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--publisher"], env=child_env(), cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"publisher did not start: {line!r}")

    def start(self, mode: str, target: str, rate: float, count: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(
            {"mode": mode, "target": target, "rate": rate, "count": count}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- daphne and the clients --------------------------------------------------------------------


class Daphne:
    """A real daphne on tests.asgi; its log goes to the temp dir, not the repository."""

    def __init__(self) -> None:
        from tests.procs import free_port, wait_for_port

        self.port = free_port()
        self.log_path = Path(tempfile.gettempdir()) / f"agch-bench-daphne-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "tests.asgi:application"],
            env=child_env(), cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def url(self, channel: str, since: int | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/ws/agent-channels/{quote(channel, safe='')}/"
        return base if since is None else f"{base}?since={since}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        self.log_path.unlink(missing_ok=True)


def staff_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def open_ws(server: Daphne, cookie: str, channel: str, since: int | None = None,
                  batch: bool = False) -> Any:
    import websockets

    url = server.url(channel, since) + ("&batch=1" if batch else "")
    ws = await websockets.connect(url,
                                  origin=f"http://127.0.0.1:{server.port}",  # type: ignore[arg-type]
                                  additional_headers={"Cookie": cookie}, max_size=None,
                                  max_queue=None)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if hello.get("type") != "hello":
        raise RuntimeError(f"no hello: {hello}")
    return ws


async def ws_collect(ws: Any, count: int, timeout: float) -> tuple[list[float], set[int]]:
    """Latencies (s) of event frames until ``count`` distinct seqs or ``timeout``."""
    lat: list[float] = []
    seqs: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seqs) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        now = time.time()
        frame = json.loads(raw)
        if frame.get("type") == "event" and frame["event"] == "tick":
            lat.append(now - frame["data"]["t"])
            seqs.add(frame["seq"])
    return lat, seqs


def poll_db(channel: str, count: int, stop: threading.Event, out: list[float]) -> None:
    """The polling baseline: every 100 ms, fetch events newer than the last one seen."""
    from django.db import connection

    from agent_channels.models import Event

    last = 0
    deadline = time.monotonic() + RUN_CAP_SECONDS
    try:
        while last < count and not stop.is_set() and time.monotonic() < deadline:
            tick = time.monotonic()
            rows = list(Event.objects.filter(channel__name=channel, seq__gt=last, name="tick")
                        .order_by("seq").values_list("seq", "data"))
            now = time.time()
            for seq, data in rows:
                out.append(now - data["t"])
                last = seq
            stop.wait(max(0.0, 0.1 - (time.monotonic() - tick)))
    finally:
        connection.close()


# -- one run of each kind ----------------------------------------------------------------------


async def run_raw(pub: Publisher, tag: str, rate: float, count: int, clients: int
                  ) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    group = f"bench-raw-{tag}"
    chans = [await layer.new_channel() for _ in range(clients)]
    for ch in chans:
        await layer.group_add(group, ch)

    async def collect(ch: str) -> tuple[list[float], int]:
        lat: list[float] = []
        got: set[int] = set()
        deadline = time.monotonic() + count / rate + 10
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(layer.receive(ch), left)
            except TimeoutError:
                break
            lat.append(time.time() - msg["t"])
            got.add(msg["i"])
        return lat, len(got)

    await asyncio.to_thread(pub.start, "raw", group, rate, count)
    results = await asyncio.gather(*(collect(ch) for ch in chans))
    await asyncio.to_thread(pub.result)
    for ch in chans:
        await layer.group_discard(group, ch)
    return {"lat": [v for lat, _ in results for v in lat],
            "received": [n for _, n in results]}


async def run_live(pub: Publisher, server: Daphne, cookie: str, tag: str, rate: float,
                   count: int, clients: int) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from agent_channels.models import Channel

    channel = f"bench live/{tag} ✓"
    await database_sync_to_async(Channel.objects.create)(name=channel)
    sockets = [await open_ws(server, cookie, channel) for _ in range(clients)]
    polled: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_db, args=(channel, count, stop, polled), daemon=True)
    poller.start()
    await asyncio.to_thread(pub.start, "publish", channel, rate, count)
    results = await asyncio.gather(*(ws_collect(ws, count, count / rate + 10) for ws in sockets))
    report = await asyncio.to_thread(pub.result)
    await asyncio.to_thread(poller.join, 5)
    stop.set()
    for ws in sockets:
        await ws.close()
    return {"lat": [v for lat, _ in results for v in lat],
            "received": [len(s) for _, s in results], "poll": polled,
            "publish": report["publish_s"]}


async def bench_live(pub: Publisher, server: Daphne, cookie: str, rounds: int,
                     plans: list[tuple[float, int]], client_counts: list[int]) -> None:
    banner(f"Live delivery, publisher process → client, {rounds} interleaved rounds")
    keys = [(rate, count, clients) for rate, count in plans for clients in client_counts]
    raw: dict[Any, list[dict[str, Any]]] = {k: [] for k in keys}
    live: dict[Any, list[dict[str, Any]]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys:
            rate, count, clients = k
            tag = f"{r}-{rate:g}-{clients}"
            if r % 2 == 0:
                raw[k].append(await run_raw(pub, tag, rate, count, clients))
                live[k].append(await run_live(pub, server, cookie, tag, rate, count, clients))
            else:
                live[k].append(await run_live(pub, server, cookie, tag, rate, count, clients))
                raw[k].append(await run_raw(pub, tag, rate, count, clients))
            print(f"  round {r + 1}/{rounds} {rate:g}/s × {clients} client(s): "
                  f"raw p50 {pct(raw[k][-1]['lat'], 50) * 1e3:.1f} ms, "
                  f"daphne p50 {pct(live[k][-1]['lat'], 50) * 1e3:.1f} ms, "
                  f"received {min(live[k][-1]['received'])}/{count}", flush=True)

    def med(runs: list[dict[str, Any]], key: str, p: float) -> float:
        return median([pct(x[key], p) for x in runs]) * 1e3

    rows = []
    for k in keys:
        rate, count, clients = k
        rp50, rp99 = med(raw[k], "lat", 50), med(raw[k], "lat", 99)
        lp50, lp99 = med(live[k], "lat", 50), med(live[k], "lat", 99)
        pp50, pp99 = med(live[k], "poll", 50), med(live[k], "poll", 99)
        cp50 = med(live[k], "publish", 50)
        r50 = median([pct(a["lat"], 50) / pct(b["lat"], 50) for a, b in zip(live[k], raw[k],
                                                                             strict=True)])
        r99 = median([pct(a["lat"], 99) / pct(b["lat"], 99) for a, b in zip(live[k], raw[k],
                                                                             strict=True)])
        q50 = median([pct(a["lat"], 50) / pct(a["poll"], 50) for a in live[k]])
        recv_live = min(n for x in live[k] for n in x["received"])
        recv_raw = min(n for x in raw[k] for n in x["received"])
        record("wire.live", rate=rate, count=count, clients=clients, raw_p50_ms=rp50,
               raw_p99_ms=rp99, ws_p50_ms=lp50, ws_p99_ms=lp99, poll_p50_ms=pp50,
               poll_p99_ms=pp99, publish_p50_ms=cp50, ratio_ws_raw_p50=r50, ratio_ws_raw_p99=r99,
               ratio_ws_poll_p50=q50, received_raw=recv_raw, received_ws=recv_live)
        rows.append([
            f"{rate:g}/s × {count}", clients,
            f"{fmt(rp50)} / {fmt(rp99)}", fmt(cp50), f"{fmt(lp50)} / {fmt(lp99)}",
            f"{fmt(pp50)} / {fmt(pp99)}",
            f"{fmt(r50)} / {fmt(r99)}", fmt(q50, 3),
            f"{recv_raw}/{count}", f"{recv_live}/{count}",
        ])
    print()
    print(table(["rate × events", "clients", "raw layer p50 / p99 ms",
                 "publish() call p50 ms",
                 "publish→daphne→WS p50 / p99 ms", "DB poll 100 ms p50 / p99 ms",
                 "ratio WS/raw p50 / p99", "ratio WS/poll p50",
                 "raw: fewest received by a receiver", "WS: fewest received by a client"],
                rows))
    print("\nraw layer = group_send on one long-lived loop → layer.receive (no DB, no daphne);"
          " WS = publish() (DB commit included) → daphne → websockets client.")


async def bench_catchup(server: Daphne, cookie: str, rounds: int, total: int) -> None:
    from channels.db import database_sync_to_async

    from agent_channels.channel.log import EventDraft, append, read, read_frames
    from agent_channels.models import Channel

    banner(f"Catch-up: since=0 on a channel of {total:,} events, {rounds} interleaved rounds")
    channel = "bench catch-up"

    def fill() -> None:
        for start in range(0, total, 500):
            append(channel, [EventDraft("tick", {"i": i, "t": 0.0, "pad": PAD})
                             for i in range(start, min(start + 500, total))], notify=False)

    await database_sync_to_async(fill)()
    cid = (await database_sync_to_async(Channel.objects.get)(name=channel)).pk

    def read_all(fast: bool = False) -> float:
        t0 = time.perf_counter()
        after = 0
        while after < total and time.perf_counter() - t0 < RUN_CAP_SECONDS:
            if fast:  # what the pump does now: the stored JSON text, no decode/encode
                after = read_frames(cid, after, total, 1000)[-1][0]
                continue
            events = read(cid, after, total, 500)
            for e in events:
                json.dumps(e.to_frame(), separators=(",", ":"))
            after = events[-1].seq
        return after / (time.perf_counter() - t0)

    async def replay(batch: bool = False) -> tuple[float, int]:
        t0 = time.perf_counter()
        ws = await open_ws(server, cookie, channel, since=0, batch=batch)
        seqs = await catchup_collect(ws, total, RUN_CAP_SECONDS)
        rate = len(seqs) / (time.perf_counter() - t0)
        await ws.close()
        if seqs != list(range(1, len(seqs) + 1)):
            raise RuntimeError("catch-up out of order or with duplicates")
        return rate, len(seqs)

    modes = ["floor", "fast floor", "ws", "ws batch"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    got: list[int] = []
    for r in range(rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        for mode in order:
            if mode == "floor":
                rates[mode].append(await database_sync_to_async(read_all)())
            elif mode == "fast floor":
                rates[mode].append(await database_sync_to_async(read_all)(True))
            else:
                rate, n = await replay(batch=mode == "ws batch")
                rates[mode].append(rate)
                got.append(n)
    ratio = {m: median([c / b for c, b in zip(rates[m], rates["floor"], strict=True)])
             for m in modes}
    record("wire.catchup", events=total, floor_eps=median(rates["floor"]),
           fast_floor_eps=median(rates["fast floor"]), ws_eps=median(rates["ws"]),
           ws_batch_eps=median(rates["ws batch"]), ratio=ratio["ws"],
           ratio_batch=ratio["ws batch"], received=min(got))
    print(table(["what", "events/s (median)", "ratio to the floor"], [
        ["read() batches of 500 + to_frame + json.dumps, in-process (floor)",
         fmt(median(rates["floor"])), "1.00"],
        ["read_frames() batches of 1000 (stored JSON text), in-process",
         fmt(median(rates["fast floor"])), fmt(ratio["fast floor"])],
        [f"WebSocket since=0 through daphne, a frame per event (connect → last frame; "
         f"received {min(got)}/{total})", fmt(median(rates["ws"])), fmt(ratio["ws"])],
        ["WebSocket since=0&batch=1, several events per frame", fmt(median(rates["ws batch"])),
         fmt(ratio["ws batch"])],
    ]))


async def catchup_collect(ws: Any, total: int, cap: float) -> list[int]:
    """The seqs of event frames (single or batched) until ``total`` arrived or ``cap`` s."""
    seqs: list[int] = []
    try:
        async with asyncio.timeout(cap):
            while len(seqs) < total:
                frame = json.loads(await ws.recv())
                kind = frame.get("type")
                if kind == "event":
                    seqs.append(frame["seq"])
                elif kind == "events":
                    seqs.extend(e["seq"] for e in frame["events"])
    except TimeoutError:
        pass
    return seqs


async def main_async(args: argparse.Namespace, cookie: str) -> None:
    server = Daphne()
    pub = await asyncio.to_thread(Publisher)
    try:
        print(f"\n# bench_wire: PostgreSQL scratch db {os.environ['AGCH_DB_NAME']}, "
              f"channels-redis core layer, one daphne on :{server.port}")
        if "live" in args.only:
            plans = [(50.0, args.count_50), (200.0, args.count_200)]
            await bench_live(pub, server, cookie, args.rounds, plans, args.clients)
        if "catchup" in args.only:
            await bench_catchup(server, cookie, args.rounds, args.catchup)
    finally:
        await asyncio.to_thread(pub.stop)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count-50", type=int, default=150, help="events per run at 50/s")
    parser.add_argument("--count-200", type=int, default=400, help="events per run at 200/s")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--catchup", type=int, default=10_000)
    parser.add_argument("--only", nargs="+", default=["live", "catchup"],
                        choices=["live", "catchup"])
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        publisher_main()
        return
    configure_env("postgres", "redis")
    with scratch_database():
        cookie = staff_cookie()
        from django.db import connection

        connection.close()  # async code below uses its own threads' connections
        asyncio.run(main_async(args, cookie))


if __name__ == "__main__":
    main()
