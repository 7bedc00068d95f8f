"""Where the time of a Spark run goes, from Spark's own event log (no profiler needed).

Run a job with ``spark.eventLog.enabled=true`` (``bench.common.event_log_flags``), then::

    python -m bench.eventlog bench/.work/runs/job_exact/eventlog

Per SQL execution (one DataFrame action, a Delta command, ...) it sums the task
metrics — executor run time, CPU time, GC time, records and bytes read from Kafka, and
the size of the task results sent to the driver (``Result Size``) — and sorts them into
categories by their physical plan and description:

``read/parse/count``   executions reading the micro-batch or its cache: the first pass
                        fetches from Kafka, parses and caches; later passes (guard,
                        count, collect) read the cache; the guard's sample; a plain read
``delta``               Delta commands — appends (incl. computing what they write), MERGE,
                        snapshots, table creation
``other``               anything else

``driver-only`` is the part of the span (first → last job) when no Spark job ran at
all: Python driver work, planning, Delta log handling, Kafka publishing.

``result_bytes`` is what the driver received from the executors: the sum of every
task's serialized result (``Result Size``: the rows a ``collect`` brings back, or a
task's status and accumulator updates when it returns no rows), over all tasks and
per category.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from bench.common import rel

CATEGORIES = ("read/parse/count", "delta", "other")


def find_log(path: Path) -> Path:
    """The event log file in ``path`` (a file, or a directory holding one app's log)."""
    if path.is_file():
        return path
    files = sorted((p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".inprogress")),
                   key=lambda p: p.stat().st_mtime)
    if not files:
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no event log in {path}")
    return files[-1]


def _category(desc: str, plan: str, records_read: float) -> str:
    """Sort one SQL execution into a category (see the module docstring)."""
    d = desc or ""
    if any(k in d for k in ("Delta", "MERGE", "save at", "DeltaTable")) or \
            any(k in plan for k in ("_delta_log", "Delta Table State", "WriteIntoDelta", "AppendData",
                                    "CreateTable", "DeltaInvariant")):
        return "delta"
    # in foreachBatch the micro-batch is a "Scan ExistingRDD" over the Kafka RDD; the
    # first pass over it fetches, parses and caches it, later passes read the cache
    if records_read > 0 or "InMemoryTableScan" in plan or "Scan ExistingRDD" in plan or "Kafka" in plan:
        return "read/parse/count"
    return "other"


