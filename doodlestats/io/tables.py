"""The Delta tables the job writes, below ``[paths] delta`` (a path or a URI).

=============== ===================================================================
minute_stats    one row per minute (upserted): counts, status, mode, sketch (approx)
minute_uids     the distinct (minute, uid) pairs (exact mode) — the source of exact
                hour/day/week/month/year uniques; each pair is written once
quarantine      every frame that was not counted, with its raw bytes and a reason
=============== ===================================================================

Where a quarantine row came from: ``topic``, ``partition``, ``offset`` (Kafka); or
``file`` and ``byte_offset`` (files read as byte ranges: the backfill; the offset of the
line's first byte, in the decompressed text for gzip), or ``file`` and ``line`` (1-based;
whole files read in order: the stream's file source, the backfill without the jar). For
file rows ``partition``/``offset`` are the split and the line's index in it.

Who writes what (see docs/semantics.md "Where work runs"):

* ``quarantine`` and ``minute_uids`` hold one row per frame / pair. **Executors** write
  their Parquet files with Spark's writer into a per-batch staging folder inside the
  table (:meth:`Tables.stage_uri`); the driver receives only file metadata (path, size,
  partition value, row count, min/max minute) and commits them with one delta-rs
  transaction (:meth:`Tables.commit_files`, ~0.1 s instead of 2–8 s for a Spark Delta
  commit on 2 cores).
* ``minute_stats`` holds one row per minute: the driver MERGEs it with delta-rs.

Every commit carries an application transaction (``app_id`` = table + job + location,
version = micro-batch id), so a replayed batch commits nothing twice
(:meth:`Tables.committed`); the files a replay staged again are deleted, and files of a
batch that died before its commit are never referenced (``VACUUM`` removes them).

Example::

    t = Tables("s3a://bucket/delta", "minute_stats", storage_options={...})
    t.ensure()
    if not t.committed(QUARANTINE, batch_id):
        stage = t.stage_uri(QUARANTINE, batch_id)
        df.write.partitionBy("date").parquet(stage)               # executors
        t.commit_files(QUARANTINE, files_meta, batch_id)           # driver, metadata only
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Field, Transaction, write_deltalake
from deltalake.transaction import AddAction

from doodlestats.batch.results import MINUTE_STATS_SCHEMA
from doodlestats.io.uris import is_uri, join, to_delta_uri, to_spark_uri

__all__ = ["MINUTE_STATS", "MINUTE_UIDS", "QUARANTINE", "SCHEMAS", "FileMeta", "MinuteFiles", "Tables", "minute_date"]

MINUTE_STATS = "minute_stats"
MINUTE_UIDS = "minute_uids"
QUARANTINE = "quarantine"

_TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    MINUTE_STATS: MINUTE_STATS_SCHEMA,
    MINUTE_UIDS: pa.schema([("minute", pa.int64()), ("date", pa.date32()), ("uid", pa.string()),
                            ("batch_id", pa.int64())]),
    QUARANTINE: pa.schema([
        ("reason", pa.string()), ("raw", pa.binary()), ("topic", pa.string()), ("partition", pa.int32()),
        ("offset", pa.int64()), ("file", pa.string()), ("line", pa.int64()), ("byte_offset", pa.int64()),
        ("ts", pa.int64()),
        ("uid", pa.string()), ("minute", pa.int64()), ("batch_id", pa.int64()),
        ("quarantined_at", _TS), ("date", pa.date32())]),
}
STAGE_DIR = "stage"


def minute_date(minutes: pa.Array) -> pa.Array:
    """UTC date of each minute (epoch seconds)."""
    return pc.cast(pc.cast(pc.multiply(minutes, 1_000_000), _TS), pa.date32())


def normalise_root(root) -> str:
    """A URI in Spark's form (``s3://`` → ``s3a://``); a plain path made absolute."""
    root = str(root)
    return to_spark_uri(root).rstrip("/") if is_uri(root) else os.path.abspath(root)


class FileMeta(dict):
    """Metadata of one staged Parquet file: ``path`` (relative to the table root), ``size``,
    ``mtime_ms``, ``date`` (partition value), ``rows``, and optionally ``min``/``max`` of the
    ``minute`` column — all the driver needs to commit it."""


