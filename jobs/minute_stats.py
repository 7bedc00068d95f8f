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

* A broker that goes away is waited for, up to 5 min (``doodlestats.runtime.streaming``): Spark's
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
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401 - doodlestats importable from a clone

from doodlestats.io.uris import is_uri
from doodlestats.runtime import cli
from doodlestats.runtime.config import ConfigError, load_config
from doodlestats.runtime.logs import logger

# The modules that import Spark (session, streaming, pipeline, sinks, ...) are imported in the
# functions that use them: --help and argument errors stay fast and need no Spark.

_log = logger("minute_stats")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = cli.ArgumentParser(prog="jobs/minute_stats.py", description=__doc__)
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


def print_table(rows: list[dict]) -> None:
    """The minute table from Delta, for people (``--table``)."""
    print(f"{'minute (UTC)':<20} {'unique_users':>12} {'frames':>9}  status")
    for r in rows:
        print(f"{r['window_start'].strftime('%Y-%m-%d %H:%M'):<20} {r['unique_users']:>12,} "
              f"{r['frames']:>9,}  {r['status']} ({r['mode']})")
    print(f"{len(rows)} minutes, {sum(r['frames'] for r in rows):,} frames counted")
    sys.stdout.flush()


def check_offsets(cfg, args, checkpoint: str, spark=None):
    """The retention check of a Kafka source, run before the stream (None for files);
    raises DataLoss when frames were deleted unread and ``on_data_loss`` is ``fail``."""
    from doodlestats.io.offsets import OffsetCheck, kafka_earliest
    from doodlestats.io.state import StateStore
    if args.source != "kafka":
        return None
    check = OffsetCheck(kafka_earliest(cfg, cfg.kafka.input_topic), cfg.job.on_data_loss)
    check.at_start(StateStore(checkpoint, spark=spark).latest())
    return check


def open_spark(cfg, args):
    """The session (object-store settings included) and the config, falling back to the
    Python parser when the JVM one is not on the classpath."""
    from doodlestats.io.storage import configure_spark
    from doodlestats.runtime.session import get_spark, has_fast_parser, require_connectors
    require_connectors(kafka=args.source == "kafka", prog="minute_stats")  # one line, not a stack trace
    spark = get_spark("minute_stats", cfg)
    if cfg.job.parser == "jvm" and not has_fast_parser(spark):
        _log.warning("minute_stats: warning: doodle-udf.jar is not on the classpath (add --jars "
                     "java/target/doodle-udf.jar); falling back to --parser python")
        cfg = build_config(argparse.Namespace(**{**vars(args), "parser": "python"}))
    configure_spark(spark, cfg, checkpoint=str(cfg.path("checkpoint")), outputs=[str(cfg.path("delta"))])
    return spark, cfg


def write_metrics(path: str, progress, cfg, started: float, offset_check, watch) -> None:
    from doodlestats.runtime.streaming import process_cpu
    Path(path).write_text(json.dumps({
        **progress.totals, **process_cpu(), "query_seconds": round(time.time() - started, 3), "mode": cfg.job.mode,
        "parser": cfg.job.parser, "quarantined": dict(progress.quarantined), "per_batch": progress.batches,
        "gaps": offset_check.found if offset_check else [], "broker_away_s": round(watch.longest, 1)}, indent=1))


