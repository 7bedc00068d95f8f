"""Parse stage: Kafka/file ``value`` bytes → root-level ``ts``, ``uid`` and a ``reason``.

``reason`` is null for a frame that follows ``schemas/frame.schema.json``, else one of
the parse reason codes of :mod:`doodlestats.batch.reasons`. Three interchangeable paths::

    parsed = parse_frames(df, "jvm")     # fast JVM root-key scanner (default)
    parsed = parse_frames(df, "python")  # orjson in mapInArrow (no extra jar needed)
    parsed = parse_frames(df, "spark")   # Spark's from_json: the slow baseline

The jvm and python paths give identical results (tests compare them with a reference
JSON parser); the spark path only approximates the contract (e.g. it accepts a float ts).
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from doodlestats.batch import reasons

__all__ = ["PARSED_TYPE", "PARSERS", "register_jvm_parser", "parse_frames"]

PARSED_TYPE = "struct<ts:bigint,uid:string,reason:string>"
PARSERS = ("jvm", "python", "spark")
_UDF_NAME = "doodle_parse"


def register_jvm_parser(spark) -> None:
    """Register the JVM scanner as the SQL function ``doodle_parse(value)``."""
    if not spark._jsparkSession.catalog().functionExists(_UDF_NAME):
        spark.udf.registerJavaFunction(_UDF_NAME, "doodle.udf.FrameParser", PARSED_TYPE)


def _jvm(df: DataFrame) -> DataFrame:
    register_jvm_parser(df.sparkSession)
    return df.withColumn("_p", F.expr(f"{_UDF_NAME}(value)"))


def _python(df: DataFrame) -> DataFrame:
    out_schema = T.StructType(df.schema.fields + [T.StructField("_p", T.StructType([
        T.StructField("ts", T.LongType()), T.StructField("uid", T.StringType()),
        T.StructField("reason", T.StringType())]))])
    names = df.columns

    def parse_batches(batches):
        # runs in the executors' Python workers, which import the parser themselves
        from doodlestats.batch.pyparse import parse_batch
        for b in batches:
            ts, uid, reason = parse_batch(b.column("value").to_pylist())
            p = pa.StructArray.from_arrays(
                [pa.array(ts, pa.int64()), pa.array(uid, pa.string()), pa.array(reason, pa.string())],
                names=["ts", "uid", "reason"])
            yield pa.RecordBatch.from_arrays([b.column(n) for n in names] + [p], names=names + ["_p"])

    return df.mapInArrow(parse_batches, out_schema)


def _spark(df: DataFrame) -> DataFrame:
    j = F.from_json(F.col("value").cast("string"), "ts string, uid string")
    ts = F.expr("try_cast(_j.ts AS bigint)")
    reason = (F.when(F.col("_j").isNull(), F.lit(reasons.MALFORMED_JSON))
              .when(F.col("_j.ts").isNull(), F.lit(reasons.MISSING_TS))
              .when(ts.isNull() | (ts < 0), F.lit(reasons.BAD_TS))
              .when(F.col("_j.uid").isNull(), F.lit(reasons.MISSING_UID))
              .when(F.col("_j.uid") == "", F.lit(reasons.BAD_UID)))
    return (df.withColumn("_j", j)
              .withColumn("_p", F.struct(ts.alias("ts"), F.col("_j.uid").alias("uid"), reason.alias("reason")))
              .drop("_j"))


def parse_frames(df: DataFrame, parser: str = "jvm") -> DataFrame:
    """Add columns ``ts`` (bigint), ``uid`` (string), ``reason`` (string) parsed from ``value``."""
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
    out = {"jvm": _jvm, "python": _python, "spark": _spark}[parser](df)
    return out.selectExpr(*[f"`{c}`" for c in df.columns if c not in ("ts", "uid", "reason")],
                          "_p.ts AS ts", "_p.uid AS uid", "_p.reason AS reason")