def _union_length(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def analyse(path: Path) -> dict:
    """Summarise one event log: totals, per category, top executions (times in seconds)."""
    path = find_log(path)
    execs: dict[int, dict] = {}
    job_exec: dict[int, int | None] = {}
    job_desc: dict[int, str] = {}
    job_span: dict[int, list[int]] = {}
    stage_job: dict[int, int] = {}
    tasks = defaultdict(lambda: defaultdict(float))   # exec id (or -1) -> metric -> value
    query_start = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            e = json.loads(line)
            ev = e["Event"]
            if ev.endswith("SQLExecutionStart"):
                execs[e["executionId"]] = {"desc": (e.get("description") or "").split("\n")[0][:90],
                                           "plan": e.get("physicalPlanDescription") or "",
                                           "start": e.get("time")}
            elif ev.endswith("SQLExecutionEnd"):
                if e["executionId"] in execs:
                    execs[e["executionId"]]["end"] = e.get("time")
            elif ev == "SparkListenerJobStart":
                props = e.get("Properties") or {}
                jid = e["Job ID"]
                x = props.get("spark.sql.execution.id")
                job_exec[jid] = int(x) if x is not None else None
                job_desc[jid] = (props.get("spark.job.description") or "").split("\n")[0]
                job_span[jid] = [e["Submission Time"], e["Submission Time"]]
                for sid in e.get("Stage IDs", []):
                    stage_job[sid] = jid
            elif ev == "SparkListenerJobEnd":
                if e["Job ID"] in job_span:
                    job_span[e["Job ID"]][1] = e["Completion Time"]
            elif ev == "SparkListenerTaskEnd":
                m = e.get("Task Metrics") or {}
                jid = stage_job.get(e["Stage ID"])
                x = job_exec.get(jid, None) if jid is not None else None
                t = tasks[x if x is not None else -1]
                t["tasks"] += 1
                t["run_s"] += m.get("Executor Run Time", 0) / 1e3
                t["cpu_s"] += m.get("Executor CPU Time", 0) / 1e9
                t["gc_s"] += m.get("JVM GC Time", 0) / 1e3
                t["deser_s"] += m.get("Executor Deserialize Time", 0) / 1e3
                t["result_bytes"] += m.get("Result Size", 0)
                inp = m.get("Input Metrics") or {}
                t["records_read"] += inp.get("Records Read", 0)
                t["bytes_read"] += inp.get("Bytes Read", 0)
            elif ev.endswith("QueryStartedEvent") and e.get("timestamp"):
                try:
                    query_start = int(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                                      .timestamp() * 1000)
                except ValueError:
                    pass

    spans = [tuple(v) for v in job_span.values()]
    first = min((a for a, _ in spans), default=0)
    last = max((b for _, b in spans), default=0)
    start = min(query_start, first) if query_start else first
    span_ms = max(last - start, 0)
    busy_ms = _union_length(spans)

    by_cat = {c: defaultdict(float) for c in CATEGORIES}
    rows = []
    for x, t in tasks.items():
        info = execs.get(x, {"desc": "(no SQL execution)", "plan": ""})
        desc = info["desc"]
        if x != -1 and (not desc or desc.startswith("$anonfun") or desc.startswith("call at")):
            jd = next((job_desc[j] for j, ex in job_exec.items() if ex == x and job_desc.get(j)), "")
            desc = jd or desc
        cat = _category(desc + " " + info.get("desc", ""), info["plan"], t["records_read"])
        c = by_cat[cat]
        for k, v in t.items():
            c[k] += v
        c["executions"] += 1
        wall = ((info.get("end") or 0) - (info.get("start") or 0)) / 1e3 if info.get("end") else None
        rows.append({"execution": x, "category": cat, "desc": desc[:80],
                     "wall_s": round(wall, 2) if wall is not None else None,
                     **{k: round(v, 2) for k, v in t.items()}})
    rows.sort(key=lambda r: -r["run_s"])
    total_run = sum(t["run_s"] for t in tasks.values())
    return {
        "log": rel(path),
        "span_s": round(span_ms / 1e3, 2),
        "jobs": len(job_span),
        "jobs_busy_s": round(busy_ms / 1e3, 2),
        "driver_only_s": round((span_ms - busy_ms) / 1e3, 2),
        "task_run_s": round(total_run, 2),
        "task_cpu_s": round(sum(t["cpu_s"] for t in tasks.values()), 2),
        "task_gc_s": round(sum(t["gc_s"] for t in tasks.values()), 2),
        "tasks": int(sum(t["tasks"] for t in tasks.values())),
        "result_bytes": int(sum(t["result_bytes"] for t in tasks.values())),
        "categories": {c: {k: round(v, 2) for k, v in d.items()} for c, d in by_cat.items() if d},
        "top_executions": rows[:12],
    }


def fmt_bytes(n: float) -> str:
    """``1536`` → ``1.5 KB``; powers of 1024."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def render(summary: dict) -> str:
    """A short plain-text report of :func:`analyse`'s result."""
    s = summary
    out = [f"event log {s['log']}",
           f"span {s['span_s']:.1f}s: Spark jobs running {s['jobs_busy_s']:.1f}s ({s['jobs']} jobs), "
           f"driver-only {s['driver_only_s']:.1f}s; task time {s['task_run_s']:.1f}s "
           f"(CPU {s['task_cpu_s']:.1f}s, GC {s['task_gc_s']:.1f}s); task results to the driver "
           f"{fmt_bytes(s.get('result_bytes', 0))}",
           f"{'category':<20} {'execs':>5} {'tasks':>6} {'run s':>7} {'cpu s':>7} {'gc s':>6} {'records':>10} "
           f"{'results':>9}"]
    for c, d in s["categories"].items():
        out.append(f"{c:<20} {d.get('executions', 0):>5.0f} {d.get('tasks', 0):>6.0f} {d.get('run_s', 0):>7.1f} "
                   f"{d.get('cpu_s', 0):>7.1f} {d.get('gc_s', 0):>6.1f} {d.get('records_read', 0):>10,.0f} "
                   f"{fmt_bytes(d.get('result_bytes', 0)):>9}")
    out.append("top executions by task time:")
    for r in s["top_executions"][:8]:
        out.append(f"  #{r['execution']:<4} {r['category']:<19} run {r['run_s']:>6.1f}s cpu {r['cpu_s']:>6.1f}s "
                   f"tasks {r['tasks']:>3.0f} results {fmt_bytes(r.get('result_bytes', 0)):>8}  {r['desc']}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.eventlog", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="event log file or the directory holding it")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    try:
        s = analyse(Path(args.path))
    except FileNotFoundError as e:
        print(f"eventlog: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=1) if args.json else render(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
