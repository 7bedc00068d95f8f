"""The minute-stats pipeline: one micro-batch of raw frames → minute results.

Used by ``jobs/minute_stats.py`` from ``foreachBatch`` (streaming) and by the tests on
plain DataFrames. The input DataFrame has the normalised source columns
``value`` (binary), ``topic``, ``partition``, ``offset`` (Kafka) or ``file``, ``line``
(files; ``partition``/``offset`` then identify the file and the line).

Per batch, in order::

    parse → guard (ts_outlier) → late check → count → publish (Kafka, stdout)
          → Delta: quarantine, minute_uids, minute_stats → state file

Counting state: the open (not yet final) minutes live in the driver — the exact set of
uids per minute, or a HyperLogLog sketch per minute in approx mode — and are rebuilt
from Delta (as of the versions of the last complete batch) on restart. Minutes are
final once the watermark (the slowest active partition's largest accepted event time −
delay) passes their end; then they leave memory. Frames of a final minute are
``late``: quarantined, and (``late_corrections``) counted into a ``corrected`` result
whose state is read back from Delta.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from doodlestats import guard, reasons
from doodlestats.config import Config
from doodlestats.parse import minute_of, parse_frames
from doodlestats.results import CORRECTED, FINAL, PROVISIONAL, MinuteResult, iso
from doodlestats.state import JobState, StateStore
from doodlestats.tables import MINUTE_STATS, MINUTE_UIDS, QUARANTINE, SCHEMAS, Tables, minute_date

SAMPLE_ROWS = 2000
QUARANTINE_VIA_DRIVER = 200_000  # more quarantined frames per batch than this: Spark writes them


def hll_lg_k(rsd: float) -> int:
    """Smallest HyperLogLog lgConfigK whose standard error 1.04/sqrt(2^k) is <= rsd."""
    return max(4, min(21, math.ceil(math.log2((1.04 / rsd) ** 2))))


def hll_rsd(lg_k: int) -> float:
    return round(1.04 / math.sqrt(2 ** lg_k), 5)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BatchReport:
    batch_id: int
    frames: int = 0
    counted: int = 0
    seconds: float = 0.0
    quarantined: Counter = field(default_factory=Counter)
    results: list[MinuteResult] = field(default_factory=list)
    skipped: bool = False
    steps: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, since: float) -> float:
        now = time.time()
        self.steps[name] = self.steps.get(name, 0.0) + now - since
        return now


def with_file_positions(df: DataFrame) -> DataFrame:
    """Source columns for a batch of text-file rows (``value``, ``file``).

    Each file is one Spark partition read in order (the files source sets the split size
    so), so the row index inside the partition is the line number. ``partition`` is a
    stable id of the file, ``offset`` the 0-based line: the guard's neighbourhoods and
    the quarantine's coordinates then work as for Kafka.
    """
    if "offset" in df.columns:
        return df
    idx = F.monotonically_increasing_id().bitwiseAND(F.lit((1 << 33) - 1))
    return df.select("value", F.lit(None).cast("string").alias("topic"),
                     (F.crc32(F.col("file")) % F.lit(2 ** 31)).cast("int").alias("partition"),
                     idx.alias("offset"), "file", (idx + 1).alias("line"))


class MinuteStatsPipeline:
    """Stateful processor of micro-batches. See the module docstring."""

    def __init__(self, spark, cfg: Config, checkpoint: str, delta_root: str,
                 publish: Callable[[list[MinuteResult]], None] | None = None,
                 on_final: Callable[[list[MinuteResult]], None] | None = None,
                 progress: bool = True):
        self.spark, self.cfg = spark, cfg
        self.mode = cfg.job.mode
        self.lg_k = hll_lg_k(cfg.job.rsd)
        self.rsd = hll_rsd(self.lg_k) if self.mode == "approx" else None
        self.store = StateStore(checkpoint)
        self.tables = Tables(delta_root, app_id="minute_stats")
        self.tables.ensure()
        self.publish = publish or (lambda results: None)
        self.on_final = on_final or (lambda results: None)
        self.progress = progress
        self.loaded_for: int | None = None   # batch id whose state the memory reflects
        self.uids: dict[int, set[str]] = {}  # exact: open minute -> uids
        self.sketch: dict[int, bytes] = {}   # approx: open minute -> HLL sketch
        self.frames: dict[int, int] = {}     # open minute -> counted frames
        self.quarantined_total: Counter = Counter()
        self.totals = {"batches": 0, "frames": 0, "counted": 0, "batch_seconds": 0.0}
        self.last_end = time.time()

    # ------------------------------------------------------------------ state
    def _load_minutes(self, filters, st: JobState) -> tuple[dict, dict, dict]:
        """(frames, sketches, uid sets) per minute stored in Delta for ``filters``, as of the
        table versions recorded in state ``st`` (never a later, half-replayed batch)."""
        v = st.versions or {}
        frames, sk, uids = {}, {}, {}
        ms = self.tables.read(MINUTE_STATS, [("ts",) + f[1:] for f in filters], ["ts", "frames", "hll"],
                              v.get(MINUTE_STATS))
        for m, n, h in zip(*(ms.column(c).to_pylist() for c in ("ts", "frames", "hll"))):
            frames[m] = n
            if h is not None:
                sk[m] = bytes(h)
        if self.mode == "exact":
            mu = self.tables.read(MINUTE_UIDS, [("minute",) + f[1:] for f in filters], ["minute", "uid"],
                                  v.get(MINUTE_UIDS))
            for m, u in zip(mu.column("minute").to_pylist(), mu.column("uid").to_pylist()):
                uids.setdefault(m, set()).add(u)
        return frames, sk, uids

    def _rebuild(self, st: JobState) -> None:
        """Load the open minutes of state ``st`` from Delta (after a (re)start).

        A checkpoint without state (a first run) starts empty: the Delta tables belong
        to their checkpoint, and a new checkpoint means a new count.
        """
        self.uids, self.sketch, self.frames = {}, {}, {}
        self.loaded_for = None
        if st.batch_id >= 0:
            lo = (st.watermark - 60) if st.watermark is not None else -1
            self.frames, self.sketch, self.uids = self._load_minutes([("m", ">", lo)], st)
            for m in self.uids:
                self.frames.setdefault(m, 0)
        self.loaded_for = st.batch_id

    def _final_state_of(self, minutes: list[int], st: JobState) -> tuple[dict, dict, dict]:
        """Stored frames / sketches / uids of minutes that already left memory."""
        if not minutes:
            return {}, {}, {}
        return self._load_minutes([("m", "in", minutes)], st)

    # ------------------------------------------------------------------ stages
    def _sample_ref(self, df: DataFrame) -> int | None:
        rows = (parse_frames(df.limit(SAMPLE_ROWS), self.cfg.job.parser)
                .where(F.col("reason").isNull()).select("ts").collect())
        ts = sorted(r["ts"] for r in rows)
        return ts[len(ts) // 2] if len(ts) >= self.cfg.guard.min_neighbours else None

    def _union_sketches(self, pairs: list[tuple[int, bytes]]) -> dict[int, tuple[bytes, int]]:
        """minute -> (union sketch, estimate) over the given (minute, sketch) rows."""
        df = self.spark.createDataFrame(pairs, "minute BIGINT, s BINARY")
        rows = (df.groupBy("minute").agg(F.hll_union_agg("s", True).alias("s"))
                  .select("minute", "s", F.hll_sketch_estimate("s").alias("n")).collect())
        return {r["minute"]: (bytes(r["s"]), r["n"]) for r in rows}

    # ------------------------------------------------------------------ batch
    def process_batch(self, df: DataFrame, batch_id: int) -> BatchReport:
        """Process one micro-batch; idempotent for a replayed ``batch_id``."""
        t0 = time.time()
        rep = BatchReport(batch_id)
        if self.store.done(batch_id):
            rep.skipped = True
            log(f"batch {batch_id}: already committed, skipped")
            return rep
        st = self.store.load_before(batch_id)
        if self.loaded_for != st.batch_id:
            self._rebuild(st)
        g = self.cfg.guard
        df = with_file_positions(df)
        ref = st.ref_ts if st.ref_ts is not None else self._sample_ref(df)

        parsed = parse_frames(df, self.cfg.job.parser)
        keep = guard.may_quarantine(ref, g.max_skew_s, st.watermark)
        cached = (parsed.withColumn("keep", keep)
                  .select("ts", "uid", "reason", "topic", "partition", "offset", "file", "line", "keep",
                          F.when(F.col("keep"), F.col("value")).alias("raw"))
                  .persist(StorageLevel.MEMORY_AND_DISK))
        try:
            t = rep.step("prepare", t0)
            stats = guard.neighbourhoods(cached, g.neighbourhood)
            gp = guard.plan(stats, ref, g.min_neighbours)
            rep.step("read+parse", t)
            rep.frames = gp.frames
            if gp.frames:
                try:
                    self._count(cached, gp, st, batch_id, rep)
                except BaseException:
                    self.loaded_for = None  # memory may be ahead of Delta: rebuild on retry
                    raise
            else:
                self.store.save(replace(st, batch_id=batch_id, versions=self.tables.versions()))
                self.loaded_for = batch_id
        finally:
            cached.unpersist()
        rep.seconds = time.time() - t0
        self._progress(rep)
        return rep

    def _count(self, cached: DataFrame, gp: guard.GuardPlan, st: JobState, batch_id: int,
               rep: BatchReport) -> None:
        cfg = self.cfg
        wm_prev = st.watermark
        g = guard.apply(cached, gp, cfg.guard.neighbourhood, cfg.guard.max_skew_s)
        g = g.withColumn("minute", minute_of(F.col("ts")))
        is_late = F.col("reason").isNull() & F.lit(wm_prev is not None) & \
            ((F.col("minute") + 60) <= F.lit(wm_prev if wm_prev is not None else 0))
        g = g.withColumn("late", is_late)
        counted = g.where(F.col("reason").isNull() & (~F.col("late") | F.lit(cfg.job.late_corrections)))
        quarantined = (g.where(F.col("reason").isNotNull() | F.col("late"))
                        .withColumn("reason", F.coalesce("reason", F.lit(reasons.LATE))))

        # 1. what the batch holds, collected to the driver in ONE job: per-minute
        #    aggregates of the counted frames + quarantine counts per reason
        t = time.time()
        cols = {"kind": "string", "reason": "string", "minute": "bigint", "uid": "string", "n": "bigint",
                "mx": "bigint", "s": "binary", "src": "string", "partition": "int"}

        def shape(df: DataFrame, kind: str) -> DataFrame:
            return df.select(F.lit(kind).alias("kind"), *[
                F.col(c) if c in df.columns else F.lit(None).cast(t).alias(c)
                for c, t in cols.items() if c != "kind"])

        n = F.count(F.lit(1)).alias("n")
        if self.mode == "exact":  # distinct (minute, uid) pairs with their frame counts
            counts = counted.groupBy("minute", "uid").agg(n, F.max("ts").alias("mx"))
        else:                     # one HLL sketch per minute
            counts = counted.groupBy("minute").agg(n, F.max("ts").alias("mx"),
                                                   F.hll_sketch_agg("uid", self.lg_k).alias("s"))
        per_partition = (counted.where(~F.col("late"))
                         .groupBy(F.coalesce("topic", "file").alias("src"), "partition")
                         .agg(F.max("ts").alias("mx")))
        tbl = (shape(counts, "count")
               .unionByName(shape(quarantined.groupBy("reason").agg(n), "quarantine"))
               .unionByName(shape(per_partition, "partition"))).toArrow()
        batch_frames: Counter = Counter()
        batch_uids: dict[int, list[str]] = {}
        batch_sketch: dict[int, bytes] = {}
        batch_partitions: dict[str, int] = {}
        max_ts = None
        is_count = pc.equal(tbl.column("kind"), "count")
        for r in tbl.filter(pc.invert(is_count)).to_pylist():  # a few rows
            if r["kind"] == "quarantine":
                rep.quarantined[r["reason"]] += r["n"]
            else:
                batch_partitions[f"{r['src']}#{r['partition']}"] = r["mx"]
        cnt = tbl.filter(is_count)
        if cnt.num_rows:  # per-minute work in Arrow (C), not a Python loop over every pair
            agg = cnt.group_by("minute").aggregate([("n", "sum"), ("mx", "max")])
            batch_frames.update(dict(zip(agg["minute"].to_pylist(), agg["n_sum"].to_pylist())))
            max_ts = max(agg["mx_max"].to_pylist())
            for m in batch_frames:
                rows = cnt.filter(pc.equal(cnt["minute"], m))
                if self.mode == "exact":
                    batch_uids[m] = rows["uid"].to_pylist()
                else:
                    batch_sketch[m] = rows["s"][0].as_py()
        rep.counted = sum(batch_frames.values())
        t = rep.step("collect", t)

        # 2. watermark and statuses: the slowest active partition decides
        seen = [x for x in (st.max_ts, max_ts) if x is not None]
        new_max = max(seen) if seen else None
        partitions, now = self._partitions_after(st, batch_partitions)
        idle = cfg.job.idle_partition_s
        active = [mx for mx, last in partitions.values() if now - last <= idle]
        wm_new = st.watermark
        if active:
            cand = min(active) - cfg.job.watermark_s
            wm_new = cand if wm_new is None else max(wm_new, cand)
        touched = set(batch_frames)
        late_minutes = sorted(m for m in touched if wm_prev is not None and m + 60 <= wm_prev)
        old_frames, old_sk, old_uids = self._final_state_of(late_minutes, st)
        for m in late_minutes:  # corrections start from what was stored
            self.frames[m] = old_frames.get(m, 0)
            if self.mode == "exact":
                self.uids[m] = old_uids.get(m, set())
            elif m in old_sk:
                self.sketch[m] = old_sk[m]
        new_minutes: list[int] = []  # (minute, uid) pairs never seen before: minute_uids rows
        new_uids: list[str] = []
        for m in touched:
            self.frames[m] = self.frames.get(m, 0) + batch_frames[m]
            if self.mode == "exact":
                known = self.uids.get(m)
                if known is None:
                    fresh = self.uids[m] = set(batch_uids.get(m, ()))
                else:
                    fresh = set(batch_uids.get(m, ())) - known
                    known |= fresh
                new_minutes.extend([m] * len(fresh))
                new_uids.extend(fresh)
        estimates = {}
        if self.mode == "approx" and touched:
            merged = self._union_sketches([(m, s) for m, s in batch_sketch.items()] +
                                          [(m, self.sketch[m]) for m in touched if m in self.sketch])
            for m, (s, n) in merged.items():
                self.sketch[m] = s
                estimates[m] = int(round(n))
        now = time.time()
        newly_final = sorted(m for m in self.frames if m not in touched and wm_new is not None
                             and m + 60 <= wm_new)
        results = []
        for m in sorted(touched) + newly_final:
            if m in late_minutes:
                status = CORRECTED
            elif wm_new is not None and m + 60 <= wm_new:
                status = FINAL
            else:
                status = PROVISIONAL
            results.append(self._result(m, status, now, estimates.get(m)))
        rep.results = results
        t = rep.step("count", t)

        # 3. publish first (at-least-once, absolute values), then make it durable
        self.publish(results)
        self.on_final([r for r in results if r.status != PROVISIONAL])
        t = rep.step("publish", t)
        # durable: quarantine, new pairs, minute rows — each commit skipped when this
        # batch id is already in the table (a replay); the state file comes last
        if sum(rep.quarantined.values()):
            self._write_quarantine(quarantined, sum(rep.quarantined.values()), batch_id)
        if new_minutes:
            m_arr = pa.array(new_minutes, pa.int64())
            self.tables.append(MINUTE_UIDS, pa.table({
                "minute": m_arr, "date": minute_date(m_arr), "uid": pa.array(new_uids, pa.string()),
                "batch_id": pa.array([batch_id] * len(new_uids), pa.int64())}), batch_id)
        self._upsert(results, batch_id)
        t = rep.step("delta", t)
        for r in results:  # final and corrected minutes leave memory
            if r.status != PROVISIONAL:
                self._evict(r.minute)
        self.store.save(JobState(batch_id, new_max, wm_new, gp.next_ref, partitions, self.tables.versions()))
        self.loaded_for = batch_id

    def _partitions_after(self, st: JobState, batch: dict[str, int]) -> tuple[dict, float]:
        """Per-partition [largest accepted ts, last seen] after this batch; long-idle ones pruned."""
        now = time.time()
        parts = {k: list(v) for k, v in (st.partitions or {}).items()
                 if now - v[1] <= 10 * self.cfg.job.idle_partition_s}
        for key, mx in batch.items():
            old = parts.get(key)
            parts[key] = [mx if old is None else max(old[0], mx), now]
        return parts, now

    def _result(self, m: int, status: str, now: float, estimate: int | None) -> MinuteResult:
        if self.mode == "exact":
            n = len(self.uids.get(m, ()))
        else:
            n = estimate if estimate is not None else self._estimate(m)
        return MinuteResult(m, n, self.frames.get(m, 0), status, self.mode, self.rsd, now,
                            self.sketch.get(m) if self.mode == "approx" else None)

    def _estimate(self, m: int) -> int:
        if m not in self.sketch:
            return 0
        return self._union_sketches([(m, self.sketch[m])])[m][1]

    def _evict(self, m: int) -> None:
        self.uids.pop(m, None)
        self.sketch.pop(m, None)
        self.frames.pop(m, None)

    def _upsert(self, results: list[MinuteResult], batch_id: int) -> None:
        if results:
            rows = [r.to_row(batch_id) for r in results]
            self.tables.upsert_minutes(pa.Table.from_pylist(
                [dict(zip(SCHEMAS[MINUTE_STATS].names, r)) for r in rows], SCHEMAS[MINUTE_STATS]), batch_id)

    def _write_quarantine(self, quarantined: DataFrame, count: int, batch_id: int) -> None:
        """Quarantined frames with their raw bytes; a big batch of them is written by Spark."""
        rows = quarantined.select(
            "reason", "raw", "topic", "partition", "offset", "file", "line", "ts", "uid",
            F.when(F.col("reason") == reasons.LATE, F.col("minute")).alias("minute"),
            F.lit(batch_id).cast("bigint").alias("batch_id"),
            F.current_timestamp().alias("quarantined_at"), F.current_date().alias("date"))
        if count <= QUARANTINE_VIA_DRIVER:
            self.tables.append(QUARANTINE, rows.toArrow(), batch_id)
        else:
            self.tables.append_with_spark(QUARANTINE, rows, batch_id)

    # ------------------------------------------------------------------ end of input
    def flush(self) -> list[MinuteResult]:
        """End of input (``--available-now``): emit every open minute as final.

        Moves the watermark past the newest open minute, so frames for these minutes
        arriving in a later run are handled as late.
        """
        st = self.store.latest()
        if st.batch_id < 0:
            return []
        if self.loaded_for != st.batch_id:
            self._rebuild(st)
        open_minutes = sorted(self.frames)
        if not open_minutes:
            return []
        now = time.time()
        estimates = {}
        if self.mode == "approx":
            merged = self._union_sketches([(m, self.sketch[m]) for m in open_minutes if m in self.sketch])
            estimates = {m: int(round(n)) for m, (_, n) in merged.items()}
        results = [self._result(m, FINAL, now, estimates.get(m)) for m in open_minutes]
        self.publish(results)
        self.on_final(results)
        self._upsert(results, st.batch_id)
        wm = max(st.watermark or 0, open_minutes[-1] + 60)
        self.store.save(replace(st, watermark=wm, versions=self.tables.versions()))
        for m in open_minutes:
            self._evict(m)
        log(f"end of input: {len(results)} open minute(s) emitted as final; watermark {iso(wm)}")
        return results

    # ------------------------------------------------------------------ progress
    def _progress(self, rep: BatchReport) -> None:
        self.quarantined_total.update(rep.quarantined)
        self.totals["batches"] += 1
        self.totals["frames"] += rep.frames
        self.totals["counted"] += rep.counted
        self.totals["batch_seconds"] += rep.seconds
        now = time.time()
        since = max(now - self.last_end, 1e-6)
        self.last_end = now
        if not self.progress:
            return
        st = self.store.latest()
        wm = iso(st.watermark) if st.watermark is not None else "-"
        state_rows = sum(len(s) for s in self.uids.values()) if self.mode == "exact" else len(self.sketch)
        q = " ".join(f"{k}={v}" for k, v in sorted(self.quarantined_total.items())) or "none"
        log(f"batch {rep.batch_id}: {rep.frames:,} frames | input {rep.frames / since:,.0f}/s | "
            f"processed {rep.frames / max(rep.seconds, 1e-6):,.0f}/s in {rep.seconds:.1f}s | "
            f"watermark {wm} | open minutes {len(self.frames)} | state rows {state_rows:,} | "
            f"quarantined {q}")
        if os.environ.get("DOODLE_TIMINGS"):
            log("  steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in rep.steps.items()))
