"""Counting strategies: exact distinct users, or HyperLogLog sketches — one interface.

A :class:`Counter` splits its work the way the job does (docs/semantics.md "Where work runs"):

* :meth:`Counter.partials` — on **executors**, in the batch's one counting pass: from the
  batch's counted frames, one small partial per touched minute comes back to the driver;
* :meth:`Counter.add`, :meth:`Counter.unique`, :meth:`Counter.from_row` — **pure** driver
  functions on a minute's *value* (an int, or a sketch): the driver step
  (:mod:`doodlestats.batch.driver`) keeps one value per open minute and never mutates it.

``ExactCounter``
    The batch's distinct ``(minute, uid)`` pairs, minus the pairs each touched minute
    already has in ``minute_uids`` (a shuffle anti-join with the files of those minutes,
    which the caller names). Executors write the new pairs to ``minute_uids``; only *the
    number of new users per minute* comes back, as a metric of that same write (no
    read-back). Why not Spark's state store: it would live in a stateful streaming
    operator whose eviction follows Spark's single global watermark, while this job keeps
    a per-partition watermark, late corrections of final minutes and a replay rule tied to
    Delta versions; ``minute_uids`` must be written anyway (it is what the rollups read),
    so the anti-join reuses it as the state.
``HllCounter``
    One HyperLogLog sketch per minute per batch (Spark's ``hll_sketch_agg``: Apache
    DataSketches ``HLL_8``), merged on the driver with the same library.

Example::

    counter = make_counter("exact", 0.01, tables)
    p = counter.partials(counted_frames, batch_id, known_files, replay=False)   # executors
    value = counter.add(counter.zero(), p.per_minute[m])                        # driver, pure
    counter.unique(value)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import functions as F

from doodlestats.batch import sketch
from doodlestats.batch.staging import count_by_minute, write_staged
from doodlestats.io.tables import MINUTE_UIDS, FileMeta, Tables

__all__ = ["Counter", "ExactCounter", "ExactWithSketches", "HllCounter", "Partials", "make_counter", "hll_lg_k",
           "hll_rsd"]

PAIRS_SCHEMA = "minute BIGINT, uid STRING, batch_id BIGINT"


def hll_lg_k(rsd: float) -> int:
    """Smallest HyperLogLog lgConfigK whose standard error 1.04/sqrt(2^k) is <= rsd."""
    return max(4, min(21, math.ceil(math.log2((1.04 / rsd) ** 2))))


def hll_rsd(lg_k: int) -> float:
    """The relative standard error 1.04/sqrt(2^lg_k) of an HLL sketch of lgConfigK ``lg_k``
    (rounded to 5 digits): the ``rsd`` published with approx counts."""
    return round(1.04 / math.sqrt(2 ** lg_k), 5)


@dataclass
class Partials:
    """What the executors return for one batch: a partial per touched minute, and the files
    they staged that the driver must commit (table name → file metadata)."""

    per_minute: dict[int, Any] = field(default_factory=dict)
    staged: dict[str, list[FileMeta]] = field(default_factory=dict)


class Counter(ABC):
    """A counting mode: executor partials plus pure functions on a minute's value."""

    mode: str
    rsd: float | None = None

    def __init__(self, tables: Tables):
        self.tables = tables

    @abstractmethod
    def partials(self, counted, batch_id: int, known_files: list[str], replay: bool) -> Partials:
        """Executor work of one batch, one Spark job. ``counted`` has ``minute`` and ``uid``;
        ``known_files``: the ``minute_uids`` files of the minutes it may touch; ``replay``:
        the batch's pairs are committed already (count them, write nothing)."""

    @abstractmethod
    def zero(self) -> Any:
        """The value of a minute nothing was counted in."""

    @abstractmethod
    def add(self, value: Any, partial: Any) -> Any:
        """``value`` with a batch's partial folded in (a new value)."""

    @abstractmethod
    def from_row(self, row: dict | None) -> Any:
        """The value of a minute from its stored ``minute_stats`` row (None: nothing stored)."""

    @abstractmethod
    def unique(self, value: Any) -> int:
        """Distinct users of a minute with ``value``."""

    def sketch(self, value: Any) -> bytes | None:
        """The serialized HLL sketch of a minute with ``value`` for ``minute_stats.hll``
        (None: this counter keeps none)."""
        return None


