"""The minute-stats pipeline: one micro-batch of raw frames → minute results.

Used by ``jobs/minute_stats.py`` from ``foreachBatch`` (streaming) and by the tests on
plain DataFrames. The input DataFrame has the normalised source columns ``value``
(binary), ``topic``, ``partition``, ``offset`` (Kafka) or ``file``, ``line`` (files;
``partition``/``offset`` then identify the file and the line).

Per-frame work runs on **executors**, per-minute work on the **driver**; per batch the
driver receives O(neighbourhoods + minutes touched) rows, never a row per frame::

    executors  read → parse → keep raw bytes of possible quarantine cases → cache
               → neighbourhood stats ────────────────────────────► driver: guard plan
    executors  ◄── references (broadcast) → verdicts, minute, late (classify)
               → summary per (minute, partition, reason) ──────────► driver
               → quarantine rows → Parquet files ─── metadata ─────► driver
               → counting partials (Counter) ── per-minute ints / sketches, file metadata ─► driver
    driver     (Kafka) offsets the checkpoint expected but the broker deleted? (OffsetCheck)
               advance the watermark → results (provisional / final / corrected)
               → sinks (Kafka, stdout) → Delta commits (files by metadata, minute_stats
               MERGE; app transaction = batch id) → state file in the checkpoint

Counting state on the driver: per open minute an integer (exact) or a HyperLogLog
sketch (approx) and the frame count, rebuilt from ``minute_stats`` as of the Delta
versions of the last complete batch on restart. Minutes are final once the watermark
(see :mod:`doodlestats.window`) passes their end; then they leave memory. Frames of a
final minute are ``late``: quarantined, and (``late_corrections``) counted into a
``corrected`` result whose state is read back from Delta.

Retention gaps (Kafka): the state records per partition the offset after the last frame
read; frames the broker deleted before the job read them are found at start-up and per
batch (:class:`OffsetCheck`) and either stop the job (:class:`DataLoss`, ``[job]
on_data_loss = "fail"``) or are skipped and recorded in the state (``"skip"``).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter as Tally
from dataclasses import dataclass, field, replace

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from doodlestats import guard, reasons
from doodlestats.config import Config
from doodlestats.counting import make_counter
from doodlestats.parse import parse_frames
from doodlestats.results import CORRECTED, FINAL, PROVISIONAL, MinuteResult, iso
from doodlestats.sinks import DeltaMinuteSink, Sink
from doodlestats.staging import write_staged
from doodlestats.state import KEEP_GAPS, Gap, JobState, StateStore, find_gaps
from doodlestats.tables import MINUTE_STATS, QUARANTINE, Tables
from doodlestats.window import Watermark, final_col, is_final, minute_col

__all__ = ["MinuteStatsPipeline", "BatchReport", "BatchSummary", "statuses", "with_file_positions",
           "DataLoss", "OffsetCheck", "kafka_earliest", "partition_offsets"]

QUARANTINE_FILE_SCHEMA = ("reason STRING, raw BINARY, topic STRING, partition INT, offset BIGINT, file STRING, "
                          "line BIGINT, ts BIGINT, uid STRING, minute BIGINT, batch_id BIGINT, "
                          "quarantined_at TIMESTAMP")
SPARK_SETTINGS = {
    # executor-written files must be readable by delta-rs and any Delta reader
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # the anti-join reads a list of files: list them in the driver, no extra Spark job
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BatchReport:
    batch_id: int
    frames: int = 0
    counted: int = 0
    seconds: float = 0.0
    quarantined: Tally = field(default_factory=Tally)
    results: list[MinuteResult] = field(default_factory=list)
    skipped: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    driver_rows: int = 0  # rows the driver received from executors for this batch

    def step(self, name: str, since: float) -> float:
        now = time.time()
        self.steps[name] = self.steps.get(name, 0.0) + now - since
        return now


@dataclass
class BatchSummary:
    """What the driver learns about a batch from one aggregation of its classified frames
    (one row per minute × source partition × reason). Pure: built by :meth:`of`."""

    frames: int = 0
    counted_per_minute: dict[int, int] = field(default_factory=dict)
    partition_max: dict[str, int] = field(default_factory=dict)   # accepted, not late
    max_ts: int | None = None
    quarantined: Tally = field(default_factory=Tally)
    unkept: int = 0  # outliers without raw bytes in the cache

    @classmethod
    def of(cls, rows: list[dict], late_corrections: bool) -> "BatchSummary":
        s = cls()
        for r in rows:
            n, reason = r["n"], r["reason"]
            s.frames += n
            s.unkept += r["unkept"]
            if reason is not None:
                s.quarantined[reason] += n
            if reason is None or (reason == reasons.LATE and late_corrections):
                s.counted_per_minute[r["minute"]] = s.counted_per_minute.get(r["minute"], 0) + n
            if reason is None:
                key = f"{r['src']}#{r['partition']}"
                s.partition_max[key] = max(s.partition_max.get(key, r["max_ts"]), r["max_ts"])
                s.max_ts = r["max_ts"] if s.max_ts is None else max(s.max_ts, r["max_ts"])
        return s


def partition_offsets(rows: list[dict]) -> tuple[dict[str, int], dict[str, int]]:
    """First and last offset read per "topic#partition", from the batch summary rows.

    >>> partition_offsets([{"src": "t", "partition": 0, "first_offset": 5, "last_offset": 9},
    ...                    {"src": "t", "partition": 0, "first_offset": 3, "last_offset": 7}])
    ({'t#0': 3}, {'t#0': 9})
    """
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for r in rows:
        k = f"{r['src']}#{r['partition']}"
        first[k] = min(first.get(k, r["first_offset"]), r["first_offset"])
        last[k] = max(last.get(k, r["last_offset"]), r["last_offset"])
    return first, last


class DataLoss(RuntimeError):
    """Offsets the checkpoint expects are gone from the broker (retention deleted them
    unread) and ``[job] on_data_loss`` is ``fail``. The message is the one line to show."""

    def __init__(self, gaps: list[Gap]):
        self.gaps = gaps
        total = sum(g.count for g in gaps)
        super().__init__(
            "data loss: " + "; ".join(g.describe() for g in gaps) +
            f" — the broker deleted {total:,} frame(s) before the job read them (retention). Nothing was "
            "counted past them; to go on from the earliest available offset and record the gap, run with "
            '--on-data-loss skip ([job] on_data_loss = "skip")')


def kafka_earliest(cfg: Config, topic: str):
    """A function of "topic#partition" keys → the broker's earliest available offset (low
    watermark) of each partition of ``topic`` (other topics' keys are left out)."""
    def earliest(keys: list[str]) -> dict[str, int]:
        from confluent_kafka import Consumer, TopicPartition
        from doodlestats.kafka import client_settings
        wanted = [k for k in keys if k.rpartition("#")[0] == topic]
        if not wanted:
            return {}
        c = Consumer({**client_settings(cfg), "group.id": "doodle-offset-check", "enable.auto.commit": False})
        try:
            return {k: c.get_watermark_offsets(TopicPartition(topic, int(k.rpartition("#")[2])), timeout=30)[0]
                    for k in wanted}
        finally:
            c.close()
    return earliest


class OffsetCheck:
    """Finds offsets of a Kafka source that retention deleted before the job read them.

    The job state keeps, per partition, the offset after the last frame read
    (:attr:`JobState.offsets`). :meth:`at_start` compares it with the broker's earliest
    available offsets before the stream starts; :meth:`in_batch` does the same for a
    batch whose first offset of a partition is beyond the expected one (asking the broker
    only then). ``on_data_loss = "fail"`` raises :class:`DataLoss` (nothing of the batch
    is written); ``"skip"`` logs one line per gap, goes on, and the gaps become part of
    the next saved state (:attr:`JobState.gaps`). Spark's own check is off
    (``failOnDataLoss=false``): Spark reads from the earliest available offset, this
    decides.

    Example::

        check = OffsetCheck(kafka_earliest(cfg, "doodle"), cfg.job.on_data_loss)
        check.at_start(StateStore(checkpoint).latest())     # raises DataLoss in "fail" mode
        pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, offset_check=check)
    """

    def __init__(self, earliest, on_data_loss: str = "fail"):
        if on_data_loss not in ("fail", "skip"):
            raise ValueError(f"on_data_loss: expected fail or skip, got {on_data_loss!r}")
        self.earliest, self.on_data_loss = earliest, on_data_loss
        self.pending: list[Gap] = []     # skipped, not yet part of a saved state
        self.found: list[dict] = []      # every gap skipped by this run (metrics)
        self.failure: DataLoss | None = None

    def expected(self, st: JobState) -> dict[str, int]:
        """Next offset to read per partition: the state's, moved past skipped gaps."""
        exp = dict(st.offsets or {})
        for g in self.pending:
            k = f"{g.topic}#{g.partition}"
            exp[k] = max(exp.get(k, g.end), g.end)
        return exp

    def at_start(self, st: JobState) -> list[Gap]:
        """Before the stream (re)starts: every partition the state knows is asked."""
        return self._handle(find_gaps(self.expected(st), self.earliest), st.batch_id + 1)

    def in_batch(self, st: JobState, first: dict[str, int], batch_id: int) -> list[Gap]:
        """Inside batch ``batch_id`` (``first``: its first offset per partition)."""
        return self._handle(find_gaps(self.expected(st), self.earliest, first), batch_id)

    def _handle(self, gaps: list[Gap], batch_id: int) -> list[Gap]:
        if not gaps:
            return gaps
        if self.on_data_loss == "fail":
            self.failure = DataLoss(gaps)
            raise self.failure
        now = time.time()
        for g in gaps:
            log(f"data loss skipped: {g.describe()} — going on from offset {g.end:,} (on_data_loss = skip); "
                f"recorded in the job state of the next batch")
            self.found.append(g.record(batch_id, now))
        self.pending += gaps
        return gaps

    def state(self, st: JobState, last: dict[str, int], batch_id: int) -> dict:
        """``offsets`` and ``gaps`` of the state saved after ``batch_id`` (``last``: the
        last offset read per partition in it). Call :meth:`saved` once it is written."""
        offsets = {**self.expected(st), **{k: v + 1 for k, v in last.items()}}
        now = time.time()
        gaps = list(st.gaps or []) + [g.record(batch_id, now) for g in self.pending]
        return {"offsets": offsets, "gaps": gaps[-KEEP_GAPS:]}

    def saved(self) -> None:
        self.pending = []


def statuses(touched: list[int], late_minutes: list[int], open_minutes: list[int],
             watermark: int | None) -> list[tuple[int, str]]:
    """Which minutes a batch emits, with which status — the emit rule, defined once.

    Every minute the batch touched is emitted: ``corrected`` if it was already final before
    the batch (its frames were late), ``final`` if the new watermark passed it, else
    ``provisional``. Open minutes the batch did not touch are emitted once, as ``final``,
    when the watermark passes them.

    >>> statuses([0, 60, 120], [0], [0, 60, 120, 180, -60], watermark=125)
    [(0, 'corrected'), (60, 'final'), (120, 'provisional'), (-60, 'final')]
    """
    out = []
    for m in touched:
        out.append((m, CORRECTED if m in late_minutes else FINAL if is_final(m, watermark) else PROVISIONAL))
    out += [(m, FINAL) for m in sorted(open_minutes) if m not in touched and is_final(m, watermark)]
    return out


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


_WARM_UP_FRAMES = [
    b'{"ts": 1451606400, "uid": "a1b2c3", "meta": {"uid": "decoy", "ts": 1}, "text": "caf\\u00e9 \\"q\\"",'
    b' "list": [{"ts": 2, "uid": "x"}], "n": 1.5e3, "ok": true}',
    '{"ts": "1451606401", "uid": "\u0436\u4e2d\U0001f600", "note": "\u043f\u0440\u0438\u0432\u0435\u0442 \u65e5\u672c", "x": null}'.encode(),
    b'{"uid": "z", "nested": {"ts": 5}}', b'not json',
]


class MinuteStatsPipeline:
    """Stateful processor of micro-batches. See the module docstring."""

    def __init__(self, spark, cfg: Config, checkpoint: str, delta_root: str,
                 sinks: list[Sink] | None = None, progress: bool = True,
                 storage_options: dict | None = None, app_id: str = "minute_stats", sketches: bool = False,
                 offset_check: OffsetCheck | None = None):
        self.spark, self.cfg = spark, cfg
        self.offset_check = offset_check  # Kafka source: retention gaps (None: files, backfill)
        for k, v in SPARK_SETTINGS.items():
            spark.conf.set(k, v)
        self.store = StateStore(checkpoint, spark=spark)
        self.tables = Tables(delta_root, app_id=app_id, storage_options=storage_options)
        self.tables.ensure()
        if not self.store.ids() and self.store.start().versions is None:
            # a new checkpoint starts from the tables as they are: its counts add to theirs
            self.store.save_start(JobState(versions=self.tables.versions()))
        self.counter = make_counter(cfg.job.mode, cfg.job.rsd, self.tables, sketches)
        self.mode, self.rsd = self.counter.mode, self.counter.rsd
        self.sinks: list[Sink] = list(sinks or []) + [DeltaMinuteSink(self.tables)]
        self.clock = Watermark(cfg.job.watermark_s, cfg.job.idle_partition_s)
        self.progress = progress
        self.loaded_for: int | None = None   # batch id whose state the memory reflects
        self.frames: dict[int, int] = {}     # open minute -> counted frames
        self.quarantined_total: Tally = Tally()
        self.totals = {"batches": 0, "frames": 0, "counted": 0, "batch_seconds": 0.0, "driver_rows": 0}
        self.last_end = time.time()
        self.first_batch_at: float | None = None  # when the first micro-batch reached the pipeline

    # ------------------------------------------------------------------ driver state
    def _stored_minutes(self, filters, st: JobState) -> dict[int, dict]:
        """minute_stats rows (ts → row) for ``filters``, as of the version recorded in ``st``."""
        v = (st.versions or {}).get(MINUTE_STATS)
        t = self.tables.read(MINUTE_STATS, filters, ["ts", "unique_users", "frames", "hll"], v)
        return {r["ts"]: r for r in t.to_pylist()}

    def _rebuild(self, st: JobState) -> None:
        """Load the open minutes of state ``st`` from Delta (after a (re)start).

        A checkpoint without batches starts with nothing in memory; minutes the tables
        already hold are restored when a batch touches them (see ``_count``), so a new
        checkpoint — a backfill, or a stream started afresh — adds to what is stored:
        users are the union, frames the sum.
        """
        for m in list(self.frames):
            self._evict(m)
        self.loaded_for = None
        if st.batch_id >= 0:
            lo = (st.watermark - 60) if st.watermark is not None else -1
            for m, row in self._stored_minutes([("ts", ">", lo)], st).items():
                self.frames[m] = int(row["frames"])
                self.counter.restore(m, row)
        self.loaded_for = st.batch_id

    def _evict(self, m: int) -> None:
        self.frames.pop(m, None)
        self.counter.evict(m)

    # ------------------------------------------------------------------ executor stages
    def _parsed(self, src: DataFrame, st: JobState) -> DataFrame:
        """Parse and keep what later stages need; raw bytes only where the frame may be
        quarantined (:func:`guard.keep_raw`)."""
        g = self.cfg.guard
        parsed = parse_frames(src, self.cfg.job.parser)
        keep = guard.keep_raw(parsed.sparkSession, g.max_skew_s, st.watermark, st.ref_ts)
        # cached per frame: keep it narrow (topic/file are ``src``, told apart by ``line``)
        return (parsed.withColumn("keep", keep)
                .select("ts", "uid", "reason", F.coalesce("topic", "file").alias("src"), "partition", "offset",
                        "line", F.when(F.col("keep"), F.col("value")).alias("raw")))

    def _classify(self, parsed: DataFrame, gp: guard.GuardPlan, st: JobState) -> DataFrame:
        """Verdicts on executors: final ``reason`` (parse reason, ts_outlier, late), ``minute``."""
        g = self.cfg.guard
        v = guard.with_verdicts(parsed, gp, g.neighbourhood, g.max_skew_s)
        minute = minute_col(F.col("ts"))
        late = F.col("reason").isNull() & ~F.col("outlier") & final_col(minute, st.watermark)
        reason = (F.when(F.col("outlier"), F.lit(reasons.TS_OUTLIER)).when(late, F.lit(reasons.LATE))
                  .otherwise(F.col("reason")))
        return (v.withColumn("minute", minute).withColumn("reason", reason)
                .withColumn("unkept", F.col("outlier") & F.col("raw").isNull()).drop("outlier"))

    @staticmethod
    def _summary(classified: DataFrame) -> list[dict]:
        r = F.col("reason")
        minute = F.when(r.isNull() | (r == reasons.LATE), F.col("minute"))
        rows = (classified.groupBy(minute.alias("minute"), "src", "partition", "reason")
                .agg(F.count(F.lit(1)).alias("n"), F.max("ts").alias("max_ts"),
                     F.count(F.when(F.col("unkept"), F.lit(1))).alias("unkept"),
                     F.min("offset").alias("first_offset"), F.max("offset").alias("last_offset"))
                .collect())
        return [x.asDict() for x in rows]

    def _stage_quarantine(self, src: DataFrame, classified: DataFrame, unkept: int, batch_id: int):
        """Executors write the batch's quarantine rows as Parquet; the driver gets file metadata."""
        r = F.col("reason")
        q = classified.where(r.isNotNull() & ~F.col("unkept"))
        if unkept:  # outliers that were not suspects: their bytes come from the source again
            log(f"guard: {unkept} outlier(s) were not suspects in the first pass; reading their raw bytes again")
            fix = (classified.where(F.col("unkept")).drop("raw")
                   .join(src.select("partition", "offset", F.col("value").alias("raw")), ["partition", "offset"]))
            q = q.unionByName(fix)
        now_us = int(time.time() * 1e6)
        rows = q.select(
            "reason", "raw", F.when(F.col("line").isNull(), F.col("src")).alias("topic"), "partition", "offset",
            F.when(F.col("line").isNotNull(), F.col("src")).alias("file"), "line", "ts", "uid",
            F.when(r == reasons.LATE, F.col("minute")).alias("minute"),
            F.lit(batch_id).cast("bigint").alias("batch_id"),
            F.timestamp_micros(F.lit(now_us)).alias("quarantined_at"),
            F.to_date(F.timestamp_micros(F.lit(now_us))).alias("date"))
        metas, _ = write_staged(self.spark, rows, self.tables.stage_uri(QUARANTINE, batch_id),
                                QUARANTINE_FILE_SCHEMA)
        return metas

    def warm_up(self, frames: int) -> float:
        """Run this batch code twice on ``frames`` synthetic frames against throw-away
        tables in a local temporary folder: the JIT compiles the parse path, and Spark the
        guard, the summary, the staging writes, the read-back and the anti-join, before the
        first real batch, whose latency would otherwise pay for it. Nothing is written to
        this job's tables. Returns the seconds it took."""
        if frames <= 0:
            return 0.0
        import shutil
        import tempfile
        t0 = time.time()
        lines = _WARM_UP_FRAMES
        pick = F.element_at(F.array(*[F.lit(v) for v in lines]), (F.col("id") % len(lines) + 1).cast("int"))
        uid = F.concat(F.lit('{"ts": 1451606400, "uid": "w'), (F.col("id") % 997).cast("string"), F.lit('"}'))
        df = self.spark.range(0, frames, 1, 2).select(
            F.when(F.col("id") % 3 == 0, pick).otherwise(uid.cast("binary")).alias("value"),
            F.lit("warm-up").alias("topic"), F.lit(0).alias("partition"),
            F.col("id").alias("offset"), F.lit(None).cast("string").alias("file"),
            F.lit(None).cast("bigint").alias("line"))
        tmp = tempfile.mkdtemp(prefix="doodle-warm-up-")
        try:
            scratch = MinuteStatsPipeline(self.spark, self.cfg, os.path.join(tmp, "ckpt"), os.path.join(tmp, "delta"),
                                          progress=False)
            scratch.process_batch(df, 0)
            scratch.process_batch(df, 1)  # the same minutes again: the anti-join with staged files
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return time.time() - t0

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
        src = with_file_positions(df)
        parsed = self._parsed(src, st).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            t = rep.step("prepare", t0)
            stats = guard.neighbourhood_stats(parsed, self.cfg.guard.neighbourhood)
            rep.driver_rows += len(stats)
            t = rep.step("read+parse+guard stats", t)
            if not stats:
                more = self.offset_check.state(st, {}, batch_id) if self.offset_check else {}
                self.store.save(replace(st, batch_id=batch_id, versions=self.tables.versions(), **more))
                if self.offset_check:
                    self.offset_check.saved()
                self.loaded_for = batch_id
            else:
                try:
                    self._count(src, parsed, stats, st, batch_id, rep, t)
                except BaseException:
                    self.loaded_for = None  # memory may be ahead of Delta: rebuild on retry
                    raise
        finally:
            parsed.unpersist()
        rep.seconds = time.time() - t0
        self._progress(rep)
        return rep

    def _count(self, src, parsed, stats, st: JobState, batch_id: int, rep: BatchReport, t: float) -> None:
        cfg = self.cfg
        wm_prev = st.watermark
        gp = guard.plan(stats, st.ref_ts, cfg.guard.min_neighbours)
        classified = self._classify(parsed, gp, st)
        rows = self._summary(classified)
        rep.driver_rows += len(rows)
        s = BatchSummary.of(rows, cfg.job.late_corrections)
        rep.frames, rep.quarantined, rep.counted = s.frames, s.quarantined, sum(s.counted_per_minute.values())
        first, last = partition_offsets(rows) if self.offset_check else ({}, {})
        if self.offset_check:  # before anything is written: "fail" leaves the batch untouched
            self.offset_check.in_batch(st, first, batch_id)
        t = rep.step("classify+summary", t)

        staged = {}
        if s.quarantined and not self.tables.committed(QUARANTINE, batch_id):
            staged[QUARANTINE] = self._stage_quarantine(src, classified, s.unkept, batch_id)
        t = rep.step("quarantine", t)
        touched = sorted(s.counted_per_minute)
        counted = classified.where(F.col("reason").isNull() | (
            (F.col("reason") == reasons.LATE) & F.lit(bool(cfg.job.late_corrections))))
        partials = self.counter.partials(self.spark, counted, batch_id, st, touched)
        staged.update(partials.staged)
        rep.driver_rows += len(partials.per_minute) + sum(len(v) for v in partials.staged.values())
        t = rep.step("count (executors)", t)

        # driver: per-minute state, watermark, statuses
        late_minutes = [m for m in touched if is_final(m, wm_prev)]
        # corrections, and minutes this run has not seen yet but the tables have (a backfill
        # over minutes a stream wrote), start from what was stored as of the last batch
        restore = [m for m in touched if m in late_minutes or m not in self.frames]
        if restore and st.versions is not None:
            stored = self._stored_minutes([("ts", "in", restore)], st)
            for m in restore:
                row = stored.get(m)
                self.frames[m] = int(row["frames"]) if row else 0
                self.counter.restore(m, row)
        for m in touched:
            self.frames[m] = self.frames.get(m, 0) + s.counted_per_minute[m]
            if m in partials.per_minute:
                self.counter.merge(m, partials.per_minute[m])
        now = time.time()
        wm_new, partitions = self.clock.advance(st.watermark, st.partitions, s.partition_max, now)
        results = [MinuteResult(m, self.counter.unique(m), self.frames.get(m, 0), status, self.mode, self.rsd, now,
                                self.counter.sketch(m))
                   for m, status in statuses(touched, late_minutes, list(self.frames), wm_new)]
        rep.results = results
        t = rep.step("driver", t)

        # publish first (at-least-once, absolute values), then make it durable; each Delta
        # commit is skipped when this batch id is already in the table (a replay); the
        # state file comes last
        for name, files in staged.items():
            self.tables.commit_files(name, files, batch_id)
        for sink in self.sinks:
            sink.write(results, batch_id)
        t = rep.step("sinks+commit", t)
        for r in results:  # final and corrected minutes leave memory
            if r.status != PROVISIONAL:
                self._evict(r.minute)
        seen = [x for x in (st.max_ts, s.max_ts) if x is not None]
        more = self.offset_check.state(st, last, batch_id) if self.offset_check else {}
        self.store.save(JobState(batch_id, max(seen) if seen else None, wm_new, gp.next_ref, partitions,
                                 self.tables.versions(), **more))
        if self.offset_check:
            self.offset_check.saved()
        self.loaded_for = batch_id

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
        results = [MinuteResult(m, self.counter.unique(m), self.frames.get(m, 0), FINAL, self.mode, self.rsd, now,
                                self.counter.sketch(m)) for m in open_minutes]
        for sink in self.sinks:
            sink.write(results, st.batch_id)
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
        self.totals["driver_rows"] += rep.driver_rows
        now = time.time()
        since = max(now - self.last_end, 1e-6)
        self.last_end = now
        if not self.progress:
            return
        st = self.store.latest()
        wm = iso(st.watermark) if st.watermark is not None else "-"
        q = " ".join(f"{k}={v}" for k, v in sorted(self.quarantined_total.items())) or "none"
        log(f"batch {rep.batch_id}: {rep.frames:,} frames | input {rep.frames / since:,.0f}/s | "
            f"processed {rep.frames / max(rep.seconds, 1e-6):,.0f}/s in {rep.seconds:.1f}s | "
            f"watermark {wm} | open minutes {len(self.frames)} | driver rows {rep.driver_rows:,} | "
            f"quarantined {q}")
        if os.environ.get("DOODLE_TIMINGS"):
            log("  steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in rep.steps.items()))
