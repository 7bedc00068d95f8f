"""Warm-up of a live job: the batch code run twice on synthetic frames before the stream.

The JIT compiles the parse path, and Spark the guard, the counting pass and the staged
writes, before the first real batch, whose latency would otherwise pay for it. Nothing
is written to the job's tables: a scratch pipeline works in a local temporary folder::

    seconds = warm_up(spark, cfg, 20000)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from pyspark.sql import functions as F

from doodlestats.batch.pipeline import MinuteStatsPipeline
from doodlestats.batch.stages import source_columns

__all__ = ["warm_up"]

FRAMES = [
    b'{"ts": 1451606400, "uid": "a1b2c3", "meta": {"uid": "decoy", "ts": 1}, "text": "caf\\u00e9 \\"q\\"",'
    b' "list": [{"ts": 2, "uid": "x"}], "n": 1.5e3, "ok": true}',
    ('{"ts": "1451606401", "uid": "\u0436\u4e2d\U0001f600", '
     '"note": "\u043f\u0440\u0438\u0432\u0435\u0442 \u65e5\u672c", "x": null}').encode(),
    b'{"uid": "z", "nested": {"ts": 5}}', b'not json',
]


def warm_up(spark, cfg, frames: int) -> float:
    """Run the batch code twice on ``frames`` synthetic frames against throw-away tables;
    the seconds it took (0 if ``frames`` is 0)."""
    if frames <= 0:
        return 0.0
    t0 = time.time()
    pick = F.element_at(F.array(*[F.lit(v) for v in FRAMES]), (F.col("id") % len(FRAMES) + 1).cast("int"))
    uid = F.concat(F.lit('{"ts": 1451606400, "uid": "w'), (F.col("id") % 997).cast("string"), F.lit('"}'))
    df = spark.range(0, frames, 1, 2).select(
        F.when(F.col("id") % 3 == 0, pick).otherwise(uid.cast("binary")).alias("value"),
        F.lit("warm-up").alias("topic"), F.lit(0).alias("partition"),
        F.col("id").alias("offset")).transform(source_columns)
    tmp = tempfile.mkdtemp(prefix="doodle-warm-up-")
    try:
        scratch = MinuteStatsPipeline(spark, cfg, os.path.join(tmp, "ckpt"), os.path.join(tmp, "delta"))
        scratch.process_batch(df, 0)
        scratch.process_batch(df, 1)  # the same minutes again: the anti-join with staged files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.time() - t0
