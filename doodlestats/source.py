"""Sources of raw frames for the batch backfill, normalised to the pipeline's columns
(``value``, ``topic``, ``partition``, ``offset``, ``file``, ``line``) and cut into
chunks that are processed (and resumed) one at a time.

==================== ==================================================================
files                JSONL or ``.gz`` files, folders and globs, local or any URI Spark
                     reads (``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``); chunks of
                     whole files, sorted by name, up to ``chunk_bytes`` each
Kafka range          a topic between two offsets or record timestamps per partition;
                     chunks end at every UTC day (or hour) boundary of the record
                     timestamps and hold at most ``chunk_frames`` frames
stdin                lines spooled by the driver into files below the checkpoint (stdin
                     is the driver's by nature), then read as files
==================== ==================================================================

Example::

    chunks = file_chunks(spark, ["s3a://b/history/2016-*.jsonl.gz"], chunk_bytes=2 << 30)
    df = chunks[0].read(spark, cfg)          # one static DataFrame for the pipeline
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import sys
from dataclasses import dataclass, field

from doodlestats.kafka import client_settings, spark_kafka_options

__all__ = ["Chunk", "file_chunks", "kafka_chunks", "spool_stdin", "parse_time"]


@dataclass
class Chunk:
    """One unit of backfill work: a list of files or per-partition Kafka offset ranges."""

    label: str
    files: list[str] = field(default_factory=list)
    topic: str | None = None
    start: dict[int, int] = field(default_factory=dict)   # partition -> first offset
    end: dict[int, int] = field(default_factory=dict)     # partition -> offset after the last
    size: int = 0                                          # bytes (files) or frames (Kafka)

    def read(self, spark, cfg):
        """The chunk as a static DataFrame with the pipeline's source columns."""
        from pyspark.sql import functions as F
        if self.files:
            # one file = one split, read in order: the row index in a partition is its line
            spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 40))
            spark.conf.set("spark.sql.files.openCostInBytes", str(1 << 40))
            return (spark.read.format("text").load(self.files)
                    .select(F.col("value").cast("binary").alias("value"), F.col("_metadata.file_path").alias("file")))
        offsets = {self.topic: {str(p): o for p, o in self.start.items()}}
        ending = {self.topic: {str(p): o for p, o in self.end.items()}}
        return (spark.read.format("kafka")
                .options(**spark_kafka_options(cfg))
                .option("subscribe", self.topic)
                .option("startingOffsets", json.dumps(offsets)).option("endingOffsets", json.dumps(ending))
                .option("minPartitions", str(max(cfg.job.min_partitions, -(-self.size // cfg.job.frames_per_task))))
                .option("kafka.max.partition.fetch.bytes", str(4 << 20))  # see jobs/minute_stats.py FETCH_BYTES
                .load()
                .select("value", "topic", "partition", "offset",
                        F.lit(None).cast("string").alias("file"), F.lit(None).cast("bigint").alias("line")))


def parse_time(text: str) -> int:
    """Epoch seconds from ``1468244400``, ``2016-07-11``, ``2016-07-11T13:40:00Z`` (UTC if no zone)."""
    text = str(text).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use epoch seconds or ISO-8601, e.g. 2016-07-11T13:40:00Z)")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp())


# ---------------------------------------------------------------- files
def _expand(spark, inputs: list[str]) -> list[tuple[str, int]]:
    """(URI, size) of every file matched by ``inputs`` (files, folders, globs; any Hadoop
    file system), sorted by name; hidden files (``.``/``_``) are skipped."""
    jvm = spark.sparkContext._jvm
    conf = spark._jsparkSession.sessionState().newHadoopConf()
    out: dict[str, int] = {}

    def walk(fs, status):
        name = status.getPath().getName()
        if name.startswith((".", "_")):
            return
        if status.isDirectory():
            for child in fs.listStatus(status.getPath()):
                walk(fs, child)
        else:
            out[status.getPath().toString()] = int(status.getLen())

    for p in inputs:
        path = jvm.org.apache.hadoop.fs.Path(p)
        fs = path.getFileSystem(conf)
        matches = fs.globStatus(path)
        if not matches:
            raise FileNotFoundError(f"no input matches {p}")
        for st in matches:
            walk(fs, st)
    return sorted(out.items())


def file_chunks(spark, inputs: list[str], chunk_bytes: int) -> list[Chunk]:
    """Whole files, in name order, grouped into chunks of about ``chunk_bytes``."""
    chunks: list[Chunk] = []
    cur = Chunk(label="")
    for uri, size in _expand(spark, inputs):
        if cur.files and cur.size + size > chunk_bytes:
            chunks.append(cur)
            cur = Chunk(label="")
        cur.files.append(uri)
        cur.size += size
    if cur.files:
        chunks.append(cur)
    for c in chunks:
        first, last = c.files[0].rsplit("/", 1)[-1], c.files[-1].rsplit("/", 1)[-1]
        c.label = first if len(c.files) == 1 else f"{first} … {last} ({len(c.files)} files)"
    return chunks


def spool_stdin(folder: str, lines_per_file: int = 1_000_000, stream=None) -> list[str]:
    """Copy standard input into gzip files of ``lines_per_file`` lines below ``folder``
    (local); returns their paths. Progress on stderr."""
    import os
    os.makedirs(folder, exist_ok=True)
    if stream is None and os.environ.get("DOODLE_STDIN"):  # under ./spark-submit.sh: its stdin
        stream = open(os.environ["DOODLE_STDIN"], "rb")
    src = stream or sys.stdin.buffer
    paths, n, out, total = [], 0, None, 0
    for line in src:
        if out is None:
            paths.append(os.path.join(folder, f"stdin-{len(paths):05d}.jsonl.gz"))
            out = gzip.open(paths[-1], "wb", compresslevel=1)
        out.write(line if line.endswith(b"\n") else line + b"\n")
        n += 1
        total += 1
        if n >= lines_per_file:
            out.close()
            out, n = None, 0
            print(f"backfill: spooled {total:,} lines from stdin", file=sys.stderr, flush=True)
    if out is not None:
        out.close()
    return paths


# ---------------------------------------------------------------- Kafka
def kafka_chunks(cfg, topic: str, start: str | int | None, end: str | int | None, grain: str,
                 chunk_frames: int) -> list[Chunk]:
    """Offset ranges of ``topic`` between ``start`` and ``end`` (``earliest``/``latest``,
    or a time: epoch seconds / ISO-8601, matched against record timestamps), cut at every
    UTC ``grain`` (day or hour) boundary and at ``chunk_frames`` frames."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({**client_settings(cfg), "group.id": "doodle-backfill-plan",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=15).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise ValueError(f"topic {topic!r} does not exist")
        parts = sorted(md.partitions)
        lo_hi = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in parts}

        def offsets_at(t_s: int) -> dict[int, int]:
            got = c.offsets_for_times([TopicPartition(topic, p, t_s * 1000) for p in parts], timeout=15)
            return {tp.partition: (tp.offset if tp.offset >= 0 else lo_hi[tp.partition][1]) for tp in got}

        first = {p: lo for p, (lo, _) in lo_hi.items()} if start in (None, "earliest") else offsets_at(parse_time(start))
        last = {p: hi for p, (_, hi) in lo_hi.items()} if end in (None, "latest") else offsets_at(parse_time(end))
        # boundaries: the first record time of each partition .. its last, every day/hour
        step = 86400 if grain == "day" else 3600
        t0 = _record_time(c, topic, first, lo_hi)
        t1 = _record_time(c, topic, {p: max(o - 1, lo_hi[p][0]) for p, o in last.items()}, lo_hi)
        cuts = [first]
        if t0 is not None and t1 is not None:
            b = (t0 // step + 1) * step
            while b <= t1:
                at = offsets_at(b)
                cuts.append({p: min(max(at[p], first[p]), last[p]) for p in parts})
                b += step
        cuts.append(last)
    finally:
        c.close()
    chunks = []
    for a, b in zip(cuts, cuts[1:]):
        # split a day that holds more than chunk_frames frames into equal offset slices
        n = sum(b[p] - a[p] for p in parts)
        if n <= 0:
            continue
        k = max(1, -(-n // chunk_frames))
        for i in range(k):
            s = {p: a[p] + (b[p] - a[p]) * i // k for p in parts}
            e = {p: a[p] + (b[p] - a[p]) * (i + 1) // k for p in parts}
            size = sum(e[p] - s[p] for p in parts)
            if size:
                chunks.append(Chunk(label=f"{topic} offsets {sum(s.values()):,}…", topic=topic, start=s, end=e,
                                    size=size))
    return chunks


def _record_time(consumer, topic: str, offsets: dict[int, int], lo_hi: dict) -> int | None:
    """Smallest record timestamp (epoch s) at the given offsets, reading one record each."""
    from confluent_kafka import TopicPartition
    times = []
    for p, o in offsets.items():
        lo, hi = lo_hi[p]
        if not lo <= o < hi:
            continue
        consumer.assign([TopicPartition(topic, p, o)])
        m = consumer.poll(10)
        if m is not None and not m.error():
            times.append(m.timestamp()[1] // 1000)
    consumer.unassign()
    return min(times) if times else None
