"""What one live event costs Redis: the figure a capacity plan for one Redis needs.

A redis-server of the script's own (free loopback port, no persistence) serves a channel
layer in this process: ``members`` channels (what one daphne process holds for that many
sockets on one channel) join a group, and ``n`` events go out with ``group_send`` while
every channel drains them. Redis's own CPU time (``INFO cpu``: user + sys) over the leg,
divided by the events sent, is the cost of one live event. Baseline, measured in the same
run: one ``SET`` of the same payload from the same asyncio client. The ratio says how many
plain commands one live event is worth; ``1 / cost`` is how many events per second one
Redis core can carry at that fan-out.

    .venv/bin/python benchmarks/bench_redis_cost.py [--rounds 3] [--n 600] [--members 1 10 100]

Legs alternate and swap order every round; the figure is the median. Bounded: at most
``n`` events per leg and 60 s per leg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

PAYLOAD = "x" * 200
LEG_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def set_leg(url: str, n: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        for i in range(n):
            await client.set(f"bench:{i % 100}", PAYLOAD)
    finally:
        await client.aclose()


def make_layer(kind: str, url: str) -> Any:
    if kind == "core":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[{"address": url, "socket_timeout": 30}],
                                 capacity=100_000, prefix=f"bench{time.monotonic_ns()}")
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[url], prefix=f"bench{time.monotonic_ns()}")


async def layer_leg(kind: str, url: str, members: int, n: int) -> int:
    """``n`` group_sends to ``members`` channels of this process; the messages received."""
    layer = make_layer(kind, url)
    channels = [await layer.new_channel() for _ in range(members)]
    for name in channels:
        await layer.group_add("bench", name)
    received = 0

    async def drain(name: str) -> None:
        nonlocal received
        for _ in range(n):
            await layer.receive(name)
            received += 1

    readers = [asyncio.create_task(drain(name)) for name in channels]
    await asyncio.sleep(0.2)  # the receive loops are listening before the first send
    for i in range(n):
        await layer.group_send("bench", {"type": "event", "seq": i, "pad": PAYLOAD})
    try:
        await asyncio.wait_for(asyncio.gather(*readers), LEG_TIMEOUT)
    except TimeoutError:
        for task in readers:
            task.cancel()
    for name in channels:
        await layer.group_discard("bench", name)
    if hasattr(layer, "flush"):
        await layer.flush()
    return received


def measure(client: redis.Redis, leg: Callable[[], Awaitable[Any]], n: int) -> tuple[float, Any]:
    """Redis CPU µs per event of one leg, and what the leg returned."""
    before = redis_cpu(client)
    result = asyncio.run(leg())
    return (redis_cpu(client) - before) / n * 1e6, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="agch-bench-redis-")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis(port=port, socket_timeout=10)
    results: list[dict[str, Any]] = []
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        for members in args.members:
            samples: dict[str, list[float]] = {"set": [], "core": [], "pubsub": []}
            lost = {"core": 0, "pubsub": 0}
            for round_ in range(args.rounds):
                order = ["set", "core", "pubsub"]
                if round_ % 2:
                    order.reverse()
                for leg in order:
                    if leg == "set":
                        cost, _ = measure(client, lambda: set_leg(url, args.n), args.n)
                    else:
                        cost, got = measure(
                            client, lambda leg=leg, m=members: layer_leg(leg, url, m, args.n), args.n
                        )
                        lost[leg] += members * args.n - got
                    samples[leg].append(cost)
            base = statistics.median(samples["set"])
            for leg in ("core", "pubsub"):
                cost = statistics.median(samples[leg])
                row = {
                    "figure": f"Redis CPU per live event, {members} watcher(s) in one process",
                    "layer": leg, "members": members, "us_per_event": round(cost, 2),
                    "baseline_set_us": round(base, 2), "ratio": round(cost / base, 2),
                    "events_per_redis_core_s": round(1e6 / cost) if cost else None,
                    "lost": lost[leg],
                }
                results.append(row)
                print(
                    f"{members:>4} watcher(s)  {leg:<7} {cost:8.1f} µs/event  "
                    f"(SET {base:5.1f} µs, ratio {cost / base:6.1f})  "
                    f"≈ {1e6 / cost:,.0f} events/s per Redis core  lost {lost[leg]}",
                    flush=True,
                )
    finally:
        client.close()
        server.kill()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    if os.environ.get("AGCH_BENCH_JSON"):
        with open(os.environ["AGCH_BENCH_JSON"], "a") as out:
            for row in results:
                out.write(json.dumps({"section": "redis_cost", **row}) + "\n")


if __name__ == "__main__":
    main()
