"""Frames per event-time minute of a Kafka topic, as a batch query — the smoke job.

Reads the whole topic once with Spark's Kafka connector, parses the root ``ts`` with
the fast parser, writes the per-minute frame counts to a Delta table, reads the table
back and prints one JSON object per minute to stdout::

    ./spark-submit.sh jobs/frame_counts.py --topic doodle --delta-path /tmp/frame_counts
    spark-submit jobs/frame_counts.py --topic doodle --delta-path /tmp/frame_counts  # plain form

It exercises the whole tool chain (Kafka connector, Delta, the JVM parser, the
project's package on executors) in a few seconds; the tests run it.
"""

from __future__ import annotations

import argparse
import json
import sys

import _bootstrap  # noqa: F401 - doodlestats importable from a clone

from doodlestats.io.kafka import KafkaUnavailable, check_kafka, spark_kafka_options
from doodlestats.runtime.cli import register_driver
from doodlestats.runtime.config import ConfigError, load_config
from doodlestats.runtime.logs import logger

_log = logger("frame_counts")


def main(argv: list[str] | None = None) -> int:
    register_driver()
    ap = argparse.ArgumentParser(prog="jobs/frame_counts.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topic", help="([kafka] input_topic)")
    ap.add_argument("--bootstrap-servers", help="([kafka] bootstrap_servers)")
    ap.add_argument("--delta-path", required=True, help="Delta table to (over)write")
    ap.add_argument("--parser", choices=["jvm", "python", "spark"], default="jvm")
    ap.add_argument("--conf-file")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.conf_file, {"kafka.bootstrap_servers": args.bootstrap_servers,
                                           "kafka.input_topic": args.topic})
    except ConfigError as e:
        _log.error(f"frame_counts: error: {e}")
        return 2

    # Spark and the modules that import it, only now: --help and argument errors stay fast
    from pyspark.sql import functions as F

    from doodlestats.batch.parse import parse_frames
    from doodlestats.batch.window import minute_col
    from doodlestats.runtime.session import get_spark, require_connectors
    require_connectors(prog="frame_counts")  # one line, not a stack trace, if a jar is missing
    try:  # no broker, refused credentials, missing topic: one line before Spark starts
        check_kafka(cfg, need_input=True)
    except KafkaUnavailable as e:
        _log.error(f"frame_counts: error: {e}")
        return 2
    spark = get_spark("frame_counts", cfg)
    raw = (spark.read.format("kafka").options(**spark_kafka_options(cfg))
           .option("subscribe", cfg.kafka.input_topic).load())
    counts = (parse_frames(raw, args.parser).where(F.col("reason").isNull())
              .groupBy(minute_col(F.col("ts")).alias("minute")).agg(F.count(F.lit(1)).alias("frames")))
    counts.write.format("delta").mode("overwrite").save(args.delta_path)
    for r in spark.read.format("delta").load(args.delta_path).orderBy("minute").collect():
        print(json.dumps({"minute": r["minute"], "frames": r["frames"]}))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
