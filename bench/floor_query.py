"""Spark's floor: the smallest stateless Structured Streaming query that does what a
micro-batch of the product must at least do — read Kafka, parse ts/uid, one
count-distinct per minute, one ``collect()`` — timed per micro-batch.

    ./spark-submit.sh [--master URL] bench/floor_query.py --bootstrap-servers 127.0.0.1:29092 \\
        --topic T --checkpoint DIR --out floor.json [--max-offsets-per-trigger 1000]

The query (``trigger(availableNow=True)``, ``maxOffsetsPerTrigger``, ``startingOffsets``
earliest)::

    value → from_json(ts STRING, uid STRING) → ts = try_cast(ts AS BIGINT), minute = ts - ts % 60
    foreachBatch: batch.groupBy(minute).agg(count_distinct(uid)).collect()

``--out`` gets ``{"batches": [{"batch_id", "frames", "seconds", "spark_jobs"}, ...],
"python_driver_cpu_s", "jvm_cpu_s", "query_seconds", ...}``:

* ``seconds``: wall time of the foreachBatch function (the plan, the job, the collect);
* ``frames``: ``numInputRows`` of the query's progress for that batch (no extra job);
* ``spark_jobs``: the Spark jobs the batch ran — the new job ids of the query's job group
  (Structured Streaming runs a query's jobs in the group ``runId``) between the start of
  this batch and the start of the next one, read with ``SparkContext.statusTracker()``
  outside the timed function (no SparkListener);
* ``python_driver_cpu_s``: ``getrusage(RUSAGE_SELF)`` of this Python driver at the end;
  ``jvm_cpu_s``: psutil's CPU times of the parent process if it is spark-submit's JVM
  (``SparkSubmit`` on its command line) — in local mode that JVM also runs the executors'
  tasks. The same measurement as the product job's metrics file.

Its own file on purpose: of ``doodlestats`` it imports only ``process_cpu`` (the same CPU
measurement on both sides), nothing of the product's batch code and nothing of ``jobs/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from doodlestats.runtime.streaming import process_cpu  # noqa: E402

#: how long to wait after the query for the last batch's jobs to reach the status store
STATUS_SETTLE_S = 1.0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/floor_query.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--checkpoint", required=True, help="a fresh folder")
    ap.add_argument("--out", required=True, help="JSON file of the results")
    ap.add_argument("--max-offsets-per-trigger", type=int, default=1000)
    return ap.parse_args(argv)


def minutes(spark, args):
    """The stream: Kafka, ``from_json`` of ts/uid, ``minute = ts - ts % 60``."""
    from pyspark.sql import functions as F
    parsed = F.from_json(F.col("value").cast("string"), "ts STRING, uid STRING")
    ts = F.expr("try_cast(j.ts AS BIGINT)")
    return (spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", args.bootstrap_servers)
            .option("subscribe", args.topic)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
            .load()
            .select(parsed.alias("j"))
            .select(ts.alias("ts"), F.col("j.uid").alias("uid"))
            .select((F.col("ts") - F.col("ts") % 60).alias("minute"), "uid"))


def main(argv=None) -> int:
    args = parse_args(argv)
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    t_start = time.time()
    spark = SparkSession.builder.appName("floor").getOrCreate()
    spark.conf.set("spark.sql.streaming.numRecentProgressUpdates", "100000")   # every batch's frames
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    batches: list[dict] = []
    group = {"id": None, "seen": set()}

    def settle_jobs() -> None:
        """Attribute the job ids of the query's group not seen yet to the previous batch."""
        if group["id"] is None:
            return
        ids = set(tracker.getJobIdsForGroup(group["id"]))
        new = ids - group["seen"]
        group["seen"] |= ids
        if batches:
            batches[-1]["spark_jobs"] = batches[-1].get("spark_jobs", 0) + len(new)

    def per_batch(df, batch_id: int) -> None:
        if group["id"] is None:
            group["id"] = sc.getLocalProperty("spark.jobGroup.id")
        settle_jobs()   # outside the timed part
        t0 = time.perf_counter()
        (df.groupBy("minute").agg(F.count_distinct("uid").alias("users")).collect())
        batches.append({"batch_id": batch_id, "seconds": round(time.perf_counter() - t0, 4), "spark_jobs": 0})

    query = (minutes(spark, args).writeStream.foreachBatch(per_batch)
             .option("checkpointLocation", args.checkpoint)
             .queryName("floor")
             .trigger(availableNow=True)
             .start())
    query.awaitTermination()
    query_s = time.time() - t_start
    time.sleep(STATUS_SETTLE_S)
    settle_jobs()
    if query.exception() is not None:
        print(f"floor_query: query failed: {query.exception()}", file=sys.stderr)
        spark.stop()
        return 1
    rows = {p["batchId"]: p for p in query.recentProgress}
    for b in batches:
        p = rows.get(b["batch_id"]) or {}
        b["frames"] = p.get("numInputRows")
        b["trigger_ms"] = (p.get("durationMs") or {}).get("triggerExecution")
    out = {"batches": batches, **process_cpu(), "query_seconds": round(query_s, 3),
           "frames": sum(b["frames"] or 0 for b in batches), "max_offsets_per_trigger": args.max_offsets_per_trigger,
           "master": sc.master, "job_group": group["id"]}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"floor_query: {len(batches)} batches, {out['frames']:,} frames, "
          f"{sum(b['seconds'] for b in batches):.2f}s in foreachBatch", file=sys.stderr)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
