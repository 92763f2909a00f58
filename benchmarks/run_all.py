"""Every benchmark in one command: a table, a JSON file and the plots for the docs.

    .venv/bin/python benchmarks/run_all.py            # the full run, ~8 min on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick    # fewer rounds and events, ~4 min

Runs ``bench_wire.py`` (live delivery and catch-up through daphne), ``bench_log.py``
(persistence on SQLite and PostgreSQL), ``bench_control.py`` (interrupt → agent),
``bench_eventstream.py`` (producers against django-eventstream, when it is installed) and
``bench_redis_cost.py`` (Redis CPU per live event) as they are, each with
``AGCH_BENCH_JSON`` set so that they append their figures as JSON lines; then prints a summary table of the ratios and writes
``docs/_static/benchmarks.json`` and ``docs/_static/perf_*.png`` (matplotlib, Agg
backend). Every figure is a ratio against a baseline measured in the same run; the
machine, the load average and the date go into the JSON and the plot titles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: A bound on each script, whatever happens on a loaded machine.
SCRIPT_TIMEOUT = 1800

SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, --quick arguments)
    "wire": ([], ["--rounds", "2", "--count-50", "100", "--count-200", "300", "--catchup", "5000"]),
    "log": (["--db", "both", "--rounds", "3", "--windows", "0", "10", "30", "100"],
            ["--db", "both", "--rounds", "3", "--n", "200", "--stream-seconds", "1",
             "--windows", "0", "30", "100"]),
    "control": ([], ["--count", "20"]),
    # Skips (and says so) when django-eventstream is not installed.
    "eventstream": ([], ["--rounds", "2", "--n", "150"]),
    # Redis CPU per live event (core and pub/sub layers): the capacity plan's Redis figure.
    "redis_cost": ([], ["--rounds", "2", "--n", "300"]),
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return out.stdout.strip().splitlines()[0] if out.stdout else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "postgresql": version(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc",
                               "SHOW server_version"]),
        "redis": version(["redis-server", "--version"]),
    }


def run_scripts(names: list[str], quick: bool, jsonl: Path) -> dict[str, int]:
    codes = {}
    env = {**os.environ, "AGCH_BENCH_JSON": str(jsonl)}
    for name in names:
        full, short = SCRIPTS[name]
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(short if quick else full)]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        try:
            codes[name] = subprocess.run(cmd, cwd=ROOT, env=env, timeout=SCRIPT_TIMEOUT,
                                         check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"bench_{name}.py did not finish within {SCRIPT_TIMEOUT} s", flush=True)
            codes[name] = -1
    return codes


def load(jsonl: Path) -> list[dict[str, Any]]:
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def rows_of(results: list[dict[str, Any]], section: str) -> list[dict[str, Any]]:
    return [r for r in results if r["section"] == section]


def f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def summary(results: list[dict[str, Any]]) -> list[list[str]]:
    """One line per figure: what, candidate, baseline, ratio."""
    out = []
    for r in rows_of(results, "wire.live"):
        out.append([f"live p50 latency, {r['rate']:g} ev/s, {r['clients']} client(s)",
                    f"WS {f(r['ws_p50_ms'])} ms", f"raw layer {f(r['raw_p50_ms'])} ms",
                    f(r["ratio_ws_raw_p50"])])
        out.append(["  same, against a client polling the DB every 100 ms", f"WS {f(r['ws_p50_ms'])} ms",
                    f"poll {f(r['poll_p50_ms'])} ms", f(r["ratio_ws_poll_p50"], 3)])
    for r in rows_of(results, "wire.catchup"):
        out.append([f"catch-up since=0, {r['events']:,} events", f"WS {f(r['ws_eps'])} ev/s",
                    f"in-process read {f(r['floor_eps'])} ev/s", f(r["ratio"])])
        if "ws_batch_eps" in r:
            out.append(["  same, batch=1 (several events per message)",
                        f"WS {f(r['ws_batch_eps'])} ev/s",
                        f"in-process read {f(r['floor_eps'])} ev/s", f(r["ratio_batch"])])
    for r in rows_of(results, "log.single"):
        out.append([f"[{r['db']}] publish() per event", f"{f(r['publish_eps'])} ev/s",
                    f"create() {f(r['create_eps'])} ev/s", f(r["ratio"])])
    for r in rows_of(results, "log.batch"):
        out.append([f"[{r['db']}] append() ×{r['batch']}", f"{f(r['append_eps'])} ev/s",
                    f"bulk_create {f(r['bulk_create_eps'])} ev/s", f(r["ratio"])])
    for r in rows_of(results, "log.concurrent"):
        out.append([f"[{r['db']}] {r['processes']} writer(s), one channel", f"{f(r['publish_eps'])} ev/s",
                    f"raw create {f(r['create_eps'])} ev/s", f(r["ratio"])])
    for r in rows_of(results, "log.stream"):
        out.append([f"[{r['db']}] MessageStream 1,000 tok/s, window {r['window_ms']:g} ms",
                    f"{f(r['rows_per_token'], 3)} rows/token", f"in-burst p99 {f(r['burst_p99_ms'])} ms",
                    f"lost {r['lost']}"])
    for r in rows_of(results, "eventstream.producers"):
        out.append([f"[postgres] {r['threads']} producer(s), one channel, equal durability",
                    f"publish() {f(r['publish_eps'])} ev/s",
                    f"django-eventstream send_event() {f(r['send_event_eps'])} ev/s", f(r["ratio"])])
    for r in rows_of(results, "eventstream.reconnect"):
        out.append([f"client reconnecting every {r['every']} events at {r['rate']:g} ev/s: "
                    f"{r['system']}",
                    f"lost {r['lost']}, duplicated {r['duplicates']}, out of order {r['reordered']}",
                    f"{r['events']:,} events, {r['reconnects']} reconnects",
                    f"{r['duplicates'] / r['events']:.3f} dup/event"])
    for r in rows_of(results, "redis_cost"):
        out.append([f"Redis CPU per live event, {r['layer']} layer, {r['members']} watcher(s)",
                    f"{f(r['us_per_event'])} µs", f"SET {f(r['baseline_set_us'])} µs",
                    f(r["ratio"])])
    control = {r["path"]: r for r in rows_of(results, "control")}
    for path, r in control.items():
        out.append([f"control: {path}", f"p50 {f(r['p50_ms'])} ms", "runtime p50", f(r["ratio"])])
    return out


def when(results: list[dict[str, Any]]) -> str:
    """Which script's figures were measured when (``--only`` keeps older ones)."""
    dates: dict[str, str] = {}
    for r in results:
        dates.setdefault(r["section"].split(".")[0], r.get("measured", "an earlier run"))
    by_date: dict[str, list[str]] = {}
    for script, date in dates.items():
        by_date.setdefault(date, []).append(script)
    return "; ".join(f"{', '.join(scripts)}: {date}" for date, scripts in sorted(by_date.items()))


