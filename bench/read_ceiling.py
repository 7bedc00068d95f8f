"""Read ceiling: how fast can Spark read the topic at all? Reads it with Spark's Kafka
connector (a batch query from the earliest to the latest offsets) and only counts
rows and value bytes — no parsing. The time reported is the query's, not the JVM's
start-up.

    ./spark-submit.sh bench/read_ceiling.py --topic bench-1000000 --metrics-file m.json

``--repeat 2`` runs the same query again in the same JVM (warm JIT and connections);
the first run is the comparable one (the job also runs cold), the others are reported
as ``warm_*``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import bench  # noqa: F401
except ImportError:  # plain spark-submit from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/read_ceiling.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topic", required=True, help="topic to read")
    ap.add_argument("--bootstrap-servers", help="default: [kafka] bootstrap_servers")
    ap.add_argument("--repeat", type=int, default=1, help="run the query this many times (default 1)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Kafka source option, e.g. kafka.max.partition.fetch.bytes=8388608 "
                         "(default: none, like the job)")
    ap.add_argument("--metrics-file", help="write {frames, bytes, query_seconds, ...} here as JSON")
    return ap.parse_args(argv)


def count_topic(spark, bootstrap: str, topic: str, options: dict | None = None) -> tuple[int, int, float]:
    """(rows, value bytes, seconds) of one full read of ``topic``."""
    from pyspark.sql import functions as F
    t0 = time.time()
    row = (spark.read.format("kafka")
           .option("kafka.bootstrap.servers", bootstrap)
           .option("subscribe", topic)
           .option("startingOffsets", "earliest")
           .option("endingOffsets", "latest")
           .options(**(options or {}))
           .load()
           .agg(F.count(F.lit(1)).alias("n"), F.sum(F.length("value")).alias("b"))
           .collect()[0])
    return row["n"], row["b"] or 0, time.time() - t0


def main(argv=None) -> int:
    from doodlestats.runtime.cli import register_driver
    register_driver()  # PID for ./spark-submit.sh's SIGTERM forwarding; stderr past spark-submit
    args = parse_args(argv)
    from bench.common import load_cfg, require_broker
    cfg = load_cfg(args.bootstrap_servers)
    require_broker(cfg, "read_ceiling")
    from doodlestats.runtime.session import get_spark
    spark = get_spark("bench_read_ceiling", cfg)
    options = dict(o.split("=", 1) for o in args.option)
    runs = []
    for i in range(max(1, args.repeat)):
        n, b, dt = count_topic(spark, cfg.kafka.bootstrap_servers, args.topic, options)
        runs.append(dt)
        print(f"read_ceiling: run {i + 1}: {n:,} rows, {b / max(n, 1):,.0f} B/row, {dt:.2f}s, "
              f"{n / max(dt, 1e-9):,.0f} rows/s", file=sys.stderr, flush=True)
    metrics = {"options": options, "frames": n, "bytes": b, "query_seconds": round(runs[0], 3),
               "warm_query_seconds": [round(x, 3) for x in runs[1:]]}
    if args.metrics_file:
        Path(args.metrics_file).write_text(json.dumps(metrics, indent=1))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
