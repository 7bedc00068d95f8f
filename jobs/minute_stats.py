"""Unique users per event-time minute, from Kafka (or JSONL files) to Kafka and Delta.

Reads frames from the Kafka topic ``doodle`` (or a directory of JSONL / .gz files),
parses the root-level ``ts``/``uid`` with the JVM fast parser, quarantines what cannot
be counted, and counts distinct users per one-minute UTC window — exactly, or with
HyperLogLog. Each micro-batch publishes provisional results for the minutes it
touched, final results for minutes the watermark passed, and corrected results for
late frames, to the Kafka topic ``minuteStats`` and the Delta table ``minute_stats``.

Run it::

    ./spark-submit.sh jobs/minute_stats.py --available-now --print
    ./spark-submit.sh jobs/minute_stats.py --mode approx --trigger 2
    spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.2,io.delta:delta-spark_4.0_2.13:4.4.0 \\
        --jars java/target/doodle-udf.jar jobs/minute_stats.py --available-now

Without ``--available-now`` it runs until stopped; SIGTERM or Ctrl-C stop it after the
current micro-batch. Settings come from ``conf/doodle.toml``; flags override them.

Reliability:

* A broker that goes away is waited for, up to ``BROKER_PATIENCE_S`` (5 min): Spark's
  Kafka clients retry their offset look-ups and fetches that long, the ``minuteStats``
  publisher keeps its results until they are delivered, and one line says when the broker
  went away and when it came back. Longer, the job stops with one line and exit status 75
  (temporary failure); started again, it resumes from its checkpoint.
* Offsets the checkpoint expects but the broker deleted (retention, while the job was down
  or behind): ``--on-data-loss fail`` (default) stops with one line naming the partition,
  the expected and the earliest available offset, exit status 2; ``skip`` goes on from
  the earliest available offset and records the gap in the job state and the metrics.

Exit status: 0 done or stopped, 1 the query failed, 2 bad arguments / Kafka missing at start /
data loss, 75 the broker was away longer than the job waits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

try:
    import doodlestats  # noqa: F401
except ImportError:  # plain spark-submit from a clone: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doodlestats.config import ConfigError, load_config  # noqa: E402

#: How long the job waits for a Kafka broker that went away before it gives up: Spark's
#: offset look-ups (driver) and fetches (executors), and the minuteStats publisher.
BROKER_PATIENCE_S = 300
#: Kafka max.partition.fetch.bytes of the job's reads (see kafka_source)
FETCH_BYTES = 4 << 20
#: Exit status when the broker stayed away longer (sysexits' EX_TEMPFAIL: run it again).
EXIT_BROKER_GONE = 75


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="jobs/minute_stats.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("input")
    src.add_argument("--source", choices=["kafka", "files"], default="kafka", help="default: kafka")
    src.add_argument("--bootstrap-servers", help="Kafka bootstrap servers ([kafka] bootstrap_servers)")
    src.add_argument("--topic", help="input topic ([kafka] input_topic)")
    src.add_argument("--starting-offsets", help="earliest | latest | JSON offsets, first run only "
                                                "([job] starting_offsets)")
    src.add_argument("--max-offsets-per-trigger", type=int, help="([job] max_offsets_per_trigger)")
    src.add_argument("--input-path", help="directory of JSONL / .gz files (with --source files)")
    cnt = ap.add_argument_group("counting")
    cnt.add_argument("--mode", choices=["exact", "approx"], help="([job] mode)")
    cnt.add_argument("--rsd", type=float, help="HyperLogLog relative standard deviation ([job] rsd)")
    cnt.add_argument("--watermark", type=int, metavar="SECONDS", help="watermark delay ([job] watermark_s)")
    cnt.add_argument("--trigger", type=float, metavar="SECONDS", help="trigger interval ([job] trigger_s)")
    cnt.add_argument("--parser", choices=["jvm", "python", "spark"], help="parse path ([job] parser)")
    cnt.add_argument("--late-corrections", dest="late_corrections", action="store_true", default=None,
                     help="count late frames into corrected results ([job] late_corrections)")
    cnt.add_argument("--no-late-corrections", dest="late_corrections", action="store_false")
    src.add_argument("--on-data-loss", choices=["fail", "skip"],
                     help="offsets the checkpoint expects but the broker deleted (retention): stop with one "
                          "line (fail) or go on from the earliest offset and record the gap (skip) "
                          "([job] on_data_loss)")
    out = ap.add_argument_group("output")
    out.add_argument("--output-topic", help="result topic ([kafka] output_topic)")
    out.add_argument("--delta-path", help="root of the Delta tables ([paths] delta)")
    out.add_argument("--checkpoint", help="checkpoint location ([paths] checkpoint)")
    out.add_argument("--print", action="store_true",
                     help="write final and corrected results to stdout, one JSON per line")
    out.add_argument("--table", action="store_true", help="at the end, print the minute table from Delta")
    out.add_argument("--metrics-file", help="at the end, write run metrics (frames, seconds, ...) as JSON")
    run = ap.add_argument_group("run")
    run.add_argument("--available-now", action="store_true",
                     help="process what is available, emit open minutes as final, stop")
    run.add_argument("--conf-file", help="configuration file (default conf/doodle.toml)")
    args = ap.parse_args(argv)
    if args.source == "files" and not args.input_path:
        ap.error("--source files needs --input-path DIR")
    if args.input_path and "://" not in args.input_path and not Path(args.input_path).is_dir():
        ap.error(f"--input-path: not a directory: {args.input_path}")
    return args


def build_config(args: argparse.Namespace):
    return load_config(args.conf_file, {
        "kafka.bootstrap_servers": args.bootstrap_servers, "kafka.input_topic": args.topic,
        "kafka.output_topic": args.output_topic, "job.starting_offsets": args.starting_offsets,
        "job.max_offsets_per_trigger": args.max_offsets_per_trigger, "job.mode": args.mode,
        "job.rsd": args.rsd, "job.watermark_s": args.watermark, "job.trigger_s": args.trigger,
        "job.parser": args.parser, "job.late_corrections": args.late_corrections,
        "paths.delta": args.delta_path, "paths.checkpoint": args.checkpoint,
        "job.on_data_loss": args.on_data_loss,
    })


def read_tasks(cfg) -> int:
    """Spark tasks per micro-batch read: at least ``[job] min_partitions``, and one per
    ``[job] frames_per_task`` of a full batch — a task's frames are cached (raw bytes of a
    batch of garbage included), so a bounded task is what keeps a poison batch off the
    heap's limit."""
    return max(cfg.job.min_partitions, -(-cfg.job.max_offsets_per_trigger // cfg.job.frames_per_task))


def kafka_source(spark, cfg, one_task_per_partition: bool = False):
    """The input topic as a stream. ``one_task_per_partition``: for the batches that read
    past offsets retention deleted (``main`` reads past skipped gaps this way, see
    :data:`SPARK_KAFKA_RACE`): no ``minPartitions`` split, and at most ``frames_per_task``
    frames per batch, so that the tasks stay as small."""
    from pyspark.sql import functions as F
    from doodlestats.kafka import spark_kafka_options
    reader = (spark.readStream.format("kafka")
              .options(**spark_kafka_options(cfg))
              .option("subscribe", cfg.kafka.input_topic)
              .option("startingOffsets", cfg.job.starting_offsets))
    if one_task_per_partition:
        reader = reader.option("maxOffsetsPerTrigger", min(cfg.job.max_offsets_per_trigger, cfg.job.frames_per_task))
    else:
        reader = (reader.option("maxOffsetsPerTrigger", cfg.job.max_offsets_per_trigger)
                  # more, smaller tasks than Kafka partitions: 3 partitions on 2 cores would
                  # otherwise leave one core idle for a third of every batch
                  .option("minPartitions", str(read_tasks(cfg))))
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
            .select("value", "topic", "partition", "offset",
                    F.lit(None).cast("string").alias("file"), F.lit(None).cast("bigint").alias("line")))


def files_source(spark, path: str):
    """JSONL / .gz files. Each file is read as one split, so the pipeline can number its
    lines (``partition``/``offset``/``line`` are added per micro-batch, see
    :func:`doodlestats.pipeline.with_file_positions`)."""
    from pyspark.sql import functions as F
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
        from confluent_kafka import KafkaError
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.suspect_since is None:
                self.suspect_since = time.monotonic()
        elif err.str() not in self._said:  # anything else (authentication, ...): once each
            self._said.add(err.str())
            log(f"minute_stats: kafka: {err.str()}")

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
                log(f"minute_stats: Kafka at {self.bootstrap} does not answer — waiting for it (up to "
                    f"{BROKER_PATIENCE_S}s); the stream goes on where it stopped when it is back")
            return
        self.back()

    def back(self) -> None:
        if self.down_since is not None:
            away = time.monotonic() - self.down_since
            self.longest = max(self.longest, away)
            log(f"minute_stats: Kafka at {self.bootstrap} is back after {away:.0f}s")
        self.suspect_since = self.down_since = None


def patient_kafka_sink(cfg, watch: BrokerWatch):
    """The ``minuteStats`` sink, waiting up to ``BROKER_PATIENCE_S`` for a broker that went
    away instead of failing the batch after 30 s; ``watch`` hears its errors and deliveries."""
    from doodlestats.kafka import client_settings
    from doodlestats.sinks import KafkaSink

    conf = {**client_settings(cfg), "error_cb": watch.on_error, "log_level": 2, "log.connection.close": False}
    sink = KafkaSink(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, conf, patience_s=BROKER_PATIENCE_S,
                     on_delivered=watch.back)
    watch.producer = sink.producer
    return sink


#: How Spark 4.0's Kafka reader fails when two tasks of one partition meet deleted offsets
#: with failOnDataLoss=false: after an OffsetOutOfRangeException it returns its consumer
#: to the pool and goes on using it, so another task may hold it at the same time.
SPARK_KAFKA_RACE = "KafkaConsumer is not safe for multi-threaded access"


def drive(query, stop: dict, watch: BrokerWatch, until=None) -> None:
    """Wait for ``query``: stop it between two batches when asked to (SIGTERM, Ctrl-C) or
    when ``until()`` says so; meanwhile let ``watch`` look at the broker."""
    while query.isActive:
        if (stop["requested"] or (until is not None and until())) and \
                not query.status.get("isTriggerActive", False):
            query.stop()
            break
        watch.tick()
        try:
            query.awaitTermination(0.5)
        except Exception:  # noqa: BLE001 - the query failed: query.exception() tells the caller
            break


def read_past(query, gaps) -> bool:
    """True once the query's last batch ended at or past the end of every gap."""
    try:
        end = query.lastProgress["sources"][0]["endOffset"]
        end = json.loads(end) if isinstance(end, str) else end
        return all(int(end[g.topic][str(g.partition)]) >= g.end for g in gaps)
    except (TypeError, KeyError, IndexError, ValueError):  # no batch yet
        return False


def print_table(tables) -> None:
    """The minute table from Delta, for people (``--table``)."""
    from doodlestats.tables import MINUTE_STATS
    t = tables.read(MINUTE_STATS).sort_by("ts").to_pylist()
    print(f"{'minute (UTC)':<20} {'unique_users':>12} {'frames':>9}  status")
    for r in t:
        print(f"{r['window_start'].strftime('%Y-%m-%d %H:%M'):<20} {r['unique_users']:>12,} "
              f"{r['frames']:>9,}  {r['status']} ({r['mode']})")
    print(f"{len(t)} minutes, {sum(r['frames'] for r in t):,} frames counted")
    sys.stdout.flush()


def process_cpu() -> dict:
    """CPU seconds of this Python driver and of its JVM (under spark-submit the JVM is the
    parent; in local mode it also runs the executors' tasks — the bench subtracts their
    CPU time, from the event log, to get the driver's own share)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"python_driver_cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}
    try:
        import psutil
        parent = psutil.Process(os.getppid())
        if any("SparkSubmit" in a for a in parent.cmdline()):
            t = parent.cpu_times()
            out["jvm_cpu_s"] = round(t.user + t.system, 2)
    except Exception:  # noqa: BLE001 - psutil missing or no such process: the figure is optional
        pass
    return out


def failed(exc, offset_check, watch: BrokerWatch, spark) -> int:
    """One line for a query that died, and its exit status."""
    text = str(exc)
    if offset_check is not None and offset_check.failure is not None:  # found inside a batch
        log(f"minute_stats: error: {offset_check.failure}")
        code = 2
    elif watch.down_since is not None or "PublishTimeout" in text:
        away = time.monotonic() - watch.down_since if watch.down_since is not None else BROKER_PATIENCE_S
        log(f"minute_stats: error: Kafka at {watch.bootstrap} has not answered for {away:.0f}s, longer than the "
            f"job waits ({BROKER_PATIENCE_S}s) — nothing is lost: start the job again when the broker is back, "
            f"it resumes from its checkpoint")
        code = EXIT_BROKER_GONE
    else:
        log(f"minute_stats: query failed: {text}")
        code = 1
    spark.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    from doodlestats.session import register_driver
    register_driver()
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"minute_stats: error: {e}", file=sys.stderr)
        return 2
    from doodlestats.kafka import KafkaUnavailable, check_kafka, ensure_topic
    try:
        check_kafka(cfg, need_input=args.source == "kafka")
        ensure_topic(cfg, cfg.kafka.output_topic, cfg.kafka.output_partitions)
    except KafkaUnavailable as e:
        print(f"minute_stats: error: {e}", file=sys.stderr)
        return 2

    from doodlestats.pipeline import DataLoss, MinuteStatsPipeline, OffsetCheck, kafka_earliest
    from doodlestats.state import StateStore
    from doodlestats.storage import is_uri
    offset_check = OffsetCheck(kafka_earliest(cfg, cfg.kafka.input_topic), cfg.job.on_data_loss) \
        if args.source == "kafka" else None
    if offset_check and not is_uri(str(cfg.path("checkpoint"))):
        try:  # before Spark starts: frames deleted while the job was down stop it at once
            offset_check.at_start(StateStore(str(cfg.path("checkpoint"))).latest())
        except DataLoss as e:
            print(f"minute_stats: error: {e}", file=sys.stderr)
            return 2
    from doodlestats.session import get_spark, has_fast_parser, require_connectors
    require_connectors(kafka=args.source == "kafka", prog="minute_stats")  # one line, not a stack trace
    spark = get_spark("minute_stats", cfg)
    if cfg.job.parser == "jvm" and not has_fast_parser(spark):
        log("minute_stats: warning: doodle-udf.jar is not on the classpath (add --jars "
            "java/target/doodle-udf.jar); falling back to --parser python")
        cfg = build_config(argparse.Namespace(**{**vars(args), "parser": "python"}))
    from doodlestats.sinks import StdoutSink
    from doodlestats.storage import configure_spark, delta_storage_options, join
    checkpoint, delta = str(cfg.path("checkpoint")), str(cfg.path("delta"))
    configure_spark(spark, cfg, checkpoint=checkpoint, outputs=[delta])  # object-store settings, if any
    watch = BrokerWatch(cfg.kafka.bootstrap_servers)
    sinks = [patient_kafka_sink(cfg, watch)] + ([StdoutSink()] if args.print else [])
    pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, sinks=sinks,
                                   storage_options=delta_storage_options(delta, cfg), offset_check=offset_check)
    if offset_check and is_uri(checkpoint):
        try:
            offset_check.at_start(pipeline.store.latest())
        except DataLoss as e:
            print(f"minute_stats: error: {e}", file=sys.stderr)
            spark.stop()
            return 2

    def start(one_task_per_partition: bool = False):
        stream = kafka_source(spark, cfg, one_task_per_partition) if args.source == "kafka" else \
            files_source(spark, args.input_path)
        writer = (stream.writeStream.foreachBatch(pipeline.process_batch)
                  .option("checkpointLocation", join(checkpoint, "spark"))
                  .queryName("minute_stats"))
        writer = writer.trigger(availableNow=True) if args.available_now else \
            writer.trigger(processingTime=f"{cfg.job.trigger_s} seconds")
        return writer.start()

    log(f"minute_stats: {args.source} {cfg.kafka.input_topic if args.source == 'kafka' else args.input_path} "
        f"→ {cfg.kafka.output_topic} + {delta} | mode {cfg.job.mode} | parser {cfg.job.parser} | "
        f"watermark {cfg.job.watermark_s}s | checkpoint {checkpoint}")
    started = time.time()
    if cfg.job.warm_up_frames and not args.available_now:  # live: the first results must be on time
        log(f"minute_stats: warm-up on {cfg.job.warm_up_frames:,} synthetic frames took "
            f"{pipeline.warm_up(cfg.job.warm_up_frames):.1f}s")
    stop = {"requested": False}

    def on_signal(signum, _frame):
        stop["requested"] = True
        log(f"minute_stats: {signal.Signals(signum).name} received, stopping after the current batch")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    retries = 0
    while True:
        # skipped gaps (on_data_loss = skip) are read past with one task per Kafka partition
        # first: Spark's reader is not safe for two tasks of one partition meeting deleted
        # offsets (SPARK_KAFKA_RACE); then the stream goes on with all its read tasks
        gaps = list(offset_check.pending) if offset_check else []
        query = None
        if gaps:
            log(f"minute_stats: reading past the skipped offsets of {len(gaps)} partition(s) with one read task "
                f"per Kafka partition first")
            query = start(one_task_per_partition=True)
            drive(query, stop, watch, until=lambda: read_past(query, gaps))
            if query.exception() is None and not stop["requested"]:
                log("minute_stats: past the skipped offsets; reading with all read tasks again")
                query = None
        if query is None:
            query = start()
            if os.environ.get("DOODLE_TIMINGS"):
                log(f"  warm-up + writeStream.start() returned after {time.time() - started:.2f}s")
            drive(query, stop, watch)
        exc = query.exception()
        if exc is not None and SPARK_KAFKA_RACE in str(exc) and offset_check is not None and retries < 3 \
                and not stop["requested"]:
            # offsets deleted while the job ran, met by two read tasks of one partition: the
            # batch wrote nothing; find the gap as at start-up — "fail": the one line, "skip":
            # read past it as above
            retries += 1
            try:
                offset_check.at_start(pipeline.store.latest())
            except DataLoss:
                return failed(exc, offset_check, watch, spark)
            if offset_check.pending:
                log("minute_stats: Spark's Kafka reader failed on deleted offsets; reading the batch again")
                continue
        break
    if query.exception() is not None:
        return failed(query.exception(), offset_check, watch, spark)
    if os.environ.get("DOODLE_TIMINGS") and query.lastProgress:
        log(f"  last trigger (ms): {query.lastProgress.get('durationMs')}")
        if pipeline.first_batch_at:
            log(f"  query start → first batch {pipeline.first_batch_at - started:.2f}s, "
                f"last batch end → query end {time.time() - pipeline.last_end:.2f}s")
    if args.available_now and not stop["requested"]:
        t_flush = time.time()
        pipeline.flush()
        if os.environ.get("DOODLE_TIMINGS"):
            log(f"  flush: {time.time() - t_flush:.2f}s")
    if args.metrics_file:
        Path(args.metrics_file).write_text(json.dumps({
            **pipeline.totals, **process_cpu(), "query_seconds": round(time.time() - started, 3), "mode": cfg.job.mode,
            "parser": cfg.job.parser, "quarantined": dict(pipeline.quarantined_total),
            "gaps": offset_check.found if offset_check else [],
            "broker_away_s": round(watch.longest, 1)}, indent=1))
    if args.table:
        print_table(pipeline.tables)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
