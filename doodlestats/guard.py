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

One pass over the input: the Spark job collects ``ts``, ``uid``, ``reason`` and the
coordinates of *every* frame, but the raw bytes (for the quarantine) only of frames
that may be quarantined (:func:`keep_raw`): parse failures, frames of minutes already
final, and *suspects* — frames far from the running median of the last frames their
Spark task read (the JVM function ``doodle_suspect``, see ``java/.../Suspect.java``).
The driver then judges every frame with the neighbourhood medians (:func:`judge`, in
Arrow). An outlier that was not a suspect (possible only if a task's recent frames and
its neighbourhood disagree by more than ``max_skew_s``) has no raw bytes in the table;
the pipeline reads them again from the batch's source: nothing is quarantined without
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column
from pyspark.sql import functions as F

SUSPECT_FN = "doodle_suspect"


def register_suspect(spark) -> bool:
    """Register the JVM function ``doodle_suspect``; False if its jar is not on the classpath."""
    try:
        if not spark._jsparkSession.catalog().functionExists(SUSPECT_FN):
            spark._jvm.doodle.udf.Suspect.register(spark._jsparkSession)
        return True
    except Exception:  # noqa: BLE001 - py4j: class not found
        return False


def keep_raw(spark, max_skew: int, watermark: int | None, prev_ref: int | None) -> Column:
    """True for frames whose raw bytes are kept because they may be quarantined.

    Needs columns ``ts`` and ``reason``. Without the JVM function (no jar) the previous
    batch's reference stands in for the running median; a first batch then keeps all.
    """
    c = F.col("reason").isNotNull()
    if watermark is not None:
        c = c | ((F.col("ts") - F.pmod(F.col("ts"), F.lit(60)) + F.lit(60)) <= F.lit(watermark))
    if register_suspect(spark):
        return c | F.expr(f"{SUSPECT_FN}(ts, CAST({int(max_skew)} AS BIGINT))")
    if prev_ref is None:
        return F.lit(True)
    return c | (F.abs(F.col("ts") - F.lit(prev_ref)) > F.lit(max_skew))


def neighbourhood_keys(tbl: pa.Table, size: int) -> pa.Table:
    """``src``, ``partition``, ``nb`` (= offset // size) of every row."""
    return pa.table({"src": tbl["src"], "partition": tbl["partition"],
                     "nb": pc.divide(tbl["offset"], pa.scalar(size, pa.int64()))})


def neighbourhoods(tbl: pa.Table, good: pa.Array, size: int) -> list[dict]:
    """Per neighbourhood: median ts of parsed frames, their count, all frames, last offset.

    ``tbl`` holds ``src``, ``partition``, ``offset``, ``ts``; ``good`` marks the
    parsed frames. The median is Arrow's t-digest estimate (like Spark's
    ``percentile_approx``), far finer than the hour-scale ``max_skew_s``.
    """
    keys = neighbourhood_keys(tbl, size)
    allrows = keys.append_column("offset", tbl["offset"]).group_by(["src", "partition", "nb"]).aggregate(
        [("offset", "count"), ("offset", "max")])
    g = keys.append_column("ts", tbl["ts"]).filter(good)
    goodrows = g.group_by(["src", "partition", "nb"]).aggregate([("ts", "approximate_median"), ("ts", "count")])
    med = {(s, p, n): (m, c) for s, p, n, m, c in zip(*(goodrows[c].to_pylist() for c in (
        "src", "partition", "nb", "ts_approximate_median", "ts_count")))}
    out = []
    for s, p, n, total, last in zip(*(allrows[c].to_pylist() for c in (
            "src", "partition", "nb", "offset_count", "offset_max"))):
        m, c = med.get((s, p, n), (None, 0))
        out.append({"src": s, "partition": p, "nb": n, "med": None if m is None else int(round(m)),
                    "good": c, "total": total, "last": last})
    return out


@dataclass(frozen=True)
class GuardPlan:
    refs: list[tuple]          # (src, partition, nb, ref) per neighbourhood; ref may be None
    batch_ref: int | None      # median of the batch (or the previous reference)
    next_ref: int | None       # reference handed to the next batch
    frames: int                # frames in the batch


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
    return GuardPlan(refs, batch_ref, next_ref, sum(r["total"] for r in stats))


def judge(tbl: pa.Table, good: pa.Array, guard_plan: "GuardPlan", size: int, max_skew: int) -> np.ndarray:
    """Boolean mask of the rows of ``tbl`` whose ts is an outlier in its neighbourhood."""
    n = tbl.num_rows
    if not n or not guard_plan.refs:
        return np.zeros(n, dtype=bool)
    refs = pa.table({"src": pa.array([r[0] for r in guard_plan.refs], pa.string()),
                     "partition": pa.array([r[1] for r in guard_plan.refs], pa.int32()),
                     "nb": pa.array([r[2] for r in guard_plan.refs], pa.int64()),
                     "ref": pa.array([r[3] for r in guard_plan.refs], pa.int64())}).filter(
        pc.is_valid(pa.array([r[3] for r in guard_plan.refs], pa.int64())))
    rows = neighbourhood_keys(tbl, size).append_column("ts", tbl["ts"]).append_column(
        "i", pa.array(np.arange(n, dtype=np.int64))).filter(good)
    j = rows.join(refs, ["src", "partition", "nb"], join_type="inner", use_threads=False)
    far = pc.greater(pc.abs(pc.subtract(j["ts"], j["ref"])), pa.scalar(max_skew, pa.int64()))
    mask = np.zeros(n, dtype=bool)
    idx = j["i"].filter(far).to_numpy()
    mask[idx] = True
    return mask