class ExactCounter(Counter):
    """Exact distinct users: a minute's value is its user count; the new (minute, uid)
    pairs of a batch are written to ``minute_uids`` (see the module docstring)."""

    mode = "exact"

    def partials(self, counted, batch_id, known_files, replay):
        pairs = counted.select("minute", "uid").distinct()
        if known_files:
            known = (counted.sparkSession.read.schema(PAIRS_SCHEMA).parquet(*known_files)
                     .select("minute", "uid").hint("shuffle_hash"))  # a shuffle, not a broadcast job
            pairs = pairs.join(known, ["minute", "uid"], "left_anti")
        if replay:  # a replay: count, do not write again
            return Partials(per_minute=count_by_minute(pairs))
        rows = pairs.select("minute", "uid", F.lit(batch_id).cast("bigint").alias("batch_id"),
                            F.to_date(F.timestamp_seconds("minute")).alias("date"))
        metas, per_minute = write_staged(rows, self.tables.stage_uri(MINUTE_UIDS, batch_id))
        return Partials(per_minute=per_minute, staged={MINUTE_UIDS: metas})

    def zero(self):
        return 0

    def add(self, value, partial):
        return value + int(partial)

    def from_row(self, row):
        return int(row["unique_users"]) if row else 0

    def unique(self, value):
        return value


class HllCounter(Counter):
    """Approximate distinct users: a minute's value is ``(sketch bytes, estimate)``, an HLL
    sketch of lgConfigK :func:`hll_lg_k` of ``rsd``, merged on the driver."""

    mode = "approx"

    def __init__(self, tables: Tables, rsd: float):
        super().__init__(tables)
        self.lg_k = hll_lg_k(rsd)
        self.rsd = hll_rsd(self.lg_k)

    def partials(self, counted, batch_id, known_files, replay):
        rows = counted.groupBy("minute").agg(F.expr(f"hll_sketch_agg(uid, {self.lg_k})").alias("sk")).collect()
        return Partials(per_minute={r["minute"]: bytes(r["sk"]) for r in rows})

    def zero(self):
        return (None, 0)

    def add(self, value, partial):
        old = value[0]
        return sketch.union([partial] if old is None else [old, partial], self.lg_k)

    def from_row(self, row):
        h = row.get("hll") if row else None
        return (bytes(h), int(row["unique_users"])) if h is not None else (None, 0)

    def unique(self, value):
        return value[1]

    def sketch(self, value):
        return value[0]


class ExactWithSketches(Counter):
    """Exact counts, and an HLL sketch per minute as well (``minute_stats.hll``), so the
    approximate rollups work on tables written in exact mode (the backfill uses it)."""

    mode = "exact"

    def __init__(self, tables: Tables, rsd: float):
        super().__init__(tables)
        self.exact, self.hll = ExactCounter(tables), HllCounter(tables, rsd)

    def partials(self, counted, batch_id, known_files, replay):
        e = self.exact.partials(counted, batch_id, known_files, replay)
        h = self.hll.partials(counted, batch_id, known_files, replay)   # a second job (backfill chunks only)
        e.per_minute = {m: (e.per_minute.get(m, 0), h.per_minute.get(m)) for m in set(e.per_minute) | set(h.per_minute)}
        return e

    def zero(self):
        return (0, self.hll.zero())

    def add(self, value, partial):
        n, sk = partial
        return (value[0] + int(n), self.hll.add(value[1], sk) if sk is not None else value[1])

    def from_row(self, row):
        return (self.exact.from_row(row), self.hll.from_row(row))

    def unique(self, value):
        return value[0]

    def sketch(self, value):
        return self.hll.sketch(value[1])


def make_counter(mode: str, rsd: float, tables: Tables, sketches: bool = False) -> Counter:
    """The counter of ``mode``; ``sketches``: exact counts with per-minute sketches as well."""
    if mode == "exact":
        return ExactWithSketches(tables, rsd) if sketches else ExactCounter(tables)
    if mode == "approx":
        return HllCounter(tables, rsd)
    raise ValueError(f"mode must be exact or approx, got {mode!r}")
