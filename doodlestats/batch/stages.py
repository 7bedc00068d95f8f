"""The executor stages of a micro-batch, as Spark plans (nothing runs until an action).

``read``     parse the root ``ts``/``uid``, keep raw bytes only of possible quarantine cases
``classify`` guard verdicts (broadcast references), ``minute``, ``late``: the final ``reason``
``summary``  the batch's summary and its few quarantine rows as metrics of the counting pass
``quarantine_rows`` the rows of the ``quarantine`` table

The source columns (:data:`SOURCE_COLUMNS`) are ``value`` (binary), ``topic``,
``partition``, ``offset`` (Kafka) or ``file`` and ``line`` (whole files read in order,
:func:`with_file_positions` numbers them) or ``byte_offset`` (files read as byte ranges,
:mod:`doodlestats.io.source`); ``partition``/``offset`` are then the split and the line's
index in it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from doodlestats.batch import guard, reasons
from doodlestats.batch.parse import parse_frames
from doodlestats.batch.staging import tally_col
from doodlestats.batch.window import final_sql, minute_sql
from doodlestats.io.tables import QUARANTINE, SCHEMAS

__all__ = ["SOURCE_COLUMNS", "source_columns", "read", "classify", "counted", "summary_metrics", "summary_job",
           "few_quarantine_rows", "quarantine_rows", "with_file_positions"]


#: The pipeline's source columns and their types; a source has some, the rest are null.
SOURCE_COLUMNS = {"value": "binary", "topic": "string", "partition": "int", "offset": "bigint",
                  "file": "string", "line": "bigint", "byte_offset": "bigint"}


def source_columns(df: DataFrame) -> DataFrame:
    """``df`` with exactly :data:`SOURCE_COLUMNS`: its own, and nulls for the others."""
    return df.select(*[F.col(c) if c in df.columns else F.lit(None).cast(t).alias(c)
                       for c, t in SOURCE_COLUMNS.items()])


def with_file_positions(df: DataFrame) -> DataFrame:
    """Source columns for a batch of text-file rows (``value``, ``file``).

    Each file is one Spark partition read in order (the files source sets the split size
    so), so the row index inside the partition is the line number. ``partition`` is a
    stable id of the file, ``offset`` the 0-based line: the guard's neighbourhoods and
    the quarantine's coordinates then work as for Kafka. A source that has ``offset``
    already gets only the source columns it lacks (as nulls).
    """
    if "offset" in df.columns:
        return source_columns(df)
    idx = F.monotonically_increasing_id().bitwiseAND(F.lit((1 << 33) - 1))
    return source_columns(df.select("value", (F.crc32(F.col("file")) % F.lit(2 ** 31)).cast("int").alias("partition"),
                                    idx.alias("offset"), "file", (idx + 1).alias("line")))


def read(src: DataFrame, parser: str, suspects: bool, max_skew: int, watermark: int | None,
         prev_ref: int | None) -> DataFrame:
    """Parse and keep what later stages need; raw bytes only where the frame may be
    quarantined (:func:`guard.keep_raw`). Cached per frame: keep it narrow (topic/file
    are ``src``, told apart by ``line`` or ``byte_offset``)."""
    keep = guard.keep_raw(suspects, max_skew, watermark, prev_ref)
    return parse_frames(src, parser).selectExpr(
        "ts", "uid", "reason", "coalesce(topic, file) AS src", "partition", "offset", "line",
        "byte_offset", f"CASE WHEN {keep} THEN value END AS raw")


def classify(frames: DataFrame, gp: guard.GuardPlan, watermark: int | None, size: int, max_skew: int) -> DataFrame:
    """Verdicts on executors: final ``reason`` (parse reason, ts_outlier, late), ``minute``,
    ``unkept`` (an outlier whose raw bytes were not kept)."""
    v = guard.with_verdicts(frames, gp, size, max_skew)
    minute = minute_sql("ts")
    late = f"reason IS NULL AND NOT outlier AND {final_sql(minute, watermark)}"
    return v.selectExpr("ts", "uid", "src", "partition", "offset", "line", "byte_offset", "raw", f"{minute} AS minute",
                        f"CASE WHEN outlier THEN '{reasons.TS_OUTLIER}' WHEN {late} THEN '{reasons.LATE}' "
                        f"ELSE reason END AS reason", "outlier AND raw IS NULL AS unkept")


def counted(classified: DataFrame, late_corrections: bool) -> DataFrame:
    """The frames that are counted: accepted ones, and late ones with corrections on."""
    late = f" OR reason = '{reasons.LATE}'" if late_corrections else ""
    return classified.where(f"reason IS NULL{late}")


def summary_metrics(with_rows: bool) -> list:
    """Aggregates over the classified frames: the summary (one entry per minute × source
    partition × reason, ``doodle_tally``) and, if ``with_rows``, the quarantine rows
    themselves — only when the batch's statistics bounded their number and bytes."""
    out = [F.expr(tally_col(_SUMMARY_MINUTE, "src", "partition", "reason", "ts", "offset", "unkept"))]
    if with_rows:  # JSON (raw as base64): the driver adds batch_id and the time (see few_quarantine_rows)
        row = "named_struct(" + ", ".join(f"'{name}', {sql}" for name, sql in _QUARANTINE_COLS) + ")"
        out.append(F.expr(f"to_json(collect_list(CASE WHEN reason IS NOT NULL AND NOT unkept THEN {row} END))"))
    return out


