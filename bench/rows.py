"""The throughput rows of the benchmark, each run as its own process on the same topic:

==============  ===========================================================================
read_ceiling    ``./spark-submit.sh bench/read_ceiling.py``: Spark reads the topic, counts
old_consumer    ``python -m bench.old_consumer``: the replaced single-process job
naive_spark     the product job with ``--parser spark`` (Spark's ``from_json``)
job_exact       the product job, ``--mode exact`` (default JVM parser)
job_approx      the product job, ``--mode approx`` (default JVM parser)
==============  ===========================================================================

Each row records ``frames_per_s`` (frames / query time, JVM start-up excluded),
``wall_s`` (the whole process, JVM start-up included) and ``peak_rss_mb`` (the whole
process tree: driver JVM, Python driver, pyspark workers), plus row-specific details.
Spark rows run with ``DOODLE_TIMINGS=1`` (per-batch step timings on stderr) and an
event log (``bench.eventlog``) unless ``profile=False``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

from bench.common import (BenchError, ProcResult, event_log_flags, load_cfg, python, run_process, say,
                          spark_cmd)

ROWS = ("read_ceiling", "old_consumer", "naive_spark", "job_exact", "job_approx")
JOB_ROWS = {"naive_spark": ("exact", "spark"), "job_exact": ("exact", None), "job_approx": ("approx", None)}
TIMEOUT_S = 3600
_STEPS = re.compile(r"^\s*steps: (.*)$")
_BATCH = re.compile(r"^batch (\d+): ([\d,]+) frames .* in ([\d.]+)s")


def _metrics(path: Path, res: ProcResult, name: str) -> dict:
    if res.returncode != 0 or not path.exists():
        raise BenchError(f"{name} failed (exit {res.returncode}); see {res.stderr}\n{res.tail()}")
    return json.loads(path.read_text())


def step_timings(stderr: Path) -> dict:
    """Sum of the job's ``steps:`` lines (DOODLE_TIMINGS=1) and its per-batch lines."""
    steps: dict[str, float] = defaultdict(float)
    batches = []
    try:
        text = stderr.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        m = _STEPS.match(line)
        if m:
            for part in m.group(1).split(", "):
                k, _, v = part.rpartition(" ")
                try:
                    steps[k] += float(v.rstrip("s"))
                except ValueError:
                    pass
            continue
        m = _BATCH.match(line)
        if m:
            batches.append({"batch": int(m.group(1)), "frames": int(m.group(2).replace(",", "")),
                            "seconds": float(m.group(3))})
    return {"steps_s": {k: round(v, 2) for k, v in steps.items()}, "batch_log": batches}


def _profile(run_dir: Path, profile: bool) -> tuple[list[str], dict]:
    if not profile:
        return [], {}
    return event_log_flags(run_dir / "eventlog"), {"DOODLE_TIMINGS": "1"}


def _eventlog(run_dir: Path) -> dict | None:
    from bench.eventlog import analyse
    try:
        return analyse(run_dir / "eventlog")
    except (FileNotFoundError, ValueError, KeyError) as e:
        say(f"event log of {run_dir.name} not readable: {e}")
        return None


def run_read_ceiling(topic: str, work: Path, profile: bool = True, repeat: int = 1) -> dict:
    """Spark reads the whole topic and counts rows and bytes; no parsing."""
    run_dir = _fresh(work / "read_ceiling")
    flags, env = _profile(run_dir, profile)
    metrics = run_dir / "metrics.json"
    # the job's own source options (Spark tasks per batch), so the ceiling is the same read
    min_partitions = load_cfg().job.min_partitions
    cmd = spark_cmd("bench/read_ceiling.py", ["--topic", topic, "--metrics-file", metrics, "--repeat", repeat,
                                              "--option", f"minPartitions={min_partitions}"], flags)
    res = run_process(cmd, run_dir, "read_ceiling", env=env, timeout=TIMEOUT_S)
    m = _metrics(metrics, res, "read_ceiling")
    row = {"name": "read_ceiling", "frames": m["frames"], "query_s": m["query_seconds"],
           "frames_per_s": round(m["frames"] / m["query_seconds"], 1), "wall_s": res.wall_s,
           "peak_rss_mb": res.peak_rss_mb, "bytes_per_frame": round(m["bytes"] / max(m["frames"], 1), 1),
           "min_partitions": min_partitions}
    row["runs_in_eventlog"] = max(1, repeat)
    if m.get("warm_query_seconds"):
        row["warm_frames_per_s"] = [round(m["frames"] / s, 1) for s in m["warm_query_seconds"]]
    if profile:
        row["eventlog"] = _eventlog(run_dir)
    return row


