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
event log (``bench.eventlog``) unless ``profile=False``; the job rows then also record
``cost`` (:func:`job_cost`): what the driver received and the driver's and executors'
CPU seconds, in total, per batch and per 1M frames.

Beyond the interleaved throughput rows (``bench.run`` runs these once each):

==============  ===========================================================================
backlog         :func:`run_backlog`: job_exact on a larger topic (default 3M frames, several
                micro-batches of ``max_offsets_per_trigger``)
replay          :func:`run_replay`: the input into a fresh topic, the job once (every minute
                final), the same frames again, the job again: every frame is ``late``
garbage         :func:`run_garbage`: N lines of ~2 KB that are not JSON, the job once: every
                line is ``malformed_json``
==============  ===========================================================================
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from bench.common import (
    BenchError,
    Frames,
    ProcResult,
    delete_topics,
    drop_tables,
    event_log_flags,
    fresh_dir,
    load_cfg,
    produce,
    python,
    read_truth,
    rel,
    run_process,
    say,
    spark_cmd,
    topic_messages,
    with_load,
)
from doodlestats.runtime.streaming import read_split

ROWS = ("read_ceiling", "old_consumer", "naive_spark", "job_exact", "job_approx")
JOB_ROWS = {"naive_spark": ("exact", "spark"), "job_exact": ("exact", None), "job_approx": ("approx", None)}
TIMEOUT_S = 3600
_STEPS = re.compile(r"^\s*steps: (.*)$")
_BATCH = re.compile(r"^batch (\d+): ([\d,]+) frames .* in ([\d.]+)s")


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


def _profile(run_dir: Path, profile: bool, eventlog: str = "eventlog") -> tuple[list[str], dict]:
    if not profile:
        return [], {}
    return event_log_flags(run_dir / eventlog), {"DOODLE_TIMINGS": "1"}


def _eventlog(run_dir: Path, eventlog: str = "eventlog") -> dict | None:
    from bench.eventlog import analyse
    try:
        return analyse(run_dir / eventlog)
    except (FileNotFoundError, ValueError, KeyError) as e:
        say(f"event log of {run_dir.name} not readable: {e}")
        return None


PER = 1_000_000  # costs are normalised to this many frames


def job_cost(m: dict, ev: dict | None, res: ProcResult) -> dict:
    """What one job run cost the driver and the executors (totals, per batch, per 1M frames).

    * ``driver_rows``: rows the driver received from executors (the job's metrics file).
    * ``result_bytes``: bytes it received — the sum of every task's ``Result Size``
      (event log).
    * ``executor_cpu_s``: the tasks' ``Executor CPU Time`` (event log).
    * ``driver_cpu_s`` = ``python_driver_cpu_s`` + (``jvm_cpu_s`` − ``executor_cpu_s``): the
      Python driver, plus the spark-submit JVM's CPU without its tasks. An approximation:
      in local mode that JVM also runs the executors, so their JIT compilation, garbage
      collection threads and Kafka client threads count as driver CPU here (an upper bound
      of the driver's own share).
    * ``tree_cpu_s``: CPU of the whole process tree (a cross-check of the sum).

    Fields that need the event log are missing without it (``--no-profile``).
    """
    frames, batches = m.get("frames") or 0, m.get("batches") or 0
    c: dict = {"frames": frames, "batches": batches, "driver_rows": m.get("driver_rows"),
               "python_driver_cpu_s": m.get("python_driver_cpu_s"), "jvm_cpu_s": m.get("jvm_cpu_s"),
               "tree_cpu_s": res.cpu_s}
    if ev:
        c["result_bytes"] = ev.get("result_bytes")
        c["tasks"] = ev.get("tasks")
        c["executor_cpu_s"] = ev.get("task_cpu_s")
        if c["python_driver_cpu_s"] is not None and c["jvm_cpu_s"] is not None:
            c["driver_cpu_s"] = round(c["python_driver_cpu_s"] + max(c["jvm_cpu_s"] - ev["task_cpu_s"], 0.0), 2)
        c["result_bytes_by_category"] = {k: int(v.get("result_bytes", 0))
                                         for k, v in (ev.get("categories") or {}).items()}
    keys = ("driver_rows", "result_bytes", "driver_cpu_s", "executor_cpu_s", "python_driver_cpu_s",
            "jvm_cpu_s", "tree_cpu_s")
    if frames:
        c["per_1m"] = {k: round(c[k] * PER / frames, 3) for k in keys if c.get(k) is not None}
    if batches:
        c["per_batch"] = {k: round(c[k] / batches, 3) for k in keys if c.get(k) is not None}
    return c


