"""Many runs per worker, recovery after a lost worker, and what faster heartbeats cost.

Real daphne processes (tests.asgi), real Celery workers, Redis (layer and broker) and a
scratch PostgreSQL database. Three parts, each bounded in count and time:

- **concurrency**: N runs of the demo's token stream (``--tokens`` tokens at
  ``--interval-ms``, no model; ``tests.agents.stamped``, whose tokens carry the time they
  were written) started together, each on its own channel with one WebSocket watcher, on
  2 worker processes. Candidate: ``-P threads -c THREADS`` with Django's psycopg pool of
  ``--pool`` connections per process. Baseline: Celery's prefork default at ``-c 2``
  (one run per child process), with fewer runs (they queue). Reported: peak concurrent
  runs (from the order of their events in the log), delta latency to watchers (receive
  time − the event's ``ts``, i.e. from its commit), token latency (receive time − the
  time the agent wrote the token: the coalescing slot included), both overall and while
  all runs stream (after the last run started, before the first ended, without the
  start-up burst), POST → first token, runs finished per second, and worker memory (RSS
  of the workers' process groups) per concurrent run.
- **heartbeats**: 100 runs waiting in ``ctx.sleep`` on 2 thread-pool workers; database
  transactions/s and run rows updated/s over a window, at the defaults (1.5 s beat,
  reaper every 2 s) against the old defaults (5 s beat, reaper every 30 s).
- **recovery**: a streaming run's worker is lost, another worker is alive: time from the
  loss to the run's ``run.started`` (``recovered: true``) and to its next token. "SIGKILL"
  kills the worker's process group on this machine (noticed by the dead pid); "SIGSTOP"
  freezes it, like a machine cut off, so only the heartbeat going stale can tell.

Ratios compare legs measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from _common import banner, configure_env, fmt, median, pct, scratch_database, table

PAGE = os.sysconf("SC_PAGE_SIZE")

#: tests.agents.stamped writes ``tok<i>@<unix time>``: latency per token, write → watcher.
STAMPED_TOKEN = re.compile(r"tok\d+@([0-9.]+) ")
STAMP = re.compile(r"@[0-9.]+")


TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu(leaders: list[int]) -> float:
    """CPU seconds used so far by the sessions led by ``leaders`` (live processes only)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) in leaders:
                total += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def pid_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by the processes ``pids`` (a daphne is not a session leader)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError, ValueError):
            continue
    return total


