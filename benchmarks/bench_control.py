"""Client send → agent sees it: control latency through daphne, Redis and a Celery worker.

A real daphne (tests.asgi) and a real Celery worker (``--pool=solo``) run against a
scratch PostgreSQL database and the Redis channel layer. A run of the ``listener`` test
agent waits in ``ctx.sleep``; the client sends ``{"type": "interrupt"}`` frames on its
WebSocket, the agent catches each ``Interrupted`` and emits ``custom.seen`` with the
wall-clock time it saw it. Reported:

- **runtime**: client send → agent code sees the interrupt (layer listener, no polling);
- **raw layer**: one ``group_send`` → ``receive`` hop of the same channel layer, in this
  process (the floor any design on channels-redis pays);
- **DB polling 100 ms**: the same measurement with an agent that polls the log for
  ``client.interrupt`` events every 100 ms (what apps do today).

Ratios are of medians measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from _common import banner, configure_env, fmt, median, pct, record, scratch_database, table


async def measure_run(
    daphne, cookie: str, channel: str, count: int, gap: float, acks: list[float]
) -> list[float]:
    import websockets

    latencies: list[float] = []
    async with websockets.connect(
        daphne.ws_url(channel) + "?since=0",
        additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{daphne.port}"},
    ) as ws:
        async with asyncio.timeout(120):
            while True:  # wait until the agent is running and listening
                frame = json.loads(await ws.recv())
                if frame.get("event") == "run.started":
                    break
            await asyncio.sleep(0.5)
            sent: dict[int, float] = {}
            pending: dict[str, float] = {}
            for i in range(count):
                t0 = time.time()
                await ws.send(json.dumps({"type": "interrupt", "id": f"i{i}", "data": i}))
                pending[f"i{i}"] = t0
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "ack":
                        sent[frame["seq"]] = pending.pop(frame["id"])
                        acks.append((time.time() - sent[frame["seq"]]) * 1000)
                    elif frame.get("event") == "custom.seen" and frame["data"]["seq"] in sent:
                        latencies.append((frame["data"]["at"] - sent[frame["data"]["seq"]]) * 1000)
                        break
                await asyncio.sleep(gap)
    return latencies


async def raw_layer(count: int) -> list[float]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    name = await layer.new_channel()
    await layer.group_add("bench-raw", name)
    out: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        await layer.group_send("bench-raw", {"type": "x"})
        await layer.receive(name)
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.02)
    await layer.group_discard("bench-raw", name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.05)
    args = parser.parse_args()
    queue = f"agch-bench-{uuid.uuid4().hex[:8]}"
    configure_env("postgres", "redis")
    import os

    os.environ["AGCH_RUN_BACKEND"] = "celery"
    os.environ["AGCH_CELERY_QUEUE"] = queue
    os.environ["AGCH_BROKER_URL"] = "redis://127.0.0.1:6379/7"
    with scratch_database():
        from django.contrib.auth import get_user_model
        from django.test import Client

        from agent_channels.runtime import start_run
        from tests.procs import CeleryWorker, Daphne

        user = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
        client = Client()
        client.force_login(user)
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        daphne = Daphne()
        worker = CeleryWorker(queue)
        try:
            banner("Control latency: client send → agent sees it")
            results: dict[str, list[float]] = {}
            for label, agent in (("runtime (layer listener)", "listener"), ("DB polling 100 ms", "poller")):
                channel = f"bench-{agent}-{uuid.uuid4().hex[:6]}"
                run = start_run(channel, agent, {"seconds": 300})
                acks: list[float] = []
                results[label] = asyncio.run(
                    measure_run(daphne, cookie, channel, args.count, args.gap, acks)
                )
                if agent == "listener":
                    results["client send → ack (persisted + handed to the layer)"] = acks
                from agent_channels.channel.control import send_control

                send_control(channel, "cancel", None)
                run.refresh_from_db()
            results["raw layer hop (group_send→receive)"] = asyncio.run(raw_layer(args.count))
            base = median(results["runtime (layer listener)"])
            for label, v in results.items():
                record("control", path=label, n=len(v), p50_ms=median(v), p90_ms=pct(v, 90),
                       max_ms=max(v), ratio=median(v) / base)
            rows = [
                [label, len(v), fmt(median(v)), fmt(pct(v, 90)), fmt(max(v)),
                 fmt(median(v) / base) + "×"]
                for label, v in results.items()
            ]
            print(table(["path", "n", "p50 ms", "p90 ms", "max ms", "p50 / runtime p50"], rows))
        finally:
            worker.stop()
            daphne.stop()


if __name__ == "__main__":
    sys.exit(main())
