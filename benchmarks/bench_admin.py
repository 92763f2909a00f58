"""What a page of the run admin costs with 100,000 runs (PostgreSQL by default).

Each admin URL (the run list unfiltered, filtered, searched, by date, a channel list page)
is fetched through Django's test client as a superuser; the figure is the median time
per page and its query count, against a baseline measured in the same rounds: loading
the same 100 rows alone (``list(Run.objects.select_related(...).order_by(...)[:100])``).
Baseline and page alternate each round. The page query's plan is printed so the use of
``agch_run_created_idx`` can be checked.

    .venv/bin/python benchmarks/bench_admin.py             # ~1 min, most of it the fill
    .venv/bin/python benchmarks/bench_admin.py --db sqlite --runs 20000
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import banner, configure_env, fmt, median, record, scratch_database, table

CHANNELS = 1000
USERS = 50
#: Stop a leg's rounds after this many seconds, whatever --rounds says.
LEG_SECONDS = 30.0


def fill(runs: int) -> None:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.utils import timezone

    from agent_channels.models import Channel, Run, RunStatus

    users = User.objects.bulk_create(User(username=f"owner{i}") for i in range(USERS))
    channels = Channel.objects.bulk_create(
        Channel(name=f"bench:{i}", owner=users[i % USERS]) for i in range(CHANNELS)
    )
    statuses = [RunStatus.COMPLETED] * 8 + [RunStatus.FAILED, RunStatus.CANCELLED]
    start = timezone.now() - datetime.timedelta(days=90)
    step = datetime.timedelta(days=90) / runs
    batch: list[Run] = []
    for i in range(runs):
        created = start + step * i
        batch.append(
            Run(
                channel=channels[i % CHANNELS],
                agent=("demo", "chat", "echo")[i % 3],
                status=statuses[i % len(statuses)],
                created_by=users[i % USERS],
                created_at=created,
                started_at=created,
                finished_at=created + datetime.timedelta(seconds=i % 120),
                model=("gpt-4o-mini", "gpt-4o", "local")[i % 3],
                prompt_tokens=500 + i % 1000,
                completion_tokens=100 + i % 300,
            )
        )
        if len(batch) == 5000:
            Run.objects.bulk_create(batch)
            batch.clear()
    Run.objects.bulk_create(batch)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def page_plan() -> str:
    """EXPLAIN of the run list's page query, as the changelist builds it."""
    from django.contrib.admin.sites import site
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import RequestFactory

    from agent_channels.models import Run

    if connection.vendor != "postgresql":
        return "(EXPLAIN shown on PostgreSQL only)"
    request = RequestFactory().get("/admin/agent_channels/run/")
    request.user = User.objects.get(username="bench-admin")
    changelist = site._registry[Run].get_changelist_instance(request)
    sql, params = changelist.result_list.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN ANALYZE " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def aggregate_cost(rounds: int) -> tuple[float, float]:
    """Median ms of the totals' aggregate against a plain ``COUNT(*)`` of the same runs."""
    from agent_channels.models import Run
    from agent_channels.runtime.pricing import usage_totals

    counts: list[float] = []
    totals: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        Run.objects.count()
        counts.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        usage_totals(Run.objects.all())
        totals.append((time.perf_counter() - began) * 1000)
    return median(counts), median(totals)


class SQLTimer:
    """A database execute wrapper that records each query's milliseconds."""

    def __init__(self, into: list[float]) -> None:
        self.into = into

    def __call__(self, execute, query, params, many, context):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            self.into.append((time.perf_counter() - began) * 1000)


def measure(rounds: int) -> list[dict[str, object]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from agent_channels.models import Run

    admin = User.objects.create_superuser("bench-admin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin)
    urls = {
        "run list": "/admin/agent_channels/run/",
        "run list, page 50": "/admin/agent_channels/run/?p=50",
        "status=failed": "/admin/agent_channels/run/?status__exact=failed",
        "agent=chat": "/admin/agent_channels/run/?agent=chat",
        "past 7 days": "/admin/agent_channels/run/?created_at__gte="
        + quote(str(timezone.now() - datetime.timedelta(days=7))),
        "search channel": "/admin/agent_channels/run/?q=bench:42",
        "channel list": "/admin/agent_channels/channel/",
    }

    def baseline() -> None:
        list(Run.objects.select_related("channel", "created_by").order_by("-created_at")[:100])

    results = []
    for label, url in urls.items():
        assert client.get(url).status_code == 200  # warm: templates, permissions
        sql: list[float] = []
        with connection.execute_wrapper(SQLTimer(sql)):
            client.get(url)
        pages: list[float] = []
        bases: list[float] = []
        ratios: list[float] = []
        leg_started = time.monotonic()
        for i in range(rounds):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            took = [0.0, 0.0]
            for which in order:
                began = time.perf_counter()
                if which == 0:
                    baseline()
                else:
                    client.get(url)
                took[which] = (time.perf_counter() - began) * 1000
            bases.append(took[0])
            pages.append(took[1])
            ratios.append(took[1] / took[0])
            if time.monotonic() - leg_started > LEG_SECONDS:
                break
        results.append(
            {
                "page": label,
                "queries": len(sql),
                "sql_ms": sum(sql),
                "ms": median(pages),
                "baseline_ms": median(bases),
                "ratio": median(ratios),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    configure_env(args.db, "memory")
    with scratch_database():
        began = time.monotonic()
        fill(args.runs)
        print(f"filled {args.runs:,} runs on {CHANNELS} channels in "
              f"{time.monotonic() - began:.0f} s")
        results = measure(args.rounds)
        banner(f"Admin pages with {args.runs:,} runs ({args.db})")
        print(
            table(
                ["page", "queries", "SQL ms", "ms / page", "baseline ms", "page / baseline"],
                [
                    [
                        r["page"],
                        r["queries"],
                        fmt(r["sql_ms"]),  # type: ignore[arg-type]
                        fmt(r["ms"]),  # type: ignore[arg-type]
                        fmt(r["baseline_ms"]),  # type: ignore[arg-type]
                        fmt(r["ratio"], 1),  # type: ignore[arg-type]
                    ]
                    for r in results
                ],
            )
        )
        count_ms, totals_ms = aggregate_cost(args.rounds)
        print(
            f"\nOver all {args.runs:,} runs: COUNT(*) {fmt(count_ms)} ms, the totals' "
            f"aggregate (count and sums by model) {fmt(totals_ms)} ms "
            f"({fmt(totals_ms / count_ms, 1)}x)."
        )
        print("\nThe page query's plan:\n")
        print(page_plan())
        for r in results:
            record("admin", db=args.db, runs=args.runs, **r)


if __name__ == "__main__":
    main()
