"""Sources of raw frames for the batch backfill, normalised to the pipeline's columns
(``value``, ``topic``, ``partition``, ``offset``, ``file``, ``line``) and cut into
chunks that are processed (and resumed) one at a time.

==================== ==================================================================
files                JSONL, ``.gz`` or ``.bz2`` files, folders and globs, local or any URI
                     Spark reads (``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``); chunks
                     of byte ranges, sorted by name, up to ``chunk_bytes`` each (a big
                     plain file is cut; gzip stays whole); read by one task per split
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

import gzip
import json
import os
import sys
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from doodlestats.batch.stages import source_columns
from doodlestats.history.periods import parse_time
from doodlestats.io.kafka import client_settings, spark_kafka_options
from doodlestats.runtime.logs import logger
from doodlestats.runtime.session import has_fast_parser

__all__ = ["Chunk", "file_chunks", "read_ranges", "splittable", "kafka_chunks", "spool_stdin"]

_log = logger(__name__)


@dataclass
class Chunk:
    """One unit of backfill work: byte ranges of files or per-partition Kafka offset ranges."""

    label: str
    ranges: list[tuple[str, int, int]] = field(default_factory=list)  # (file, first byte, bytes)
    topic: str | None = None
    start: dict[int, int] = field(default_factory=dict)   # partition -> first offset
    end: dict[int, int] = field(default_factory=dict)     # partition -> offset after the last
    size: int = 0                                          # bytes (files) or frames (Kafka)

    def read(self, spark, cfg):
        """The chunk as a static DataFrame with the pipeline's source columns."""
        if self.ranges:
            return read_ranges(spark, self.ranges)
        offsets = {self.topic: {str(p): o for p, o in self.start.items()}}
        ending = {self.topic: {str(p): o for p, o in self.end.items()}}
        tasks = max(cfg.job.min_partitions, spark.sparkContext.defaultParallelism,
                    -(-self.size // cfg.job.frames_per_task))
        return (spark.read.format("kafka")
                .options(**spark_kafka_options(cfg))
                .option("subscribe", self.topic)
                .option("startingOffsets", json.dumps(offsets)).option("endingOffsets", json.dumps(ending))
                .option("minPartitions", str(tasks))  # offset ranges split: every core reads
                .option("kafka.max.partition.fetch.bytes", str(4 << 20))  # see jobs/minute_stats.py FETCH_BYTES
                .load()
                .transform(source_columns))


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


#: Compressed files Hadoop cannot split: one task reads each whole (bzip2 and plain split).
WHOLE_FILE_SUFFIXES = (".gz", ".deflate", ".zst", ".lz4", ".snappy")
#: The smallest split of a byte-range read (below it, a task's fixed cost dominates).
MIN_SPLIT_BYTES = 4 << 20


def splittable(uri: str) -> bool:
    """Whether a file can be read in byte ranges (plain text, bzip2)."""
    return not uri.lower().endswith(WHOLE_FILE_SUFFIXES)


def file_chunks(spark, inputs: list[str], chunk_bytes: int) -> list[Chunk]:
    """Files in name order as byte ranges grouped into chunks of about ``chunk_bytes``. A
    splittable file larger than that is cut into ranges of ``chunk_bytes`` (each line
    belongs to the range it starts in, see :func:`read_ranges`) — not without the jar,
    whose absence means whole files read as Spark text."""
    cut = has_fast_parser(spark)
    files = _expand(spark, inputs)
    chunks: list[Chunk] = []
    for uri, size in files:
        step = chunk_bytes if cut and splittable(uri) else max(size, 1)
        for at in range(0, max(size, 1), step):
            n = min(step, size - at)
            if not chunks or chunks[-1].size + n > chunk_bytes:
                chunks.append(Chunk(label=""))
            chunks[-1].ranges.append((uri, at, n))
            chunks[-1].size += n
    sizes = dict(files)
    for c in chunks:
        c.label = _label(c.ranges, sizes)
    return chunks


def _label(ranges: list[tuple[str, int, int]], sizes: dict[str, int]) -> str:
    names = [uri.rsplit("/", 1)[-1] for uri, _, _ in ranges]
    if len(ranges) > 1:
        return f"{names[0]} … {names[-1]} ({len(ranges)} files)"
    uri, at, n = ranges[0]
    return names[0] if n == sizes[uri] else f"{names[0]} bytes {at:,}…{at + n:,}"


def read_ranges(spark, ranges: list[tuple[str, int, int]]):
    """The lines of byte ranges of files with the pipeline's source columns, read by as
    many tasks as splits: a range is cut into splits of Spark's ``maxPartitionBytes`` or
    less, so that every core has one (at least :data:`MIN_SPLIT_BYTES`). Each row has its
    ``file`` and ``byte_offset``; ``partition``/``offset`` are the split and the line's
    index in it. Needs ``doodle-udf.jar``; without it, whole files are read as Spark text
    (one task a file) and numbered by line (:func:`doodlestats.batch.stages.with_file_positions`)."""
    if not has_fast_parser(spark):
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 40))
        spark.conf.set("spark.sql.files.openCostInBytes", str(1 << 40))
        return (spark.read.format("text").load([r[0] for r in ranges])
                .select(F.col("value").cast("binary").alias("value"), F.col("_metadata.file_path").alias("file")))
    js = spark._jsparkSession
    total = sum(n for _, _, n in ranges)
    split = min(js.sessionState().conf().filesMaxPartitionBytes(),
                max(MIN_SPLIT_BYTES, -(-total // spark.sparkContext.defaultParallelism)))
    text = "\n".join(f"{uri}\t{at}\t{n}" for uri, at, n in ranges)
    return source_columns(DataFrame(spark._jvm.doodle.udf.LineRanges.read(js, text, split), spark))


def spool_stdin(folder: str, lines_per_file: int = 1_000_000, stream=None) -> list[str]:
    """Copy standard input into gzip files of ``lines_per_file`` lines below ``folder``
    (local); returns their paths. Progress on stderr."""
    os.makedirs(folder, exist_ok=True)
    if stream is None and os.environ.get("DOODLE_STDIN"):  # under ./spark-submit.sh: its stdin
        stream = open(os.environ["DOODLE_STDIN"], "rb")
    src = stream or sys.stdin.buffer
    paths: list[str] = []
    n, out, total = 0, None, 0
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
            _log.info(f"backfill: spooled {total:,} lines from stdin")
    if out is not None:
        out.close()
    return paths


# ---------------------------------------------------------------- Kafka
def kafka_chunks(cfg, topic: str, start: str | int | None, end: str | int | None, grain: str,
                 chunk_frames: int) -> list[Chunk]:
    """Offset ranges of ``topic`` between ``start`` and ``end`` (``earliest``/``latest``,
    or a time: epoch seconds / ISO-8601, matched against record timestamps), cut at every
    UTC ``grain`` (day or hour) boundary and at ``chunk_frames`` frames."""
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

        first = ({p: lo for p, (lo, _) in lo_hi.items()} if start in (None, "earliest")
                 else offsets_at(parse_time(str(start))))
        last = {p: hi for p, (_, hi) in lo_hi.items()} if end in (None, "latest") else offsets_at(parse_time(str(end)))
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
    chunks: list[Chunk] = []
    for a, z in zip(cuts, cuts[1:]):
        # split a day that holds more than chunk_frames frames into equal offset slices
        n = sum(z[p] - a[p] for p in parts)
        if n <= 0:
            continue
        k = max(1, -(-n // chunk_frames))
        for i in range(k):
            s = {p: a[p] + (z[p] - a[p]) * i // k for p in parts}
            e = {p: a[p] + (z[p] - a[p]) * (i + 1) // k for p in parts}
            size = sum(e[p] - s[p] for p in parts)
            if size:
                chunks.append(Chunk(label=f"{topic} offsets {sum(s.values()):,}…", topic=topic, start=s, end=e,
                                    size=size))
    return chunks


def _record_time(consumer, topic: str, offsets: dict[int, int], lo_hi: dict) -> int | None:
    """Smallest record timestamp (epoch s) at the given offsets, reading one record each."""
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
