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
    spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.1,io.delta:delta-spark_4.0_2.13:4.4.0 \\
        --jars java/target/doodle-udf.jar jobs/minute_stats.py --available-now

Without ``--available-now`` it runs until stopped; SIGTERM or Ctrl-C stop it after the
current micro-batch. Settings come from ``conf/doodle.toml``; flags override them.
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
    })


def read_tasks(cfg) -> int:
    """Spark tasks per micro-batch read: at least ``[job] min_partitions``, and one per
    ``[job] frames_per_task`` of a full batch — a task's frames are cached (raw bytes of a
    batch of garbage included), so a bounded task is what keeps a poison batch off the
    heap's limit."""
    return max(cfg.job.min_partitions, -(-cfg.job.max_offsets_per_trigger // cfg.job.frames_per_task))


def kafka_source(spark, cfg):
    from pyspark.sql import functions as F
    from doodlestats.kafka import spark_kafka_options
    return (spark.readStream.format("kafka")
            .options(**spark_kafka_options(cfg))
            .option("subscribe", cfg.kafka.input_topic)
            .option("startingOffsets", cfg.job.starting_offsets)
            .option("maxOffsetsPerTrigger", cfg.job.max_offsets_per_trigger)
            # ~2 KB frames: fetch in big chunks (measured ~15% faster reads than the defaults)
            .option("kafka.max.partition.fetch.bytes", str(16 << 20))
            .option("kafka.fetch.max.bytes", str(32 << 20))
            # more, smaller tasks than Kafka partitions: 3 partitions on 2 cores would
            # otherwise leave one core idle for a third of every batch
            .option("minPartitions", str(read_tasks(cfg)))
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


def main(argv: list[str] | None = None) -> int:
    from doodlestats.session import register_driver
    register_driver()
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"minute_stats: error: {e}", file=sys.stderr)
        return 2
    from doodlestats.kafka import KafkaUnavailable, check_kafka, client_settings, ensure_topic
    try:
        check_kafka(cfg, need_input=args.source == "kafka")
        ensure_topic(cfg, cfg.kafka.output_topic, cfg.kafka.output_partitions)
    except KafkaUnavailable as e:
        print(f"minute_stats: error: {e}", file=sys.stderr)
        return 2

    from doodlestats.pipeline import MinuteStatsPipeline
    from doodlestats.session import get_spark, has_fast_parser, require_connectors
    require_connectors(kafka=args.source == "kafka", prog="minute_stats")  # one line, not a stack trace
    spark = get_spark("minute_stats", cfg)
    if cfg.job.parser == "jvm" and not has_fast_parser(spark):
        log("minute_stats: warning: doodle-udf.jar is not on the classpath (add --jars "
            "java/target/doodle-udf.jar); falling back to --parser python")
        cfg = build_config(argparse.Namespace(**{**vars(args), "parser": "python"}))
    from doodlestats.sinks import KafkaSink, StdoutSink
    from doodlestats.storage import configure_spark, delta_storage_options, join
    checkpoint, delta = str(cfg.path("checkpoint")), str(cfg.path("delta"))
    configure_spark(spark, cfg, checkpoint=checkpoint, outputs=[delta])  # object-store settings, if any
    sinks = [KafkaSink(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, client_settings(cfg))] + ([StdoutSink()] if args.print else [])
    pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, sinks=sinks,
                                   storage_options=delta_storage_options(delta, cfg))

    stream = kafka_source(spark, cfg) if args.source == "kafka" else files_source(spark, args.input_path)
    writer = (stream.writeStream.foreachBatch(pipeline.process_batch)
              .option("checkpointLocation", join(checkpoint, "spark"))
              .queryName("minute_stats"))
    writer = writer.trigger(availableNow=True) if args.available_now else \
        writer.trigger(processingTime=f"{cfg.job.trigger_s} seconds")
    log(f"minute_stats: {args.source} {cfg.kafka.input_topic if args.source == 'kafka' else args.input_path} "
        f"→ {cfg.kafka.output_topic} + {delta} | mode {cfg.job.mode} | parser {cfg.job.parser} | "
        f"watermark {cfg.job.watermark_s}s | checkpoint {checkpoint}")
    started = time.time()
    if cfg.job.warm_up_frames and not args.available_now:  # live: the first results must be on time
        log(f"minute_stats: warm-up on {cfg.job.warm_up_frames:,} synthetic frames took "
            f"{pipeline.warm_up(cfg.job.warm_up_frames):.1f}s")
    query = writer.start()
    if os.environ.get("DOODLE_TIMINGS"):
        log(f"  warm-up + writeStream.start() returned after {time.time() - started:.2f}s")

    stop = {"requested": False}

    def on_signal(signum, _frame):
        stop["requested"] = True
        log(f"minute_stats: {signal.Signals(signum).name} received, stopping after the current batch")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while query.isActive:
        if stop["requested"] and not query.status.get("isTriggerActive", False):
            query.stop()
            break
        query.awaitTermination(0.5)
    if query.exception() is not None:
        log(f"minute_stats: query failed: {query.exception()}")
        return 1
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
            "parser": cfg.job.parser, "quarantined": dict(pipeline.quarantined_total)}, indent=1))
    if args.table:
        print_table(pipeline.tables)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