def run_old_consumer(topic: str, work: Path) -> dict:
    """The replaced job: one Python process, confluent-kafka + orjson."""
    run_dir = _fresh(work / "old_consumer")
    metrics = run_dir / "metrics.json"
    res = run_process([python(), "-m", "bench.old_consumer", "--topic", topic, "--metrics-file", metrics],
                      run_dir, "old_consumer", timeout=TIMEOUT_S)
    m = _metrics(metrics, res, "old_consumer")
    return {"name": "old_consumer", "frames": m["frames"], "query_s": m["seconds"],
            "frames_per_s": round(m["frames"] / m["seconds"], 1), "wall_s": res.wall_s,
            "peak_rss_mb": res.peak_rss_mb, "late_dropped": m["late"], "bad": m["bad"],
            "minutes_printed": m["minutes_printed"], "minutes_never_printed": m["minutes_unprinted"]}


def run_job(name: str, topic: str, work: Path, output_topic: str = "bench-out",
            profile: bool = True) -> dict:
    """The product job (``jobs/minute_stats.py --available-now``) with fresh Delta + checkpoint."""
    mode, parser = JOB_ROWS[name]
    run_dir = _fresh(work / name)
    flags, env = _profile(run_dir, profile)
    metrics = run_dir / "metrics.json"
    args = ["--available-now", "--topic", topic, "--output-topic", output_topic,
            "--delta-path", run_dir / "delta", "--checkpoint", run_dir / "checkpoint",
            "--metrics-file", metrics, "--mode", mode]
    if parser:
        args += ["--parser", parser]
    res = run_process(spark_cmd("jobs/minute_stats.py", args, flags), run_dir, name, env=env,
                      timeout=TIMEOUT_S)
    m = _metrics(metrics, res, name)
    frames, q = m["frames"], m["query_seconds"]
    row = {"name": name, "frames": frames, "query_s": q, "frames_per_s": round(frames / q, 1),
           "wall_s": res.wall_s, "peak_rss_mb": res.peak_rss_mb, "mode": m.get("mode", mode),
           "parser": m.get("parser", parser or "jvm"), "batches": m.get("batches"),
           "batch_s": round(m.get("batch_seconds", 0.0), 2),
           "batch_frames_per_s": round(frames / m["batch_seconds"], 1) if m.get("batch_seconds") else None,
           "counted": m.get("counted"), "quarantined": m.get("quarantined")}
    if profile:
        row.update(step_timings(res.stderr))
        row["eventlog"] = _eventlog(run_dir)
    # the Delta tables of a 1M run are not needed afterwards; keep logs and metrics
    shutil.rmtree(run_dir / "delta", ignore_errors=True)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return row


def _fresh(d: Path) -> Path:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def run_row(name: str, topic: str, work: Path, profile: bool = True, repeat_ceiling: int = 1) -> dict:
    """Run one row by name (see :data:`ROWS`)."""
    say(f"{name}: running on {topic}")
    load_before = os.getloadavg()[0]
    if name == "read_ceiling":
        row = run_read_ceiling(topic, work, profile, repeat_ceiling)
    elif name == "old_consumer":
        row = run_old_consumer(topic, work)
    elif name in JOB_ROWS:
        row = run_job(name, topic, work, profile=profile)
    else:
        raise BenchError(f"unknown row {name!r} (known: {', '.join(ROWS)})")
    # the 1-minute load average before/after: other work on the machine skews a row
    row["load1_before"], row["load1_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    say(f"{name}: {row['frames']:,} frames, {row['frames_per_s']:,.0f} frames/s "
        f"(query {row['query_s']:.1f}s, wall {row['wall_s']:.1f}s, peak RSS {row['peak_rss_mb']:,.0f} MB)")
    return row
