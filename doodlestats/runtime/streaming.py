"""The streaming runner of ``jobs/minute_stats.py``: source, query, broker watch, retries.

The pipeline (:mod:`doodlestats.batch.pipeline`) processes micro-batches; this module owns
what is around the query: the Kafka (or files) source, ``foreachBatch`` with the
trigger, the wait loop that stops between batches on SIGTERM/Ctrl-C and watches the
broker, reading past skipped retention gaps, and the one-line failures with their exit
status::

    runner = StreamRunner(spark, cfg, pipeline, source="kafka", checkpoint=ckpt, offset_check=check,
                          watch=watch, available_now=False)
    code = runner.run()      # 0, or the status of failed()

Reliability:

* A broker that goes away is waited for, up to ``BROKER_PATIENCE_S`` (5 min): Spark's
  Kafka clients retry their offset look-ups and fetches that long, the ``minuteStats``
  publisher keeps its results until they are delivered, and one line says when the broker
  went away and when it came back. Longer, the job stops with one line and exit status 75.
* Offsets the checkpoint expects but the broker deleted: see :mod:`doodlestats.io.offsets`.
"""

from __future__ import annotations

import ast
import json
import os
import resource
import signal
import time

import psutil
from confluent_kafka import KafkaError
from pyspark.sql import functions as F

from doodlestats.batch.stages import source_columns
from doodlestats.io.kafka import client_settings, spark_kafka_options
from doodlestats.io.offsets import DataLoss
from doodlestats.io.sinks import KafkaSink
from doodlestats.io.uris import join
from doodlestats.runtime.logs import logger

__all__ = ["BROKER_PATIENCE_S", "EXIT_BROKER_GONE", "FETCH_BYTES", "SPARK_KAFKA_RACE", "BrokerWatch", "StartUp",
           "StreamRunner",
           "failed", "files_source", "kafka_source", "patient_kafka_sink", "process_cpu", "read_split",
           "source_offsets"]

_log = logger(__name__)

#: How long the job waits for a Kafka broker that went away before it gives up: Spark's
#: offset look-ups (driver) and fetches (executors), and the minuteStats publisher.
BROKER_PATIENCE_S = 300
#: Kafka max.partition.fetch.bytes of the job's reads (see kafka_source)
FETCH_BYTES = 4 << 20
#: Exit status when the broker stayed away longer (sysexits' EX_TEMPFAIL: run it again).
EXIT_BROKER_GONE = 75



def read_split(cfg) -> dict[str, str]:
    """The Kafka source options that size a micro-batch's read tasks: at most ``[job]
    frames_per_task`` frames a task (a task caches its frames — raw bytes of a batch of
    garbage included — so a bounded task keeps a poison batch off the heap's limit), so a
    full batch of 1M frames is read by ~20 tasks and a live batch of 1,000 by one per Kafka
    partition; ``[job] min_partitions`` above 1 forces at least that many for every batch
    (measured: 20 forced tasks cost a 1,000-frame batch ~0.3 s on 2 cores)."""
    out = {"maxRecordsPerPartition": str(cfg.job.frames_per_task)}
    if cfg.job.min_partitions > 1:
        out["minPartitions"] = str(cfg.job.min_partitions)
    return out


