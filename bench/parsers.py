"""The JSON question: how fast does each parse path get the root ``ts`` and ``uid`` out of
the frames, inside Spark, on this machine?

    ./spark-submit.sh bench/parsers.py --input data/stream.jsonl.gz --limit 200000 --out p.json

The input DataFrame is built once — the first ``--limit`` lines of the JSONL file
(``spark.read.text``), cast to binary, spread over ``--partitions`` partitions, cached
and counted — so every path is measured on the same in-memory bytes, without Kafka.
Each path is parse-only: its parsed ``ts``/``uid`` are aggregated (``count(ts)``,
``count(uid)``, ``max(uid)``, ``sum(ts)``) so that nothing is pruned away. The
``read_only`` row (``count(value)``, no parsing) is the floor; every row reports
frames/s and its time relative to that floor. The aggregates double as an
equivalence check against the ``jvm`` path (the project's contract).

Paths: ``read_only``, ``from_json`` (schema ``ts string, uid string``), ``variant``
(``try_parse_json`` + ``try_variant_get``), ``get_json_object`` (×2),
``arrow_transfer`` (``mapInArrow`` returning nulls: the JVM→Python→JVM cost alone),
``orjson`` / ``simdjson`` / ``duckdb`` (each inside ``mapInArrow``), ``python``
(the project's orjson+reference path) and ``jvm`` (the project's fast path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import bench  # noqa: F401
except ImportError:  # plain spark-submit from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT_SCHEMA = "ts long, uid string"

# where a path does not follow the frame contract exactly (schemas/frame.schema.json)
NOTES = {
    "from_json": "root keys only (decoys ignored), but any JSON value is accepted as text for a "
                 "string field (ts 1.5 / true / {..} → text; try_cast decides later); malformed "
                 "frames → null struct (PERMISSIVE); duplicate root keys: no error",
    "variant": "needs spark.sql.variant.allowDuplicateKeys=true (the frames repeat noise keys "
               "at the root; otherwise try_parse_json returns NULL for them); builds the whole "
               "document as VARIANT before the two look-ups",
    "get_json_object": "root path; scans lazily, so a frame truncated AFTER its ts/uid still "
                       "yields values (malformed JSON is not always detected); two scans per frame",
    "arrow_transfer": "no parsing at all: the JVM→Python→JVM transfer cost of mapInArrow",
    "orjson": "full parse of every frame (strict RFC 8259); duplicate keys: last wins",
    "simdjson": "full validation, lazy root look-up; duplicate keys: first wins",
    "duckdb": "json_extract_string on an Arrow batch (1 DuckDB thread per Python worker); "
              "malformed JSON fails the whole batch, which then falls back to a json_valid guard",
    "python": "the project's contract-exact Python path (orjson + reference fallback)",
    "jvm": "the project's contract (depth-tracking root-key scanner, Java UDF)",
}


# --------------------------------------------------------------------------- mapInArrow bodies
def _to_int(t):
    if type(t) is int:
        return t
    if type(t) is str:
        try:
            return int(t)
        except ValueError:
            return None
    return None


def _out(ts, uid):
    import pyarrow as pa
    return pa.RecordBatch.from_arrays([pa.array(ts, pa.int64()), pa.array(uid, pa.string())],
                                      names=["ts", "uid"])


def arrow_nulls(batches):
    """mapInArrow body: no parsing, all-null output of the right length."""
    import pyarrow as pa
    for b in batches:
        n = b.num_rows
        yield pa.RecordBatch.from_arrays([pa.nulls(n, pa.int64()), pa.nulls(n, pa.string())],
                                         names=["ts", "uid"])


def arrow_orjson(batches):
    """mapInArrow body: orjson.loads per frame."""
    import orjson
    loads, err = orjson.loads, orjson.JSONDecodeError
    for b in batches:
        ts, uid = [], []
        for v in b.column(0).to_pylist():
            try:
                d = loads(v)
            except err:
                d = None
            if type(d) is dict:
                ts.append(_to_int(d.get("ts")))
                u = d.get("uid")
                uid.append(u if type(u) is str else None)
            else:
                ts.append(None)
                uid.append(None)
        yield _out(ts, uid)


def arrow_simdjson(batches):
    """mapInArrow body: pysimdjson parse + lazy root look-up per frame."""
    import simdjson
    parser = simdjson.Parser()
    Obj = simdjson.Object
    for b in batches:
        ts, uid = [], []
        for v in b.column(0).to_pylist():
            try:
                doc = parser.parse(v)
            except ValueError:
                ts.append(None)
                uid.append(None)
                continue
            if isinstance(doc, Obj):
                ts.append(_to_int(doc.get("ts")))
                u = doc.get("uid")
                uid.append(u if type(u) is str else None)
            else:
                ts.append(None)
                uid.append(None)
            del doc
        yield _out(ts, uid)


_DUCK_SQL = ("SELECT TRY_CAST(j[1] AS BIGINT) AS ts, j[2] AS uid FROM "
             "(SELECT json_extract_string(v, ['$.ts', '$.uid']) AS j FROM frames)")
_DUCK_SAFE = ("SELECT TRY_CAST(j[1] AS BIGINT) AS ts, j[2] AS uid FROM (SELECT CASE WHEN json_valid(v) "
              "THEN json_extract_string(v, ['$.ts', '$.uid']) END AS j FROM frames)")


def arrow_duckdb(batches):
    """mapInArrow body: DuckDB ``json_extract_string`` over the Arrow batch (1 thread)."""
    import duckdb
    import pyarrow as pa
    con = duckdb.connect()
    con.execute("SET threads = 1")
    for b in batches:
        frames = pa.table({"v": b.column(0).cast(pa.string())})
        con.register("frames", frames)
        try:
            t = con.execute(_DUCK_SQL).fetch_arrow_table()
        except duckdb.Error:
            t = con.execute(_DUCK_SAFE).fetch_arrow_table()
        con.unregister("frames")
        t = t.combine_chunks()
        yield pa.RecordBatch.from_arrays([t.column("ts").chunk(0) if t.num_rows else pa.array([], pa.int64()),
                                          t.column("uid").chunk(0) if t.num_rows else pa.array([], pa.string())],
                                         names=["ts", "uid"])


# --------------------------------------------------------------------------- the paths
def paths(spark):
    """name → function(df with a binary ``value``) → DataFrame with ``ts``, ``uid``."""
    from pyspark.sql import functions as F

    from doodlestats.batch.parse import parse_frames
    s = F.col("value").cast("string")

    def from_json(df):
        j = F.from_json(s, "ts string, uid string")
        return df.select(j.alias("j")).select("j.ts", "j.uid")

    def variant(df):
        return (df.select(F.expr("try_parse_json(cast(value AS string))").alias("v"))
                  .select(F.expr("try_variant_get(v, '$.ts', 'string')").alias("ts"),
                          F.expr("try_variant_get(v, '$.uid', 'string')").alias("uid")))

    def gjo(df):
        return df.select(F.get_json_object(s, "$.ts").alias("ts"), F.get_json_object(s, "$.uid").alias("uid"))

    def arrow(fn):
        return lambda df: df.select("value").mapInArrow(fn, OUT_SCHEMA)

    def project(parser):
        return lambda df: parse_frames(df.select("value"), parser).select("ts", "uid")

    return {
        "from_json": from_json, "variant": variant, "get_json_object": gjo,
        "arrow_transfer": arrow(arrow_nulls), "orjson": arrow(arrow_orjson),
        "simdjson": arrow(arrow_simdjson), "duckdb": arrow(arrow_duckdb),
        "python": project("python"), "jvm": project("jvm"),
    }


def aggregate(parsed):
    """The parse-only action: aggregate ts and uid so the parse cannot be pruned."""
    from pyspark.sql import functions as F
    ts = F.expr("try_cast(ts AS bigint)")
    return parsed.agg(F.count(ts).alias("count_ts"), F.count("uid").alias("count_uid"),
                      F.max("uid").alias("max_uid"), F.sum(ts).alias("sum_ts")).collect()[0].asDict()


def timed(fn, repeat: int) -> tuple[float, list[float], dict]:
    times, res = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, res


def measure(spark, input_path: str, limit: int, partitions: int, repeat: int,
            only: list[str] | None = None) -> dict:
    """Build the cached input and time every path; returns the result dict."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    df = (spark.read.text(input_path).limit(limit).repartition(partitions)
          .select(F.col("value").cast("binary").alias("value"))
          .persist(StorageLevel.MEMORY_ONLY))
    n = df.count()
    mean_bytes = df.agg(F.avg(F.length("value"))).collect()[0][0]
    log(f"parsers: {n:,} frames cached in {partitions} partitions, mean {mean_bytes:,.0f} B")
    t_floor, times, _ = timed(lambda: df.agg(F.count("value")).collect(), repeat)
    rows = [{"name": "read_only", "seconds": round(t_floor, 3), "all_seconds": [round(t, 3) for t in times],
             "frames_per_s": round(n / t_floor, 1), "x_read_only": 1.0, "agrees": None}]
    log(f"parsers: read_only {n / t_floor:,.0f} frames/s")
    ref = None
    for name, fn in paths(spark).items():
        if only and name not in only:
            continue
        try:
            best, times, res = timed(lambda fn=fn: aggregate(fn(df)), repeat)
        except Exception as e:  # noqa: BLE001 - one failing path must not hide the others
            log(f"parsers: {name} failed: {str(e).splitlines()[0][:300]}")
            rows.append({"name": name, "error": str(e).splitlines()[0][:300], "note": NOTES.get(name)})
            continue
        rows.append({"name": name, "seconds": round(best, 3), "all_seconds": [round(t, 3) for t in times],
                     "frames_per_s": round(n / best, 1), "x_read_only": round(best / t_floor, 2),
                     "result": res, "note": NOTES.get(name)})
        if name == "jvm":
            ref = res
        log(f"parsers: {name} {n / best:,.0f} frames/s ({best / t_floor:.1f}× read-only)")
    for r in rows:
        if "result" in r and ref is not None and r["name"] != "arrow_transfer":
            r["agrees"] = r["result"] == ref
    df.unpersist()
    return {"frames": n, "mean_bytes": round(mean_bytes, 1), "partitions": partitions, "repeat": repeat,
            "reference": "jvm", "rows": rows}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/parsers.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="JSONL file (.gz ok)")
    ap.add_argument("--limit", type=int, default=200_000, help="frames to use (default 200000)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the cached input (default 4)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per path; the best counts (default 2)")
    ap.add_argument("--only", help="comma-separated path names (default: all)")
    ap.add_argument("--out", help="write the results as JSON here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    from doodlestats.runtime.cli import register_driver
    register_driver()  # PID for ./spark-submit.sh's SIGTERM forwarding; stderr past spark-submit
    args = parse_args(argv)
    if not Path(args.input).exists():
        log(f"parsers: error: input not found: {args.input}")
        return 2
    from bench.common import load_cfg
    from doodlestats.runtime.session import get_spark
    spark = get_spark("bench_parsers", load_cfg(), {"spark.sql.variant.allowDuplicateKeys": "true"})
    spark.conf.set("spark.sql.variant.allowDuplicateKeys", "true")
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    res = measure(spark, args.input, args.limit, args.partitions, args.repeat, only)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
