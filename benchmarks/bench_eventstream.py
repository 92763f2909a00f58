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

Needs ``pip install django-eventstream`` (not a dependency of this project).
Delivery to clients (SSE against our WebSocket), catch-up and reconnects are not compared
here yet.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=300, help="events per producer per leg")
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

        for threads in (1, 4):
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
