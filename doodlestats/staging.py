"""Executor-written Parquet files, described for a driver-side Delta commit.

:func:`write_staged` lets Spark's executors write a DataFrame as Parquet files
(partitioned by ``date``) into a fresh staging folder inside a Delta table, then reads
back only their metadata — path, size, modification time, partition value, row count,
and (``by_minute``) the row count per ``minute`` — in one small aggregation. The driver
never sees the rows. Works on any file system Spark can write (local, ``s3a://``,
``abfss://``, ``gs://``, ``hdfs://``)::

    metas, per_minute = write_staged(spark, pairs, tables.stage_uri(MINUTE_UIDS, 7),
                                     "minute BIGINT, uid STRING, batch_id BIGINT", by_minute=True)
    tables.commit_files(MINUTE_UIDS, metas, 7)
"""

from __future__ import annotations

from doodlestats.tables import STAGE_DIR, FileMeta

__all__ = ["write_staged"]


def write_staged(spark, df, stage_uri: str, file_schema: str, by_minute: bool = False
                 ) -> tuple[list[FileMeta], dict[int, int]]:
    """Write ``df`` (which has a ``date`` column) below ``stage_uri``; return
    (one :class:`FileMeta` per file, rows per minute if ``by_minute``)."""
    from pyspark.sql import functions as F
    df.write.mode("errorifexists").partitionBy("date").parquet(stage_uri)
    back = spark.read.schema(file_schema).parquet(stage_uri)
    if "date" not in back.columns:  # nothing was written: no partition folder to discover
        return [], {}
    keys = [F.col("_metadata.file_path").alias("path"), F.col("_metadata.file_size").alias("size"),
            F.col("_metadata.file_modification_time").alias("mtime"), F.col("date").cast("string").alias("date")]
    if by_minute:
        keys.append(F.col("minute"))
    rows = back.groupBy(*keys).count().collect()
    files: dict[str, FileMeta] = {}
    per_minute: dict[int, int] = {}
    marker = "/" + STAGE_DIR + "/"
    for r in rows:
        f = files.get(r["path"])
        if f is None:
            rel = r["path"][r["path"].rindex(marker) + 1:]
            f = files[r["path"]] = FileMeta(path=rel, size=r["size"], mtime_ms=int(r["mtime"].timestamp() * 1000),
                                            date=r["date"], rows=0, min=None, max=None)
        f["rows"] += r["count"]
        if by_minute:
            m = r["minute"]
            per_minute[m] = per_minute.get(m, 0) + r["count"]
            f["min"] = m if f["min"] is None else min(f["min"], m)
            f["max"] = m if f["max"] is None else max(f["max"], m)
    return list(files.values()), per_minute
