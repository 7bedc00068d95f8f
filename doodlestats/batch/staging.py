"""Executor-written Parquet files, described for a driver-side Delta commit — in one job.

:func:`write_staged` lets Spark's executors write a DataFrame as Parquet files
(partitioned by ``date``) into a fresh staging folder inside a Delta table. What the
driver needs to commit them comes without reading them back: the rows per ``minute`` and
per writing task ride along with the write as an observed metric (``doodle_tally``, see
``java/.../BatchTally.java``), and path, size and modification time come from one listing
of the staging folder. Spark names a task's file ``part-<task>-...``, so each file's row
count and minute range follow from the tally. Works on any file system Spark can write
(local, ``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``)::

    metas, per_minute = write_staged(pairs, tables.stage_uri(MINUTE_UIDS, 7))
    tables.commit_files(MINUTE_UIDS, metas, 7)

:func:`observed` is the small helper behind it: attach aggregate metrics to a DataFrame
and read them once an action on it ran.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re

from pyspark.sql import Observation
from pyspark.sql import functions as F

from doodlestats.io.fs import HadoopFS
from doodlestats.io.tables import STAGE_DIR, FileMeta
from doodlestats.runtime.session import register_jvm_function

__all__ = ["write_staged", "count_by_minute", "observed", "tally_col", "register_tally", "TALLY_FN"]

TALLY_FN = "doodle_tally"
_PART = re.compile(r"part-(\d+)-")
_names = itertools.count()


def register_tally(spark) -> bool:
    """Register the JVM aggregate ``doodle_tally``; False if its jar is not on the classpath."""
    return register_jvm_function(spark, TALLY_FN, lambda jvm, js: jvm.doodle.udf.BatchTally.register(js))


def tally_col(minute="minute", src=None, partition=None, reason=None, ts=None, offset=None, unkept=None) -> str:
    """``doodle_tally(...)`` as Spark SQL over the given SQL expressions (None: a typed null)."""
    types = ["BIGINT", "STRING", "INT", "STRING", "BIGINT", "BIGINT", "BOOLEAN"]
    args = [minute, src, partition, reason, ts, offset, unkept]
    return f"{TALLY_FN}(" + ", ".join(f"CAST({'NULL' if a is None else a} AS {t})" for a, t in zip(args, types)) + ")"


def tally_rows(text: str | None) -> list[dict]:
    """The entries of a ``doodle_tally`` result as dicts (the keys of the batch summary)."""
    keys = ("minute", "src", "partition", "reason", "n", "max_ts", "unkept", "first_offset", "last_offset")
    return [dict(zip(keys, e)) for e in json.loads(text or "[]")]


@contextlib.contextmanager
def observed(df, *metrics):
    """``with observed(df, m1, m2) as (df2, get):`` run an action on ``df2``, then ``get()``
    returns the metrics' values in order (one value if one metric). The metrics are
    computed by the action that runs anyway — no extra Spark job."""
    obs = Observation(f"doodle-{next(_names)}")
    df2 = df.observe(obs, *[m.alias(f"m{i}") for i, m in enumerate(metrics)])

    def get():
        values = obs.get
        out = [values.get(f"m{i}") for i in range(len(metrics))]
        return out[0] if len(out) == 1 else out
    yield df2, get


def count_by_minute(df) -> dict[int, int]:
    """Rows per ``minute`` of ``df`` (one small aggregation, one job)."""
    return {r["minute"]: r["count"] for r in df.groupBy("minute").count().collect()}


def write_staged(df, stage_uri: str, minute_stats: bool = True) -> tuple[list[FileMeta], dict[int, int]]:
    """Write ``df`` (``minute``, ``date`` and the file's columns) below ``stage_uri``, one
    Spark job; return (one :class:`FileMeta` per file, rows per minute). ``minute_stats``:
    record each file's minute range (False where ``minute`` may be null)."""
    spark = df.sparkSession
    tasked = df.withColumn("_task", F.spark_partition_id())
    with observed(tasked, F.expr(tally_col("minute", src="date", partition="_task"))) as (watched, get):
        watched.drop("_task").write.mode("errorifexists").partitionBy("date").parquet(stage_uri)
    per_task = tally_rows(get())          # entries: (minute, date, task) → rows
    fs = HadoopFS(spark)
    files = [(d.name.partition("=")[2], f) for d in fs.list(stage_uri) if d.is_dir and d.name.startswith("date=")
             for f in fs.list(d.uri) if f.name.endswith(".parquet")]
    metas = _metas(files, per_task)
    if not minute_stats:
        for m in metas:
            m["min"] = m["max"] = None
    return metas, _per_minute(per_task)


def _per_minute(per_task: list[dict]) -> dict[int, int]:
    out: dict[int, int] = {}
    for e in per_task:
        if e["minute"] is not None:
            out[e["minute"]] = out.get(e["minute"], 0) + e["n"]
    return out


def _metas(files, per_task: list[dict]) -> list[FileMeta]:
    """File metadata from the listing and the (minute, date, task) tally: a task writes one
    file per date folder, so its rows and minutes of that date are the file's."""
    by_file: dict[tuple[str, int], list[dict]] = {}
    for e in per_task:
        by_file.setdefault((e["src"], e["partition"]), []).append(e)
    seen: dict[tuple[str, int], int] = {}
    keyed = []
    for date, f in files:
        m = _PART.search(f.name)
        if m is None:
            raise ValueError(f"not a Spark task's file: {f.name}")
        task = int(m.group(1))
        seen[(date, task)] = seen.get((date, task), 0) + 1
        keyed.append((date, task, f))
    marker = "/" + STAGE_DIR + "/"
    out = []
    for date, task, f in keyed:
        entries = by_file.get((date, task), [])
        minutes = [e["minute"] for e in entries if e["minute"] is not None]
        alone = seen[(date, task)] == 1  # Spark split the task's output (maxRecordsPerFile): no row count
        out.append(FileMeta(path=f.uri[f.uri.rindex(marker) + 1:], size=f.size, mtime_ms=f.modified_ms, date=date,
                            rows=sum(e["n"] for e in entries) if alone else None,
                            min=min(minutes) if minutes else None, max=max(minutes) if minutes else None))
    return out