def summary_job(classified: DataFrame) -> list[dict]:
    """The summary rows of :func:`summary_metrics` as an aggregation of their own (one job):
    the path without the JVM aggregate."""
    return [r.asDict() for r in classified.groupBy(F.expr(_SUMMARY_MINUTE).alias("minute"), "src", "partition",
                                                   "reason")
            .agg(F.expr("count(1) AS n"), F.expr("max(ts) AS max_ts"), F.expr("count_if(unkept) AS unkept"),
                 F.expr("min(offset) AS first_offset"), F.expr("max(offset) AS last_offset"))
            .collect()]


def few_quarantine_rows(text: str | None, batch_id: int, now_us: int):
    """The quarantine rows :func:`summary_metrics` collected, as an Arrow table."""
    at = dt.datetime.fromtimestamp(now_us / 1e6, dt.timezone.utc)
    rows = [{**r, "raw": base64.b64decode(r["raw"]) if r.get("raw") is not None else None, "batch_id": batch_id,
             "quarantined_at": at, "date": at.date()} for r in json.loads(text or "[]")]
    return pa.Table.from_pylist(rows, schema=SCHEMAS[QUARANTINE])


def quarantine_rows(src: DataFrame, classified: DataFrame, unkept: int, batch_id: int, now_us: int) -> DataFrame:
    """The batch's quarantine rows (executors). Outliers that were not suspects have no raw
    bytes in the cache: theirs come from the source again (a join on the coordinates)."""
    q = classified.where("reason IS NOT NULL AND NOT unkept")
    if unkept:
        fix = (classified.where("unkept").drop("raw")
               .join(src.select("partition", "offset", F.col("value").alias("raw")), ["partition", "offset"]))
        q = q.unionByName(fix)
    at = f"timestamp_micros({int(now_us)})"
    return q.selectExpr(*[f"{sql} AS {name}" for name, sql in _QUARANTINE_COLS],
                        f"CAST({int(batch_id)} AS BIGINT) AS batch_id", f"{at} AS quarantined_at",
                        f"to_date({at}) AS date")


#: The minute a frame counts in, for the summary: accepted and late frames only.
_SUMMARY_MINUTE = f"CASE WHEN reason IS NULL OR reason = '{reasons.LATE}' THEN minute END"
#: The quarantine table's columns from a classified frame (batch_id and the time are added).
_FROM_FILE = "(line IS NOT NULL OR byte_offset IS NOT NULL)"
_QUARANTINE_COLS = [
    ("reason", "reason"), ("raw", "raw"), ("topic", f"CASE WHEN NOT {_FROM_FILE} THEN src END"),
    ("partition", "partition"), ("offset", "offset"), ("file", f"CASE WHEN {_FROM_FILE} THEN src END"),
    ("line", "line"), ("byte_offset", "byte_offset"), ("ts", "ts"), ("uid", "uid"),
    ("minute", f"CASE WHEN reason = '{reasons.LATE}' THEN minute END"),
]


def now_us() -> int:
    return int(time.time() * 1e6)
