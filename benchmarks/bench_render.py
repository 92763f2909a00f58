"""What rendering ``{% agent_channel %}`` costs for a long channel.

A channel of 10,000 events (a realistic mix: runs, tool calls, input requests, and mostly
``message.delta``) is rendered by the template tag, against a baseline of just loading the
same rows: ``list(Event.objects.filter(channel=...).order_by("seq"))``. Baseline and tag
alternate (and swap order) each round; the figure is the median of per-round ratios.

    .venv/bin/python benchmarks/bench_render.py --db both
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import banner, configure_env, fmt, median, scratch_database, table

CHANNEL = "bench:render"


def fill(events: int) -> None:
    from agent_channels.channel.log import EventDraft, append

    drafts: list[EventDraft] = []
    run = 0
    while len(drafts) < events:
        run += 1
        drafts += [
            EventDraft("run.queued", {"agent": "demo", "input": {"n": run}}),
            EventDraft("run.started", {"attempt": 1}),
            EventDraft("client.input", {"data": {"text": f"question {run}"}}),
        ]
        for m in range(3):
            message_id = f"r{run}m{m}"
            drafts += [
                EventDraft("message.delta", {"message_id": message_id, "text": f"token{i} " * 4})
                for i in range(25)
            ]
            drafts.append(
                EventDraft(
                    "message.completed",
                    {
                        "message_id": message_id,
                        "text": "".join(f"token{i} " * 4 for i in range(25)),
                    },
                )
            )
        drafts += [
            EventDraft(
                "tool.started",
                {
                    "name": "calculator",
                    "call_id": f"c{run}",
                    "arguments": '{"expression": "17*23"}',
                },
            ),
            EventDraft(
                "tool.completed",
                {
                    "name": "calculator",
                    "call_id": f"c{run}",
                    "arguments": "",
                    "result": 391,
                    "ok": True,
                },
            ),
            EventDraft("run.completed", {"output": {"ok": True}}),
        ]
    drafts = drafts[:events]
    for start in range(0, len(drafts), 1000):
        append(CHANNEL, drafts[start : start + 1000])


def baseline() -> float:
    from agent_channels.models import Event

    started = time.perf_counter()
    rows = list(Event.objects.filter(channel__name=CHANNEL).order_by("seq"))
    assert rows
    return time.perf_counter() - started


def tag(user: object) -> tuple[float, int]:
    from django.template import Context, Template
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user  # type: ignore[attr-defined]
    template = Template("{% load agent_channels %}{% agent_channel name limit=limit %}")
    started = time.perf_counter()
    html = template.render(Context({"request": request, "name": CHANNEL, "limit": LIMIT}))
    # A user the access policy refuses gets an empty shell: that is not what is measured.
    if "run.completed" not in html and "calculator" not in html:
        raise RuntimeError("the tag rendered no events: is the bench user allowed to read?")
    return time.perf_counter() - started, len(html)


LIMIT = 500


def run(db: str, events: int, rounds: int) -> list[list[str]]:
    configure_env(db, "memory")
    rows = []
    with scratch_database():
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
        fill(events)
        tag(user)  # warm the template and import caches
        base, cand, ratios, size = [], [], [], 0
        for r in range(rounds):
            if r % 2:
                c, size = tag(user)
                b = baseline()
            else:
                b = baseline()
                c, size = tag(user)
            base.append(b)
            cand.append(c)
            ratios.append(c / b)
        rows.append(
            [
                db,
                str(events),
                fmt(median(base) * 1000, 1),
                fmt(median(cand) * 1000, 1),
                fmt(median(ratios)),
                f"{size // 1024} KiB",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.db == "both":
        # Django settles on one database per process: one child process per database.
        import subprocess

        for db in ("sqlite", "postgres"):
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--db",
                    db,
                    "--events",
                    str(args.events),
                    "--rounds",
                    str(args.rounds),
                ],
                check=True,
                timeout=600,
            )
        return
    banner(f"Rendering a {args.events}-event channel: tag vs list(Event.objects.filter(...))")
    rows = run(args.db, args.events, args.rounds)
    print(table(["db", "events", "baseline ms", "tag ms", "tag / baseline", "html"], rows))


if __name__ == "__main__":
    main()
