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

Where it runs: the per-frame work is on executors. :func:`neighbourhood_stats` is one
small aggregation (one row per neighbourhood: median ts, counts, last offset) that comes
back to the driver; :func:`plan` picks each neighbourhood's reference there; the
references go back to the executors as a broadcast table and :func:`with_verdicts` marks
each frame there. The raw bytes (for the quarantine) are kept in the batch's cache only
for frames that may be quarantined (:func:`keep_raw`): parse failures, frames of
minutes already final, and *suspects* — frames far from the running median of the last
frames their Spark task read (the JVM function ``doodle_suspect``, see
``java/.../Suspect.java``). An outlier that was not a suspect has no raw bytes in the
cache; the pipeline reads them again from the batch's source (executors, a join on the
coordinates): nothing is quarantined without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pyspark.sql import Column
from pyspark.sql import functions as F

from doodlestats.batch.window import final_sql, minute_col, minute_sql
from doodlestats.runtime.session import register_jvm_function

__all__ = ["SUSPECT_FN", "MAP_REFS", "GuardPlan", "register_suspect", "keep_raw", "nb_col", "neighbourhood_stats",
           "plan", "with_verdicts"]

SUSPECT_FN = "doodle_suspect"


def register_suspect(spark) -> bool:
    """Register the JVM function ``doodle_suspect``; False if its jar is not on the classpath."""
    return register_jvm_function(spark, SUSPECT_FN, lambda jvm, js: jvm.doodle.udf.Suspect.register(js))


def keep_raw(suspects: bool, max_skew: int, watermark: int | None, prev_ref: int | None) -> str:
    """Spark SQL: true for frames whose raw bytes are kept because they may be quarantined.

    Needs columns ``ts`` and ``reason``. ``suspects``: the JVM function is registered
    (:func:`register_suspect`); without it the previous batch's reference stands in for
    the running median, and a first batch keeps all.
    """
    c = f"reason IS NOT NULL OR {final_sql(minute_sql('ts'), watermark)}"
    if suspects:
        return f"{c} OR {SUSPECT_FN}(ts, CAST({int(max_skew)} AS BIGINT))"
    if prev_ref is None:
        return "true"
    return f"{c} OR abs(ts - {int(prev_ref)}) > {int(max_skew)}"


def nb_col(size: int) -> Column:
    """The neighbourhood of a frame: ``offset // size`` (within its source partition)."""
    return F.expr(f"offset div {int(size)}")


def neighbourhood_stats(parsed, size: int) -> list[dict]:
    """Per neighbourhood (``src``, ``partition``, ``nb``): median ts of parsed frames, their
    count, all frames, first and last offset, the frames whose raw bytes are kept and their
    bytes, and the minutes of the parsed frames — one Spark aggregation, one row per
    neighbourhood. It is the batch's first job, and what else the driver must know before
    the counting pass (offsets for the retention check, which ``minute_uids`` files the
    anti-join reads, whether the quarantine rows are few enough to come along) rides on it.

    ``parsed`` has ``src``, ``partition``, ``offset``, ``ts``, ``reason`` (null = parsed) and
    ``raw`` (null unless kept). The median is Spark's ``percentile_approx`` with accuracy
    1,000: a rank error of at most 1 frame in a 1,000-frame neighbourhood, far finer than
    the hour-scale ``max_skew_s`` (accuracy 10,000 cost 3x the time, measured on 3M rows).
    """
    good = F.col("reason").isNull()
    minute = minute_col(F.col("ts"))
    rows = (parsed.groupBy("src", "partition", nb_col(size).alias("nb"))
            .agg(F.percentile_approx(F.when(good, F.col("ts")), 0.5, 1000).alias("med"),
                 F.count(F.when(good, F.lit(1))).alias("good"), F.count(F.lit(1)).alias("total"),
                 F.min("offset").alias("first"), F.max("offset").alias("last"),
                 F.count("raw").alias("kept"), F.sum(F.length("raw")).alias("kept_bytes"),
                 F.collect_set(F.when(good, minute)).alias("minutes"))
            .collect())
    return [r.asDict() for r in rows]


