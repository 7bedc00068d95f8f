"""Hour/day/week/month/year unique users, rolled up from the minute tables — in Spark.

``jobs/rollups.py`` is the command; this module is its logic (the periods themselves:
:mod:`doodlestats.history.periods`). For each grain it writes
one Delta table below the Delta root (``rollup_hour``, ``rollup_day``, ``rollup_week``,
``rollup_month``, ``rollup_year``), one row per period and mode, upserted by
``(period_start, mode)``. Periods are UTC; weeks are ISO weeks (Monday 00:00 UTC).

A period's unique users are the **union** of the users of its minutes, never a sum of
minute counts (a user active in 50 minutes of a day is one user of that day):

``exact``
    Spark reads ``minute_uids`` (the distinct (minute, uid) pairs) for the minutes of the
    periods to recompute, groups by period and counts distinct uids — on the executors;
    the driver receives one row of integers per period.
``approx``
    Spark unions the minutes' HyperLogLog sketches (``minute_stats.hll``, Apache
    DataSketches ``HLL_8``) per period with ``hll_union_agg`` (different lgConfigK
    allowed) and estimates with ``hll_sketch_estimate``. A minute without a sketch
    (tables written in exact mode) gets one built from its ``minute_uids`` pairs first
    (``hll_sketch_agg(uid, lgK)``, lgK from ``[job] rsd``). The error of a period is
    ``rsd = 1.04 / sqrt(2^lgK)`` of the smallest lgK of its sketches
    (:func:`doodlestats.batch.counting.hll_rsd`).

``frames`` is the sum of the period's ``minute_stats.frames``.

**Incremental.** Every commit to a rollup table records, as a Delta application
transaction (app id ``rollup-<mode>-<minute_stats table id>``), the ``minute_stats``
version the run read. The next run compares ``minute_stats`` as of that version with the
current one (delta-rs time travel; only the date partitions whose files differ are read)
and recomputes only the periods holding a minute whose ``frames``, ``unique_users`` or
sketch changed or that appeared or disappeared. ``full=True`` (``--full``), a first run,
or a recorded version that cannot be read any more recompute everything. A run limited
with ``--from``/``--to`` does not advance the recorded version (the periods outside its
range may still be due).

The one definition of the output shape is :data:`FIELDS` (as :mod:`doodlestats.batch.results`
does for minutes): the JSON value of ``--print`` and of ``--output-topic`` messages
(:meth:`RollupResult.to_json`, key = ``period_start``), the JSON schema
``schemas/rollup.schema.json`` (:func:`json_schema`; regenerate with
``python -m doodlestats.history.rollups``) and the Arrow schema of the rollup tables
(:data:`ROLLUP_SCHEMA`).

Example::

    r = Rollups(spark, "data/delta", rsd=0.01)
    rep = r.run("day", "exact")                       # incremental
    rep = r.run("week", "approx", lo=periods.parse_time("2016-07-01"), full=True)
    [x.to_json() for x in rep.results]
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction
from pyspark.sql import functions as F

from doodlestats.batch.counting import hll_lg_k, hll_rsd
from doodlestats.batch.results import MODES, Field, Published, iso, object_schema
from doodlestats.history.periods import (
    DAY_S,
    FIRST_MONDAY,
    GRAINS,
    HOUR_S,
    WEEK_S,
    period_end,
    period_start,
    ranges,
    scope,
)
from doodlestats.io.tables import MINUTE_STATS, MINUTE_UIDS, Tables
from doodlestats.io.uris import join, to_delta_uri
from doodlestats.runtime.logs import logger

__all__ = ["FIELDS", "ROLLUP_SCHEMA", "RollupResult", "GrainReport", "RollupError", "Rollups",
           "json_schema", "period_col", "table_name"]

_log = logger(__name__)

_TS = pa.timestamp("us", tz="UTC")
_LG_K_BYTE = 3               # offset of lgConfigK in a serialized DataSketches HLL sketch
_MAX_RANGES = 256            # more period ranges than this: one range + a period filter
_PERIOD_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:00:00Z$"



def table_name(grain: str) -> str:
    """``rollup_<grain>``, the Delta table of a grain below the Delta root."""
    return f"rollup_{grain}"


# ---------------------------------------------------------------------- output shape
FIELDS: tuple[Field, ...] = (
    Field("period_start", {"type": "string", "pattern": _PERIOD_PATTERN}, _TS,
          description="Start of the UTC period (inclusive), ISO-8601."),
    Field("period_end", {"type": "string", "pattern": _PERIOD_PATTERN}, _TS,
          description="End of the period (exclusive), ISO-8601."),
    Field("grain", {"enum": list(GRAINS)}, pa.string(),
          description="hour, day, week (ISO week: Monday 00:00 UTC to the next Monday), month or year."),
    Field("unique_users", {"type": "integer", "minimum": 0}, pa.int64(),
          description="Distinct uids over the whole period: the union of its minutes' users, never a sum of "
                      "minute counts (a HyperLogLog estimate in approx mode)."),
    Field("frames", {"type": "integer", "minimum": 0}, pa.int64(),
          description="Counted frames of the period (sum over its minutes)."),
    Field("mode", {"enum": list(MODES)}, pa.string()),
    Field("rsd", {"type": "number", "exclusiveMinimum": 0}, pa.float64(), required=False,
          description="Relative standard deviation of the estimate, 1.04/sqrt(2^lgK) of the smallest lgK of the "
                      "unioned sketches (approx only)."),
    # the names the replaced consumer published: its readers keep working when they switch
    Field("ts", {"type": "integer"}, pa.int64(),
          description="Legacy name: epoch seconds of period_start."),
    Field("ts_str", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:00:00$"},
          pa.string(), stored=False,
          description="Legacy name: period_start as 'YYYY-MM-DD HH:MM:SS' (UTC)."),
    Field("count", {"type": "integer", "minimum": 0}, pa.int64(), stored=False,
          description="Legacy name: the same value as unique_users."),
)

# storage-only columns of the rollup tables, after the published fields
ROLLUP_SCHEMA = pa.schema([(f.name, f.arrow) for f in FIELDS if f.stored] + [
    ("minutes", pa.int64()),          # minutes of the period present in minute_stats
    ("source_version", pa.int64()),   # the minute_stats version the value was computed from
    ("computed_at", _TS)])


def json_schema() -> dict:
    """The JSON schema of a published rollup value, generated from :data:`FIELDS`."""
    return object_schema(
        "doodle/rollup.schema.json", "rollup result",
        "Unique users of one UTC period (hour, day, ISO week, month, year): a line of "
        "jobs/rollups.py --print and the value of an --output-topic message (key = period_start). "
        "Values are ABSOLUTE: keep the last value per key. Generated from doodlestats/history/rollups.py "
        "(FIELDS).", FIELDS)


@dataclass(frozen=True)
class RollupResult(Published):
    """The value of one period as published (:data:`FIELDS`) and stored in ``rollup_<grain>``."""

    grain: str
    start: int             # epoch seconds of period_start
    unique_users: int
    frames: int
    mode: str
    rsd: float | None
    minutes: int = 0
    _fields = FIELDS

    @property
    def end(self) -> int:
        return period_end(self.start, self.grain)

    @property
    def key(self) -> str:
        return iso(self.start)

    def _values(self) -> dict:
        """Every field of :data:`FIELDS` as a Python value (None where it does not apply)."""
        utc = dt.timezone.utc
        start = dt.datetime.fromtimestamp(self.start, utc)
        return {"period_start": start, "period_end": dt.datetime.fromtimestamp(self.end, utc),
                "grain": self.grain, "unique_users": self.unique_users, "frames": self.frames, "mode": self.mode,
                "rsd": self.rsd if self.mode == "approx" else None, "ts": self.start,
                "ts_str": start.strftime("%Y-%m-%d %H:%M:%S"), "count": self.unique_users}

    def to_row(self, source_version: int, computed_at: float) -> dict:
        """A row of a rollup table (:data:`ROLLUP_SCHEMA`)."""
        v = self._stored()
        return {**v, "minutes": self.minutes, "source_version": source_version,
                "computed_at": dt.datetime.fromtimestamp(computed_at, dt.timezone.utc)}


# ---------------------------------------------------------------------- Spark expressions
def period_col(c, grain: str):
    """Spark column: epoch seconds of the period start of the epoch-seconds column ``c``.
    Arithmetic on epoch seconds and ``date_from_unix_date``: independent of the session time zone."""
    if grain == "hour":
        return c - F.pmod(c, F.lit(HOUR_S))
    if grain == "day":
        return c - F.pmod(c, F.lit(DAY_S))
    if grain == "week":
        return c - F.pmod(c - F.lit(FIRST_MONDAY), F.lit(WEEK_S))
    if grain in ("month", "year"):
        day = F.date_from_unix_date(((c - F.pmod(c, F.lit(DAY_S))) / F.lit(DAY_S)).cast("int"))
        return F.unix_date(F.trunc(day, grain)).cast("bigint") * F.lit(DAY_S)
    raise ValueError(f"grain must be one of {', '.join(GRAINS)}, got {grain!r}")


def _date(epoch: int) -> dt.date:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).date()


def _where(col: str, grain: str, spans: list[tuple[int | None, int | None]] | None,
           starts: list[int] | None = None):
    """Filter of minute rows (``col``: epoch minute, ``date``: its partition) to ``spans``.
    Date-partition terms prune files; minute ranges use the files' min/max statistics."""
    if spans is None:
        return F.lit(True)
    if len(spans) > _MAX_RANGES and starts is not None:  # one range, then keep the periods wanted
        lo, hi = min(a for a, _ in spans if a is not None), max(b for _, b in spans if b is not None)
        return _where(col, grain, [(lo, hi)]) & period_col(F.col(col), grain).isin(starts)
    minute_terms, date_terms = [], []
    for a, b in spans:
        m, d = F.lit(True), F.lit(True)
        if a is not None:
            m, d = m & (F.col(col) >= F.lit(a)), d & (F.col("date") >= F.lit(_date(a)))
        if b is not None:
            m, d = m & (F.col(col) < F.lit(b)), d & (F.col("date") <= F.lit(_date(b - 1)))
        minute_terms.append(m)
        date_terms.append(d)

    def any_of(terms):
        out = terms[0]
        for t in terms[1:]:
            out = out | t
        return out
    return any_of(date_terms) & any_of(minute_terms)


