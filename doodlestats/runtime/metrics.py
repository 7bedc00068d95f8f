"""The live job's figures for Prometheus: ``http://[metrics] host:port/metrics``.

Updated after every micro-batch (:meth:`JobMetrics.on_batch`, fed the batch's
:class:`~doodlestats.batch.progress.BatchReport`) and from Spark's own progress of the
streaming query (:meth:`JobMetrics.on_progress`, fed ``query.lastProgress``):

===================================================  ====================================================
``doodle_frames_read_total``                          frames read (counted + quarantined)
``doodle_frames_counted_total``                       frames counted into their minute
``doodle_frames_quarantined_total{reason}``           frames quarantined, by reason (``late`` included)
``doodle_minutes_corrected_total``                    final minutes corrected by late frames
``doodle_batches_total``                              micro-batches processed
``doodle_batch_seconds``                              a batch's time (histogram)
``doodle_batch_step_seconds{step}``                   the last batch's steps (read, count, commit …)
``doodle_batch_spark_jobs``                           Spark jobs of the last batch
``doodle_open_minutes``                               minutes not final yet
``doodle_watermark_seconds``                          the watermark (epoch seconds)
``doodle_watermark_delay_seconds``                    now − watermark
``doodle_partition_delay_seconds{partition}``         now − the newest event time read from a partition
``doodle_consumer_lag_frames{topic,partition}``       Kafka offsets behind the latest (Spark's progress)
``doodle_consumer_lag_seconds{topic,partition}``      that lag ÷ the rate the last batch processed per partition
``doodle_spark_input_rows_per_second``                Spark's streaming progress
``doodle_spark_processed_rows_per_second``            Spark's streaming progress
``doodle_spark_trigger_seconds``                      Spark's streaming progress: the last trigger's duration
===================================================  ====================================================

A port that is taken is one warning line, and the job runs without the endpoint.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from doodlestats.runtime.logs import logger
from doodlestats.runtime.streaming import source_offsets

__all__ = ["JobMetrics", "start"]

_log = logger(__name__)
_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class JobMetrics:
    """The job's metrics in their own registry; :attr:`server` serves them (or is None)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.server: Any = None
        self.frames = Counter("doodle_frames_read", "Frames read (counted + quarantined)", registry=r)
        self.counted = Counter("doodle_frames_counted", "Frames counted into their minute", registry=r)
        self.quarantined = Counter("doodle_frames_quarantined", "Frames quarantined, by reason", ["reason"],
                                   registry=r)
        self.corrected = Counter("doodle_minutes_corrected", "Final minutes corrected by late frames", registry=r)
        self.batches = Counter("doodle_batches", "Micro-batches processed", registry=r)
        self.batch_seconds = Histogram("doodle_batch_seconds", "Time of a micro-batch", buckets=_BUCKETS, registry=r)
        self.steps = Gauge("doodle_batch_step_seconds", "The last batch's steps", ["step"], registry=r)
        self.spark_jobs = Gauge("doodle_batch_spark_jobs", "Spark jobs of the last batch", registry=r)
        self.open_minutes = Gauge("doodle_open_minutes", "Minutes not final yet", registry=r)
        self.watermark = Gauge("doodle_watermark_seconds", "The watermark, epoch seconds", registry=r)
        self.watermark_delay = Gauge("doodle_watermark_delay_seconds", "Now minus the watermark", registry=r)
        self.partition_delay = Gauge("doodle_partition_delay_seconds",
                                     "Now minus the newest event time read from a partition", ["partition"],
                                     registry=r)
        self.lag_frames = Gauge("doodle_consumer_lag_frames", "Kafka offsets behind the latest",
                                ["topic", "partition"], registry=r)
        self.lag_seconds = Gauge("doodle_consumer_lag_seconds",
                                 "Lag in frames divided by the last batch's processing rate per partition",
                                 ["topic", "partition"], registry=r)
        self.input_rate = Gauge("doodle_spark_input_rows_per_second", "Spark: input rows per second", registry=r)
        self.processed_rate = Gauge("doodle_spark_processed_rows_per_second", "Spark: processed rows per second",
                                    registry=r)
        self.trigger_seconds = Gauge("doodle_spark_trigger_seconds", "Spark: the last trigger's duration",
                                     registry=r)
        self._progress_batch: int | None = None

    def serve(self, host: str, port: int) -> JobMetrics:
        """Serve ``/metrics`` on ``host:port`` (port 0: not at all)."""
        if port:
            try:
                self.server, _ = start_http_server(port, addr=host, registry=self.registry)
                _log.info(f"minute_stats: metrics on http://{host}:{port}/metrics")
            except OSError as e:
                _log.warning(f"minute_stats: warning: no metrics endpoint on {host}:{port} ({e.strerror or e})")
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def on_batch(self, rep) -> None:
        """Count a batch's frames and set the gauges from its report."""
        if rep.skipped:
            return
        now = time.time()
        self.batches.inc()
        self.frames.inc(rep.frames)
        self.counted.inc(rep.counted)
        for reason, n in rep.quarantined.items():
            self.quarantined.labels(reason).inc(n)
        self.corrected.inc(sum(1 for r in rep.results if r.status == "corrected"))
        self.batch_seconds.observe(rep.seconds)
        for step, s in rep.steps.items():
            self.steps.labels(step).set(s)
        self.spark_jobs.set(rep.spark_jobs)
        self.open_minutes.set(rep.open_minutes)
        if rep.watermark is not None:
            self.watermark.set(rep.watermark)
            self.watermark_delay.set(now - rep.watermark)
        for key, ts in rep.partition_ts.items():
            self.partition_delay.labels(key).set(now - ts)

    def on_progress(self, progress: dict | None) -> None:
        """Spark's figures of the last trigger, and the lag per partition from its offsets."""
        if not progress or progress.get("batchId") == self._progress_batch:
            return
        self._progress_batch = progress.get("batchId")
        self.input_rate.set(progress.get("inputRowsPerSecond") or 0.0)
        rate = progress.get("processedRowsPerSecond") or 0.0
        self.processed_rate.set(rate)
        self.trigger_seconds.set((progress.get("durationMs") or {}).get("triggerExecution", 0) / 1000)
        for src in progress.get("sources") or []:
            end, latest = source_offsets(src.get("endOffset")), source_offsets(src.get("latestOffset"))
            parts = sum(len(p) for p in latest.values()) or 1
            for topic, by_part in latest.items():
                for p, off in by_part.items():
                    lag = max(0, int(off) - int(end.get(topic, {}).get(p, off)))
                    self.lag_frames.labels(topic, p).set(lag)
                    self.lag_seconds.labels(topic, p).set(lag / (rate / parts) if rate > 0 else 0.0)


def start(host: str, port: int) -> JobMetrics:
    """The job's metrics, served on ``host:port`` unless ``port`` is 0."""
    return JobMetrics().serve(host, port)
