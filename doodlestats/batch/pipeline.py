"""The minute-stats pipeline: one micro-batch of raw frames → minute results.

Used by ``jobs/minute_stats.py`` from ``foreachBatch`` (streaming), by the backfill, and
by the tests on plain DataFrames. Per-frame work runs on **executors**, per-minute work
on the **driver**; per batch the driver receives O(neighbourhoods + minutes touched) rows
and a bounded sample, never a row per frame. A clean batch is **two Spark jobs**::

    job 1  read → parse → cache → neighbourhood stats ──────────► driver: guard plan, offsets
    job 2  ◄── references (broadcast) → classify → counting pass (new pairs written, or
           sketches) with the summary — and the quarantine rows when few — as its metrics
    job 3  only when the quarantine rows are many (or an outlier's bytes must be read again)
    driver retention check · step (pure: watermark, late, emit) · sinks (Kafka, stdout) ·
           Delta commits (files by metadata, minute_stats MERGE; app transaction = batch id)
           · state file in the checkpoint

Counting state on the driver (:class:`doodlestats.batch.driver.DriverState`): per open minute an
integer (exact) or a HyperLogLog sketch (approx) and the frame count, rebuilt from
``minute_stats`` as of the Delta versions of the last complete batch on restart.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from doodlestats.batch import guard, stages
from doodlestats.batch.counting import Partials, make_counter
from doodlestats.batch.driver import BatchSummary, DriverState, flush, step, to_restore
from doodlestats.batch.progress import BatchReport
from doodlestats.batch.results import MinuteResult, iso
from doodlestats.batch.staging import observed, register_tally, tally_rows, write_staged
from doodlestats.batch.window import Watermark
from doodlestats.io.offsets import OffsetCheck
from doodlestats.io.sinks import DeltaMinuteSink, Sink
from doodlestats.io.state import JobState, StateStore
from doodlestats.io.tables import MINUTE_STATS, MINUTE_UIDS, QUARANTINE, MinuteFiles, Tables
from doodlestats.runtime import faults
from doodlestats.runtime.config import Config
from doodlestats.runtime.logs import logger

__all__ = ["MinuteStatsPipeline", "SPARK_SETTINGS"]

_log = logger(__name__)

SPARK_SETTINGS = {
    # executor-written files must be readable by delta-rs and any Delta reader
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # the anti-join reads a list of files: list them in the driver, no extra Spark job
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
    # adaptive execution runs each shuffle's map side as a job of its own: a batch's
    # shuffles stay stages of one job (shuffle partitions are sized to the cores already)
    "spark.sql.adaptive.enabled": "false",
    # staged files are committed by the Delta log, not by the folder: task outputs are moved
    # once (a dead attempt's folder is never referenced; vacuum removes it). The _SUCCESS
    # marker stays: object stores' committers (S3A magic) write their manifest there
    "mapreduce.fileoutputcommitter.algorithm.version": "2",
}
#: Quarantine rows come to the driver with the counting pass (and are committed by
#: delta-rs) when the batch's kept raw bytes are at most this much; else executors write them.
RIDE_ALONG_BYTES = 4 << 20
RIDE_ALONG_ROWS = 5000


class SparkJobs:
    """Counts the Spark jobs (and their stages) a batch runs, from Spark's status tracker."""

    def __init__(self, spark):
        self.sc = spark.sparkContext

    @contextlib.contextmanager
    def counted(self, rep: BatchReport):
        tracker = self.sc.statusTracker()
        group = self.sc.getLocalProperty("spark.jobGroup.id")
        before = set(tracker.getJobIdsForGroup(group))
        try:
            yield
        finally:
            new = set(tracker.getJobIdsForGroup(group)) - before
            infos = [tracker.getJobInfo(j) for j in new]
            rep.spark_jobs = len(new)
            rep.spark_stages = sum(len(i.stageIds) for i in infos if i is not None)


