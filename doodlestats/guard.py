"""Timestamp guard: quarantine implausible ``ts`` (bit flips) before they reach counting.

A frame is judged against its *neighbours*: the frames of the same source partition
(Kafka partition, or file) whose offsets fall into the same neighbourhood
``offset // neighbourhood``. Its ``ts`` is an outlier (``ts_outlier``) when it is more
than ``max_skew_s`` away from the median ``ts`` of that neighbourhood. Neighbourhoods
with fewer than ``min_neighbours`` parsed frames fall back to the batch's median, and a
batch too small for that falls back to the reference kept from earlier batches.

Because the reference comes from the data itself, the guard works the same for live
data and for replays of history (the 2016 sample), and an outlier never reaches the
watermark: the watermark is computed from accepted frames only.

To keep a single pass over the input, the raw bytes are retained (for the quarantine)
only for frames that *could* be quarantined: parse failures, frames further than
``max_skew_s`` from the previous reference, and frames of minutes already final. Only
such frames can be judged outliers — a frame close to the previous reference is
plausible by definition.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from doodlestats import reasons


def _src() -> Column:
    return F.coalesce(F.col("topic"), F.col("file"))


def may_quarantine(ref: int | None, max_skew: int, watermark: int | None) -> Column:
    """True for frames whose raw bytes must be kept because they may be quarantined."""
    c = F.col("reason").isNotNull()
    if ref is None:
        return F.lit(True)
    c = c | (F.abs(F.col("ts") - F.lit(ref)) > F.lit(max_skew))
    if watermark is not None:
        c = c | ((F.col("ts") - F.pmod(F.col("ts"), F.lit(60)) + F.lit(60)) <= F.lit(watermark))
    return c


def neighbourhoods(df: DataFrame, size: int) -> list[dict]:
    """Per neighbourhood: median ts of parsed frames, their count, all frames, last offset."""
    good_ts = F.when(F.col("reason").isNull(), F.col("ts"))
    rows = (df.groupBy(_src().alias("src"), F.col("partition"), F.floor(F.col("offset") / size).alias("nb"))
              .agg(F.percentile_approx(good_ts, 0.5, 100).alias("med"),
                   F.count(good_ts).alias("good"), F.count(F.lit(1)).alias("total"),
                   F.count(F.when(F.col("keep") & F.col("reason").isNull(), 1)).alias("suspects"),
                   F.max("offset").alias("last"))
              .collect())
    return [r.asDict() for r in rows]


@dataclass(frozen=True)
class GuardPlan:
    refs: list[tuple]          # (src, partition, nb, ref) per neighbourhood; ref may be None
    batch_ref: int | None      # median of the batch (or the previous reference)
    next_ref: int | None       # reference handed to the next batch
    frames: int                # frames in the batch
    suspects: int = 0          # parsed frames far enough from the old reference to be judged


def _weighted_median(pairs: list[tuple[int, int]]) -> int | None:
    pairs = sorted(p for p in pairs if p[0] is not None and p[1] > 0)
    total = sum(w for _, w in pairs)
    if not total:
        return None
    acc = 0
    for v, w in pairs:
        acc += w
        if 2 * acc >= total:
            return int(v)
    return int(pairs[-1][0])


def plan(stats: list, prev_ref: int | None, min_neighbours: int) -> GuardPlan:
    """Choose each neighbourhood's reference from the collected statistics."""
    good = sum(r["good"] for r in stats)
    batch_ref = _weighted_median([(r["med"], r["good"]) for r in stats]) if good >= min_neighbours else None
    if batch_ref is None:
        batch_ref = prev_ref
    refs = []
    newest: dict[tuple, tuple[int, int | None]] = {}
    for r in stats:
        ref = r["med"] if r["good"] >= min_neighbours else batch_ref
        refs.append((r["src"], r["partition"], r["nb"], ref))
        k = (r["src"], r["partition"])
        if r["good"] >= min_neighbours and (k not in newest or r["last"] > newest[k][0]):
            newest[k] = (r["last"], r["med"])
    newest_meds = sorted(m for _, m in newest.values() if m is not None)
    next_ref = newest_meds[len(newest_meds) // 2] if newest_meds else batch_ref
    return GuardPlan(refs, batch_ref, next_ref, sum(r["total"] for r in stats),
                     sum(r.get("suspects", 0) or 0 for r in stats))


def apply(df: DataFrame, guard_plan: GuardPlan, size: int, max_skew: int) -> DataFrame:
    """Set ``reason = ts_outlier`` on frames too far from their neighbourhood's reference.

    Only frames with ``keep`` (the few that may be quarantined) are joined with the
    references; the rest pass through untouched.
    """
    if not guard_plan.suspects:  # nothing to judge: no join, no second scan
        return df
    spark = df.sparkSession
    refs = spark.createDataFrame(guard_plan.refs or [], "src STRING, partition INT, nb BIGINT, ref BIGINT")
    suspects = df.where(F.col("keep") & F.col("reason").isNull())
    joined = (suspects.withColumn("src", _src()).withColumn("nb", F.floor(F.col("offset") / size))
              .join(F.broadcast(refs), ["src", "partition", "nb"], "left"))
    outlier = F.col("ref").isNotNull() & (F.abs(F.col("ts") - F.col("ref")) > F.lit(max_skew))
    judged = (joined.withColumn("reason", F.when(outlier, F.lit(reasons.TS_OUTLIER)))
              .select(*df.columns))
    return df.where(~(F.col("keep") & F.col("reason").isNull())).unionByName(judged)
