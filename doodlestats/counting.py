"""Counting strategies: exact distinct users, or HyperLogLog sketches — one interface.

A :class:`Counter` splits its work the way the job does (README "Where work runs"):

* :meth:`Counter.partials` — on **executors**, per micro-batch: from the batch's counted
  frames, one small partial result per touched minute comes back to the driver;
* :meth:`Counter.merge`, :meth:`Counter.unique` — on the **driver**: integers or sketches
  per open minute.

``ExactCounter``
    The batch's distinct ``(minute, uid)`` pairs, minus the pairs each touched minute
    already has in ``minute_uids`` (an anti-join with that table's files for the touched
    minutes, as of the Delta version of the previous batch). Executors write the new pairs
    to ``minute_uids``; only *the number of new users per minute* comes back. The driver
    adds them up. Why not Spark's state store: it would live in a stateful streaming
    operator whose eviction follows Spark's single global watermark, while this job keeps
    a per-partition watermark, late corrections of final minutes and a replay rule tied to
    Delta versions; ``minute_uids`` must be written anyway (it is what the rollups read),
    so the anti-join reuses it as the state.
``HllCounter``
    One HyperLogLog sketch per minute per batch (Spark's ``hll_sketch_agg``: Apache
    DataSketches ``HLL_8``), merged on the driver with the same library.

Example::

    counter = make_counter(cfg, tables)
    p = counter.partials(spark, counted_frames, batch_id, state)   # executors
    for m, partial in p.per_minute.items():
        counter.merge(m, partial)                                    # driver
    counter.unique(m)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from doodlestats import sketch
from doodlestats.state import JobState
from doodlestats.tables import MINUTE_STATS, MINUTE_UIDS, FileMeta, Tables

__all__ = ["Counter", "ExactCounter", "ExactWithSketches", "HllCounter", "Partials", "make_counter", "hll_lg_k", "hll_rsd"]


def hll_lg_k(rsd: float) -> int:
    """Smallest HyperLogLog lgConfigK whose standard error 1.04/sqrt(2^k) is <= rsd."""
    return max(4, min(21, math.ceil(math.log2((1.04 / rsd) ** 2))))


def hll_rsd(lg_k: int) -> float:
    return round(1.04 / math.sqrt(2 ** lg_k), 5)


@dataclass
class Partials:
    """What the executors return for one batch: a partial per touched minute, and the files
    they staged that the driver must commit (table name → file metadata)."""

    per_minute: dict[int, object] = field(default_factory=dict)
    staged: dict[str, list[FileMeta]] = field(default_factory=dict)


class Counter(ABC):
    mode: str
    rsd: float | None = None

    def __init__(self, tables: Tables):
        self.tables = tables

    @abstractmethod
    def partials(self, spark, counted, batch_id: int, state: JobState, touched: list[int]) -> Partials:
        """Executor work for one batch. ``counted`` has ``minute`` and ``uid``."""

    @abstractmethod
    def merge(self, minute: int, partial) -> None:
        """Fold a batch's partial into the minute's driver state."""

    @abstractmethod
    def restore(self, minute: int, row: dict | None) -> None:
        """Driver state of ``minute`` from its stored ``minute_stats`` row (None: nothing stored)."""

    @abstractmethod
    def unique(self, minute: int) -> int:
        """Current distinct users of ``minute``."""

    def sketch(self, minute: int) -> bytes | None:
        return None

    @abstractmethod
    def evict(self, minute: int) -> None:
        """Forget ``minute`` (final: its value is in Delta)."""

    @abstractmethod
    def open_minutes(self) -> int:
        ...


class ExactCounter(Counter):
    mode = "exact"

    def __init__(self, tables: Tables):
        super().__init__(tables)
        self.users: dict[int, int] = {}

    def partials(self, spark, counted, batch_id, state, touched):
        from pyspark.sql import functions as F
        from doodlestats.staging import write_staged
        out = Partials()
        if not touched:
            return out
        pairs = counted.select("minute", "uid").distinct()
        version = (state.versions or {}).get(MINUTE_UIDS)
        files = self.tables.files_overlapping(MINUTE_UIDS, min(touched), max(touched), version) \
            if version is not None else []
        if files:
            known = (spark.read.schema("minute BIGINT, uid STRING").parquet(*files)
                     .where(F.col("minute").isin(touched)).select("minute", "uid"))
            pairs = pairs.join(known, ["minute", "uid"], "left_anti")
        if self.tables.committed(MINUTE_UIDS, batch_id):  # a replay: count, do not write again
            out.per_minute = {r["minute"]: r["count"] for r in pairs.groupBy("minute").count().collect()}
            return out
        rows = pairs.select("minute", "uid", F.lit(batch_id).cast("bigint").alias("batch_id"),
                            F.to_date(F.timestamp_seconds("minute")).alias("date"))
        metas, per_minute = write_staged(spark, rows, self.tables.stage_uri(MINUTE_UIDS, batch_id),
                                         "minute BIGINT, uid STRING, batch_id BIGINT", by_minute=True)
        out.per_minute, out.staged[MINUTE_UIDS] = per_minute, metas
        return out

    def merge(self, minute, partial):
        self.users[minute] = self.users.get(minute, 0) + int(partial)

    def restore(self, minute, row):
        self.users[minute] = int(row["unique_users"]) if row else 0

    def unique(self, minute):
        return self.users.get(minute, 0)

    def evict(self, minute):
        self.users.pop(minute, None)

    def open_minutes(self):
        return len(self.users)


class HllCounter(Counter):
    mode = "approx"

    def __init__(self, tables: Tables, rsd: float):
        super().__init__(tables)
        self.lg_k = hll_lg_k(rsd)
        self.rsd = hll_rsd(self.lg_k)
        self.sketches: dict[int, bytes] = {}
        self.estimates: dict[int, int] = {}

    def partials(self, spark, counted, batch_id, state, touched):
        from pyspark.sql import functions as F
        if not touched:
            return Partials()
        rows = counted.groupBy("minute").agg(F.expr(f"hll_sketch_agg(uid, {self.lg_k})").alias("sk")).collect()
        return Partials(per_minute={r["minute"]: bytes(r["sk"]) for r in rows})

    def merge(self, minute, partial):
        old = self.sketches.get(minute)
        merged, n = sketch.union([partial] if old is None else [old, partial], self.lg_k)
        self.sketches[minute], self.estimates[minute] = merged, n

    def restore(self, minute, row):
        h = row.get("hll") if row else None
        if h is not None:
            self.sketches[minute] = bytes(h)
            self.estimates[minute] = int(row["unique_users"])
        else:
            self.sketches.pop(minute, None)
            self.estimates[minute] = 0

    def unique(self, minute):
        return self.estimates.get(minute, 0)

    def sketch(self, minute):
        return self.sketches.get(minute)

    def evict(self, minute):
        self.sketches.pop(minute, None)
        self.estimates.pop(minute, None)

    def open_minutes(self):
        return len(self.estimates)


class ExactWithSketches(Counter):
    """Exact counts, and an HLL sketch per minute as well (``minute_stats.hll``), so the
    approximate rollups work on tables written in exact mode (the backfill uses it)."""

    mode = "exact"

    def __init__(self, tables: Tables, rsd: float):
        super().__init__(tables)
        self.exact, self.hll = ExactCounter(tables), HllCounter(tables, rsd)

    def partials(self, spark, counted, batch_id, state, touched):
        e = self.exact.partials(spark, counted, batch_id, state, touched)
        h = self.hll.partials(spark, counted, batch_id, state, touched)
        e.per_minute = {m: (e.per_minute.get(m, 0), h.per_minute.get(m)) for m in set(e.per_minute) | set(h.per_minute)}
        return e

    def merge(self, minute, partial):
        n, sk = partial
        self.exact.merge(minute, n)
        if sk is not None:
            self.hll.merge(minute, sk)

    def restore(self, minute, row):
        self.exact.restore(minute, row)
        self.hll.restore(minute, row)

    def unique(self, minute):
        return self.exact.unique(minute)

    def sketch(self, minute):
        return self.hll.sketch(minute)

    def evict(self, minute):
        self.exact.evict(minute)
        self.hll.evict(minute)

    def open_minutes(self):
        return self.exact.open_minutes()


def make_counter(mode: str, rsd: float, tables: Tables, sketches: bool = False) -> Counter:
    """The counter of ``mode``; ``sketches``: exact counts with per-minute sketches as well."""
    if mode == "exact":
        return ExactWithSketches(tables, rsd) if sketches else ExactCounter(tables)
    if mode == "approx":
        return HllCounter(tables, rsd)
    raise ValueError(f"mode must be exact or approx, got {mode!r}")


_ = MINUTE_STATS  # the table the driver state is restored from (see pipeline._restore)