def rst(info: dict[str, Any], rows: list[list[str]], results: list[dict[str, Any]]) -> str:
    """The summary as an RST fragment docs/performance.rst includes."""
    redis = info.get("redis", "").split(" sha=")[0].replace("Redis server v=", "Redis ")
    lines = [
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores), load average "
        f"{info['load_average'][0]:.1f} at the start (a shared machine), Python {info['python']}, "
        f"PostgreSQL {info.get('postgresql', '?').split(' ')[0]}, {redis}"
        + (f"; only {', '.join(info.get('only', []))} ran then ({when(results)})"
           if info.get("merged_with_run_of") else "")
        + ".",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
    ]
    for row in [["figure", "candidate", "baseline", "ratio"], *rows]:
        cells = [c.strip().replace("*", "\\*") for c in row]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], info: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stamp = f"{info['date']}, {info['cores']} cores, load {info['load_average'][0]:.1f}"
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    live = rows_of(results, "wire.live")
    if live:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        labels = [f"{r['rate']:g}/s\n{r['clients']} client(s)" for r in live]
        series = [("raw group_send → receive (floor)", "raw", "#999999"),
                  ("publish() → daphne → WebSocket", "ws", "#1f77b4"),
                  ("DB polling every 100 ms", "poll", "#d62728")]
        width = 0.27
        for i, (name, key, color) in enumerate(series):
            xs = [j + (i - 1) * width for j in range(len(live))]
            p50 = [r[f"{key}_p50_ms"] or 0 for r in live]
            p99 = [r[f"{key}_p99_ms"] or 0 for r in live]
            ax.bar(xs, p50, width, label=name, color=color)
            ax.errorbar(xs, p50, yerr=[[0] * len(p50), [max(0, b - a) for a, b in zip(p50, p99, strict=True)]],
                        fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_xticks(range(len(live)), labels)
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (bar p50, whisker p99; log scale)")
        ax.set_title(f"Live delivery latency\n{stamp}", fontsize=10)
        ax.legend(fontsize=8)
        save(fig, "perf_latency.png")

    ratios = [(f"{r['db']}\npublish/create", r["ratio"]) for r in rows_of(results, "log.single")]
    ratios += [(f"{r['db']}\nappend×{r['batch']}/bulk", r["ratio"]) for r in rows_of(results, "log.batch")]
    ratios += [(f"{r['db']}\n{r['processes']} writers", r["ratio"])
               for r in rows_of(results, "log.concurrent")]
    if ratios:
        fig, ax = plt.subplots(figsize=(max(8, len(ratios) * 0.7), 4.8))
        colors = ["#1f77b4" if "sqlite" in label else "#2ca02c" for label, _ in ratios]
        ax.bar(range(len(ratios)), [v or 0 for _, v in ratios], color=colors)
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_xticks(range(len(ratios)), [label.replace("\n", " ") for label, _ in ratios],
                      fontsize=7, rotation=35, ha="right")
        ax.set_ylabel("ratio to the plain-ORM baseline (1 = as fast)")
        ax.set_title(f"Persistence: the log against plain inserts (blue SQLite, green PostgreSQL)\n{stamp}",
                     fontsize=10)
        save(fig, "perf_persistence.png")

    catchup = rows_of(results, "wire.catchup")
    control = rows_of(results, "control")
    if catchup or control:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        if catchup:
            r = catchup[0]
            labels = ["in-process read()\n(floor)", "WebSocket\nsince=0"]
            values = [r["floor_eps"], r["ws_eps"]]
            if "ws_batch_eps" in r:
                labels.append("WebSocket\nbatch=1")
                values.append(r["ws_batch_eps"])
            axes[0].bar(labels, values, color=["#999999", "#1f77b4", "#2ca02c"][: len(values)])
            axes[0].set_ylabel("events/s")
            axes[0].set_title(f"Catch-up of {r['events']:,} events (ratio {r['ratio']:.2f})", fontsize=10)
        if control:
            names = [c["path"].split(" (")[0] for c in control]
            axes[1].bar(range(len(control)), [c["p50_ms"] for c in control], color="#ff7f0e")
            axes[1].set_xticks(range(len(control)), [n.replace(" ", "\n", 2) for n in names], fontsize=7)
            axes[1].set_ylabel("p50 ms")
            axes[1].set_title("Control: client send → agent sees it", fontsize=10)
        fig.suptitle(stamp, fontsize=9)
        save(fig, "perf_catchup_control.png")

    stream = rows_of(results, "log.stream")
    if stream:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax2 = ax.twinx()
        for db, marker in (("sqlite", "o"), ("postgres", "s")):
            rs = [r for r in stream if r["db"] == db]
            if not rs:
                continue
            ax.plot([r["window_ms"] for r in rs], [r["rows_per_token"] for r in rs], marker=marker,
                    color="#1f77b4", label=f"rows per token ({db})")
            ax2.plot([r["window_ms"] for r in rs], [r["burst_p99_ms"] for r in rs], marker=marker,
                     ls="--", color="#d62728", label=f"in-burst p99 ms ({db})")
        ax.set_xlabel("coalescing window ms")
        ax.set_ylabel("database rows per token", color="#1f77b4")
        ax2.set_ylabel("token → committed p99 ms", color="#d62728")
        ax.set_yscale("log")
        ax.set_title(f"MessageStream at 1,000 tokens/s: rows saved against latency added\n{stamp}",
                     fontsize=10)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper center")
        save(fig, "perf_stream.png")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and events")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static",
                        help="where benchmarks.json and perf_*.png go")
    parser.add_argument("--from-json", type=Path, help="redraw from a benchmarks.json; run nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        info, results, codes = saved["machine"], saved["results"], saved.get("exit_codes", {})
    else:
        info = machine()
        with tempfile.TemporaryDirectory() as tmp:
            jsonl = Path(tmp) / "results.jsonl"
            started = time.monotonic()
            codes = run_scripts(args.only, args.quick, jsonl)
            results = load(jsonl)
        for r in results:
            r.setdefault("measured", info["date"])
        previous = args.out / "benchmarks.json"
        if set(args.only) != set(SCRIPTS) and previous.exists():
            # --only re-runs some scripts: keep the other scripts' figures from the last run.
            kept = [r for r in json.loads(previous.read_text())["results"]
                    if r["section"].split(".")[0] not in args.only]
            results = kept + results
            info["merged_with_run_of"] = json.loads(previous.read_text())["machine"]["date"]
            info["only"] = args.only
        info["seconds"] = round(time.monotonic() - started)
        info["quick"] = args.quick
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

    rows = summary(results)
    widths = [max(len(r[i]) for r in [["figure", "candidate", "baseline", "ratio"], *rows])
              for i in range(4)]
    print(f"\n# Summary ({info['date']}, {info['cpu']}, {info['cores']} cores, load "
          f"{info['load_average']})\n")
    for row in [["figure", "candidate", "baseline", "ratio"], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    (args.out / "benchmarks.json").write_text(
        json.dumps({"machine": info, "exit_codes": codes, "results": results}, indent=1) + "\n")
    (args.out / "benchmarks.inc").write_text(rst(info, rows, results))
    for path in plot(results, info, args.out):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    failed = [name for name, code in codes.items() if code]
    if failed:
        print(f"\nthese scripts failed: {', '.join(failed)} (their figures are missing above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