def group_rss(leaders: list[int]) -> int:
    """Bytes resident in the sessions led by ``leaders`` (a worker and its children)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) in leaders:  # field 6 of stat: the session id
                with open(f"/proc/{entry}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class RssSampler:
    def __init__(self, leaders: list[int]) -> None:
        self.leaders = leaders
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, group_rss(self.leaders))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def overlap(run_ids: list) -> int:
    """Most runs streaming at once, in the order the database took their events."""
    from agent_channels.models import Event

    edges = []
    for run_id in run_ids:
        ids = list(
            Event.objects.filter(run_id=run_id, name__in=["run.started", "run.completed"])
            .values_list("id", flat=True)
        )
        if ids:
            edges += [(min(ids), 1), (max(ids), -1)]
    most = current = 0
    for _id, step in sorted(edges):
        current += step
        most = max(most, current)
    return most


async def watch(daphne, cookie: str, channel: str, started: dict, out: dict) -> None:
    """Follow ``channel`` until its run ends, reconnecting with ``since`` if the server
    closes the socket (counted in ``out["reconnects"]``)."""
    import websockets

    deltas: list[float] = []
    text: list[str] = []
    first: float | None = None
    done = False
    since = 0
    deadline = time.monotonic() + out["timeout"]
    ready = False
    while not done and time.monotonic() < deadline:
        try:
            async with out["connecting"]:
                ws = await websockets.connect(
                    daphne.ws_url(channel) + f"?since={since}",
                    additional_headers={"Cookie": cookie,
                                        "Origin": f"http://127.0.0.1:{daphne.port}"},
                    max_queue=None,
                )
            if not ready:
                ready = True
                out["ready"] += 1
            async with ws:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                    while not done:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == "error" and frame.get("code") == "forbidden":
                            # Not load: the bench user must be allowed to read every channel.
                            raise RuntimeError(f"watcher refused: {frame}")
                        if frame.get("type") != "event":
                            continue
                        since = frame["seq"]
                        now = time.time()
                        if frame["event"] == "message.delta":
                            text.append(frame["data"]["text"])
                            for match in STAMPED_TOKEN.finditer(frame["data"]["text"]):
                                stamp = float(match.group(1))
                                out["token_at"].append((stamp, (now - stamp) * 1000))
                            ts = dt.datetime.fromisoformat(frame["ts"]).timestamp()
                            deltas.append((now - ts) * 1000)
                            out["delta_at"].append((ts, (now - ts) * 1000))
                            if first is None:
                                first = now
                        done = frame["event"].startswith("run.") and frame["event"] not in (
                            "run.queued", "run.started")
        except TimeoutError:
            break
        except (OSError, websockets.exceptions.WebSocketException):
            out["reconnects"] += 1
            await asyncio.sleep(0.2)
    if not done:
        out["timeouts"] += 1
    # Every token, once, in order: the deltas a watcher saw add up to the agent's text.
    if STAMP.sub("", "".join(text)) == "".join(f"tok{i} " for i in range(out["tokens"])):
        out["complete"] += 1
    out["deltas"] += deltas
    if first is not None and channel in started:
        out["first"].append((first - started[channel]) * 1000)


def concurrency_leg(label, pool, concurrency, runs, args, queue, daphnes, cookie, env):
    from agent_channels.runtime import start_run
    from tests.procs import CeleryWorker

    workers = [
        CeleryWorker(queue, pool=pool, concurrency=concurrency, **env) for _ in range(2)
    ]
    try:
        time.sleep(1.0)
        idle = group_rss([w.proc.pid for w in workers])
        cpu0 = group_cpu([w.proc.pid for w in workers])
        daphne_cpu0 = pid_cpu([d.proc.pid for d in daphnes])
        sampler = RssSampler([w.proc.pid for w in workers])
        tag = uuid.uuid4().hex[:6]
        channels = [f"scale-{tag}-{i}" for i in range(runs)]
        started: dict[str, float] = {}
        out = {"deltas": [], "delta_at": [], "token_at": [], "first": [], "ready": 0, "timeouts": 0, "reconnects": 0,
               "timeout": args.leg_timeout, "tokens": args.tokens, "complete": 0}
        run_ids: list = []

        async def main() -> float:
            # Sockets open a few at a time: a burst of handshakes is not what is measured.
            out["connecting"] = asyncio.Semaphore(8)
            tasks = [
                asyncio.create_task(watch(daphnes[i % len(daphnes)], cookie, ch, started, out))
                for i, ch in enumerate(channels)
            ]
            while out["ready"] < len(channels):
                await asyncio.sleep(0.05)
            t0 = time.time()

            def start(ch: str) -> None:
                from django.db import connection

                started[ch] = time.time()
                run = start_run(ch, "stamped", {"tokens": args.tokens,
                                                "interval_ms": args.interval_ms})
                run_ids.append(run.pk)
                connection.close()

            # Started 8 at a time, as a busy site's web processes would: all in ~1 s.
            with ThreadPoolExecutor(8) as starters:
                await asyncio.gather(
                    *[asyncio.wrap_future(starters.submit(start, ch)) for ch in channels]
                )
            await asyncio.gather(*tasks)
            return time.time() - t0

        wall = asyncio.run(main())
        cpu = group_cpu([w.proc.pid for w in workers]) - cpu0
        daphne_cpu = pid_cpu([d.proc.pid for d in daphnes]) - daphne_cpu0
        peak_rss = sampler.stop()
        peak = overlap(run_ids)
        from agent_channels.models import Event, Run

        events = Event.objects.filter(run_id__in=run_ids).count()
        finished = [r for r in Run.objects.filter(pk__in=run_ids) if r.finished_at and r.started_at]
        durations = [(r.finished_at - r.started_at).total_seconds() for r in finished]
        # Steady state: every run has started and none has ended yet (no start-up burst).
        last_start = max((at.timestamp() for at in Event.objects.filter(
            run_id__in=run_ids, name="run.started").values_list("created_at", flat=True)),
            default=0.0)
        first_end = min((r.finished_at.timestamp() for r in finished), default=0.0)
        steady = [ms for ts, ms in out["delta_at"] if last_start < ts < first_end]
        steady_tokens = [ms for at, ms in out["token_at"] if last_start < at < first_end]
        return {
            "label": label,
            "runs": runs,
            "peak": peak,
            "deltas": out["deltas"],
            "steady": steady,
            "tokens": [ms for _, ms in out["token_at"]],
            "steady_tokens": steady_tokens,
            "steady_s": max(first_end - last_start, 0.0),
            "first": out["first"],
            "runs_per_s": runs / wall,
            "rss_per_run": peak_rss / max(peak, 1),
            "marginal": max(peak_rss - idle, 0) / max(peak, 1),
            "timeouts": out["timeouts"],
            "complete": out["complete"],
            "reconnects": out["reconnects"],
            "duration": median(durations),
            "cpu_per_event": cpu * 1000 / max(events, 1),
            "daphne_cpu_per_event": daphne_cpu * 1000 / max(events, 1),
            "deltas_stored": Event.objects.filter(run_id__in=run_ids, name="message.delta").count(),
            "events_per_s": events / wall,
        }
    finally:
        for worker in workers:
            worker.stop()


def pg_counters(table_name: str) -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        commits = cursor.fetchone()[0]
        cursor.execute(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = %s", [table_name]
        )
        updates = cursor.fetchone()[0]
    return int(commits), int(updates)


def heartbeat_leg(label, beat, stale, reap, runs, window, queue, env):
    from django.db import connection

    from agent_channels.channel.control import send_control
    from agent_channels.models import Run, RunStatus
    from agent_channels.runtime import start_run
    from tests.procs import CeleryWorker

    env = {**env, "AGCH_HEARTBEAT": str(beat), "AGCH_STALE_AFTER": str(stale),
           "AGCH_REAP_EVERY": str(reap)}
    workers = [CeleryWorker(queue, pool="threads", concurrency=runs, **env) for _ in range(2)]
    tag = uuid.uuid4().hex[:6]
    channels = [f"beat-{tag}-{i}" for i in range(runs)]
    try:
        for ch in channels:
            start_run(ch, "listener", {"seconds": 120})
        deadline = time.monotonic() + 60
        while Run.objects.filter(channel__name__in=channels, status=RunStatus.RUNNING).count() < runs:
            if time.monotonic() > deadline:
                raise RuntimeError("the runs did not all start")
            time.sleep(0.2)
        time.sleep(2.0)  # past the burst of starts
        # Every beat writes one timestamp to all of a worker's runs in one UPDATE: the
        # distinct values seen say how many statements ran and how many rows they wrote.
        # (pg_stat counters reach their views up to 10 s late, too coarse for this.)
        run_ids = list(Run.objects.filter(channel__name__in=channels).values_list("pk", flat=True))
        seen: dict = {}
        before = set(Run.objects.filter(pk__in=run_ids).values_list("heartbeat_at", flat=True))
        commits0 = pg_counters(Run._meta.db_table)[0]
        end = time.monotonic() + window
        while time.monotonic() < end:
            for pk, beat_at in Run.objects.filter(pk__in=run_ids).values_list("pk", "heartbeat_at"):
                if beat_at not in before:
                    seen.setdefault(beat_at, set()).add(pk)
            time.sleep(0.1)
        connection.close()
        statements = len(seen)
        rows = sum(len(pks) for pks in seen.values())
        return {"label": label, "statements": max(statements, 0) / window,
                "rows": max(rows, 0) / window, "runs": runs,
                "commits": (pg_counters(Run._meta.db_table)[0] - commits0) / window}
    finally:
        for ch in channels:
            send_control(ch, "cancel", None)
        for worker in workers:
            worker.stop()


def recovery_leg(mode, tries, queue, env):
    from agent_channels.channel.control import send_control
    from agent_channels.models import Event, Run
    from agent_channels.runtime import start_run
    from tests.procs import CeleryWorker

    to_run: list[float] = []
    to_token: list[float] = []
    workers = [CeleryWorker(queue, pool="threads", concurrency=8, **env) for _ in range(2)]
    try:
        for attempt in range(tries):
            channel = f"recover-{mode}-{uuid.uuid4().hex[:6]}"
            run = start_run(channel, "demo", {"tokens": 100_000, "interval_ms": 50})
            deadline = time.monotonic() + 30
            while Event.objects.filter(run=run, name="message.delta").count() < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("the run did not stream")
                time.sleep(0.05)
            run.refresh_from_db()
            pid = int(run.worker.split(":")[1])
            victim = next(w for w in workers if w.proc.pid == pid)
            t0 = time.time()
            os.killpg(victim.proc.pid, signal.SIGKILL if mode == "SIGKILL" else signal.SIGSTOP)
            if mode == "SIGKILL":
                victim.proc.wait(10)  # reaped, as a service manager would: no zombie left
            recovered = None
            token = None
            deadline = time.monotonic() + 90
            while token is None and time.monotonic() < deadline:
                event = Event.objects.filter(
                    run=run, name="run.started", data__recovered=True
                ).first()
                if event is not None:
                    recovered = event
                    token = (
                        Event.objects.filter(run=run, name="message.delta", seq__gt=event.seq)
                        .order_by("seq")
                        .first()
                    )
                time.sleep(0.02)
            if recovered is not None:
                to_run.append(recovered.created_at.timestamp() - t0)
            if token is not None:
                to_token.append(token.created_at.timestamp() - t0)
            send_control(channel, "cancel", None)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(10)
            victim.stop()
            workers.remove(victim)
            workers.append(CeleryWorker(queue, pool="threads", concurrency=8, **env))
            deadline = time.monotonic() + 20
            while Run.objects.filter(pk=run.pk, status="running").exists():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            print(f"  {mode} try {attempt + 1}: run.started after "
                  f"{fmt(to_run[-1] if recovered else float('nan'))} s", flush=True)
    finally:
        for worker in workers:
            worker.stop()
    return to_run, to_token


LEGS = ("prefork", "fixed", "stretch", "pubsub")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--baseline-runs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--interval-ms", type=int, default=50)
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--leg-timeout", type=float, default=120)
    parser.add_argument("--beat-runs", type=int, default=100)
    parser.add_argument("--beat-window", type=float, default=9.0)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=["concurrency", "heartbeats", "recovery"])
    parser.add_argument("--pubsub-leg", action="store_true",
                        help="add a concurrency leg on channels-redis's PUB/SUB layer")
    parser.add_argument("--legs", nargs="*", choices=LEGS,
                        help="the concurrency legs to run (default: all but pubsub, which "
                             "--pubsub-leg adds); ratios are to the first")
    args = parser.parse_args()
    args.runs = min(args.runs, 400)  # bounded: sockets, connections and time
    queue = f"agch-bench-{uuid.uuid4().hex[:8]}"
    configure_env("postgres", "redis")
    os.environ["AGCH_RUN_BACKEND"] = "celery"
    os.environ["AGCH_CELERY_QUEUE"] = queue
    os.environ["AGCH_BROKER_URL"] = "redis://127.0.0.1:6379/7"
    # The package defaults, not the test suite's fast ones.
    os.environ.update(AGCH_HEARTBEAT="1.5", AGCH_STALE_AFTER="6", AGCH_REAP_EVERY="2")
    # Pooled processes as example_project.env deploys them: no health check per checkout.
    os.environ["AGCH_DB_HEALTH_CHECKS"] = "0"
    # One bench user watches every run, as that many users would: lift the per-user socket
    # quota (50), which would otherwise refuse most watchers with 4429.
    os.environ["AGCH_MAX_SOCKETS"] = "1000"
    pooled = {"AGCH_DB_POOL": str(args.pool)}
    with scratch_database():
        from django.contrib.auth import get_user_model
        from django.test import Client

        from tests.procs import Daphne

        user = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
        client = Client()
        client.force_login(user)
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        # daphne pooled too, as deployed: without a pool every socket's log read opens and
        # closes a PostgreSQL connection (a fifth of daphne's CPU under this load).
        daphnes = [Daphne(**pooled), Daphne(**pooled)]
        try:
            if "concurrency" in args.only:
                banner(f"Concurrency: demo runs at {1000 / args.interval_ms:.0f} tokens/s, "
                       f"{args.tokens} tokens each, 2 worker processes, 2 daphne")
                chosen = args.legs or [leg for leg in LEGS if leg != "pubsub" or args.pubsub_leg]
                legs = []
                if "prefork" in chosen:
                    legs.append(concurrency_leg("prefork -c 2 (default)", "prefork", 2,
                                                args.baseline_runs, args, queue, daphnes, cookie,
                                                {}))
                if "fixed" in chosen:
                    legs.append(concurrency_leg(
                        f"threads -c {args.threads}, pool {args.pool}, fixed slot", "threads",
                        args.threads, args.runs, args, queue, daphnes, cookie,
                        {**pooled, "AGCH_COALESCE_MAX_WINDOW_MS": "0"}))
                if "stretch" in chosen:
                    legs.append(concurrency_leg(
                        f"threads -c {args.threads}, pool {args.pool}", "threads", args.threads,
                        args.runs, args, queue, daphnes, cookie, pooled))
                if "pubsub" in chosen:
                    for daphne in daphnes:
                        daphne.stop()
                    os.environ["AGCH_LAYER_BACKEND"] = "pubsub"
                    daphnes[:] = [Daphne(**pooled), Daphne(**pooled)]
                    legs.append(concurrency_leg(
                        f"threads -c {args.threads}, pool {args.pool}, PUB/SUB layer", "threads",
                        args.threads, args.runs, args, queue, daphnes, cookie, pooled))
                    os.environ.pop("AGCH_LAYER_BACKEND")
                base = legs[0]
                rows = [
                    [leg["label"], leg["runs"], leg["peak"], fmt(leg["peak"] / base["peak"]) + "×",
                     len(leg["deltas"]), fmt(pct(leg["deltas"], 50)), fmt(pct(leg["deltas"], 99)),
                     f'{fmt(pct(leg["steady"], 50))} / {fmt(pct(leg["steady"], 99))} '
                     f'({len(leg["steady"])} in {fmt(leg["steady_s"])} s)',
                     f'{fmt(pct(leg["tokens"], 50))} / {fmt(pct(leg["tokens"], 99))}',
                     f'{fmt(pct(leg["steady_tokens"], 50))} / {fmt(pct(leg["steady_tokens"], 99))}',
                     fmt(median(leg["first"])), fmt(pct(leg["first"], 99)),
                     fmt(leg["runs_per_s"]), fmt(leg["runs_per_s"] / base["runs_per_s"]) + "×",
                     fmt(leg["rss_per_run"] / 2**20), fmt(leg["marginal"] / 2**20),
                     f'{leg["complete"]} / {leg["runs"]}',
                     f'{leg["timeouts"]} / {leg["reconnects"]}', fmt(leg["duration"]), fmt(leg["events_per_s"]),
                     fmt(leg["cpu_per_event"]), fmt(leg["daphne_cpu_per_event"]),
                     leg["deltas_stored"],
                     fmt(leg["runs"] * args.tokens / max(leg["deltas_stored"], 1))]
                    for leg in legs
                ]
                print(table(["pool", "runs", "peak concurrent", "peak ratio", "deltas seen",
                             "delta p50 ms", "delta p99 ms",
                             "all streaming: delta p50 / p99 ms",
                             "token written → watcher p50 / p99 ms",
                             "all streaming: token p50 / p99 ms", "first token p50 ms",
                             "first token p99 ms", "runs/s", "runs/s ratio",
                             "RSS MB / concurrent run", "marginal MB / run",
                             "watchers with every token", "watcher timeouts / reconnects", "run duration p50 s", "events/s",
                             "worker CPU ms / event", "daphne CPU ms / event",
                             "deltas stored", "tokens / delta"], rows))
            if "heartbeats" in args.only:
                banner(f"Heartbeats: {args.beat_runs} runs waiting on 2 thread-pool workers, "
                       f"{args.beat_window:.0f} s window")
                legs = [
                    heartbeat_leg("old defaults: beat 5 s, stale 60 s, reap 30 s", 5.0, 60.0,
                                  30.0, args.beat_runs, args.beat_window, queue, pooled),
                    heartbeat_leg("defaults: beat 1.5 s, stale 6 s, reap 2 s", 1.5, 6.0, 2.0,
                                  args.beat_runs, args.beat_window, queue, pooled),
                ]
                rows = [[leg["label"], fmt(leg["statements"]), fmt(leg["rows"] * 100 / leg["runs"]),
                         fmt(leg["statements"] / max(legs[0]["statements"], 1e-9)) + "×"]
                        for leg in legs]
                print(table(["settings", "heartbeat UPDATEs/s (2 workers)",
                             "run rows written/s per 100 runs", "ratio"], rows))
            if "recovery" in args.only:
                banner(f"Recovery: a streaming run's worker is lost ({args.tries} tries each)")
                rows = []
                for mode in ("SIGKILL", "SIGSTOP"):
                    to_run, to_token = recovery_leg(mode, args.tries, queue, pooled)
                    rows.append([mode, len(to_run), fmt(median(to_run)), fmt(max(to_run or [0])),
                                 fmt(median(to_token)), fmt(max(to_token or [0]))])
                print(table(["loss", "n", "→ run.started p50 s", "max s", "→ next token p50 s",
                             "max s"], rows))
        finally:
            for daphne in daphnes:
                daphne.stop()


if __name__ == "__main__":
    sys.exit(main())
