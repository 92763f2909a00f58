"""The producer side against django-eventstream at equal durability (PostgreSQL + Redis).

Both store every event as a database row with a per-channel id taken under a row lock
(django-eventstream's ``EventCounter`` with ``select_for_update``; our channel row), and both
tell Redis (its ``PUBLISH``; our channels-redis ``group_send``). Measured in the same run,
legs interleaved and swapped each round:

- **one producer**: events/s of ``send_event()`` against ``publish()``, one event at a time;
- **4 producer threads on one channel**: events/s, and whether the ids a reader sees are
  1..N with no gap or duplicate.

One difference stays: ``send_event()`` waits for its Redis ``PUBLISH``, while ``publish()``
returns after the commit and hands the live frame to a background sender (the log already
has the event, so the client gets it either way).

- **a client that reconnects while the producer keeps sending**: one producer sends ``--n``
  numbered events at ``--rate`` events/s; one client reads them through a real daphne and,
  every ``--every`` events, drops its connection and reconnects at once, resuming where it
  says it was: django-eventstream's SSE view with ``Last-Event-ID``, against our SSE
  endpoint (``Last-Event-ID``) and our WebSocket (``?since=``). Counted at the client:
  events lost, duplicated and out of order.

Needs ``pip install django-eventstream`` (not a dependency of this project).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import banner, configure_env, fmt, median, record, scratch_database, table

LEG_SECONDS = 30.0


def leg(send, channel: str, n: int, threads: int) -> float:
    """Events/s of ``threads`` threads sending ``n`` events each to ``channel``."""
    from django.db import connection

    barrier = threading.Barrier(threads + 1)
    done: list[float] = []

    def worker(k: int) -> None:
        barrier.wait()
        deadline = time.monotonic() + LEG_SECONDS
        for i in range(n):
            send(channel, {"k": k, "i": i, "pad": "x" * 200})
            if time.monotonic() > deadline:
                break
        done.append(time.perf_counter())
        connection.close()

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return n * threads / (max(done) - t0)


# -- a client that reconnects while the producer keeps sending ---------------------------------


class Server:
    """daphne on tests.asgi with es_settings: our endpoints and django-eventstream's."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        from tests.procs import free_port, wait_for_port

        from _common import ROOT, child_env

        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        path = os.pathsep.join([os.environ["PYTHONPATH"], str(Path(__file__).resolve().parent)])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "tests.asgi:application"],
            env=child_env(DJANGO_SETTINGS_MODULE="es_settings", PYTHONPATH=path), cwd=ROOT,
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
        self.log.close()


class Seen:
    """The producer's numbers as one client received them, across its reconnects."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.resume: str = ""
        self.reconnects = 0
        self.errors = 0

    def add(self, number: int) -> None:
        self.numbers.append(number)

    def summary(self, n: int) -> dict[str, int]:
        seen: set[int] = set()
        duplicates = reordered = 0
        highest = -1
        for number in self.numbers:
            if number in seen:
                duplicates += 1
                continue
            if number < highest:
                reordered += 1
            seen.add(number)
            highest = max(highest, number)
        return {"received": len(self.numbers), "lost": n - len(seen), "duplicates": duplicates,
                "reordered": reordered, "reconnects": self.reconnects}


def sse_client(url: str, headers: dict[str, str], number_of: Any, seen: Seen, every: int,
               stop: threading.Event, connected: threading.Event) -> None:
    """An EventSource: reads ``url``; every ``every`` events drops the connection and
    reconnects with ``Last-Event-ID`` (the last ``id:`` it read)."""
    import urllib.request

    while not stop.is_set():
        request_headers = {"Accept": "text/event-stream", **headers}
        if seen.resume:
            request_headers["Last-Event-ID"] = seen.resume
        try:
            request = urllib.request.Request(url, headers=request_headers)  # noqa: S310 (http://127.0.0.1 only)
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                connected.set()
                count, event_id, name = 0, "", ""
                while not stop.is_set():
                    line = response.readline().decode()
                    if not line:
                        break
                    line = line.rstrip("\n")
                    if line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:") and name == "tick":
                        seen.add(number_of(json.loads(line[5:])))
                        seen.resume = event_id
                        count += 1
                    elif line == "":
                        name = ""
                    if count >= every:
                        break  # drop the connection mid-stream, like a flaky network
        except (OSError, ValueError):
            seen.errors += 1
        seen.reconnects += 1


def ws_client(url: str, cookie: str, origin: str, seen: Seen, every: int, stop: threading.Event,
              connected: threading.Event) -> None:
    """Our WebSocket client: every ``every`` events, reconnect with ``?since=<last seq>``."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    while not stop.is_set():
        try:
            with connect(f"{url}?since={seen.resume or 0}", open_timeout=5,
                         additional_headers={"Cookie": cookie, "Origin": origin}) as ws:
                connected.set()
                count = 0
                while not stop.is_set() and count < every:
                    try:
                        frame = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if frame.get("type") == "event" and frame["event"] == "tick":
                        seen.add(frame["data"]["i"])
                        seen.resume = str(frame["seq"])
                        count += 1
        except (OSError, WebSocketException):
            seen.errors += 1
        seen.reconnects += 1