def build_pipeline(spark, cfg, args, offset_check, clock):
    """The pipeline with its sinks (the patient minuteStats publisher, stdout), progress and
    metrics endpoint; warmed up when the job runs live."""
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.batch.progress import Progress
    from doodlestats.batch.warmup import warm_up
    from doodlestats.io.sinks import StdoutSink
    from doodlestats.io.storage import delta_storage_options
    from doodlestats.runtime import metrics, streaming
    checkpoint, delta = str(cfg.path("checkpoint")), str(cfg.path("delta"))
    watch, progress = streaming.BrokerWatch(cfg.kafka.bootstrap_servers), Progress()
    live = metrics.start(cfg.metrics.host, cfg.metrics.port)
    upkeep = scheduled_maintenance(cfg, delta)

    def on_batch(rep) -> None:
        progress(rep)
        live.on_batch(rep)
        if not rep.skipped:
            upkeep.on_batch(rep)
    sinks = [streaming.patient_kafka_sink(cfg, watch)] + ([StdoutSink()] if args.print else [])
    pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, sinks=sinks, on_batch=on_batch,
                                   storage_options=delta_storage_options(delta, cfg), offset_check=offset_check)
    _log.info(f"minute_stats: {args.source} {cfg.kafka.input_topic if args.source == 'kafka' else args.input_path} "
              f"→ {cfg.kafka.output_topic} + {delta} | mode {cfg.job.mode} | parser {cfg.job.parser} | "
              f"watermark {cfg.job.watermark_s}s | checkpoint {checkpoint}")
    clock.lap("tables and state")
    if cfg.job.warm_up_frames and not args.available_now:  # live: the first results must be on time
        restart = pipeline.latest_state().batch_id
        if restart >= 0:  # a restart first catches up what came while it was down: that batch warms up
            _log.info(f"minute_stats: restart after batch {restart}: no warm-up")
        else:
            _log.info(f"minute_stats: warm-up on {cfg.job.warm_up_frames:,} synthetic frames took "
                      f"{warm_up(spark, cfg, cfg.job.warm_up_frames):.1f}s")
    clock.lap("warm-up")
    return pipeline, watch, progress, live, upkeep


def scheduled_maintenance(cfg, delta: str):
    """The tables' maintenance in the background, as ``[maintenance]`` says."""
    from doodlestats.io.maintenance import Scheduled
    from doodlestats.io.storage import delta_storage_options
    from doodlestats.io.tables import Tables
    m = cfg.maintenance
    return Scheduled(lambda: Tables(delta, "maintain", delta_storage_options(delta, cfg)), m.every_batches,
                     m.every_minutes, m.target_mb << 20, m.vacuum_hours, lambda msg: _log.info(f"minute_stats: {msg}"))


def body(args) -> int:
    from doodlestats.io.kafka import KafkaUnavailable, check_kafka, ensure_topic
    from doodlestats.io.offsets import DataLoss
    from doodlestats.runtime.streaming import StartUp
    clock = StartUp()
    clock.lap("process")
    try:
        cfg = build_config(args)
        check_kafka(cfg, need_input=args.source == "kafka")
        ensure_topic(cfg, cfg.kafka.output_topic, cfg.kafka.output_partitions)
        local = not is_uri(str(cfg.path("checkpoint")))
        offset_check = check_offsets(cfg, args, str(cfg.path("checkpoint"))) if local else None  # before Spark
    except (ConfigError, KafkaUnavailable, DataLoss) as e:
        raise cli.JobError(str(e)) from None
    clock.lap("checks")
    spark, cfg = open_spark(cfg, args)
    clock.lap("session")
    try:
        try:
            offset_check = offset_check if local else check_offsets(cfg, args, str(cfg.path("checkpoint")), spark)
        except DataLoss as e:
            raise cli.JobError(str(e)) from None
        return stream(spark, cfg, args, offset_check, clock)
    finally:
        spark.stop()


def stream(spark, cfg, args, offset_check, clock) -> int:
    """The stream until it ends or stops; then the final flush, the metrics, the table.
    ``clock`` (a :class:`~doodlestats.runtime.streaming.StartUp`) says where the start went."""
    from doodlestats.runtime import streaming
    started = time.time()
    pipeline, watch, progress, live, upkeep = build_pipeline(spark, cfg, args, offset_check, clock)
    checkpoint = str(cfg.path("checkpoint"))
    on_tick = (lambda q: live.on_progress(q.lastProgress)) if live.server is not None else None

    def on_start() -> None:
        if not clock.said:
            clock.lap("query")
            clock.said = True
            _log.info(f"minute_stats: {clock.line()}")
    runner = streaming.StreamRunner(spark, cfg, pipeline, args.source, args.input_path, checkpoint, offset_check,
                                    watch, args.available_now, on_tick, on_start)
    try:
        code = runner.run()
    finally:
        live.close()
        upkeep.close()
    if code == 0 and args.available_now and not runner.stop["requested"]:
        pipeline.flush()
    if args.metrics_file:
        write_metrics(args.metrics_file, progress, cfg, started, offset_check, watch)
    if code == 0 and args.table:
        print_table(pipeline.minute_table())
    return code


def main(argv: list[str] | None = None) -> int:
    return cli.run("minute_stats", parse_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