class MinuteStatsPipeline:
    """Stateful processor of micro-batches; see the module docstring.

    Public interface: :meth:`process_batch`, :meth:`flush`, :meth:`done`,
    :meth:`latest_state`, :meth:`minute_table`. Each processed batch's
    :class:`~doodlestats.batch.progress.BatchReport` goes to ``on_batch``.
    """

    def __init__(self, spark, cfg: Config, checkpoint: str, delta_root: str,
                 sinks: list[Sink] | None = None, storage_options: dict | None = None,
                 app_id: str = "minute_stats", sketches: bool = False,
                 offset_check: OffsetCheck | None = None, on_batch=None):
        self.spark, self.cfg = spark, cfg
        self.offset_check = offset_check  # Kafka source: retention gaps (None: files, backfill)
        self.on_batch = on_batch
        for k, v in SPARK_SETTINGS.items():
            spark.conf.set(k, v)
        self.tally = register_tally(spark)  # without the jar: the summary is a job of its own
        self.suspects = guard.register_suspect(spark)
        self.jobs = SparkJobs(spark)
        self.store = StateStore(checkpoint, spark=spark)
        self.tables = Tables(delta_root, app_id=app_id, storage_options=storage_options)
        self.tables.ensure()
        if not self.store.ids() and self.store.start().versions is None:
            # a new checkpoint starts from the tables as they are: its counts add to theirs
            self.store.save_start(JobState(versions=self.tables.versions()))
        self.counter = make_counter(cfg.job.mode, cfg.job.rsd, self.tables, sketches)
        self.known = MinuteFiles(self.tables)  # minute_uids files of the minutes in play
        self.mode, self.rsd = self.counter.mode, self.counter.rsd  # the counting mode and its error bound
        self.sinks: list[Sink] = list(sinks or []) + [DeltaMinuteSink(self.tables)]
        self.clock = Watermark(cfg.job.watermark_s, cfg.job.idle_partition_s)
        self.driver = DriverState()
        self.loaded_for: int | None = None  # batch id the driver state belongs to

    # ------------------------------------------------------------------ public
    def done(self, batch_id: int) -> bool:
        """True if ``batch_id`` was committed (a replay of it is skipped)."""
        return self.store.done(batch_id)

    def latest_state(self) -> JobState:
        return self.store.latest()

    def minute_table(self) -> list[dict]:
        """Every row of ``minute_stats``, oldest minute first (small: one row per minute)."""
        return self.tables.read(MINUTE_STATS).sort_by("ts").to_pylist()

    def process_batch(self, df: DataFrame, batch_id: int) -> BatchReport:
        """Process one micro-batch; idempotent for a replayed ``batch_id``."""
        t0 = time.time()
        rep = BatchReport(batch_id)
        if self.done(batch_id):
            rep.skipped = True
            _log.info(f"batch {batch_id}: already committed, skipped")
        else:
            st = self._state_before(batch_id)
            try:
                with self.jobs.counted(rep):
                    self._run(df, st, rep)
            except BaseException:
                self.loaded_for = None  # memory may be ahead of Delta: rebuild on retry
                raise
        rep.seconds = time.time() - t0
        if self.on_batch:
            self.on_batch(rep)
        return rep

    def flush(self) -> list[MinuteResult]:
        """End of input (``--available-now``): emit every open minute as final."""
        st = self.store.latest()
        if st.batch_id < 0:
            return []
        self._state_before(st.batch_id + 1)
        results, self.driver = flush(self.driver, self.counter, time.time())
        if results:
            for sink in self.sinks:
                sink.write(results, st.batch_id)
            self.store.save(replace(st, watermark=self.driver.watermark, versions=self.tables.versions()))
            _log.info(f"end of input: {len(results)} open minute(s) emitted as final; "
                      f"watermark {iso(self.driver.watermark)}")
        return results

    # ------------------------------------------------------------------ the batch
    def _run(self, df: DataFrame, st: JobState, rep: BatchReport) -> None:
        """read → guard → classify → count (+ summary) → quarantine → driver step → commit."""
        g, t = self.cfg.guard, time.time()
        src = stages.with_file_positions(df)
        frames = stages.read(src, self.cfg.job.parser, self.suspects, g.max_skew_s, st.watermark, st.ref_ts)
        frames = frames.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            stats = guard.neighbourhood_stats(frames, g.neighbourhood)                       # job 1
            rep.driver_rows, t = len(stats), rep.step("read+parse+guard stats", t)
            if not stats:
                return self._save(st, replace(self.driver, watermark=st.watermark), None, {}, rep)
            gp = guard.plan(stats, st.ref_ts, g.min_neighbours, g.max_skew_s)
            if self.offset_check:  # before anything is written: "fail" leaves the batch untouched
                self.offset_check.in_batch(st, gp.first, rep.batch_id)
            classified = stages.classify(frames, gp, st.watermark, g.neighbourhood, g.max_skew_s)
            summary, partials, few = self._count(classified, gp, st, rep)                  # job 2
            t = rep.step("classify+count", t)
            staged = {**partials.staged, **self._stage_quarantine(src, classified, summary, few, rep)}  # job 3?
            t = rep.step("quarantine", t)
            faults.reached("staged", rep.batch_id)
        finally:
            frames.unpersist()
        stored = self._stored(to_restore(self.driver, summary), st)
        results, driver = step(self.driver, summary, partials.per_minute, stored, self.counter, self.clock, time.time())
        rep.results, t = results, rep.step("driver", t)
        self._commit(staged, few, results, rep.batch_id)
        rep.step("sinks+commit", t)
        self._save(st, driver, gp, gp.last, rep)

    def _count(self, classified: DataFrame, gp: guard.GuardPlan, st: JobState, rep: BatchReport):
        """The counting pass, with the batch's summary (and its quarantine rows, if the
        statistics bounded them) observed on the way: one Spark job."""
        few = self.tally and gp.kept <= RIDE_ALONG_ROWS and gp.kept_bytes <= RIDE_ALONG_BYTES
        batch_id, now_us = rep.batch_id, stages.now_us()
        if self.tally:
            with observed(classified, *stages.summary_metrics(few)) as (watched, get):
                partials = self._partials(watched, gp, st, batch_id)
            values = get() if few else [get()]
            rows = tally_rows(values[0])
            quarantine = stages.few_quarantine_rows(values[1], batch_id, now_us) if few else None
        else:
            rows = stages.summary_job(classified)
            partials, quarantine = self._partials(classified, gp, st, batch_id), None
        summary = BatchSummary.of(rows, self.cfg.job.late_corrections)
        rep.frames, rep.quarantined, rep.counted = summary.frames, summary.quarantined, \
            sum(summary.counted_per_minute.values())
        rep.driver_rows += len(rows) + len(partials.per_minute) + (quarantine.num_rows if quarantine else 0)
        return summary, partials, quarantine if summary.unkept == 0 else None

    def _partials(self, classified: DataFrame, gp: guard.GuardPlan, st: JobState, batch_id: int) -> Partials:
        counted = stages.counted(classified, self.cfg.job.late_corrections)
        version = (st.versions or {}).get(MINUTE_UIDS)
        known = self.known.files(gp.minutes, version) if self.cfg.job.mode == "exact" else []
        replay = self.tables.committed(MINUTE_UIDS, batch_id)
        if replay:  # the pairs this batch committed before a crash are not in memory: the next batch reads the log
            self.known.reset()
        return self.counter.partials(counted, batch_id, known, replay)

    def _stage_quarantine(self, src, classified, summary: BatchSummary, few, rep: BatchReport) -> dict:
        """Executors write the quarantine rows unless they came along with the counting pass."""
        if not summary.quarantined or few is not None or self.tables.committed(QUARANTINE, rep.batch_id):
            return {}
        if summary.unkept:
            _log.info(f"guard: {summary.unkept} outlier(s) were not suspects in the first pass; "
                      "reading their raw bytes again")
        rows = stages.quarantine_rows(src, classified, summary.unkept, rep.batch_id, stages.now_us())
        metas, _ = write_staged(rows, self.tables.stage_uri(QUARANTINE, rep.batch_id), minute_stats=False)
        return {QUARANTINE: metas}

    # ------------------------------------------------------------------ driver side
    def _commit(self, staged: dict, few, results: list[MinuteResult], batch_id: int) -> None:
        """Publish first (at-least-once, absolute values), then make it durable; each Delta
        commit is skipped when this batch id is already in the table (a replay); the state
        file comes last (:meth:`_save`)."""
        for name, files in staged.items():
            self.tables.commit_files(name, files, batch_id)
            faults.reached(name, batch_id)
        self.known.added(staged.get(MINUTE_UIDS, []))
        if few is not None and few.num_rows:
            self.tables.append(QUARANTINE, few, batch_id)
            faults.reached(QUARANTINE, batch_id)
        for sink in self.sinks:
            sink.write(results, batch_id)
            faults.reached(sink.name, batch_id)

    def _save(self, st: JobState, driver: DriverState, gp, last: dict, rep: BatchReport) -> None:
        more = self.offset_check.state(st, last, rep.batch_id) if self.offset_check else {}
        ref = gp.next_ref if gp is not None else st.ref_ts
        max_ts, partitions = (driver.max_ts, driver.partitions) if gp is not None else (st.max_ts, st.partitions)
        self.store.save(JobState(rep.batch_id, max_ts, driver.watermark, ref, partitions, self.tables.versions(),
                                 **more))
        faults.reached("state", rep.batch_id)
        if self.offset_check:
            self.offset_check.saved()
        self.driver, self.loaded_for = driver, rep.batch_id
        self.known.keep(driver.frames)
        rep.watermark, rep.open_minutes = driver.watermark, len(driver.frames)
        rep.partition_ts = {k: int(v[0]) for k, v in (driver.partitions or {}).items()}

    def _stored(self, minutes: list[int], st: JobState) -> dict[int, dict]:
        """minute_stats rows (ts → row) of ``minutes``, as of the version recorded in ``st``."""
        if not minutes or st.versions is None:
            return {}
        return self._stored_where([("ts", "in", minutes)], st)

    def _stored_where(self, filters, st: JobState) -> dict[int, dict]:
        v = (st.versions or {}).get(MINUTE_STATS)
        t = self.tables.read(MINUTE_STATS, filters, ["ts", "unique_users", "frames", "hll"], v)
        return {r["ts"]: r for r in t.to_pylist()}

    def _state_before(self, batch_id: int) -> JobState:
        """The state the batch starts from; the driver state is rebuilt from Delta after a
        (re)start or a failed batch. A checkpoint without batches starts with nothing in
        memory; minutes the tables already hold are restored when a batch touches them, so
        a new checkpoint adds to what is stored: users are the union, frames the sum."""
        st = self.store.load_before(batch_id)
        if self.loaded_for == st.batch_id:
            return st
        frames, values = {}, {}
        if st.batch_id >= 0:
            lo = (st.watermark - 60) if st.watermark is not None else -1
            for m, row in self._stored_where([("ts", ">", lo)], st).items():
                frames[m], values[m] = int(row["frames"]), self.counter.from_row(row)
        self.driver = DriverState(st.watermark, st.partitions or {}, st.max_ts, frames, values)
        self.known.reset()
        self.loaded_for = st.batch_id
        return st