def reconnect_leg(system: str, server: Server, cookie: str, send: Any, channel: str, n: int,
                  rate: float, every: int) -> dict[str, int]:
    from _common import pace

    base = f"http://127.0.0.1:{server.port}"
    seen, stop, connected = Seen(), threading.Event(), threading.Event()
    if system == "django-eventstream SSE":
        target, args = sse_client, (f"{base}/es/{channel}/", {}, lambda d: d["i"])
    elif system == "agent-channels SSE":
        target, args = sse_client, (f"{base}/agent-channels/{channel}/events/",
                                    {"Cookie": cookie}, lambda frame: frame["data"]["i"])
    else:
        target, args = ws_client, (f"ws://127.0.0.1:{server.port}/ws/agent-channels/{channel}/",
                                   cookie, base)
    client = threading.Thread(target=target, args=(*args, seen, every, stop, connected),
                              daemon=True)
    client.start()
    connected.wait(10)
    time.sleep(0.3)  # the client listens before the first event
    start = time.monotonic()
    for i in range(n):
        pace(start, i, 1 / rate)
        send(channel, {"i": i, "pad": "x" * 200})
    # Caught up: the last event arrived, or nothing new for 3 s.
    deadline, last = time.monotonic() + LEG_SECONDS, -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and (not seen.numbers or seen.numbers[-1] != n - 1):
        if len(seen.numbers) != last:
            last, quiet_since = len(seen.numbers), time.monotonic()
        elif time.monotonic() - quiet_since > 3:
            break
        time.sleep(0.05)
    stop.set()
    client.join(5)
    return seen.summary(n)


def bench_reconnects(rounds: int, n: int, rate: float, every: int, send_ours: Any,
                     send_theirs: Any) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    banner(f"A client reconnecting every {every} events while the producer sends {n} at "
           f"{rate:g}/s, {rounds} rounds")
    user = get_user_model().objects.create_user("esbench", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    systems = ["django-eventstream SSE", "agent-channels SSE", "agent-channels WebSocket"]
    totals = {s: {"received": 0, "lost": 0, "duplicates": 0, "reordered": 0, "reconnects": 0}
              for s in systems}
    server = Server()
    try:
        for r in range(rounds):
            for system in systems if r % 2 == 0 else list(reversed(systems)):
                send = send_theirs if system.startswith("django") else send_ours
                channel = f"esr-{r}-{systems.index(system)}-{os.getpid()}"
                result = reconnect_leg(system, server, cookie, send, channel, n, rate, every)
                print(f"  round {r + 1} {system}: {result}", flush=True)
                for key, value in result.items():
                    totals[system][key] += value
    finally:
        server.stop()
    rows = []
    for system in systems:
        t = totals[system]
        record("eventstream.reconnect", system=system, events=n * rounds, rate=rate,
               every=every, **t)
        rows.append([system, n * rounds, t["received"], t["lost"], t["duplicates"],
                     t["reordered"], t["reconnects"]])
    print(table(["client", "events sent", "received", "lost", "duplicated", "out of order",
                 "reconnects"], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=300, help="events per producer per leg")
    parser.add_argument("--rate", type=float, default=200, help="reconnect legs: events/s")
    parser.add_argument("--every", type=int, default=50,
                        help="reconnect legs: the client reconnects after this many events")
    parser.add_argument("--only", nargs="+", choices=["producers", "reconnect"],
                        default=["producers", "reconnect"])
    args = parser.parse_args()
    if importlib.util.find_spec("django_eventstream") is None:
        print("bench_eventstream: django-eventstream is not installed (pip install django-eventstream)")
        return 0
    configure_env("postgres", "redis")
    os.environ["DJANGO_SETTINGS_MODULE"] = "es_settings"
    with scratch_database():
        from django_eventstream import send_event
        from django_eventstream.models import Event as ESEvent

        from agent_channels import publish
        from agent_channels.models import Event

        def ours(channel: str, data: dict) -> None:
            publish(channel, "tick", data)

        def theirs(channel: str, data: dict) -> None:
            send_event(channel, "tick", data)

        if "reconnect" in args.only:
            bench_reconnects(args.rounds, 2 * args.n, args.rate, args.every, ours, theirs)
        for threads in (1, 4) if "producers" in args.only else ():
            banner(f"Producers: {threads} thread(s) × {args.n} events on one channel, "
                   f"{args.rounds} rounds")
            res: dict[str, list[float]] = {"publish": [], "send_event": []}
            contiguous = {"publish": True, "send_event": True}
            for r in range(args.rounds):
                order = [("publish", ours), ("send_event", theirs)]
                if r % 2:
                    order.reverse()
                for name, send in order:
                    channel = f"es-{threads}-{r}-{name}"
                    res[name].append(leg(send, channel, args.n, threads))
                    # (django-eventstream also stores a placeholder row with eid 0 per channel.)
                    if name == "publish":
                        seqs = list(Event.objects.filter(channel__name=channel)
                                    .order_by("seq").values_list("seq", flat=True))
                    else:
                        seqs = list(ESEvent.objects.filter(channel=channel, eid__gt=0)
                                    .order_by("eid").values_list("eid", flat=True))
                    contiguous[name] &= seqs == list(range(1, len(seqs) + 1))
            ratios = [a / b for a, b in zip(res["publish"], res["send_event"], strict=True)]
            record("eventstream.producers", threads=threads, publish_eps=median(res["publish"]),
                   send_event_eps=median(res["send_event"]), ratio=median(ratios),
                   publish_contiguous=contiguous["publish"],
                   send_event_contiguous=contiguous["send_event"])
            print(table(["what", "events/s (median)", "ids 1..N, no gap or duplicate", "ratio"], [
                ["django-eventstream send_event() (baseline)", fmt(median(res["send_event"])),
                 contiguous["send_event"], "1.00"],
                ["agent-channels publish()", fmt(median(res["publish"])), contiguous["publish"],
                 fmt(median(ratios))],
            ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