class Tables:
    """Paths of the job's Delta tables, idempotent commits and driver-side reads."""

    def __init__(self, root, app_id: str, storage_options: dict | None = None):
        self.root = normalise_root(root)
        self.storage_options = dict(storage_options or {}) or None
        # one application id per output location: replays of the same job are recognised
        self.app_id = hashlib.sha1(f"{app_id}:{self.root}".encode()).hexdigest()[:16]
        self._dt: dict[str, Any] = {}

    # ------------------------------------------------------------------ locations
    def path(self, name: str) -> str:
        """The table's location as Spark sees it."""
        return join(self.root, name)

    def _rs(self, name: str) -> str:
        return to_delta_uri(self.path(name))

    def stage_uri(self, name: str, batch_id: int) -> str:
        """A fresh folder inside the table for the files one attempt of ``batch_id`` stages."""
        return join(self.path(name), STAGE_DIR, f"{batch_id:012d}-{uuid.uuid4().hex[:8]}")

    def _app(self, name: str) -> str:
        return f"{self.app_id}-{name}"

    # ------------------------------------------------------------------ delta-rs handles
    def table(self, name: str, version: int | None = None):
        """A delta-rs handle of ``name`` (latest, or as of ``version``); reused between calls."""
        dt = self._dt.get(name)
        if dt is None:
            dt = DeltaTable(self._rs(name), storage_options=self.storage_options)
            self._dt[name] = dt
        if version is None:
            dt.update_incremental()
        elif dt.version() != version:
            dt.load_as_version(version)
        return dt

    def ensure(self) -> None:
        """Create the tables if missing (partitioned by date); add the columns a table of an
        earlier version lacks (nullable, so its old rows read as null)."""
        for name, schema in SCHEMAS.items():
            if not DeltaTable.is_deltatable(self._rs(name), storage_options=self.storage_options):
                DeltaTable.create(self._rs(name), schema, mode="ignore", partition_by=["date"], name=name,
                                  storage_options=self.storage_options)
                continue
            dt = self.table(name)
            have = set(dt.schema().to_arrow().names)
            missing = [Field.from_arrow(f) for f in schema if f.name not in have]
            if missing:
                dt.alter.add_columns(missing)

    def committed(self, name: str, batch_id: int) -> bool:
        """True if ``batch_id`` (or a later batch) was already committed to ``name``."""
        v = self.table(name).transaction_version(self._app(name))
        return v is not None and v >= batch_id

    def _props(self, name: str, batch_id: int):
        return CommitProperties(app_transactions=[Transaction(app_id=self._app(name), version=batch_id)])

    # ------------------------------------------------------------------ writes
    def commit_files(self, name: str, files: list[FileMeta], batch_id: int) -> bool:
        """Commit staged files (metadata only) unless ``batch_id`` was committed. True if written."""
        if self.committed(name, batch_id):
            return False
        actions = []
        for f in files:
            stats: dict[str, Any] = {"numRecords": int(f["rows"])} if f.get("rows") is not None else {}
            if f.get("min") is not None:
                stats["minValues"] = {"minute": int(f["min"])}
                stats["maxValues"] = {"minute": int(f["max"])}
                stats["nullCount"] = {"minute": 0}
            actions.append(AddAction(f["path"], int(f["size"]), {"date": f["date"]}, int(f["mtime_ms"]), True,
                                     json.dumps(stats)))
        self.table(name).create_write_transaction(actions, mode="append", schema=SCHEMAS[name],
                                                  partition_by=["date"],
                                                  commit_properties=self._props(name, batch_id))
        return True

    def append(self, name: str, rows: pa.Table, batch_id: int) -> bool:
        """Append ``rows`` from the driver unless ``batch_id`` was committed. True if written."""
        if self.committed(name, batch_id):
            return False
        write_deltalake(self._rs(name), rows.cast(SCHEMAS[name]), mode="append", partition_by=["date"],
                        commit_properties=self._props(name, batch_id), storage_options=self.storage_options)
        return True

    def upsert_minutes(self, rows: pa.Table, batch_id: int) -> None:
        """MERGE rows of ``minute_stats`` by minute; absolute values, so replays are harmless."""
        if rows.num_rows == 0:
            return
        dates = ", ".join(f"'{d}'" for d in sorted(set(rows.column("date").to_pylist())))
        (self.table(MINUTE_STATS)
         .merge(rows.cast(SCHEMAS[MINUTE_STATS]), f"t.date IN ({dates}) AND t.ts = s.ts",
                source_alias="s", target_alias="t", commit_properties=self._props(MINUTE_STATS, batch_id))
         .when_matched_update_all().when_not_matched_insert_all().execute())

    # ------------------------------------------------------------------ reads
    def read(self, name: str, filters=None, columns: list[str] | None = None,
             version: int | None = None) -> pa.Table:
        """Read (part of) a table into the driver, e.g. ``filters=[("ts", ">", 0)]``,
        optionally as of a table ``version`` (time travel). Only for small results."""
        dt = DeltaTable(self._rs(name), version=version, storage_options=self.storage_options)
        return dt.to_pyarrow_table(filters=filters, columns=columns)

    def files_overlapping(self, name: str, lo: int, hi: int, version: int | None) -> list[str]:
        """URIs (as Spark reads them) of the data files of ``name`` as of ``version`` whose
        ``minute`` range may overlap ``[lo, hi]`` (files without stats are included)."""
        return [u for u, a, b in self.file_ranges(name, version) if a is None or b is None or (a <= hi and b >= lo)]

    def file_ranges(self, name: str, version: int | None) -> list[tuple[str, int | None, int | None]]:
        """(URI, min minute, max minute) of each data file of ``name`` as of ``version``."""
        dt = self.table(name, version)
        acts = dt.get_add_actions(flatten=True)
        acts = pa.table(acts) if not isinstance(acts, pa.Table) else acts
        if acts.num_rows == 0:
            return []
        paths = acts.column("path").to_pylist()
        names = acts.column_names
        mins = acts.column("min.minute").to_pylist() if "min.minute" in names else [None] * len(paths)
        maxs = acts.column("max.minute").to_pylist() if "max.minute" in names else [None] * len(paths)
        return [(p if is_uri(p) else join(self.path(name), p), a, b) for p, a, b in zip(paths, mins, maxs)]

    def versions(self) -> dict[str, int]:
        """Current version of each table."""
        return {name: self.table(name).version() for name in SCHEMAS}