# ---------------------------------------------------------------------- the job
class RollupError(RuntimeError):
    """The rollup cannot be computed as asked; the message says why and what to do."""


@dataclass
class GrainReport:
    """What :meth:`Rollups.run` did for one grain: the versions compared, the periods
    recomputed, skipped and deleted, their results."""

    grain: str
    mode: str
    source_version: int                 # minute_stats version read
    since_version: int | None = None    # version recorded by the previous run (None: none)
    how: str = "incremental"            # full | first run | incremental | unchanged | ...
    changed_minutes: int = 0
    recomputed: list[int] = field(default_factory=list)   # period starts recomputed
    skipped: int = 0                    # stored periods in scope left as they were
    deleted: int = 0                    # stored periods that no longer have minutes
    results: list[RollupResult] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        since = f" (was v{self.since_version}, {self.changed_minutes:,} minute(s) changed)" \
            if self.how == "incremental" else ""
        deleted = f", {self.deleted} deleted" if self.deleted else ""
        return (f"rollup {self.grain} ({self.mode}): {len(self.recomputed):,} period(s) recomputed, "
                f"{self.skipped:,} skipped{deleted} | {self.how} | minute_stats v{self.source_version}{since} | "
                f"{self.seconds:.1f}s")


class Rollups:
    """Computes and stores the rollups of the Delta tables below ``delta_root``."""

    def __init__(self, spark, delta_root, storage_options: dict | None = None, rsd: float = 0.01,
                 progress: bool = True):
        self.spark = spark
        self.tables = Tables(delta_root, app_id="rollups", storage_options=storage_options)
        self.storage_options = self.tables.storage_options
        self.lg_k = hll_lg_k(rsd)       # for sketches built from minute_uids
        self.progress = progress
        self._diffs: dict[tuple[int, int, bool], list[int] | None] = {}

    # ------------------------------------------------------------------ tables
    def _rs(self, name: str) -> str:
        return to_delta_uri(join(self.tables.root, name))

    def has_table(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self._rs(name), storage_options=self.storage_options)

    def rollup_table(self, grain: str):
        """delta-rs handle of ``rollup_<grain>`` (created if missing)."""
        uri = self._rs(table_name(grain))
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            DeltaTable.create(uri, ROLLUP_SCHEMA, mode="ignore", name=table_name(grain),
                              storage_options=self.storage_options)
        return DeltaTable(uri, storage_options=self.storage_options)

    def read(self, grain: str, mode: str | None = None) -> list[dict]:
        """Stored rows of ``rollup_<grain>`` (optionally of one mode), sorted by period."""
        t = self.rollup_table(grain).to_pyarrow_table()
        rows = sorted(t.to_pylist(), key=lambda r: (r["ts"], r["mode"]))
        return [r for r in rows if mode is None or r["mode"] == mode]

    def _spark_read(self, name: str, version: int | None = None):
        r = self.spark.read.format("delta")
        if version is not None:
            r = r.option("versionAsOf", version)
        return r.load(self.tables.path(name))

    # ------------------------------------------------------------------ what changed
    def changed_minutes(self, old: int, new: int, with_sketch: bool) -> list[int] | None:
        """Minutes of ``minute_stats`` whose row differs between versions ``old`` and ``new``
        (frames, unique_users and, with ``with_sketch``, hll; added and removed rows too).
        Only date partitions whose files differ are read. None if ``old`` cannot be read."""
        key = (old, new, with_sketch)
        if key in self._diffs:
            return self._diffs[key]
        uri = self._rs(MINUTE_STATS)
        try:
            before = DeltaTable(uri, version=old, storage_options=self.storage_options)
        except Exception:  # noqa: BLE001 - vacuumed / log cleaned up: the caller recomputes all
            self._diffs[key] = None
            return None
        after = DeltaTable(uri, version=new, storage_options=self.storage_options)

        def files(t):
            a = t.get_add_actions(flatten=True)
            a = a if isinstance(a, pa.Table) else pa.table(a)
            if a.num_rows == 0:
                return set()
            return set(zip(a.column("path").to_pylist(), a.column("partition.date").to_pylist()))
        dates = sorted({d for _, d in files(before) ^ files(after)})
        if not dates:
            self._diffs[key] = []
            return []
        cols = ["ts", "frames", "unique_users"] + (["hll"] if with_sketch else [])
        flt = [("date", "in", dates)]
        o = before.to_pyarrow_table(filters=flt, columns=cols)
        n = after.to_pyarrow_table(filters=flt, columns=cols)
        j = n.join(o, "ts", join_type="full outer", left_suffix="_new", right_suffix="_old")
        differs = None
        for c in cols[1:]:
            a, b = j.column(f"{c}_new"), j.column(f"{c}_old")
            d = pc.or_(pc.fill_null(pc.not_equal(a, b), False), pc.xor(pc.is_null(a), pc.is_null(b)))
            differs = d if differs is None else pc.or_(differs, d)
        out = sorted(j.filter(differs).column("ts").to_pylist())
        self._diffs[key] = out
        return out

    # ------------------------------------------------------------------ compute (Spark)
    def compute(self, grain: str, mode: str, version: int, spans, starts: list[int] | None = None
                ) -> list[RollupResult]:
        """Rollups of ``grain`` for the minutes in ``spans`` (None: all) of ``minute_stats``
        as of ``version``: one Spark query; one row of integers per period reaches the driver."""
        has_uids = self.has_table(MINUTE_UIDS)
        ms = self._spark_read(MINUTE_STATS, version).where(_where("ts", grain, spans, starts))
        p_ts = period_col(F.col("ts"), grain).alias("p")
        per = ms.groupBy(p_ts).agg(F.sum("frames").alias("frames"), F.count(F.lit(1)).alias("minutes"),
                                   F.count(F.when(F.col("mode") == "approx", 1)).alias("approx_minutes"))
        uids = self._spark_read(MINUTE_UIDS).where(_where("minute", grain, spans, starts)) if has_uids else None
        p_minute = period_col(F.col("minute"), grain).alias("p")
        if mode == "exact":
            if uids is None:
                raise RollupError("exact rollups need the minute_uids table, which is missing — "
                                  "use --mode approx")
            users = uids.groupBy(p_minute).agg(F.countDistinct("uid").alias("unique_users"))
        else:
            lg_k_of = F.conv(F.hex(F.substring("hll", _LG_K_BYTE + 1, 1)), 16, 10).cast("int")
            sketches = ms.where(F.col("hll").isNotNull()).select(p_ts, "hll", lg_k_of.alias("lg_k"))
            if uids is not None:  # minutes counted in exact mode: sketch their distinct uids first
                need = ms.where(F.col("hll").isNull()).select(F.col("ts").alias("minute"))
                built = (uids.join(need, "minute", "left_semi").groupBy("minute")
                         .agg(F.hll_sketch_agg("uid", self.lg_k).alias("hll"))
                         .select(p_minute, "hll", F.lit(self.lg_k).alias("lg_k")))
                sketches = sketches.unionByName(built)
            users = sketches.groupBy("p").agg(
                F.hll_sketch_estimate(F.hll_union_agg("hll", True)).alias("unique_users"),
                F.min("lg_k").alias("lg_k"))
        rows = per.join(users, "p", "left").collect()
        approx_minutes = sum(r["approx_minutes"] for r in rows)
        if mode == "exact" and approx_minutes:
            raise RollupError(f"{approx_minutes:,} minute(s) of these {grain}s were counted in approx mode "
                              f"(minute_uids has no users for them): an exact rollup is impossible — "
                              f"use --mode approx")
        out = []
        for r in sorted(rows, key=lambda r: r["p"]):
            lg_k = r["lg_k"] if mode == "approx" else None
            out.append(RollupResult(grain, int(r["p"]), int(r["unique_users"] or 0), int(r["frames"] or 0), mode,
                                    hll_rsd(lg_k or self.lg_k) if mode == "approx" else None, int(r["minutes"])))
        return out

    # ------------------------------------------------------------------ run
    def run(self, grain: str, mode: str, lo: int | None = None, hi: int | None = None, full: bool = False,
            emit: Callable[[list[RollupResult]], None] | None = None) -> GrainReport:
        """Bring ``rollup_<grain>`` (rows of ``mode``) up to date with ``minute_stats``.

        ``lo``/``hi`` (epoch seconds, ``hi`` exclusive) limit the run to the periods that
        overlap ``[lo, hi)``; ``full`` recomputes every period in that range instead of the
        changed ones. ``emit`` receives the recomputed results before they are committed
        (publish there: if it raises, nothing is committed and the next run recomputes them).
        """
        if grain not in GRAINS:
            raise ValueError(f"grain must be one of {', '.join(GRAINS)}, got {grain!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be exact or approx, got {mode!r}")
        t0 = time.time()
        if not self.has_table(MINUTE_STATS):
            raise RollupError(f"no minute_stats table below {self.tables.root} — run jobs/minute_stats.py first")
        ms = self.tables.table(MINUTE_STATS)
        version = ms.version()
        app = f"rollup-{mode}-{ms.metadata().id}"
        rt = self.rollup_table(grain)
        since = rt.transaction_version(app)
        rep = GrainReport(grain, mode, version, since)
        lo_p, hi_p = scope(grain, lo, hi)
        ranged = lo is not None or hi is not None

        def in_scope(s: int) -> bool:
            return (lo_p is None or s >= lo_p) and (hi_p is None or s < hi_p)

        touched = self._touched(rep, full, in_scope)
        stored = [s for s in rt.to_pyarrow_table(columns=["ts", "mode"]).to_pylist()
                  if s["mode"] == mode and in_scope(s["ts"])]
        stored_starts = {s["ts"] for s in stored}
        cond_mode = f"t.mode = '{mode}'"
        if touched is None:
            spans = None if not ranged else [(lo_p, hi_p)]
            results = self.compute(grain, mode, version, spans)
            rep.recomputed = [r.start for r in results]
            bounds = ([f"t.ts >= {lo_p}"] if lo_p is not None else []) + \
                     ([f"t.ts < {hi_p}"] if hi_p is not None else [])
            gone = " AND ".join([cond_mode, *bounds])
        elif touched:
            results = self.compute(grain, mode, version, ranges(touched, grain), touched)
            rep.recomputed = touched
            gone = f"{cond_mode} AND t.ts IN ({', '.join(str(s) for s in touched)})"
        else:
            results, gone = [], None
        rep.results = results
        rep.skipped = len(stored_starts - set(rep.recomputed)) if touched is not None else 0

        if results and emit is not None:
            emit(results)
        record = None if ranged or since == version else (app, version)
        rep.deleted = self._write(rt, results, gone if stored_starts else None, version, record)
        rep.seconds = time.time() - t0
        if self.progress:
            _log.info(rep.line())
        return rep

    def _touched(self, rep: GrainReport, full: bool, in_scope: Callable[[int], bool]) -> list[int] | None:
        """The periods to recompute (None: every period in scope), and why (``rep.how``)."""
        since, version = rep.since_version, rep.source_version
        if full:
            rep.how = "full"
        elif since is None:
            rep.how = "first run"
        elif since > version:
            rep.how = f"full: minute_stats is at v{version}, older than the recorded v{since}"
        elif since == version:
            rep.how = "unchanged"
            return []
        else:
            changed = self.changed_minutes(since, version, rep.mode == "approx")
            if changed is None:
                rep.how = f"full: minute_stats v{since} can no longer be read"
            else:
                rep.changed_minutes = len(changed)
                return sorted({s for s in (period_start(m, rep.grain) for m in changed) if in_scope(s)})
        return None

    def _write(self, rt, results: list[RollupResult], gone: str | None, version: int,
               record: tuple[str, int] | None) -> int:
        """Upsert ``results`` (computed from minute_stats ``version``) by (ts, mode); delete
        stored rows matching ``gone`` that have no result; record ``(app id, minute_stats
        version)`` in the same commit. Returns the number of rows deleted."""
        props = CommitProperties(app_transactions=[Transaction(app_id=record[0], version=record[1])]) \
            if record else None
        deleted = 0
        if results or gone:
            now = time.time()
            src = pa.Table.from_pylist([r.to_row(version, now) for r in results], ROLLUP_SCHEMA)
            m = (rt.merge(src, "t.ts = s.ts AND t.mode = s.mode", source_alias="s", target_alias="t",
                          commit_properties=props)
                 .when_matched_update_all().when_not_matched_insert_all())
            if gone:
                m = m.when_not_matched_by_source_delete(gone)
            deleted = int(m.execute().get("num_target_rows_deleted", 0))
            rt.update_incremental()
        if record and rt.transaction_version(record[0]) != record[1]:  # nothing written: record it alone
            rt.create_write_transaction([], mode="append", schema=ROLLUP_SCHEMA, partition_by=None,
                                        commit_properties=props)
        return deleted


if __name__ == "__main__":  # regenerate schemas/rollup.schema.json
    print(json.dumps(json_schema(), indent=2))
