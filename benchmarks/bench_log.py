"""Persistence benchmarks for the channel log, on SQLite (WAL, IMMEDIATE) and PostgreSQL.

Prints Markdown tables. Every figure is a median over interleaved rounds: baseline and
candidate alternate (and swap order each round) so machine noise hits both alike; read
the ratios, not the absolute rates.

    .venv/bin/python benchmarks/bench_log.py --db both

Sections:
  1. publish() per event vs ``Event.objects.create`` per row with a hand-computed seq.
  2. append() in batches of 10/100 vs ``bulk_create`` of the same batches.
  3. 1/2/4 writer processes publishing to one channel vs the same processes doing raw
     creates with disjoint seqs (no reservation).
  4. MessageStream fed 1,000 tokens/s: rows per token and token-to-committed-row latency,
     after a quiet window and inside a burst, for several COALESCE windows.
  5. The batched flush of a busy process: ``append_many()`` of one delta on each of 200
     channels (as a worker streaming 200 runs commits them) vs ``bulk_create`` of the same
     rows with hand-computed seqs in one transaction. Events/s and this process's CPU per
     event (what the flush costs the worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    banner,
    child_env,
    configure_env,
    fmt,
    median,
    pace,
    pct,
    record,
    scratch_database,
    setup_child,
    table,
)

PAD = "x" * 200  # a realistic small event body
LEG_SECONDS = 30.0  # hard cap on any single timed leg


# -- helpers that need Django --------------------------------------------------------------


def _channel(name: str) -> int:
    from agent_channels.models import Channel

    return Channel.objects.get_or_create(name=name)[0].pk


def leg_create(name: str, n: int) -> float:
    """Baseline: one ``Event.objects.create`` per row, seq computed here, autocommit."""
    from django.utils import timezone

    from agent_channels.models import Event

    cid = _channel(name)
    t0 = time.perf_counter()
    done = 0
    for i in range(n):
        Event.objects.create(channel_id=cid, seq=i + 1, name="tick",
                             data={"i": i, "pad": PAD}, created_at=timezone.now())
        done += 1
        if time.perf_counter() - t0 > LEG_SECONDS:
            break
    return done / (time.perf_counter() - t0)


def leg_publish(name: str, n: int) -> float:
    from agent_channels import publish

    t0 = time.perf_counter()
    done = 0
    for i in range(n):
        publish(name, "tick", {"i": i, "pad": PAD})
        done += 1
        if time.perf_counter() - t0 > LEG_SECONDS:
            break
    return done / (time.perf_counter() - t0)


def leg_bulk_create(name: str, n: int, batch: int) -> float:
    from django.utils import timezone

    from agent_channels.models import Event

    cid = _channel(name)
    t0 = time.perf_counter()
    done = 0
    for start in range(0, n, batch):
        now = timezone.now()
        Event.objects.bulk_create([
            Event(channel_id=cid, seq=start + k + 1, name="tick",
                  data={"i": start + k, "pad": PAD}, created_at=now)
            for k in range(batch)
        ])
        done += batch
        if time.perf_counter() - t0 > LEG_SECONDS:
            break
    return done / (time.perf_counter() - t0)


def leg_append(name: str, n: int, batch: int) -> float:
    from agent_channels.channel.log import EventDraft, append

    t0 = time.perf_counter()
    done = 0
    for start in range(0, n, batch):
        append(name, [EventDraft("tick", {"i": start + k, "pad": PAD}) for k in range(batch)])
        done += batch
        if time.perf_counter() - t0 > LEG_SECONDS:
            break
    return done / (time.perf_counter() - t0)


def interleave(rounds: int, legs: dict[str, Any]) -> dict[str, list[Any]]:
    """Run each leg once per round, rotating the order; returns all results per leg."""
    names = list(legs)
    results: dict[str, list[Any]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for key in order:
            results[key].append(legs[key](f"{key}-{r}"))
    return results


# -- 1 and 2: single writer --------------------------------------------------------------------


def bench_single(db: str, rounds: int, n: int) -> None:
    banner(f"[{db}] 1. publish() per event vs Event.objects.create per row ({n} events/leg, "
           f"{rounds} rounds)")
    res = interleave(rounds, {
        "create": lambda ch: leg_create(ch, n),
        "publish": lambda ch: leg_publish(ch, n),
    })
    ratios = [p / c for p, c in zip(res["publish"], res["create"], strict=True)]
    record("log.single", db=db, create_eps=median(res["create"]), publish_eps=median(res["publish"]),
           ratio=median(ratios))
    print(table(
        ["what", "events/s (median)", "ratio vs create (median of per-round)"],
        [["Event.objects.create, manual seq (baseline)", fmt(median(res["create"])), "1.00"],
         ["publish()", fmt(median(res["publish"])), fmt(median(ratios))]],
    ))

    banner(f"[{db}] 2. append() batches vs bulk_create batches ({n * 4} events/leg)")
    rows = []
    for batch in (10, 100):
        res = interleave(rounds, {
            f"bulk{batch}": lambda ch, b=batch: leg_bulk_create(ch, n * 4, b),
            f"append{batch}": lambda ch, b=batch: leg_append(ch, n * 4, b),
        })
        ratios = [a / b for a, b in zip(res[f"append{batch}"], res[f"bulk{batch}"], strict=True)]
        record("log.batch", db=db, batch=batch, bulk_create_eps=median(res[f"bulk{batch}"]),
               append_eps=median(res[f"append{batch}"]), ratio=median(ratios))
        rows.append([f"×{batch}", fmt(median(res[f"bulk{batch}"])),
                     fmt(median(res[f"append{batch}"])), fmt(median(ratios))])
    print(table(["batch", "bulk_create events/s", "append() events/s", "ratio"], rows))


# -- 5: the batched flush ----------------------------------------------------------------------


def _delta(channel: str, i: int) -> dict[str, Any]:
    return {"message_id": channel, "text": f"token {i} of a streamed answer "}


def leg_bulk_many(prefix: str, channels: int, flushes: int) -> tuple[float, float]:
    """Baseline: the same rows, one ``bulk_create`` in one transaction per flush."""
    from django.db import transaction
    from django.utils import timezone

    from agent_channels.models import Event

    ids = {f"{prefix}-{i}": _channel(f"{prefix}-{i}") for i in range(channels)}
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for r in range(flushes):
        now = timezone.now()
        with transaction.atomic():
            Event.objects.bulk_create([
                Event(channel_id=cid, seq=r + 1, name="message.delta", data=_delta(name, r),
                      created_at=now)
                for name, cid in ids.items()
            ])
        done += channels
        if time.perf_counter() - t0 > LEG_SECONDS:
            break
    return done / (time.perf_counter() - t0), (time.process_time() - c0) * 1e6 / done


def leg_append_many(prefix: str, channels: int, flushes: int) -> tuple[float, float]:
    from agent_channels.channel.log import EventDraft, append_many

    names = [f"{prefix}-{i}" for i in range(channels)]
    for name in names:
        _channel(name)
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for r in range(flushes):
        append_many(
            [(name, [EventDraft("message.delta", _delta(name, r))]) for name in names],
            returning=False,
        )
        done += channels
        if time.perf_counter() - t0 > LEG_SECONDS:
            break
    return done / (time.perf_counter() - t0), (time.process_time() - c0) * 1e6 / done


def bench_many(db: str, rounds: int, channels: int, flushes: int) -> None:
    banner(f"[{db}] 5. batched flush: append_many() of one delta on each of {channels} channels "
           f"vs bulk_create of the same rows ({flushes} flushes/leg, {rounds} rounds)")
    res = interleave(rounds, {
        "bulk": lambda ch: leg_bulk_many(ch, channels, flushes),
        "many": lambda ch: leg_append_many(ch, channels, flushes),
    })
    rate = [m[0] / b[0] for m, b in zip(res["many"], res["bulk"], strict=True)]
    cpu = [m[1] / b[1] for m, b in zip(res["many"], res["bulk"], strict=True)]
    record("log.many", db=db, channels=channels, bulk_eps=median([b[0] for b in res["bulk"]]),
           many_eps=median([m[0] for m in res["many"]]), rate_ratio=median(rate),
           cpu_ratio=median(cpu))
    print(table(
        ["what", "events/s (median)", "CPU µs / event (median)", "ratio events/s",
         "ratio CPU / event"],
        [["bulk_create, seqs by hand (baseline)", fmt(median([b[0] for b in res["bulk"]])),
          fmt(median([b[1] for b in res["bulk"]])), "1.00", "1.00"],
         ["append_many(returning=False)", fmt(median([m[0] for m in res["many"]])),
          fmt(median([m[1] for m in res["many"]])), fmt(median(rate)), fmt(median(cpu))]],
    ))


# -- 3: concurrent writers ---------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:
    """A writer process: set up, say ready, wait for 'go' on stdin, write, report."""
    setup_child()
    from django.utils import timezone

    from agent_channels import publish
    from agent_channels.models import Event

    cid = _channel(args.channel) if args.mode == "create" else None
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    done = 0
    for i in range(args.count):
        if args.mode == "publish":
            publish(args.channel, "tick", {"i": i, "w": args.offset, "pad": PAD})
        else:
            Event.objects.create(channel_id=cid, seq=args.offset + i + 1, name="tick",
                                 data={"i": i, "pad": PAD}, created_at=timezone.now())
        done += 1
        if time.monotonic() - t0 > LEG_SECONDS:
            break
    print(json.dumps({"n": done, "t0": t0, "t1": time.monotonic()}), flush=True)


def run_writers(mode: str, channel: str, procs: int, count: int) -> float:
    if mode == "create":
        _channel(channel)  # exists before the workers race to create it
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", mode, "--channel", channel,
             "--count", str(count), "--offset", str(k * count)],
            env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for k in range(procs)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker did not start: {line!r}")
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        reports = []
        for w in workers:
            out, _ = w.communicate(timeout=LEG_SECONDS + 30)
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    total = sum(r["n"] for r in reports)
    span = max(r["t1"] for r in reports) - min(r["t0"] for r in reports)
    return total / span


def check_contiguous(channel: str) -> bool:
    from django.db.models import Count, Max

    from agent_channels.models import Channel, Event

    ch = Channel.objects.get(name=channel)
    agg = Event.objects.filter(channel=ch).aggregate(n=Count("id"), top=Max("seq"))
    return agg["n"] == agg["top"] == ch.last_seq


def bench_concurrent(db: str, rounds: int, count: int) -> None:
    banner(f"[{db}] 3. concurrent writers on one channel ({count} events per process, "
           f"{rounds} rounds)")
    rows = []
    single: float | None = None
    contiguous = True
    for procs in (1, 2, 4):
        base, cand, ratios = [], [], []
        for r in range(rounds):
            legs = [("create", f"cc{procs}-{r}"), ("publish", f"cp{procs}-{r}")]
            if r % 2:
                legs.reverse()
            got = {mode: run_writers(mode, ch, procs, count) for mode, ch in legs}
            base.append(got["create"])
            cand.append(got["publish"])
            ratios.append(got["publish"] / got["create"])
            contiguous = contiguous and check_contiguous(f"cp{procs}-{r}")
        if procs == 1:
            single = median(cand)
        record("log.concurrent", db=db, processes=procs, create_eps=median(base),
               publish_eps=median(cand), ratio=median(ratios))
        rows.append([procs, fmt(median(base)), fmt(median(cand)), fmt(median(ratios)),
                     fmt(median(cand) / single) if single else "n/a"])
    print(table(["writer processes", "raw create events/s (disjoint seqs)",
                 "publish() events/s (one channel)", "ratio publish/create",
                 "publish scaling vs 1 writer"], rows))
    print(f"\nseqs contiguous with no gaps or duplicates in every publish run: {contiguous}")


# -- 4: MessageStream --------------------------------------------------------------------------


class AppendRecorder:
    """Wraps publishing.append to record when each row committed (append returns after it)."""

    def __init__(self) -> None:
        from agent_channels.channel import publishing

        self.module = publishing
        self.original = publishing.append
        self.records: list[tuple[float, float, bool, list[Any]]] = []
        self.main_thread = threading.get_ident()

    def __enter__(self) -> AppendRecorder:
        def recording(channel: str, drafts: Any, **kw: Any) -> Any:
            t0 = time.monotonic()
            events = self.original(channel, drafts, **kw)
            self.records.append((t0, time.monotonic(),
                                 threading.get_ident() != self.main_thread, list(drafts)))
            return events

        self.module.append = recording
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.append = self.original


def stream_round(channel: str, window_ms: float, segments: int, per_segment: int,
                 rate: float) -> dict[str, Any]:
    from agent_channels.channel.publishing import MessageStream

    interval = 1.0 / rate
    gap = 2 * window_ms / 1000 + 0.1  # longer than a window: the next token is "after quiet"
    written: dict[int, float] = {}
    write_cost: list[float] = []
    quiet_ids: set[int] = set()
    token_time = 0.0
    with AppendRecorder() as rec:
        stream = MessageStream(channel, window_ms=window_ms)
        idx = 0
        for s in range(segments):
            if s:
                time.sleep(gap)
            quiet_ids.add(idx)
            start = time.monotonic()
            for k in range(per_segment):
                pace(start, k, interval)
                tok = f"{idx:05d},"
                t = time.monotonic()
                written[idx] = t
                stream.write(tok)
                write_cost.append(time.monotonic() - t)
                idx += 1
            token_time += time.monotonic() - start
        # Let the last timed flush happen on its own, then close the message.
        time.sleep(window_ms / 1000 + 0.05)
        stream.complete()
    committed: dict[int, float] = {}
    delta_rows = 0
    inline_cost, timed_cost = [], []
    for t0, t1, in_flusher, drafts in rec.records:
        for d in drafts:
            if d.name != "message.delta":
                continue
            delta_rows += 1
            (timed_cost if in_flusher else inline_cost).append(t1 - t0)
            for part in d.data["text"].split(","):
                if part:
                    committed.setdefault(int(part), t1)
    lat_quiet = [committed[i] - written[i] for i in quiet_ids if i in committed]
    lat_burst = [committed[i] - written[i] for i in written if i not in quiet_ids and i in committed]
    return {
        "tokens": len(written), "rows": delta_rows, "tok_s": len(written) / token_time,
        "quiet": lat_quiet, "burst": lat_burst, "write": write_cost,
        "inline": inline_cost, "timed": timed_cost, "lost": len(written) - len(committed),
    }


def bench_stream(db: str, rounds: int, seconds: float, windows: list[float]) -> None:
    rate, segments = 1000.0, 4
    per_segment = int(rate * seconds / segments)
    banner(f"[{db}] 4. MessageStream at {rate:.0f} tokens/s for {seconds:g} s of tokens "
           f"({segments} bursts separated by quiet gaps > window), {rounds} rounds")
    results: dict[float, list[dict[str, Any]]] = {w: [] for w in windows}
    for r in range(rounds):
        order = windows[r % len(windows):] + windows[: r % len(windows)]
        for w in order:
            results[w].append(stream_round(f"ms-{w}-{r}", w, segments, per_segment, rate))
    rows = []
    naive = None
    for w in windows:
        rs = results[w]
        rpt = median([x["rows"] / x["tokens"] for x in rs])
        naive = rpt if w == 0 else naive
        quiet = [v for x in rs for v in x["quiet"]]
        burst = [v for x in rs for v in x["burst"]]
        writes = [v for x in rs for v in x["write"]]
        inline = [v for x in rs for v in x["inline"]]
        timed = [v for x in rs for v in x["timed"]]
        record("log.stream", db=db, window_ms=w, rows_per_token=rpt,
               burst_p50_ms=pct(burst, 50) * 1e3, burst_p99_ms=pct(burst, 99) * 1e3,
               quiet_p50_ms=pct(quiet, 50) * 1e3, write_p99_ms=pct(writes, 99) * 1e3,
               lost=sum(x["lost"] for x in rs))
        rows.append([
            f"{w:g}", fmt(median([x["tok_s"] for x in rs]), 0), fmt(rpt, 3),
            fmt(rpt / naive, 3) if naive else "n/a",
            f"{fmt(pct(quiet, 50) * 1e3)} / {fmt(max(quiet) * 1e3)}",
            f"{fmt(pct(burst, 50) * 1e3)} / {fmt(pct(burst, 99) * 1e3)}",
            f"{fmt(pct(writes, 99) * 1e3)} / {fmt(max(writes) * 1e3)}",
            f"{fmt(pct(inline, 50) * 1e3)} ({len(inline)})",
            f"{fmt(pct(timed, 50) * 1e3)} ({len(timed)})" if timed else "—",
            sum(x["lost"] for x in rs),
        ])
    print(table(["window ms", "tokens/s achieved", "rows per token", "rows vs window 0",
                 "after-quiet latency p50 / max ms", "in-burst latency p50 / p99 ms",
                 "write() blocks p99 / max ms", "inline flush ms p50 (n)",
                 "timed flush ms p50 (n)", "tokens never committed"], rows))
    print("\nlatency = monotonic time from write() to the commit of the row holding the token"
          " (append() returned).\ninline flush = the writer's own thread commits inside write(); "
          "timed flush = the flusher thread.")


# -- main ----------------------------------------------------------------------------------------


def run_db(args: argparse.Namespace) -> None:
    configure_env(args.db, "memory")
    with scratch_database():
        from django.db import connection

        vendor = connection.vendor
        if vendor == "sqlite":
            with connection.cursor() as c:
                c.execute("PRAGMA journal_mode")
                mode = c.fetchone()[0]
            print(f"\n# bench_log on SQLite ({os.environ['AGCH_DB_NAME']}, journal_mode={mode}, "
                  f"transaction_mode={connection.settings_dict['OPTIONS'].get('transaction_mode')})")
        else:
            with connection.cursor() as c:
                c.execute("SHOW fsync")
                fsync = c.fetchone()[0]
                c.execute("SHOW synchronous_commit")
                sync = c.fetchone()[0]
            print(f"\n# bench_log on PostgreSQL (scratch db {connection.settings_dict['NAME']}, "
                  f"fsync={fsync}, synchronous_commit={sync})")
        if "single" in args.only:
            bench_single(args.db, args.rounds, args.n)
        if "concurrent" in args.only:
            bench_concurrent(args.db, max(3, args.rounds - 2), args.n)
        if "stream" in args.only:
            bench_stream(args.db, max(3, args.rounds - 2), args.stream_seconds, args.windows)
        if "many" in args.only:
            bench_many(args.db, args.rounds, args.channels, args.flushes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=400, help="events per single-writer leg")
    parser.add_argument("--stream-seconds", type=float, default=2.0)
    parser.add_argument("--windows", type=float, nargs="+", default=[0, 10, 30, 100])
    parser.add_argument("--channels", type=int, default=200, help="channels per batched flush")
    parser.add_argument("--flushes", type=int, default=50, help="batched flushes per leg")
    parser.add_argument("--only", nargs="+", default=["single", "concurrent", "stream", "many"],
                        choices=["single", "concurrent", "stream", "many"])
    # Internal: writer processes for section 3.
    parser.add_argument("--worker", choices=["publish", "create"], help=argparse.SUPPRESS)
    parser.add_argument("--channel", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        worker_main(args)
        return
    if args.db == "both":
        for db in ("sqlite", "postgres"):
            subprocess.run(_strip_db(sys.argv[1:], [sys.executable, __file__, "--db", db]),
                           check=True, timeout=1800)
        return
    run_db(args)


def _strip_db(argv: list[str], head: list[str]) -> list[str]:
    out, skip = list(head), False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--db":
            skip = True
            continue
        if a.startswith("--db="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
