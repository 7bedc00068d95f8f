"""What a run reports about its micro-batches: the batch line, totals, the metrics file.

Outside the pipeline: the pipeline hands each :class:`BatchReport` to an observer
(``on_batch``); :class:`Progress` is the one the jobs use. Under ``DOODLE_TIMINGS`` the
batch line is followed by the steps and by the Spark jobs (and stages) the batch ran::

    progress = Progress(show=True)
    pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, on_batch=progress)
    ...
    progress.totals, progress.quarantined, progress.batches
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

from doodlestats.batch.results import MinuteResult, iso
from doodlestats.runtime.logs import logger

__all__ = ["BatchReport", "Progress"]

_log = logger(__name__)



@dataclass
class BatchReport:
    """What one micro-batch did: counts, quarantine reasons, results, the time of each
    step, the Spark jobs it took; the line the job logs and the metrics' input."""

    batch_id: int
    frames: int = 0
    counted: int = 0
    seconds: float = 0.0
    quarantined: Tally = field(default_factory=Tally)
    results: list[MinuteResult] = field(default_factory=list)
    skipped: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    driver_rows: int = 0  # rows the driver received from executors for this batch
    spark_jobs: int = 0
    spark_stages: int = 0
    watermark: int | None = None
    open_minutes: int = 0
    partition_ts: dict[str, int] = field(default_factory=dict)  # partition → newest accepted event time

    def step(self, name: str, since: float) -> float:
        """Add the time from ``since`` (unix s) to now to step ``name``; returns now, the
        start of the next step."""
        now = time.time()
        self.steps[name] = self.steps.get(name, 0.0) + now - since
        return now


class Progress:
    """Totals over a run's batches and, if ``show``, one line per batch on stderr."""

    def __init__(self, show: bool = True):
        self.show = show
        self.timings = bool(os.environ.get("DOODLE_TIMINGS"))
        self.quarantined: Tally = Tally()
        self.totals = {"batches": 0, "frames": 0, "counted": 0, "batch_seconds": 0.0, "driver_rows": 0,
                       "spark_jobs": 0}
        self.batches: list[dict] = []
        self.first_batch_at: float | None = None
        self.last_end = time.time()

    def __call__(self, rep: BatchReport) -> None:
        now = time.time()
        self.first_batch_at = self.first_batch_at or now - rep.seconds
        if rep.skipped:
            return
        self.quarantined.update(rep.quarantined)
        for k, v in (("batches", 1), ("frames", rep.frames), ("counted", rep.counted),
                     ("batch_seconds", rep.seconds), ("driver_rows", rep.driver_rows), ("spark_jobs", rep.spark_jobs)):
            self.totals[k] += v
        self.batches.append({"batch_id": rep.batch_id, "frames": rep.frames, "seconds": round(rep.seconds, 4),
                             "spark_jobs": rep.spark_jobs, "spark_stages": rep.spark_stages})
        del self.batches[:-10000]
        since = max(now - self.last_end, 1e-6)
        self.last_end = now
        if self.show:
            self._line(rep, since)

    def _line(self, rep: BatchReport, since: float) -> None:
        wm = iso(rep.watermark) if rep.watermark is not None else "-"
        q = " ".join(f"{k}={v}" for k, v in sorted(self.quarantined.items())) or "none"
        _log.info(f"batch {rep.batch_id}: {rep.frames:,} frames | input {rep.frames / since:,.0f}/s | "
                  f"processed {rep.frames / max(rep.seconds, 1e-6):,.0f}/s in {rep.seconds:.2f}s | "
                  f"watermark {wm} | open minutes {rep.open_minutes} | driver rows {rep.driver_rows:,} | "
                  f"quarantined {q}")
        if self.timings:
            _log.info("  steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in rep.steps.items()))
            _log.info(f"  spark: jobs {rep.spark_jobs}, stages {rep.spark_stages}")