def run_read_ceiling(topic: str, work: Path, profile: bool = True, repeat: int = 1) -> dict:
    """Spark reads the whole topic and counts rows and bytes; no parsing."""
    run_dir = fresh_dir(work / "read_ceiling")
    flags, env = _profile(run_dir, profile)
    metrics = run_dir / "metrics.json"
    # the tasks of the job's full batch (a batch query splits by minPartitions only)
    cfg = load_cfg()
    split = {**read_split(cfg), "minPartitions": str(-(-cfg.job.max_offsets_per_trigger // cfg.job.frames_per_task))}
    cmd = spark_cmd("bench/read_ceiling.py", ["--topic", topic, "--metrics-file", metrics, "--repeat", repeat,
                                              *(a for k, v in split.items() for a in ("--option", f"{k}={v}"))],
                    flags)
    res = run_process(cmd, run_dir, "read_ceiling", env=env, timeout=TIMEOUT_S)
    m = res.output("read_ceiling", metrics)
    row = {"name": "read_ceiling", "frames": m["frames"], "query_s": m["query_seconds"],
           "frames_per_s": round(m["frames"] / m["query_seconds"], 1), "wall_s": res.wall_s,
           "peak_rss_mb": res.peak_rss_mb, "bytes_per_frame": round(m["bytes"] / max(m["frames"], 1), 1),
           "read_split": split}
    row["runs_in_eventlog"] = max(1, repeat)
    if m.get("warm_query_seconds"):
        row["warm_frames_per_s"] = [round(m["frames"] / s, 1) for s in m["warm_query_seconds"]]
    if profile:
        row["eventlog"] = _eventlog(run_dir)
    return row


def run_old_consumer(topic: str, work: Path) -> dict:
    """The replaced job: one Python process, confluent-kafka + orjson."""
    run_dir = fresh_dir(work / "old_consumer")
    metrics = run_dir / "metrics.json"
    res = run_process([python(), "-m", "bench.old_consumer", "--topic", topic, "--metrics-file", metrics],
                      run_dir, "old_consumer", timeout=TIMEOUT_S)
    m = res.output("old_consumer", metrics)
    return {"name": "old_consumer", "frames": m["frames"], "query_s": m["seconds"],
            "frames_per_s": round(m["frames"] / m["seconds"], 1), "wall_s": res.wall_s,
            "peak_rss_mb": res.peak_rss_mb, "late_dropped": m["late"], "bad": m["bad"],
            "minutes_printed": m["minutes_printed"], "minutes_never_printed": m["minutes_unprinted"]}


def run_job(name: str, topic: str, work: Path, output_topic: str = "bench-out",
            profile: bool = True, mode: str | None = None, parser: str | None = None,
            run_dir: Path | None = None, fresh: bool = True, keep_tables: bool = False,
            tag: str | None = None, check: bool = True) -> dict:
    """The product job (``jobs/minute_stats.py --available-now``) with fresh Delta + checkpoint.

    ``name`` is a row of :data:`JOB_ROWS` (its mode and parser) unless ``mode`` is given.
    ``fresh=False`` keeps ``run_dir`` (a second run on the same tables and checkpoint);
    ``keep_tables`` keeps the Delta tables and checkpoint afterwards; ``tag`` names this
    run's logs, metrics and event log in a shared ``run_dir``. With ``check=False``
    a failed run is returned as a row with ``finished: False`` instead of raising."""
    if mode is None:
        mode, parser = JOB_ROWS[name]
    run_dir = run_dir or work / name
    if fresh:
        fresh_dir(run_dir)
    sfx = f"-{tag}" if tag else ""
    eventlog = f"eventlog{sfx}"
    flags, env = _profile(run_dir, profile, eventlog)
    metrics = run_dir / f"metrics{sfx}.json"
    metrics.unlink(missing_ok=True)
    args = ["--available-now", "--topic", topic, "--output-topic", output_topic,
            "--delta-path", run_dir / "delta", "--checkpoint", run_dir / "checkpoint",
            "--metrics-file", metrics, "--mode", mode]
    if parser:
        args += ["--parser", parser]
    res = run_process(spark_cmd("jobs/minute_stats.py", args, flags), run_dir, f"{name}{sfx}", env=env,
                      timeout=TIMEOUT_S)
    if not check and (res.returncode != 0 or not metrics.exists()):
        return {"name": name, "finished": False, "exit": res.returncode, "wall_s": res.wall_s,
                "peak_rss_mb": res.peak_rss_mb, "error": res.tail(8), "stderr": rel(res.stderr)}
    m = res.output(name, metrics)
    frames, q = m["frames"], m["query_seconds"]
    row = {"name": name, "topic": topic, "frames": frames, "query_s": q, "frames_per_s": round(frames / q, 1),
           "wall_s": res.wall_s, "peak_rss_mb": res.peak_rss_mb, "mode": m.get("mode", mode),
           "parser": m.get("parser", parser or "jvm"), "batches": m.get("batches"),
           "batch_s": round(m.get("batch_seconds", 0.0), 2),
           "batch_frames_per_s": round(frames / m["batch_seconds"], 1) if m.get("batch_seconds") else None,
           "counted": m.get("counted"), "quarantined": m.get("quarantined"), "finished": res.returncode == 0,
           "exit": res.returncode}
    ev = None
    if profile:
        row.update(step_timings(res.stderr))
        ev = row["eventlog"] = _eventlog(run_dir, eventlog)
    row["cost"] = job_cost(m, ev, res)
    if not keep_tables:
        # the Delta tables of a 1M run are not needed afterwards; keep logs and metrics
        drop_tables(run_dir)
    return row


def quarantine_reasons(delta: Path) -> dict[str, int]:
    """Rows per reason of the ``quarantine`` Delta table below ``delta`` (delta-rs, one column)."""
    from collections import Counter

    from deltalake import DeltaTable
    t = DeltaTable(str(delta / "quarantine")).to_pyarrow_table(columns=["reason"])
    return dict(Counter(t.column("reason").to_pylist()))


def run_backlog(topic: str, frames: int, work: Path, profile: bool = True) -> dict:
    """job_exact on a larger topic: several micro-batches in one run, so the per-batch cost
    and (against job_exact's single batch) the marginal cost of more frames show."""
    say(f"backlog: job_exact on {topic} ({frames:,} frames)")
    row = with_load(lambda: run_job("backlog", topic, work, profile=profile, mode="exact"))
    say(f"backlog: {row['frames']:,} frames in {row['batches']} batches, {row['frames_per_s']:,.0f} frames/s "
        f"(query {row['query_s']:.1f}s, wall {row['wall_s']:.1f}s, peak RSS {row['peak_rss_mb']:,.0f} MB)")
    return row


def _poison_summary(row: dict) -> str:
    if not row.get("finished"):
        return f"did NOT finish (exit {row.get('exit')})"
    return (f"{row['frames']:,} frames, {row['frames_per_s']:,.0f} frames/s (query {row['query_s']:.1f}s, "
            f"wall {row['wall_s']:.1f}s), peak RSS {row['peak_rss_mb']:,.0f} MB")


def _quarantine_verdict(row: dict, run_dir: Path, expected: dict[str, int], exact: bool) -> None:
    """The quarantine of a poison row against ``expected`` rows per reason (``exact``: no other
    reason either)."""
    row["quarantine_expected"] = expected
    row["quarantine_ok"] = False
    if row.get("finished"):
        got = row["quarantine"] = quarantine_reasons(run_dir / "delta")
        row["quarantine_ok"] = got == expected if exact else all(got.get(k, 0) == v for k, v in expected.items())
    want = ", ".join(f"{k} = {v:,}" for k, v in expected.items())
    say(f"{row['name']}: {_poison_summary(row)}; quarantine {row.get('quarantine')} "
        f"({'as expected' if row['quarantine_ok'] else 'NOT as expected'}: {want})")


def run_replay(cfg, frames: Frames, work: Path, profile: bool = True, key: str = "uid") -> dict:
    """A producer re-sends history: the input into a fresh topic, the job once with
    ``--available-now`` (every minute final at its end), the same frames again, the job
    again on the same tables and checkpoint. The second run is the row: every frame of it
    is ``late`` (quarantined, and counted into ``corrected`` results). Checks that the
    quarantine holds exactly ``late`` = the frames the first run counted (= all frames of a
    defect-free input). The topic is deleted afterwards."""
    from tools.kafka_local import ensure_topic
    from tools.loader import load
    topic = f"bench-replay-{frames.count}"
    run_dir = fresh_dir(work / "replay")
    delete_topics(cfg, [topic])
    try:
        ensure_topic(cfg, topic, cfg.kafka.input_partitions)
        say(f"replay: loading {frames.count:,} frames into {topic}, first run (all minutes final)")
        load(str(frames.path), cfg.kafka.bootstrap_servers, topic, key=key, progress=False)
        first = run_job("replay", topic, work, profile=profile, mode="exact", run_dir=run_dir, fresh=False,
                        keep_tables=True, tag="first")
        say(f"replay: first run {_poison_summary(first)}; loading the same frames again")
        load(str(frames.path), cfg.kafka.bootstrap_servers, topic, key=key, progress=False)
        if topic_messages(cfg, topic) != 2 * frames.count:
            raise BenchError(f"{topic} does not hold {2 * frames.count:,} messages after the second load")
        row = with_load(lambda: run_job("replay", topic, work, profile=profile, mode="exact", run_dir=run_dir,
                                        fresh=False, keep_tables=True, tag="again", check=False))
        row["first_run"] = {k: first.get(k) for k in ("frames", "counted", "query_s", "wall_s", "frames_per_s",
                                                       "peak_rss_mb", "quarantined")}
        # every valid frame is late the second time (the truth file's count; else what the first run counted)
        truth = read_truth(frames.truth)
        expected = truth["valid_frames"] if truth else (first.get("counted") or 0)
        _quarantine_verdict(row, run_dir, {"late": expected}, exact=False)
        return row
    finally:
        delete_topics(cfg, [topic])
        drop_tables(run_dir)


GARBAGE_BYTES = 2048


def garbage_lines(n: int, size: int = GARBAGE_BYTES, seed: int = 7):
    """``n`` distinct lines of ``size`` bytes that are not JSON: a NUL byte, a counter, then
    printable noise (slices of one random 1 MiB block). Deterministic for a seed."""
    import random
    rng = random.Random(seed)
    printable = bytes(33 + b % 94 for b in range(256))
    block = rng.randbytes(1 << 20).translate(printable)
    for i in range(n):
        head = b"\x00garbage %d " % i
        k = size - len(head)
        o = rng.randrange(0, len(block) - k)
        yield head + block[o:o + k]


def run_garbage(cfg, n: int, work: Path, profile: bool = True) -> dict:
    """A topic of ``n`` garbage lines (~2 KB, not JSON), the job once: every line must end
    in the quarantine as ``malformed_json``. The topic is deleted afterwards."""
    topic = f"bench-garbage-{n}"
    run_dir = fresh_dir(work / "garbage")
    delete_topics(cfg, [topic])
    try:
        say(f"garbage: producing {n:,} lines of {GARBAGE_BYTES:,} B into {topic}")
        sent = produce(cfg, topic, garbage_lines(n))
        if sent != n or topic_messages(cfg, topic) != n:
            raise BenchError(f"{topic} does not hold {n:,} messages")
        row = with_load(lambda: run_job("garbage", topic, work, profile=profile, mode="exact", run_dir=run_dir,
                                        fresh=False, keep_tables=True, check=False))
        row["garbage_lines"], row["line_bytes"] = n, GARBAGE_BYTES
        _quarantine_verdict(row, run_dir, {"malformed_json": n}, exact=True)
        return row
    finally:
        delete_topics(cfg, [topic])
        drop_tables(run_dir)


def run_row(name: str, topic: str, work: Path, profile: bool = True, repeat_ceiling: int = 1) -> dict:
    """Run one row by name (see :data:`ROWS`)."""
    say(f"{name}: running on {topic}")
    if name == "read_ceiling":
        row = with_load(lambda: run_read_ceiling(topic, work, profile, repeat_ceiling))
    elif name == "old_consumer":
        row = with_load(lambda: run_old_consumer(topic, work))
    elif name in JOB_ROWS:
        row = with_load(lambda: run_job(name, topic, work, profile=profile))
    else:
        raise BenchError(f"unknown row {name!r} (known: {', '.join(ROWS)})")
    say(f"{name}: {row['frames']:,} frames, {row['frames_per_s']:,.0f} frames/s "
        f"(query {row['query_s']:.1f}s, wall {row['wall_s']:.1f}s, peak RSS {row['peak_rss_mb']:,.0f} MB)")
    return row
