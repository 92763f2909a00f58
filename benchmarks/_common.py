"""Shared plumbing for the benchmarks: a scratch database, Django setup, timing helpers.

Every benchmark runs against its own scratch database (``agch_bench_<pid>`` on
PostgreSQL, a temp file on SQLite) that is created before and dropped after the run,
so it never touches the test suites other people are running.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def configure_env(db: str, layer: str, db_name: str | None = None) -> dict[str, str]:
    """Set (and return) the environment that selects tests.settings' backends."""
    for path in (str(ROOT), str(ROOT / "example_project")):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["AGCH_DB"] = db
    os.environ["AGCH_LAYER"] = layer
    os.environ.setdefault("AGCH_RUN_ID", f"bench{os.getpid()}")
    if db_name is None:
        if db == "postgres":
            db_name = f"agch_bench_{os.getpid()}"
        else:
            db_name = str(Path(tempfile.gettempdir()) / f"agch-bench-{os.getpid()}.sqlite3")
    os.environ["AGCH_DB_NAME"] = db_name
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example_project")])
    return child_env()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def scratch_database() -> Iterator[None]:
    """Create the database named by AGCH_DB_NAME, migrate it, drop it afterwards."""
    db, name = os.environ["AGCH_DB"], os.environ["AGCH_DB_NAME"]
    if db == "postgres":
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}"')
        _pg_admin(f'CREATE DATABASE "{name}"')
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    try:
        call_command("migrate", verbosity=0, interactive=False)
        yield
    finally:
        connections.close_all()
        if db == "postgres":
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name + suffix)


def setup_child() -> None:
    """In a worker process: the parent already set the environment; just set Django up."""
    for path in (str(ROOT), str(ROOT / "example_project")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import django

    django.setup()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def pace(start: float, i: int, interval: float) -> None:
    """Sleep until ``start + i * interval`` (monotonic); never sleeps when behind."""
    delay = start + i * interval - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def banner(text: str) -> None:
    load = os.getloadavg()
    print(f"\n## {text}\n")
    print(f"_{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores_\n", flush=True)


def record(section: str, **fields: Any) -> None:
    """Append one result as a JSON line to ``$AGCH_BENCH_JSON`` when it is set.

    ``benchmarks/run_all.py`` sets it and reads the lines back for its table, JSON and
    plots; a line per result (not one file at exit) survives the sub-processes
    ``bench_log.py --db both`` starts and a script that fails half-way.
    """
    path = os.environ.get("AGCH_BENCH_JSON")
    if not path:
        return
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in fields.items()}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"section": section, **clean}) + "\n")
