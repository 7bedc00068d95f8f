"""The Delta tables the job writes, below ``[paths] delta``.

=============== ===================================================================
minute_stats    one row per minute (upserted): counts, status, mode, sketch (approx)
minute_uids     distinct (minute, uid) pairs per micro-batch (exact mode) — the
                source of exact hour/day/week/month/year uniques (use DISTINCT)
quarantine      every frame that was not counted, with its raw bytes and a reason
=============== ===================================================================

Appends are idempotent: they carry ``txnAppId``/``txnVersion`` (= the micro-batch id),
so a replayed batch does not write twice. ``minute_stats`` holds absolute values and is
upserted with MERGE, which is idempotent by nature.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

MINUTE_STATS = "minute_stats"
MINUTE_UIDS = "minute_uids"
QUARANTINE = "quarantine"

SCHEMAS = {
    MINUTE_STATS: ("window_start TIMESTAMP, window_end TIMESTAMP, ts BIGINT, date DATE, "
                   "unique_users BIGINT, frames BIGINT, status STRING, mode STRING, rsd DOUBLE, "
                   "emitted_at TIMESTAMP, batch_id BIGINT, hll BINARY"),
    MINUTE_UIDS: "minute BIGINT, date DATE, uid STRING, batch_id BIGINT",
    QUARANTINE: ("reason STRING, raw BINARY, topic STRING, `partition` INT, `offset` BIGINT, "
                 "file STRING, line BIGINT, ts BIGINT, uid STRING, minute BIGINT, batch_id BIGINT, "
                 "quarantined_at TIMESTAMP, date DATE"),
}


class Tables:
    """Paths of the job's Delta tables and the writes to them."""

    def __init__(self, spark: SparkSession, root: str | Path, app_id: str):
        self.spark = spark
        self.root = Path(root)
        # one transaction id per table and output location: replays are recognised
        self.app_id = hashlib.sha1(f"{app_id}:{self.root.resolve()}".encode()).hexdigest()[:16]

    def path(self, name: str) -> str:
        return str(self.root / name)

    def ensure(self) -> None:
        """Create the tables if missing (partitioned by date)."""
        from delta.tables import DeltaTable
        for name, ddl in SCHEMAS.items():
            b = (DeltaTable.createIfNotExists(self.spark).location(self.path(name))
                 .addColumns(self.spark.createDataFrame([], ddl).schema).partitionedBy("date"))
            if name == MINUTE_STATS:  # small upserts: mark rows deleted instead of rewriting files
                b = b.property("delta.enableDeletionVectors", "true")
            b.execute()

    def read(self, name: str) -> DataFrame:
        return self.spark.read.format("delta").load(self.path(name))

    def append(self, name: str, df: DataFrame, batch_id: int) -> None:
        """Idempotent append: a second append with the same ``batch_id`` is skipped by Delta."""
        (df.write.format("delta").mode("append")
           .option("txnAppId", f"{self.app_id}-{name}").option("txnVersion", batch_id)
           .save(self.path(name)))

    def upsert_minutes(self, df: DataFrame) -> None:
        """MERGE rows of ``minute_stats`` by ``ts`` (the minute); absolute values only."""
        from delta.tables import DeltaTable
        t = DeltaTable.forPath(self.spark, self.path(MINUTE_STATS))
        (t.alias("t").merge(df.alias("s"), "t.date = s.date AND t.ts = s.ts")
          .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
