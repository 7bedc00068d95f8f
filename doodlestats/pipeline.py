"""The minute-stats pipeline: one micro-batch of raw frames → minute results.

Used by ``jobs/minute_stats.py`` from ``foreachBatch`` (streaming) and by the tests on
plain DataFrames. The input DataFrame has the normalised source columns
``value`` (binary), ``topic``, ``partition``, ``offset`` (Kafka) or ``file``, ``line``
(files; ``partition``/``offset`` then identify the file and the line).

Per batch, in order::

    Spark, one job: read → parse → Arrow (every frame's ts/uid/reason/coordinates; raw
                    bytes only of frames that may be quarantined, see guard.keep_raw)
    driver, Arrow:  guard (ts_outlier) → late check → count → publish (Kafka, stdout)
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from doodlestats import guard, reasons, sketch
from doodlestats.config import Config
from doodlestats.parse import parse_frames
from doodlestats.results import CORRECTED, FINAL, PROVISIONAL, MinuteResult, iso
from doodlestats.state import JobState, StateStore
from doodlestats.tables import MINUTE_STATS, MINUTE_UIDS, QUARANTINE, SCHEMAS, Tables, minute_date



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
        self.uids: dict[int, pa.Array] = {}  # exact: open minute -> its distinct uids (Arrow)
        self.sketch: dict[int, bytes] = {}   # approx: open minute -> HLL sketch
        self.frames: dict[int, int] = {}     # open minute -> counted frames
        self.quarantined_total: Counter = Counter()
        self.totals = {"batches": 0, "frames": 0, "counted": 0, "batch_seconds": 0.0}
        self.last_end = time.time()
        self.first_batch_at: float | None = None  # when the first micro-batch reached the pipeline

    # ------------------------------------------------------------------ state
    def _load_minutes(self, filters, st: JobState) -> tuple[dict, dict, dict]:
        """(frames, sketches, distinct uids) per minute stored in Delta for ``filters``, as of the
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
            mm, uu = mu.column("minute"), mu.column("uid").cast(pa.string())
            for m in pc.unique(mm).to_pylist():
                uids[m] = pc.unique(uu.filter(pc.equal(mm, m)))
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
    def _union_sketches(self, pairs: list[tuple[int, bytes]]) -> dict[int, tuple[bytes, int]]:
        """minute -> (union sketch, estimate) over the given (minute, sketch) rows."""
        by_minute: dict[int, list[bytes]] = {}
        for m, s in pairs:
            by_minute.setdefault(m, []).append(s)
        return {m: sketch.union(ss, self.lg_k) for m, ss in by_minute.items()}

    def _read(self, df: DataFrame, st: JobState) -> pa.Table:
        """The batch's ONE Spark job: read → parse → Arrow in the driver.

        Every frame comes back as ``ts``, ``uid``, ``reason`` and its coordinates; its raw
        bytes (and topic/file/line) only where :func:`guard.keep_raw` says it may be
        quarantined. No cache, no shuffle: everything after this works on the Arrow table.
        """
        g = self.cfg.guard
        parsed = parse_frames(df, self.cfg.job.parser)
        keep = guard.keep_raw(parsed.sparkSession, g.max_skew_s, st.watermark, st.ref_ts)
        k = F.col("keep")
        return (parsed.withColumn("keep", keep)
                .select("ts", "uid", "reason", F.coalesce("topic", "file").alias("src"), "partition", "offset",
                        "keep", *[F.when(k, F.col(c)).alias(c) for c in ("topic", "file", "line")],
                        F.when(k, F.col("value")).alias("raw"))
                .toArrow())

    def warm_up(self, frames: int) -> float:
        """Run this batch code's Spark job once on ``frames`` synthetic frames (generator
        frames, repeated) and throw the result away: the JIT compiles the parse path and
        Spark its code before the first real batch, whose latency would otherwise pay for
        it. Writes nothing. Returns the seconds it took."""
        if frames <= 0:
            return 0.0
        from tools.generator import GenConfig, generate
        t0 = time.time()
        lines, _ = generate(GenConfig(count=16, rate=4, users=8, seed=7))
        pick = F.element_at(F.array(*[F.lit(v) for v in lines]), (F.col("id") % len(lines) + 1).cast("int"))
        df = self.spark.range(0, frames, 1, 2).select(
            pick.alias("value"), F.lit("warm-up").alias("topic"), F.lit(0).alias("partition"),
            F.col("id").alias("offset"), F.lit(None).cast("string").alias("file"),
            F.lit(None).cast("bigint").alias("line"))
        self._read(df, JobState())
        return time.time() - t0

    def _fetch_raw(self, df: DataFrame, tbl: pa.Table, rows: np.ndarray) -> pa.Table:
        """Read the raw bytes (and topic/file/line) of ``rows`` again from the batch's source.

        Only for outliers that were not suspects in the first pass — rare; it costs one
        more read of the batch, never a quarantine row without its bytes.
        """
        want = tbl.select(["partition", "offset"]).take(pa.array(rows))
        log(f"guard: {len(rows)} outlier(s) were not suspects in the first pass; reading their raw bytes again")
        got = (df.join(F.broadcast(self.spark.createDataFrame(want)), ["partition", "offset"])
               .select("partition", "offset", "topic", "file", "line", "value").toArrow())
        pos = {(p, o): i for i, (p, o) in enumerate(zip(got["partition"].to_pylist(), got["offset"].to_pylist()))}
        cols = {c: tbl[c].to_pylist() for c in ("topic", "file", "line", "raw")}
        for r, p, o in zip(rows, want["partition"].to_pylist(), want["offset"].to_pylist()):
            i = pos[(p, o)]
            for c, src in (("topic", "topic"), ("file", "file"), ("line", "line"), ("raw", "value")):
                cols[c][r] = got[src][i].as_py()
        for c, values in cols.items():
            tbl = tbl.set_column(tbl.schema.get_field_index(c), c, pa.array(values, tbl.schema.field(c).type))
        return tbl

    # ------------------------------------------------------------------ batch
    def process_batch(self, df: DataFrame, batch_id: int) -> BatchReport:
        """Process one micro-batch; idempotent for a replayed ``batch_id``."""
        t0 = time.time()
        self.first_batch_at = self.first_batch_at or t0
        rep = BatchReport(batch_id)
        if self.store.done(batch_id):
            rep.skipped = True
            log(f"batch {batch_id}: already committed, skipped")
            return rep
        st = self.store.load_before(batch_id)
        if self.loaded_for != st.batch_id:
            self._rebuild(st)
        df = with_file_positions(df)
        t = rep.step("prepare", t0)
        tbl = self._read(df, st)
        rep.step("read+parse", t)
        rep.frames = tbl.num_rows
        if tbl.num_rows:
            try:
                self._count(df, tbl, st, batch_id, rep)
            except BaseException:
                self.loaded_for = None  # memory may be ahead of Delta: rebuild on retry
                raise
        else:
            self.store.save(replace(st, batch_id=batch_id, versions=self.tables.versions()))
            self.loaded_for = batch_id
        rep.seconds = time.time() - t0
        self._progress(rep)
        return rep

    def _count(self, df: DataFrame, tbl: pa.Table, st: JobState, batch_id: int, rep: BatchReport) -> None:
        cfg = self.cfg
        wm_prev = st.watermark
        t = time.time()

        # 1. guard, late check and counts — all on the collected Arrow table
        good = pc.is_null(tbl["reason"])
        gp = guard.plan(guard.neighbourhoods(tbl, good, cfg.guard.neighbourhood), st.ref_ts,
                        cfg.guard.min_neighbours)
        outlier = guard.judge(tbl, good, gp, cfg.guard.neighbourhood, cfg.guard.max_skew_s)
        t = rep.step("guard", t)
        unkept = np.flatnonzero(outlier & ~pc.fill_null(tbl["keep"], False).to_numpy(zero_copy_only=False))
        if len(unkept):
            tbl = self._fetch_raw(df, tbl, unkept)
        ts = tbl["ts"]
        minute = pc.multiply(pc.divide(ts, 60), 60)  # ts >= 0: integer division
        accepted = pc.and_(good, pa.array(~outlier))
        late = pc.fill_null(pc.and_(accepted, pc.less_equal(pc.add(minute, 60), wm_prev)), False) \
            if wm_prev is not None else pa.array(np.zeros(tbl.num_rows, dtype=bool))
        counted = pc.and_not(accepted, late) if not cfg.job.late_corrections else accepted
        reason = pc.if_else(pa.array(outlier), reasons.TS_OUTLIER,
                            pc.if_else(late, reasons.LATE, tbl["reason"]))
        quarantine = pc.is_valid(reason)
        for r, n in zip(*(lambda vc: (vc.field(0).to_pylist(), vc.field(1).to_pylist()))(
                pc.value_counts(reason.filter(quarantine)))):
            rep.quarantined[r] += n
        q_rows = None
        if rep.quarantined:
            q = tbl.append_column("minute", minute).append_column("why", reason).filter(quarantine)
            now = time.time()
            q_rows = pa.table({
                "reason": q["why"], "raw": q["raw"], "topic": q["topic"], "partition": q["partition"],
                "offset": q["offset"], "file": q["file"], "line": q["line"], "ts": q["ts"], "uid": q["uid"],
                "minute": pc.if_else(pc.equal(q["why"], reasons.LATE), q["minute"], pa.scalar(None, pa.int64())),
                "batch_id": pa.array(np.full(q.num_rows, batch_id, dtype=np.int64)),
                "quarantined_at": pa.array(np.full(q.num_rows, int(now * 1e6), dtype=np.int64)).cast(
                    SCHEMAS[QUARANTINE].field("quarantined_at").type),
                "date": minute_date(pa.array(np.full(q.num_rows, int(now), dtype=np.int64)))},
                schema=SCHEMAS[QUARANTINE])

        t = rep.step("quarantine", t)
        c = pa.table({"minute": minute, "uid": tbl["uid"], "ts": ts, "src": tbl["src"],
                      "partition": tbl["partition"], "late": late}).filter(counted)
        batch_frames: Counter = Counter()
        batch_uids: dict[int, pa.Array] = {}
        batch_sketch: dict[int, bytes] = {}
        per_partition = c.filter(pc.invert(c["late"])).group_by(["src", "partition"]).aggregate([("ts", "max")])
        batch_partitions = {f"{s}#{p}": mx for s, p, mx in zip(*(per_partition[k].to_pylist() for k in (
            "src", "partition", "ts_max")))}
        max_ts = None
        if c.num_rows:  # per-minute work in Arrow (C), not a Python loop over every frame
            agg = c.group_by("minute").aggregate([("ts", "count"), ("ts", "max"), ("uid", "distinct")])
            minutes = agg["minute"].to_pylist()
            batch_frames.update(dict(zip(minutes, agg["ts_count"].to_pylist())))
            max_ts = max(agg["ts_max"].to_pylist())
            lists = agg["uid_distinct"].combine_chunks()
            if self.mode == "exact":
                batch_uids = {m: lists[i].values for i, m in enumerate(minutes)}
            else:  # one HLL sketch per minute, from the minute's distinct uids
                batch_sketch = {m: sketch.build(lists[i].values, self.lg_k) for i, m in enumerate(minutes)}
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
                self.uids[m] = old_uids.get(m, pa.array([], pa.string()))
            elif m in old_sk:
                self.sketch[m] = old_sk[m]
        new_pairs: list[tuple[int, pa.Array]] = []  # (minute, uids never seen in it): minute_uids rows
        for m in touched:
            self.frames[m] = self.frames.get(m, 0) + batch_frames[m]
            if self.mode == "exact":  # set difference and union in Arrow: exact, no Python strings
                known, batch = self.uids.get(m), batch_uids.get(m, pa.array([], pa.string()))
                fresh = batch if known is None else batch.filter(pc.invert(pc.is_in(batch, value_set=known)))
                self.uids[m] = fresh if known is None else pa.concat_arrays([known, fresh])
                if len(fresh):
                    new_pairs.append((m, fresh))
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
        if q_rows is not None:
            self.tables.append(QUARANTINE, q_rows, batch_id)
        if new_pairs:
            m_arr = pa.array(np.concatenate([np.full(len(u), m, dtype=np.int64) for m, u in new_pairs]))
            self.tables.append(MINUTE_UIDS, pa.table({
                "minute": m_arr, "date": minute_date(m_arr),
                "uid": pa.concat_arrays([u.cast(pa.string()) for _, u in new_pairs]),
                "batch_id": pa.array(np.full(len(m_arr), batch_id, dtype=np.int64))}), batch_id)
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
        return sketch.estimate(self.sketch[m]) if m in self.sketch else 0

    def _evict(self, m: int) -> None:
        self.uids.pop(m, None)
        self.sketch.pop(m, None)
        self.frames.pop(m, None)

    def _upsert(self, results: list[MinuteResult], batch_id: int) -> None:
        if results:
            rows = [r.to_row(batch_id) for r in results]
            self.tables.upsert_minutes(pa.Table.from_pylist(
                [dict(zip(SCHEMAS[MINUTE_STATS].names, r)) for r in rows], SCHEMAS[MINUTE_STATS]), batch_id)

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
