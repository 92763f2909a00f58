"""Evidence for the slow spots named in benchmarks/README.md (PostgreSQL, scratch db).

    .venv/bin/python benchmarks/probe_core.py

Prints: the statements one publish() sends, what a new PostgreSQL connection costs,
and how many distinct PostgreSQL backends a MessageStream's flushes use.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_env, pct, scratch_database


def main() -> None:
    configure_env("postgres", "memory")
    with scratch_database():
        from django.db import connection, connections
        from django.test.utils import CaptureQueriesContext

        from agent_channels import publish
        from agent_channels.channel import publishing
        from agent_channels.channel.publishing import MessageStream

        publish("probe", "x", {})
        with CaptureQueriesContext(connection) as queries:
            publish("probe", "x", {})
        print("statements per publish():")
        for q in queries.captured_queries:
            print("   ", q["sql"][:70])

        costs = []
        for _ in range(20):
            connection.close()
            t0 = time.perf_counter()
            connection.ensure_connection()
            costs.append(time.perf_counter() - t0)
        print(f"new PostgreSQL connection: p50 {pct(costs, 50) * 1e3:.2f} ms")

        original = publishing.append
        backends: list[tuple[bool, int]] = []
        import threading

        main_thread = threading.get_ident()

        def recording(*args: Any, **kwargs: Any) -> Any:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backends.append((threading.get_ident() != main_thread, cursor.fetchone()[0]))
            return original(*args, **kwargs)

        publishing.append = recording  # type: ignore[assignment]
        try:
            stream = MessageStream("probe-stream", window_ms=10)
            for _ in range(300):  # ~300 ms of tokens at ~1,000/s, bounded
                stream.write("t")
                time.sleep(0.001)
            time.sleep(0.05)
            stream.complete()
        finally:
            publishing.append = original  # type: ignore[assignment]
        timed = [pid for flusher, pid in backends if flusher]
        inline = [pid for flusher, pid in backends if not flusher]
        print(f"MessageStream window 10 ms: {len(inline)} inline appends on "
              f"{len(set(inline))} backend(s); {len(timed)} timed flushes on "
              f"{len(set(timed))} distinct backend(s) (CONN_MAX_AGE="
              f"{connection.settings_dict['CONN_MAX_AGE']})")


if __name__ == "__main__":
    main()
