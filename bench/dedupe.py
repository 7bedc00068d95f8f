"""Exact-mode dedup, measured: Spark's state store (A) against the anti-join with
``minute_uids`` (B, what :class:`doodlestats.batch.counting.ExactCounter` does).

The question (the project's issue): a micro-batch's distinct ``(minute, uid)`` pairs,
deduplicated against the uids the minute already has — which is cheaper per
micro-batch?

A  ``state_store``: one streaming query, a file source over a folder of Parquet files
   (one file = one micro-batch, ``maxFilesPerTrigger`` 1), ``withWatermark("event_time",
   "5 seconds")``, ``dropDuplicates(["window", "uid"])`` with the RocksDB state store
   provider, then ``foreachBatch``: new rows per minute (``groupBy("minute").count()
   .collect()``). ``window`` is ``window(event_time, "1 minute")``: the same key as
   ``(minute, uid)``, but it carries the watermark, so Spark evicts a minute's keys once
   the watermark passes the minute's end (the job's "final" rule). A plain ``minute``
   column would never be evicted, and ``dropDuplicatesWithinWatermark`` with a 5 s delay
   forgets a uid 5 s after it was seen, which is not a per-minute count.
   Per-batch time: ``durationMs`` of the query's progress (``triggerExecution``, the
   whole trigger, and ``addBatch``, the foreachBatch call that runs the dedup and
   commits the state store).
A' ``state_store_changelog``: A with RocksDB changelog checkpointing
   (``spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled``): a batch
   commit writes a changelog of its updates instead of a RocksDB checkpoint, snapshots
   are made in the background. The state store at its cheapest setting per batch.
A'+w ``state_store_write``: A', and ``foreachBatch`` writes the new pairs to
   ``minute_uids`` as the job must (the rollups read that table):
   ``doodlestats.batch.staging.write_staged`` + ``Tables.commit_files``, the same calls
   ``ExactCounter`` makes; the new users per minute come from the written files'
   metadata. This is what the state store would cost in the job.
B  ``anti_join``: the same files, one per batch, as ``spark.read.parquet`` →
   ``ExactCounter(Tables(tmp, "bench")).partials(spark, df, batch_id, state, touched)``
   → ``tables.commit_files(minute_uids, staged, batch_id)`` → ``tables.versions()`` for
   the next batch's ``JobState.versions``, as ``MinuteStatsPipeline._count`` calls it.
   Per-batch time: wall clock of those three calls.

All variants run in ONE SparkSession, in lockstep: batch k of each variant, one after
the other (the order rotates per batch), so they see the same machine load at the same
time, and never run at the same time. Each repeat starts all of them from scratch (new
checkpoints, new Delta tables). A warm-up round (discarded) runs first. Spark's
watermark-only batches are off (``noDataMicroBatches``): in a live job the next trigger
always has data, and here the next file only arrives after the other variants' batch.

Scenarios (1,000 frames per second of event time, uids drawn uniformly from a pool of
``--users`` 19-hex-char ids, so a minute has ~45k distinct of 60k frames):

``live``     ``--live-batch`` frames per batch (1,000 = 1 s of event time) for
             ``--minutes`` minutes
``backlog``  ``--backlog-batch`` frames per batch (250,000 = ~4 min of event time),
             ``--backlog-batches`` batches

Every batch's new users per minute, of every variant, must equal a plain Python set
recount (else the run stops with an error); at the end of a run the ``minute_uids``
table must hold exactly the distinct pairs.

Driver-received bytes: Spark's event log (``Result Size`` of every task: the rows a
``collect`` brings back plus each task's status and metric updates), per batch; A's
jobs are found by their query id and ``streaming.sql.batchId``, B's by a local property
set around its calls. The Delta log reads and commits of B are driver-side I/O
(delta-rs), not task results, and are not in these bytes.

State size at the end of each run: A's checkpoint ``state/`` folder (RocksDB files of
the retained versions) and the operator's own metrics; B's ``minute_uids`` folder (data
files and ``_delta_log``). ``minute_uids`` is written by the job in any case (the
rollups read it); A's state would come on top of it.

Run::

    .venv/bin/python -m bench.dedupe                      # 8-10 min on 2 cores (more when busy)
    .venv/bin/python -m bench.dedupe --smoke              # < 1 min, numbers mean nothing
    .venv/bin/python -m bench.dedupe --minutes 5 --live-batch 1000 --backlog-batch 250000 \\
        --repeat 3 --out bench/results/dedupe-<date>.json # ~30 min
    .venv/bin/python -m bench.dedupe --variants state_store,anti_join   # A and B only
    .venv/bin/python -m bench.dedupe --report bench/results/dedupe-<date>.json  # its tables again

Results go to ``bench/results/dedupe-<UTC date>.json`` (``--smoke``: ``bench/.work/smoke/``):
parameters, machine, the summary per scenario and variant, the printed tables, and
every batch's record (per variant, one list per field). Scratch data lives in
``bench/.work/dedupe`` and is deleted at the end (``--keep-work`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import REPO_ROOT, RESULTS_DIR, WORK_DIR, machine_info, say

T0 = 1_764_547_200  # 2025-12-01T00:00:00Z: event time starts on a whole minute
TAG = "doodle.bench.tag"  # local property naming B's Spark jobs in the event log
CHANGELOG = "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled"
WATERMARK = "5 seconds"
SCENARIOS = ("live", "backlog")
VARIANTS = ("state_store", "state_store_changelog", "anti_join", "state_store_write")
DEFAULT_VARIANTS = VARIANTS


# --------------------------------------------------------------------------- input
class Scenario:
    """A sequence of Parquet batch files of ``(ts BIGINT, uid STRING)`` and its truth."""

    def __init__(self, name: str, frames: int, batch: int, rate: int, users: int, seed: int, folder: Path):
        self.name, self.batch = name, batch
        rng = np.random.default_rng(seed)
        pool = rng.integers(0, 16, size=(users, 19), dtype=np.uint8)
        hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
        pool_s = hexd[pool].view("S19").ravel().astype(str)
        uids = pa.array(pool_s, pa.string())
        idx = rng.integers(0, users, size=frames, dtype=np.int64)
        ts = T0 + np.arange(frames, dtype=np.int64) // rate
        minute = ts - ts % 60
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.touched: list[list[int]] = []
        self.expected: list[dict[int, int]] = []   # new users per minute, per batch
        seen: set[int] = set()
        for k, lo in enumerate(range(0, frames, batch)):
            hi = min(lo + batch, frames)
            f = folder / f"batch-{k:05d}.parquet"
            pq.write_table(pa.table({"ts": pa.array(ts[lo:hi]), "uid": uids.take(pa.array(idx[lo:hi]))}), f)
            self.files.append(f)
            mins = minute[lo:hi]
            keys = np.unique((mins - T0) // 60 * users + idx[lo:hi])
            new: dict[int, int] = {}
            for key in keys.tolist():
                if key not in seen:
                    seen.add(key)
                    m = T0 + key // users * 60
                    new[m] = new.get(m, 0) + 1
            self.touched.append(sorted(int(m) for m in np.unique(mins)))
            self.expected.append(new)
        self.frames = frames
        self.pairs = len(seen)
        self.minutes = len({T0 + key // users * 60 for key in seen})
        self.bytes = sum(f.stat().st_size for f in self.files)

    def totals(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for e in self.expected:
            for m, n in e.items():
                out[m] = out.get(m, 0) + n
        return out


# --------------------------------------------------------------------------- helpers
def du(path: Path, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """(bytes, files) below ``path``; folders named in ``skip`` are left out."""
    total = files = 0
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        for n in names:
            try:
                total += os.path.getsize(os.path.join(root, n))
                files += 1
            except OSError:
                pass
    return total, files


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def med(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def check(label: str, got: dict[int, int], want: dict[int, int]) -> None:
    got = {int(m): int(n) for m, n in got.items() if n}
    want = {int(m): int(n) for m, n in want.items() if n}
    if got != want:
        diff = {m: (got.get(m), want.get(m)) for m in sorted(set(got) | set(want)) if got.get(m) != want.get(m)}
        raise AssertionError(f"{label}: new users per minute differ from the recount (got, want): {diff}")


# --------------------------------------------------------------------------- A: state store
class StateStoreRun:
    """The streaming query of variant A over ``src`` (files are added one by one)."""

    def __init__(self, spark, name: str, work: Path, changelog: bool, write: bool = False):
        from pyspark.sql import functions as F

        from doodlestats.batch.staging import write_staged
        from doodlestats.batch.window import minute_col
        from doodlestats.io.tables import MINUTE_UIDS, Tables
        self.spark, self.name = spark, name
        self.tables = None
        if write:  # the job must write minute_uids anyway (the rollups read it)
            self.root = work / f"{name}_delta"
            self.tables = Tables(str(self.root), "bench")
            self.tables.ensure()
        self.src, self.ckpt = work / f"{name}_src", work / f"{name}_checkpoint"
        self.src.mkdir(parents=True)
        self.calls: list[tuple[int, dict[int, int]]] = []
        self.lock = threading.Lock()
        stream = (spark.readStream.schema("ts BIGINT, uid STRING").option("maxFilesPerTrigger", 1)
                  .parquet(str(self.src)))
        deduped = (stream.select(minute_col(F.col("ts")).alias("minute"), "uid",
                                 F.timestamp_seconds("ts").alias("event_time"))
                   .withWatermark("event_time", WATERMARK)
                   .select("minute", "uid", F.window("event_time", "1 minute").alias("window"))
                   .dropDuplicates(["window", "uid"]))

        def each(df, batch_id):
            if self.tables is None:
                per_minute = {r["minute"]: r["count"] for r in df.groupBy("minute").count().collect()}
            else:  # as ExactCounter writes its new pairs, then commits them like the pipeline
                rows = df.select("minute", "uid", F.lit(batch_id).cast("bigint").alias("batch_id"),
                                 F.to_date(F.timestamp_seconds("minute")).alias("date"))
                metas, per_minute = write_staged(df.sparkSession, rows, self.tables.stage_uri(MINUTE_UIDS, batch_id),
                                                 "minute BIGINT, uid STRING, batch_id BIGINT", by_minute=True)
                self.tables.commit_files(MINUTE_UIDS, metas, batch_id)
            with self.lock:
                self.calls.append((batch_id, per_minute))

        # the stream runs on a clone of the session's SQL conf, taken at start
        spark.conf.set(CHANGELOG, str(changelog).lower())
        try:
            self.query = (deduped.writeStream.queryName(name).option("checkpointLocation", str(self.ckpt))
                          .foreachBatch(each).start())
        finally:
            spark.conf.unset(CHANGELOG)
        self.query_id = self.query.id
        self.seen_batches: set[int] = set()
        self.k = 0

    def step(self, f: Path, touched: list[int]) -> dict:
        """Add the next batch file, wait until the query processed it; its progress."""
        t0 = time.perf_counter()
        tmp = self.src / f".{f.name}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, self.src / f"{self.k:05d}-{f.name}")
        self.k += 1
        self.query.processAllAvailable()
        wall = time.perf_counter() - t0
        # one py4j call: recentProgress costs one call per retained progress (quadratic)
        last = self.query.lastProgress
        if last is not None and last["batchId"] not in self.seen_batches and last["numInputRows"] > 0:
            new = [last]
        else:
            deadline = time.time() + 5
            while True:
                new = [p for p in self.query.recentProgress
                       if p["batchId"] not in self.seen_batches and p["numInputRows"] > 0]
                if new or time.time() > deadline:
                    break
                time.sleep(0.05)
            if not new:
                raise RuntimeError(f"{self.name}: no progress for {f.name}")
        with self.lock:
            calls, self.calls = self.calls, []
        got: dict[int, int] = {}
        for _, d in calls:
            for m, n in d.items():
                got[m] = got.get(m, 0) + n
        trig = sum(p["durationMs"].get("triggerExecution", 0) for p in new)
        add = sum(p["durationMs"].get("addBatch", 0) for p in new)
        ops = new[-1].get("stateOperators") or [{}]
        op = ops[0]
        for p in new:
            self.seen_batches.add(p["batchId"])
        return {"ms": float(trig), "add_batch_ms": float(add), "wall_ms": wall * 1000,
                "batch_ids": [p["batchId"] for p in new], "rows_in": sum(p["numInputRows"] for p in new),
                "durations": {k: v for k, v in new[-1]["durationMs"].items()},
                "state_rows": op.get("numRowsTotal"), "state_rows_updated": op.get("numRowsUpdated"),
                "state_rows_removed": op.get("numRowsRemoved"), "state_memory_bytes": op.get("memoryUsedBytes"),
                "state_commit_ms": op.get("commitTimeMs"), "state_removal_ms": op.get("allRemovalsTimeMs"),
                "state_update_ms": op.get("allUpdatesTimeMs"),
                "_new": got}

    def finish(self) -> dict:
        last = self.query.lastProgress or {}
        self.query.stop()
        op = (last.get("stateOperators") or [{}])[0]
        state_bytes, state_files = du(self.ckpt / "state")
        ckpt_bytes, _ = du(self.ckpt)
        return {"state_folder_bytes": state_bytes, "state_folder_files": state_files,
                "checkpoint_bytes": ckpt_bytes, "state_rows_total": op.get("numRowsTotal"),
                "state_memory_bytes": op.get("memoryUsedBytes"),
                "rocksdb_metrics": {k: v for k, v in (op.get("customMetrics") or {}).items()
                                    if k.startswith("rocksdb") and any(s in k for s in ("Size", "Bytes", "Files"))}}


# --------------------------------------------------------------------------- B: anti-join
class AntiJoinRun:
    """Variant B: ExactCounter.partials + commit_files on a fresh set of Delta tables."""

    def __init__(self, spark, work: Path, tag_prefix: str):
        from doodlestats.batch.counting import ExactCounter
        from doodlestats.io.tables import Tables
        self.spark, self.tag_prefix = spark, tag_prefix
        self.root = work / "b_delta"
        self.tables = Tables(str(self.root), "bench")
        self.tables.ensure()
        self.counter = ExactCounter(self.tables)
        self.versions = self.tables.versions()
        self.k = 0

    def step(self, f: Path, touched: list[int]) -> dict:
        from pyspark.sql import functions as F

        from doodlestats.batch.window import minute_col
        from doodlestats.io.state import JobState
        from doodlestats.io.tables import MINUTE_UIDS
        k = self.k
        sc = self.spark.sparkContext
        st = JobState(batch_id=k - 1, versions=self.versions)
        sc.setLocalProperty(TAG, f"{self.tag_prefix}|{k}")
        try:
            t0 = time.perf_counter()
            df = (self.spark.read.schema("ts BIGINT, uid STRING").parquet(str(f))
                  .select(minute_col(F.col("ts")).alias("minute"), "uid"))
            p = self.counter.partials(self.spark, df, k, st, touched)
            t1 = time.perf_counter()
            self.tables.commit_files(MINUTE_UIDS, p.staged.get(MINUTE_UIDS, []), k)
            self.versions = self.tables.versions()
            t2 = time.perf_counter()
        finally:
            sc.setLocalProperty(TAG, None)
        v_prev = st.versions.get(MINUTE_UIDS)
        read_files = len(self.tables.files_overlapping(MINUTE_UIDS, min(touched), max(touched), v_prev))
        self.k += 1
        return {"ms": (t2 - t0) * 1000, "partials_ms": (t1 - t0) * 1000, "commit_ms": (t2 - t1) * 1000,
                "files_read": read_files, "files_written": len(p.staged.get(MINUTE_UIDS, [])),
                "_new": dict(p.per_minute)}

    def finish(self, want_pairs: int, want: dict[int, int]) -> dict:
        return check_minute_uids("anti_join", self.tables, self.root, want_pairs, want)


def check_minute_uids(label: str, tables, root: Path, want_pairs: int, want: dict[int, int]) -> dict:
    """``minute_uids`` holds exactly the distinct pairs; its size on disk."""
    from doodlestats.io.tables import MINUTE_UIDS
    t = tables.read(MINUTE_UIDS, columns=["minute", "uid"])
    g = t.group_by("minute").aggregate([("uid", "count"), ("uid", "count_distinct")])
    per = {m: (n, d) for m, n, d in zip(*(g.column(c).to_pylist()
                                         for c in ("minute", "uid_count", "uid_count_distinct")))}
    if any(n != d for n, d in per.values()) or t.num_rows != want_pairs:
        raise AssertionError(f"{label}: minute_uids holds {t.num_rows} rows, want {want_pairs} distinct pairs")
    check(f"{label} minute_uids table", {m: n for m, (n, _) in per.items()}, want)
    base = root / MINUTE_UIDS
    data_bytes, data_files = du(base, skip=("_delta_log",))
    log_bytes, log_files = du(base / "_delta_log")
    acts = pa.table(tables.table(MINUTE_UIDS).get_add_actions(flatten=True))
    return {"minute_uids_bytes": data_bytes + log_bytes, "minute_uids_data_bytes": data_bytes,
            "minute_uids_data_files": data_files, "minute_uids_log_bytes": log_bytes,
            "minute_uids_log_files": log_files, "active_files": acts.num_rows,
            "active_bytes": int(sum(acts.column("size_bytes").to_pylist())) if acts.num_rows else 0,
            "rows": t.num_rows}


# --------------------------------------------------------------------------- one run
def run_pair(spark, sc: Scenario, rep: str, work: Path, variants=DEFAULT_VARIANTS, log=True) -> dict:
    """The variants over ``sc`` in lockstep (batch k of each, the order rotating per
    batch); per-batch records and end-of-run sizes."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    runners = {}
    for v in variants:
        if v == "anti_join":
            runners[v] = AntiJoinRun(spark, work, f"anti_join|{sc.name}|{rep}")
        else:
            runners[v] = StateStoreRun(spark, f"{v}_{sc.name}_{rep}".replace("-", "_"), work,
                                       changelog=v != "state_store", write=v == "state_store_write")
    recs: dict[str, list[dict]] = {v: [] for v in variants}
    got: dict[str, dict[int, int]] = {v: {} for v in variants}
    t_start = time.time()
    ends: dict[str, dict] = {}
    try:
        for k, f in enumerate(sc.files):
            n = len(variants)
            for v in (variants[(k + i) % n] for i in range(n)):
                r = runners[v].step(f, sc.touched[k])
                check(f"{v} {sc.name} {rep} batch {k}", r.pop("_new"), sc.expected[k])
                for m, c in sc.expected[k].items():
                    got[v][m] = got[v].get(m, 0) + c
                recs[v].append({"k": k, **r})
            if log and (k + 1) % max(1, len(sc.files) // 5) == 0:
                say(f"  {sc.name} {rep}: batch {k + 1}/{len(sc.files)}: "
                    + ", ".join(f"{v} {recs[v][-1]['ms']:.0f} ms" for v in variants))
    finally:
        for v, x in runners.items():
            if isinstance(x, StateStoreRun):
                try:
                    ends[v] = x.finish()
                except Exception:  # noqa: BLE001 - a failed query raised already
                    ends[v] = {}
    want = sc.totals()
    for v in variants:
        check(f"{v} {sc.name} {rep} totals", got[v], want)
    if "anti_join" in runners:
        ends["anti_join"] = runners["anti_join"].finish(sc.pairs, want)
    if "state_store_write" in runners:
        x = runners["state_store_write"]
        ends["state_store_write"].update(check_minute_uids("state_store_write", x.tables, x.root, sc.pairs, want))
    return {"scenario": sc.name, "repeat": rep, "seconds": time.time() - t_start,
            "query_ids": {x.query_id: v for v, x in runners.items() if isinstance(x, StateStoreRun)},
            "batches": recs, "end": ends}


# --------------------------------------------------------------------------- event log
def result_bytes(log_dir: Path, runs: list[dict]) -> None:
    """Attach ``driver_bytes``, ``jobs`` and ``tasks`` to every batch record from the event log."""
    logs = [p for p in log_dir.iterdir() if p.is_file()]
    if not logs:
        say("no event log found: driver bytes not measured")
        return
    stage_job: dict[int, str] = {}
    job_tag: dict[int, str] = {}
    agg: dict[str, list[int]] = {}   # tag -> [bytes, jobs, tasks]
    queries = {q: (v, r["scenario"], r["repeat"]) for r in runs for q, v in r["query_ids"].items()}
    with open(max(logs, key=lambda p: p.stat().st_size), encoding="utf-8") as fh:
        for line in fh:
            if '"SparkListenerJobStart"' not in line[:60] and '"SparkListenerTaskEnd"' not in line[:60]:
                continue
            e = json.loads(line)
            if e["Event"] == "SparkListenerJobStart":
                props = e.get("Properties") or {}
                tag = props.get(TAG)
                if tag is None and props.get("sql.streaming.queryId") in queries:
                    v, s, rep = queries[props["sql.streaming.queryId"]]
                    tag = f"{v}|{s}|{rep}|batch{props.get('streaming.sql.batchId')}"
                if tag is None:
                    continue
                job_tag[e["Job ID"]] = tag
                agg.setdefault(tag, [0, 0, 0])[1] += 1
                for sid in e.get("Stage IDs", []):
                    stage_job[sid] = tag
            else:
                tag = stage_job.get(e.get("Stage ID"))
                if tag is None:
                    continue
                m = e.get("Task Metrics") or {}
                agg[tag][0] += int(m.get("Result Size", 0))
                agg[tag][2] += 1
    for r in runs:
        for v, recs in r["batches"].items():
            for rec in recs:
                keys = [f"{v}|{r['scenario']}|{r['repeat']}|batch{b}" for b in rec["batch_ids"]] \
                    if "batch_ids" in rec else [f"{v}|{r['scenario']}|{r['repeat']}|{rec['k']}"]
                tot = [0, 0, 0]
                for key in keys:
                    tot = [a + b for a, b in zip(tot, agg.get(key, (0, 0, 0)))]
                if tot[1]:
                    rec["driver_bytes"], rec["jobs"], rec["tasks"] = tot


# --------------------------------------------------------------------------- summary
ROWS = (("state_store", "ms", "A state store (trigger)"),
        ("state_store", "add_batch_ms", "A state store (addBatch)"),
        ("state_store_changelog", "ms", "A' state store + changelog (trigger)"),
        ("state_store_changelog", "add_batch_ms", "A' state store + changelog (addBatch)"),
        ("state_store_write", "ms", "A'+w state store + changelog + minute_uids write (trigger)"),
        ("state_store_write", "add_batch_ms", "A'+w state store + changelog + minute_uids write (addBatch)"),
        ("anti_join", "ms", "B anti-join (partials+commit)"),
        ("anti_join", "partials_ms", "B anti-join (partials only)"))


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for scn in sorted({r["scenario"] for r in runs}, key=SCENARIOS.index):
        rs = [r for r in runs if r["scenario"] == scn]
        for variant, field, label in ROWS:
            if variant not in rs[0]["batches"]:
                continue
            per_rep = [[b[field] for b in r["batches"][variant]] for r in rs]
            allv = [x for xs in per_rep for x in xs]
            bytes_ = [b["driver_bytes"] for r in rs for b in r["batches"][variant] if "driver_bytes" in b]
            jobs = [b["jobs"] for r in rs for b in r["batches"][variant] if "jobs" in b]
            out.setdefault(scn, {})[label] = {
                "variant": variant, "field": field, "batches_per_run": len(per_rep[0]),
                "median_ms": med(allv), "p90_ms": pct(allv, 90), "max_ms": max(allv),
                "median_ms_per_repeat": [med(xs) for xs in per_rep],
                "total_s_per_repeat": [sum(xs) / 1000 for xs in per_rep],
                "total_s": med([sum(xs) / 1000 for xs in per_rep]),
                "driver_bytes_median": med(bytes_), "driver_bytes_p90": pct(bytes_, 90),
                "driver_bytes_max": max(bytes_) if bytes_ else None,
                "driver_bytes_total_per_run": med([sum(b.get("driver_bytes", 0) for b in r["batches"][variant])
                                                   for r in rs]) if bytes_ else None,
                "spark_jobs_median": med(jobs)}
        sizes: dict = {}
        for v in ("state_store", "state_store_changelog", "state_store_write"):
            ends = [r["end"].get(v) or {} for r in rs]
            if v not in rs[0]["batches"]:
                continue
            sizes[v] = {"state_folder_bytes": med([e.get("state_folder_bytes", 0) for e in ends]),
                        "state_folder_files": med([e.get("state_folder_files", 0) for e in ends]),
                        "rows_at_end": med([e.get("state_rows_total") or 0 for e in ends]),
                        "memory_bytes_at_end": med([e.get("state_memory_bytes") or 0 for e in ends]),
                        "max_rows": max((b.get("state_rows") or 0) for r in rs for b in r["batches"][v])}
        for v in ("anti_join", "state_store_write"):
            if v not in rs[0]["batches"]:
                continue
            ends = [r["end"][v] for r in rs]
            sizes.setdefault(v, {}).update({k: med([e[k] for e in ends]) for k in (
                "minute_uids_bytes", "minute_uids_data_bytes", "minute_uids_data_files", "minute_uids_log_bytes",
                "minute_uids_log_files", "active_files", "active_bytes", "rows")})
        out[scn]["sizes"] = sizes
    return out


def table(summary: dict) -> str:
    lines = ["| scenario | variant | median ms | p90 ms | total s (median run) | per-run medians ms "
             "| driver bytes / batch, median (max) | Spark jobs / batch |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for scn, rows in summary.items():
        for label, x in rows.items():
            if label == "sizes":
                continue
            per = " / ".join(f"{v:.0f}" for v in x["median_ms_per_repeat"])
            b = j = ""
            if x["field"] == "ms" and x["driver_bytes_median"] is not None:
                b = f"{x['driver_bytes_median'] / 1e3:,.0f} kB ({x['driver_bytes_max'] / 1e3:,.0f} kB)"
                j = f"{x['spark_jobs_median']:.0f}"
            lines.append(f"| {scn} ({x['batches_per_run']} batches) | {label} | {x['median_ms']:,.0f} | "
                         f"{x['p90_ms']:,.0f} | {x['total_s']:.1f} | {per} | {b} | {j} |")
    lines += ["", "| scenario | what | bytes at the end of a run | files | rows |", "|---|---|---:|---:|---:|"]
    for scn, rows in summary.items():
        s = rows["sizes"]
        for v, label in (("state_store", "A state folder (RocksDB, retained versions)"),
                         ("state_store_changelog", "A' state folder (RocksDB + changelog)"),
                         ("state_store_write", "A'+w state folder (RocksDB + changelog)")):
            if v in s:
                x = s[v]
                lines.append(f"| {scn} | {label} | {x['state_folder_bytes'] / 2**20:.1f} MB | "
                             f"{x['state_folder_files']:.0f} | {x['rows_at_end']:,.0f} in state "
                             f"(max {x['max_rows']:,.0f}) |")
        for v, label in (("anti_join", "B"), ("state_store_write", "A'+w")):
            if v not in s:
                continue
            x = s[v]
            lines.append(f"| {scn} | {label} minute_uids: Parquet files of the table + _delta_log | "
                         f"{x['active_bytes'] / 2**20:.1f} MB + {x['minute_uids_log_bytes'] / 2**20:.2f} MB | "
                         f"{x['active_files']:.0f} + {x['minute_uids_log_files']:.0f} | {x['rows']:,.0f} pairs |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def session(event_dir: Path | None):
    from doodlestats.batch.pipeline import SPARK_SETTINGS
    from doodlestats.runtime.config import load_config
    from doodlestats.runtime.session import get_spark
    extra = {
        "spark.sql.streaming.stateStore.providerClass":
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        # the live job always has data at its next trigger, so Spark never runs its
        # watermark-only batches there; here the next file only comes after B's batch
        "spark.sql.streaming.noDataMicroBatches.enabled": "false",
        # an idle stream looks for new files every pollingDelay; the job triggers once a
        # second instead, so keep the idle queries' listing off the CPU the others measure
        "spark.sql.streaming.pollingDelay": "50ms",
        **SPARK_SETTINGS,
    }
    if event_dir is not None:
        event_dir.mkdir(parents=True, exist_ok=True)
        extra.update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": f"file://{event_dir}",
                      "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"})
    return get_spark("dedupe_bench", load_config(), extra)


def columns(recs: list[dict]) -> dict[str, list]:
    """Per-batch records as one list per field (nested dicts flattened to ``a.b``)."""
    flat = []
    for rec in recs:
        row = {}
        for key, val in rec.items():
            if isinstance(val, dict):
                row.update({f"{key}.{k}": v for k, v in val.items()})
            elif key == "batch_ids" and len(val) == 1:
                row["batch_id"] = val[0]
            else:
                row[key] = round(val, 1) if isinstance(val, float) else val
        flat.append(row)
    keys = list(dict.fromkeys(k for row in flat for k in row))
    return {k: [row.get(k) for row in flat] for k in keys}


def write_compact_json(path: Path, obj) -> None:
    """Indented JSON whose lists of plain values stay on one line (per-batch series)."""
    import re
    text = json.dumps(obj, indent=1, default=str)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.dedupe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2,
                   help="live scenario: minutes of event time (default 2: two whole minutes; a whole number keeps "
                        "B's within-minute growth unbiased)")
    p.add_argument("--live-batch", type=int, default=1000, help="frames per live batch (default 1000 = 1 s)")
    p.add_argument("--backlog-batch", type=int, default=250_000, help="frames per backlog batch (default 250000)")
    p.add_argument("--backlog-batches", type=int, default=4, help="backlog batches per run (default 4)")
    p.add_argument("--rate", type=int, default=1000, help="frames per second of event time (default 1000)")
    p.add_argument("--users", type=int, default=100_000, help="uid pool (default 100000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="runs of each scenario (default 2)")
    p.add_argument("--scenarios", default="live,backlog", help="comma list of live,backlog")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma list of " + ", ".join(VARIANTS) + " (default: all)")
    p.add_argument("--no-eventlog", action="store_true", help="do not measure driver bytes (no event log)")
    p.add_argument("--no-warm-up", action="store_true")
    p.add_argument("--keep-work", action="store_true",
                   help="keep bench/.work/dedupe (inputs, checkpoints, tables, event log; ~0.7 GB after a full run)")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the tables of an earlier result and exit")
    p.add_argument("--smoke", action="store_true", help="tiny run (< 1 min): 6 live and 2 backlog batches of "
                   "10000, one repeat, no warm-up; results go to bench/.work/smoke/")
    p.add_argument("--out", type=Path, help="JSON result (default bench/results/dedupe-<UTC date>.json)")
    return p.parse_args(argv)


def records(cols: dict[str, list]) -> list[dict]:
    """Inverse of :func:`columns` (nested fields stay flat)."""
    keys = list(cols)
    return [{k: cols[k][i] for k in keys} for i in range(len(cols[keys[0]]) if keys else 0)]


def report(path: Path) -> str:
    """The tables of a result file, recomputed from its per-batch records."""
    r = json.loads(path.read_text())
    runs = [{**x, "batches": {v: records(c) for v, c in x["batches"].items()}} for x in r["runs"]]
    return table(summarise(runs))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.smoke:
        args.minutes, args.backlog_batch, args.backlog_batches, args.repeat = 6 * args.live_batch / args.rate / 60, \
            10_000, 2, 1
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = args.out or ((WORK_DIR / "smoke" if args.smoke else RESULTS_DIR) / f"dedupe-{date}.json")
    work = WORK_DIR / "dedupe"
    if work.exists():
        shutil.rmtree(work)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [x for x in scenarios if x not in SCENARIOS] + [x for x in variants if x not in VARIANTS]
    if bad or not scenarios or not variants:
        raise SystemExit(f"dedupe: unknown scenario/variant {bad}; scenarios: {SCENARIOS}, variants: {VARIANTS}")
    started = time.time()
    say("generating batch files")
    scs: dict[str, Scenario] = {}
    if "live" in scenarios:
        scs["live"] = Scenario("live", int(args.minutes * 60 * args.rate), args.live_batch, args.rate, args.users,
                               args.seed, work / "input" / "live")
    if "backlog" in scenarios:
        scs["backlog"] = Scenario("backlog", args.backlog_batch * args.backlog_batches, args.backlog_batch,
                                  args.rate, args.users, args.seed + 1, work / "input" / "backlog")
    for s in scs.values():
        say(f"  {s.name}: {s.frames:,} frames in {len(s.files)} batches of {s.batch:,}, {s.minutes} minutes, "
            f"{s.pairs:,} distinct (minute, uid), {s.bytes / 2**20:.1f} MB of Parquet")
    info = machine_info()
    event_dir = None if args.no_eventlog else work / "eventlog"
    t_spark = time.time()
    spark = session(event_dir)
    runs: list[dict] = []
    shuffle_partitions = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        say(f"Spark {spark.version} {spark.sparkContext.master} ready in {time.time() - t_spark:.0f} s, "
            f"event log {'on' if event_dir else 'off'}")
        if not args.no_warm_up and not args.smoke:
            n = 10
            say(f"warm-up ({n} live batches and 2 of {min(args.backlog_batch, 50_000):,} frames, not recorded)")
            wsc = Scenario("warm", n * args.live_batch, args.live_batch, args.rate, args.users, args.seed + 2,
                           work / "input" / "warm")
            run_pair(spark, wsc, "warm", work / "runs" / "warm", variants, log=False)
            wsb = Scenario("warm", 2 * min(args.backlog_batch, 50_000), min(args.backlog_batch, 50_000),
                           args.rate, args.users, args.seed + 3, work / "input" / "warm-b")
            run_pair(spark, wsb, "warm-b", work / "runs" / "warm-b", variants, log=False)
        for rep in range(args.repeat):
            for name in (scenarios if rep % 2 == 0 else scenarios[::-1]):
                sc = scs[name]
                load = os.getloadavg()[0]
                say(f"run {rep + 1}/{args.repeat}: {name} (load {load:.1f})")
                r = run_pair(spark, sc, f"r{rep + 1}", work / "runs" / f"{name}-r{rep + 1}", variants)
                r["load1_before"], r["load1_after"] = round(load, 2), round(os.getloadavg()[0], 2)
                runs.append(r)
                say(f"  {name} r{rep + 1} done in {r['seconds']:.0f} s; every variant equals the recount")
    finally:
        spark.stop()
    if event_dir is not None:
        result_bytes(event_dir, runs)
    summary = summarise(runs)
    text = table(summary)
    print(text)
    result = {
        "benchmark": "dedupe", "started_utc": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "seconds": round(time.time() - started, 1), "machine": info, "load1_at_end": round(os.getloadavg()[0], 2),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "settings": {"watermark": WATERMARK, "dedup_key": "window(event_time, '1 minute'), uid",
                     "state_store": "RocksDBStateStoreProvider", "no_data_micro_batches": False,
                     "polling_delay": "50ms", "changelog_checkpointing": "state_store_changelog, state_store_write",
                     "shuffle_partitions": shuffle_partitions},
        "scenarios": {s.name: {"frames": s.frames, "batches": len(s.files), "batch_frames": s.batch,
                               "minutes": s.minutes, "distinct_pairs": s.pairs, "input_bytes": s.bytes}
                      for s in scs.values()},
        "summary": summary, "table": text,
        "runs": [{**r, "batches": {v: columns(recs) for v, recs in r["batches"].items()}} for r in runs],
    }
    write_compact_json(out, result)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out} "
        f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