class MinuteFiles:
    """The data files of ``minute_uids`` by minute, kept in memory for the minutes a run
    touches, so a batch does not list the Delta log again: a minute's files are read from
    the log once (as of the state's version), then each batch's committed files are added.
    :meth:`reset` after a restart or a failed batch; :meth:`keep` drops minutes that
    are final (a late correction reads the log again)."""

    def __init__(self, tables: "Tables", name: str = MINUTE_UIDS):
        self.tables, self.name = tables, name
        self.by_minute: dict[int, list[str]] = {}

    def reset(self) -> None:
        self.by_minute = {}

    def files(self, minutes: list[int], version: int | None) -> list[str]:
        """The files whose minute range contains one of ``minutes`` (as of ``version`` plus
        what :meth:`added` since)."""
        missing = [m for m in minutes if m not in self.by_minute]
        if missing:
            ranges = self.tables.file_ranges(self.name, version) if version is not None else []
            for m in missing:
                self.by_minute[m] = [u for u, a, b in ranges if a is None or b is None or a <= m <= b]
        return sorted({f for m in minutes for f in self.by_minute[m]})

    def added(self, metas: list[FileMeta]) -> None:
        """Files just committed (their ``min``/``max`` minute)."""
        for f in metas:
            uri = join(self.tables.path(self.name), f["path"])
            for m, files in self.by_minute.items():
                if f.get("min") is None or f["min"] <= m <= f["max"]:
                    files.append(uri)

    def keep(self, minutes) -> None:
        self.by_minute = {m: v for m, v in self.by_minute.items() if m in minutes}