def kafka_source(spark, cfg, one_task_per_partition: bool = False):
    """The input topic as a stream. ``one_task_per_partition``: for the batches that read
    past offsets retention deleted (the runner reads past skipped gaps this way, see
    :data:`SPARK_KAFKA_RACE`): no ``minPartitions`` split, and at most ``frames_per_task``
    frames per batch, so that the tasks stay as small."""
    reader = (spark.readStream.format("kafka")
              .options(**spark_kafka_options(cfg))
              .option("subscribe", cfg.kafka.input_topic)
              .option("startingOffsets", cfg.job.starting_offsets))
    if one_task_per_partition:
        reader = reader.option("maxOffsetsPerTrigger", min(cfg.job.max_offsets_per_trigger, cfg.job.frames_per_task))
    else:
        reader = reader.option("maxOffsetsPerTrigger", cfg.job.max_offsets_per_trigger).options(**read_split(cfg))
    return (reader
            # ~2 KB frames: fetch in bigger chunks than the default 1 MB, but not too big: each
            # of the read tasks' pooled consumers keeps its last prefetch on the heap (16 MB
            # per consumer held ~330 MB of records in the soak, and a batch's writer failed
            # for want of a page); a larger frame still arrives (a fetch returns >= 1 record)
            .option("kafka.max.partition.fetch.bytes", str(FETCH_BYTES))
            .option("kafka.fetch.max.bytes", str(32 << 20))
            # frames deleted before they were read: the job decides ([job] on_data_loss,
            # OffsetCheck), with one clear line instead of Spark's stack trace
            .option("failOnDataLoss", "false")
            # a broker that went away is waited for: offset look-ups retry (each waits up to
            # the client's 60 s API timeout), a fetch waits BROKER_PATIENCE_S for records
            .option("fetchOffset.numRetries", str(-(-BROKER_PATIENCE_S // 60)))
            .option("kafkaConsumer.pollTimeoutMs", str(BROKER_PATIENCE_S * 1000))
            .load()
            .transform(source_columns))


def files_source(spark, path: str):
    """JSONL / .gz files. Each file is read as one split, so the pipeline can number its
    lines (``partition``/``offset``/``line`` are added per micro-batch, see
    :func:`doodlestats.batch.stages.with_file_positions`)."""
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 40))
    spark.conf.set("spark.sql.files.openCostInBytes", str(1 << 40))
    return (spark.readStream.format("text").load(path)
            .select(F.col("value").cast("binary").alias("value"), F.col("_metadata.file_path").alias("file")))



class BrokerWatch:
    """Says in one line when the Kafka broker went away, and in one when it is back.

    The ``minuteStats`` producer's error callback raises the suspicion (librdkafka's own
    per-retry log lines are turned off); the job's main loop (:meth:`tick`) then probes
    the broker every few seconds: a failed probe confirms the outage (one line), the first
    answer after it ends it (one line). A blip that the first probe does not see is not
    reported.
    """

    PROBE_S = 3.0

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.suspect_since: float | None = None   # the producer reported a broker error
        self.down_since: float | None = None      # ... and a probe confirmed it
        self.longest = 0.0
        self.producer = None
        self._probed = 0.0
        self._said: set[str] = set()

    def on_error(self, err) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.suspect_since is None:
                self.suspect_since = time.monotonic()
        elif err.str() not in self._said:  # anything else (authentication, ...): once each
            self._said.add(err.str())
            _log.info(f"minute_stats: kafka: {err.str()}")

    def tick(self) -> None:
        """Serve the producer's callbacks; while the broker is suspected away, probe it."""
        if self.producer is None:
            return
        self.producer.poll(0)
        now = time.monotonic()
        if self.suspect_since is None or now - self._probed < self.PROBE_S:
            return
        self._probed = now
        try:
            self.producer.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - no answer
            if self.down_since is None:
                self.down_since = self.suspect_since
                _log.info(f"minute_stats: Kafka at {self.bootstrap} does not answer — waiting for it (up to "
                          f"{BROKER_PATIENCE_S}s); the stream goes on where it stopped when it is back")
            return
        self.back()

    def back(self) -> None:
        if self.down_since is not None:
            away = time.monotonic() - self.down_since
            self.longest = max(self.longest, away)
            _log.info(f"minute_stats: Kafka at {self.bootstrap} is back after {away:.0f}s")
        self.suspect_since = self.down_since = None


def patient_kafka_sink(cfg, watch: BrokerWatch):
    """The ``minuteStats`` sink, waiting up to ``BROKER_PATIENCE_S`` for a broker that went
    away instead of failing the batch after 30 s; ``watch`` hears its errors and deliveries."""
    conf = {**client_settings(cfg), "error_cb": watch.on_error, "log_level": 2, "log.connection.close": False}
    sink = KafkaSink(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, conf, patience_s=BROKER_PATIENCE_S,
                     on_delivered=watch.back)
    watch.producer = sink.publisher.producer
    return sink


#: How Spark 4.0's Kafka reader fails when two tasks of one partition meet deleted offsets
#: with failOnDataLoss=false: after an OffsetOutOfRangeException it returns its consumer
#: to the pool and goes on using it, so another task may hold it at the same time.
SPARK_KAFKA_RACE = "KafkaConsumer is not safe for multi-threaded access"


def drive(query, stop: dict, watch: BrokerWatch, until=None, on_tick=None) -> None:
    """Wait for ``query``: stop it between two batches when asked to (SIGTERM, Ctrl-C) or
    when ``until()`` says so; meanwhile let ``watch`` look at the broker, and ``on_tick(query)``
    read its progress (the metrics)."""
    while query.isActive:
        if (stop["requested"] or (until is not None and until())) and \
                not query.status.get("isTriggerActive", False):
            query.stop()
            break
        watch.tick()
        if on_tick is not None:
            on_tick(query)
        try:
            query.awaitTermination(0.5)
        except Exception:  # noqa: BLE001 - the query failed: query.exception() tells the caller
            break


def source_offsets(value) -> dict:
    """``{topic: {partition: offset}}`` of a Kafka source's offsets in Spark's progress:
    JSON text, a dict, or — pyspark 4.0's ``SourceProgress`` turns them into ``str(dict)`` —
    a Python literal. ``{}`` when there is none."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return {}
    return value if isinstance(value, dict) else {}


def read_past(query, gaps) -> bool:
    """True once the query's last batch ended at or past the end of every gap."""
    try:
        end = source_offsets(query.lastProgress["sources"][0]["endOffset"])
        return all(int(end[g.topic][str(g.partition)]) >= g.end for g in gaps)
    except (TypeError, KeyError, IndexError, ValueError):  # no batch yet
        return False


def process_cpu() -> dict:
    """CPU seconds of this Python driver and of its JVM (under spark-submit the JVM is the
    parent; in local mode it also runs the executors' tasks — the bench subtracts their
    CPU time, from the event log, to get the driver's own share)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"python_driver_cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}
    jvm = _spark_submit_jvm()
    try:
        if jvm is not None:
            t = jvm.cpu_times()
            out["jvm_cpu_s"] = round(t.user + t.system, 2)
    except psutil.Error:  # gone: the figure is optional
        pass
    return out


def _spark_submit_jvm():
    """The spark-submit JVM that started this driver (its parent), or None."""
    try:
        parent = psutil.Process(os.getppid())
        return parent if any("SparkSubmit" in a for a in parent.cmdline()) else None
    except psutil.Error:
        return None


class StartUp:
    """Where the seconds of a start go, in one line once the query runs::

        minute_stats: up in 9.1s: process 1.9s, checks 0.2s, session 4.6s, tables and state 0.3s,
        warm-up 0.0s, query 2.1s

    ``process``: from spark-submit's JVM start (or this process's) to the job's first line.
    """

    def __init__(self):
        jvm = _spark_submit_jvm()
        self.t0 = (jvm or psutil.Process()).create_time()
        self.last, self.parts = self.t0, {}
        self.said = False

    def lap(self, name: str) -> None:
        """The part ``name`` ended now."""
        now = time.time()
        self.parts[name] = round(now - self.last, 2)
        self.last = now

    def line(self) -> str:
        return f"up in {self.last - self.t0:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.parts.items())


def failed(exc, offset_check, watch: BrokerWatch, spark) -> int:
    """One line for a query that died, and its exit status."""
    text = str(exc)
    if offset_check is not None and offset_check.failure is not None:  # found inside a batch
        _log.error(f"minute_stats: error: {offset_check.failure}")
        code = 2
    elif watch.down_since is not None or "PublishTimeout" in text:
        away = time.monotonic() - watch.down_since if watch.down_since is not None else BROKER_PATIENCE_S
        _log.error(f"minute_stats: error: Kafka at {watch.bootstrap} has not answered for {away:.0f}s, longer than the "
                   f"job waits ({BROKER_PATIENCE_S}s) — nothing is lost: start the job again when the broker is back, "
                   f"it resumes from its checkpoint")
        code = EXIT_BROKER_GONE
    else:
        _log.info(f"minute_stats: query failed: {text}")
        code = 1
    spark.stop()
    return code


class StreamRunner:
    """Starts the query, waits for it (stopping between batches when asked), reads past
    skipped gaps with one task per Kafka partition first, retries Spark's reader race once
    per gap; returns the exit status."""

    def __init__(self, spark, cfg, pipeline, source: str, input_path: str | None, checkpoint: str,
                 offset_check, watch: "BrokerWatch", available_now: bool, on_tick=None, on_start=None):
        self.spark, self.cfg, self.pipeline = spark, cfg, pipeline
        self.source, self.input_path, self.checkpoint = source, input_path, checkpoint
        self.offset_check, self.watch, self.available_now = offset_check, watch, available_now
        self.on_tick, self.on_start = on_tick, on_start
        self.stop = {"requested": False}

    def start(self, one_task_per_partition: bool = False):
        stream = kafka_source(self.spark, self.cfg, one_task_per_partition) if self.source == "kafka" else \
            files_source(self.spark, str(self.input_path))
        writer = (stream.writeStream.foreachBatch(lambda df, i: self.pipeline.process_batch(df, i))
                  .option("checkpointLocation", join(self.checkpoint, "spark"))
                  .queryName("minute_stats"))
        writer = writer.trigger(availableNow=True) if self.available_now else \
            writer.trigger(processingTime=f"{self.cfg.job.trigger_s} seconds")
        query = writer.start()
        if self.on_start is not None:
            self.on_start()
        return query

    def on_signals(self) -> None:
        def on_signal(signum, _frame):
            self.stop["requested"] = True
            _log.info(f"minute_stats: {signal.Signals(signum).name} received, stopping after the current batch")
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """Run the query to its end; 0, or the exit status of :func:`failed`."""
        self.on_signals()
        retries, query = 0, None
        while True:
            query = self._past_gaps() or self._started()
            exc = query.exception()
            if exc is None or SPARK_KAFKA_RACE not in str(exc) or self.offset_check is None or retries >= 3 \
                    or self.stop["requested"]:
                break
            # offsets deleted while the job ran, met by two read tasks of one partition: the
            # batch wrote nothing; find the gap as at start-up — "fail": the one line, "skip":
            # read past it with one task per partition
            retries += 1
            try:
                self.offset_check.at_start(self.pipeline.latest_state())
            except DataLoss:
                return failed(exc, self.offset_check, self.watch, self.spark)
            if not self.offset_check.pending:
                break
            _log.info("minute_stats: Spark's Kafka reader failed on deleted offsets; reading the batch again")
        if query.exception() is not None:
            return failed(query.exception(), self.offset_check, self.watch, self.spark)
        return 0

    def _past_gaps(self):
        """Skipped gaps (on_data_loss = skip) are read past with one task per Kafka partition
        first: Spark's reader is not safe for two tasks of one partition meeting deleted
        offsets (SPARK_KAFKA_RACE). The query if it ended there, else None."""
        gaps = list(self.offset_check.pending) if self.offset_check else []
        if not gaps:
            return None
        _log.info(f"minute_stats: reading past the skipped offsets of {len(gaps)} partition(s) with one read task "
                  f"per Kafka partition first")
        query = self.start(one_task_per_partition=True)
        drive(query, self.stop, self.watch, until=lambda: read_past(query, gaps), on_tick=self.on_tick)
        if query.exception() is None and not self.stop["requested"]:
            _log.info("minute_stats: past the skipped offsets; reading with all read tasks again")
            return None
        return query

    def _started(self):
        query = self.start()
        drive(query, self.stop, self.watch, on_tick=self.on_tick)
        return query