@dataclass(frozen=True)
class GuardPlan:
    """The driver's reading of a batch's neighbourhood statistics (pure, see :func:`plan`)."""

    refs: list[tuple]          # (src, partition, nb, ref) per neighbourhood; ref may be None
    batch_ref: int | None      # median of the batch (or the previous reference)
    next_ref: int | None       # reference handed to the next batch
    frames: int                # frames in the batch
    first: dict = field(default_factory=dict)   # "src#partition" → first offset read
    last: dict = field(default_factory=dict)    # "src#partition" → last offset read
    minutes: list = field(default_factory=list)  # minutes an accepted frame may have
    kept: int = 0              # frames whose raw bytes are kept (possible quarantine rows) ...
    kept_bytes: int = 0        # ... and their bytes


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


def _possible(minute: int, ref: int | None, max_skew: int) -> bool:
    """Can a frame of ``minute`` be within ``max_skew`` of ``ref``?"""
    return ref is None or (minute <= ref + max_skew and minute + 59 >= ref - max_skew)


def plan(stats: list, prev_ref: int | None, min_neighbours: int, max_skew: int = 0) -> GuardPlan:
    """Choose each neighbourhood's reference from the collected statistics.

    >>> p = plan([{"src": "t", "partition": 0, "nb": 0, "med": 600, "good": 9, "total": 10, "first": 0,
    ...            "last": 9, "kept": 1, "kept_bytes": 30, "minutes": [600, 0]}], None, 5, max_skew=120)
    >>> p.refs, p.next_ref, p.first, p.last, p.minutes
    ([('t', 0, 0, 600)], 600, {'t#0': 0}, {'t#0': 9}, [600])
    """
    good = sum(r["good"] for r in stats)
    batch_ref = _weighted_median([(r["med"], r["good"]) for r in stats]) if good >= min_neighbours else None
    if batch_ref is None:
        batch_ref = prev_ref
    refs = []
    newest: dict[tuple, tuple[int, int | None]] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    minutes: set[int] = set()
    for r in stats:
        ref = r["med"] if r["good"] >= min_neighbours else batch_ref
        refs.append((r["src"], r["partition"], r["nb"], ref))
        minutes.update(m for m in r.get("minutes") or [] if _possible(m, ref, max_skew))
        k = (r["src"], r["partition"])
        key = f"{r['src']}#{r['partition']}"
        lo = r.get("first", r["last"])
        first[key] = min(first.get(key, lo), lo)
        last[key] = max(last.get(key, r["last"]), r["last"])
        if r["good"] >= min_neighbours and (k not in newest or r["last"] > newest[k][0]):
            newest[k] = (r["last"], r["med"])
    newest_meds = sorted(m for _, m in newest.values() if m is not None)
    next_ref = newest_meds[len(newest_meds) // 2] if newest_meds else batch_ref
    return GuardPlan(refs, batch_ref, next_ref, sum(r["total"] for r in stats), first, last, sorted(minutes),
                     sum(r.get("kept") or 0 for r in stats), sum(r.get("kept_bytes") or 0 for r in stats))


#: Up to this many neighbourhoods the references ride in the plan as a map literal (Spark
#: looks a key up by a linear scan); more — a big batch — and they are a broadcast table
#: (one small extra job, nothing next to the batch's size).
MAP_REFS = 64


def with_verdicts(parsed, guard_plan: "GuardPlan", size: int, max_skew: int):
    """``parsed`` plus a boolean column ``outlier``: a parsed frame whose ts is more than
    ``max_skew`` from its neighbourhood's reference. Runs on executors: the references (one
    per neighbourhood) travel inside the plan as one map literal (a JSON string Spark folds
    once) — no join, no broadcast job — or, for a batch of many neighbourhoods, as a
    broadcast table."""
    refs = [r for r in guard_plan.refs if r[3] is not None]
    if not refs:
        return parsed.withColumn("outlier", F.lit(False))
    if len(refs) > MAP_REFS:
        rdf = parsed.sparkSession.createDataFrame(refs, "src string, partition int, nb bigint, ref bigint")
        j = parsed.withColumn("nb", nb_col(size)).join(F.broadcast(rdf), ["src", "partition", "nb"], "left")
        ref = F.col("ref")
    else:
        table = F.from_json(F.lit(json.dumps({f"{s}#{p}#{nb}": r for s, p, nb, r in refs})), "map<string,bigint>")
        j, ref = parsed, F.element_at(table, F.concat_ws("#", F.col("src"), F.col("partition").cast("string"),
                                                          nb_col(size).cast("string")))
    far = F.col("reason").isNull() & ref.isNotNull() & (F.abs(F.col("ts") - ref) > F.lit(max_skew))
    return j.withColumn("outlier", F.coalesce(far, F.lit(False))).drop("nb", "ref")
