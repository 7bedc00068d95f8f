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
from bench.render import binary_bytes

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


class _Log:
    """What :func:`analyse` keeps of an event log's lines."""

    def __init__(self):
        self.execs: dict[int, dict] = {}
        self.job_exec: dict[int, int | None] = {}
        self.job_desc: dict[int, str] = {}
        self.job_span: dict[int, list[int]] = {}
        self.stage_job: dict[int, int] = {}
        self.tasks: dict = defaultdict(lambda: defaultdict(float))   # exec id (or -1) -> metric -> value
        self.query_start: int | None = None

    def feed(self, e: dict) -> None:
        ev = e["Event"]
        if ev.endswith("SQLExecutionStart"):
            self.execs[e["executionId"]] = {"desc": (e.get("description") or "").split("\n")[0][:90],
                                            "plan": e.get("physicalPlanDescription") or "", "start": e.get("time")}
        elif ev.endswith("SQLExecutionEnd") and e["executionId"] in self.execs:
            self.execs[e["executionId"]]["end"] = e.get("time")
        elif ev == "SparkListenerJobStart":
            props, jid = e.get("Properties") or {}, e["Job ID"]
            x = props.get("spark.sql.execution.id")
            self.job_exec[jid] = int(x) if x is not None else None
            self.job_desc[jid] = (props.get("spark.job.description") or "").split("\n")[0]
            self.job_span[jid] = [e["Submission Time"], e["Submission Time"]]
            self.stage_job.update({sid: jid for sid in e.get("Stage IDs", [])})
        elif ev == "SparkListenerJobEnd" and e["Job ID"] in self.job_span:
            self.job_span[e["Job ID"]][1] = e["Completion Time"]
        elif ev == "SparkListenerTaskEnd":
            self._task(e)
        elif ev.endswith("QueryStartedEvent") and e.get("timestamp"):
            try:
                self.query_start = int(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                                       .timestamp() * 1000)
            except ValueError:
                pass

    def _task(self, e: dict) -> None:
        m = e.get("Task Metrics") or {}
        jid = self.stage_job.get(e["Stage ID"])
        x = self.job_exec.get(jid, None) if jid is not None else None
        t = self.tasks[x if x is not None else -1]
        inp = m.get("Input Metrics") or {}
        for k, v in (("tasks", 1), ("run_s", m.get("Executor Run Time", 0) / 1e3),
                     ("cpu_s", m.get("Executor CPU Time", 0) / 1e9), ("gc_s", m.get("JVM GC Time", 0) / 1e3),
                     ("deser_s", m.get("Executor Deserialize Time", 0) / 1e3),
                     ("result_bytes", m.get("Result Size", 0)), ("records_read", inp.get("Records Read", 0)),
                     ("bytes_read", inp.get("Bytes Read", 0))):
            t[k] += v

    def executions(self) -> tuple[dict, list[dict]]:
        """Task totals per category and per SQL execution (largest task time first)."""
        by_cat = {c: defaultdict(float) for c in CATEGORIES}
        rows = []
        for x, t in self.tasks.items():
            info = self.execs.get(x, {"desc": "(no SQL execution)", "plan": ""})
            desc = info["desc"]
            if x != -1 and (not desc or desc.startswith("$anonfun") or desc.startswith("call at")):
                desc = next((self.job_desc[j] for j, ex in self.job_exec.items()
                             if ex == x and self.job_desc.get(j)), "") or desc
            cat = _category(desc + " " + info.get("desc", ""), info["plan"], t["records_read"])
            for k, v in t.items():
                by_cat[cat][k] += v
            by_cat[cat]["executions"] += 1
            wall = ((info.get("end") or 0) - (info.get("start") or 0)) / 1e3 if info.get("end") else None
            rows.append({"execution": x, "category": cat, "desc": desc[:80],
                         "wall_s": round(wall, 2) if wall is not None else None,
                         **{k: round(v, 2) for k, v in t.items()}})
        return by_cat, sorted(rows, key=lambda r: -r["run_s"])


def analyse(path: Path) -> dict:
    """Summarise one event log: totals, per category, top executions (times in seconds)."""
    path = find_log(path)
    log = _Log()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            log.feed(json.loads(line))
    spans = [(a, b) for a, b in log.job_span.values()]
    first = min((a for a, _ in spans), default=0)
    start = min(log.query_start, first) if log.query_start else first
    span_ms = max(max((b for _, b in spans), default=0) - start, 0)
    busy_ms = _union_length(spans)
    by_cat, rows = log.executions()

    def total(k: str) -> float:
        return sum(t[k] for t in log.tasks.values())
    return {
        "log": rel(path), "span_s": round(span_ms / 1e3, 2), "jobs": len(log.job_span),
        "jobs_busy_s": round(busy_ms / 1e3, 2), "driver_only_s": round((span_ms - busy_ms) / 1e3, 2),
        "task_run_s": round(total("run_s"), 2), "task_cpu_s": round(total("cpu_s"), 2),
        "task_gc_s": round(total("gc_s"), 2), "tasks": int(total("tasks")), "result_bytes": int(total("result_bytes")),
        "categories": {c: {k: round(v, 2) for k, v in d.items()} for c, d in by_cat.items() if d},
        "top_executions": rows[:12],
    }


def render(summary: dict) -> str:
    """A short plain-text report of :func:`analyse`'s result."""
    s = summary
    out = [f"event log {s['log']}",
           f"span {s['span_s']:.1f}s: Spark jobs running {s['jobs_busy_s']:.1f}s ({s['jobs']} jobs), "
           f"driver-only {s['driver_only_s']:.1f}s; task time {s['task_run_s']:.1f}s "
           f"(CPU {s['task_cpu_s']:.1f}s, GC {s['task_gc_s']:.1f}s); task results to the driver "
           f"{binary_bytes(s.get('result_bytes', 0))}",
           f"{'category':<20} {'execs':>5} {'tasks':>6} {'run s':>7} {'cpu s':>7} {'gc s':>6} {'records':>10} "
           f"{'results':>9}"]
    for c, d in s["categories"].items():
        out.append(f"{c:<20} {d.get('executions', 0):>5.0f} {d.get('tasks', 0):>6.0f} {d.get('run_s', 0):>7.1f} "
                   f"{d.get('cpu_s', 0):>7.1f} {d.get('gc_s', 0):>6.1f} {d.get('records_read', 0):>10,.0f} "
                   f"{binary_bytes(d.get('result_bytes', 0)):>9}")
    out.append("top executions by task time:")
    for r in s["top_executions"][:8]:
        out.append(f"  #{r['execution']:<4} {r['category']:<19} run {r['run_s']:>6.1f}s cpu {r['cpu_s']:>6.1f}s "
                   f"tasks {r['tasks']:>3.0f} results {binary_bytes(r.get('result_bytes', 0)):>8}  {r['desc']}")
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
