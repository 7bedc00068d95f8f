"""Batch backfill: history (files, a Kafka range, stdin) → the same Delta tables as the stream.

Reads JSONL / .gz files, folders and globs (local paths or URIs such as ``s3a://``), a
Kafka topic between two offsets or times, or standard input, and runs it through the
stream's own stages — parse, timestamp guard, quarantine, exact counting (with a
HyperLogLog sketch per minute as well, so both kinds of rollup work) — as Spark batch
jobs, one chunk at a time. Results are merged into ``minute_stats`` / ``minute_uids`` /
``quarantine``: users of a minute the stream (or an earlier backfill) already wrote are
the union of both, frames their sum.

Run it::

    ./spark-submit.sh jobs/backfill.py --input 'data/history/*.jsonl.gz'
    ./spark-submit.sh jobs/backfill.py --topic doodle --from 2016-07-11 --to 2016-07-12 --print
    zcat stream.jsonl.gz | ./spark-submit.sh jobs/backfill.py --input - --print

Chunks (files: ``--chunk-bytes`` of byte ranges, a big plain file cut; Kafka: every UTC ``--chunk`` day/hour
of record time, at most ``--chunk-frames``) are committed one by one with the chunk's
number as the Delta transaction version: a backfill killed half-way resumes at the
first unfinished chunk when started again with the same arguments, and running a
finished backfill again changes nothing. ``--print`` writes the final results as JSON
lines on stdout (the stream's schema); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401 - doodlestats importable from a clone

from doodlestats.batch.progress import Progress as Totals
from doodlestats.history.periods import parse_time
from doodlestats.io.kafka import KafkaUnavailable, check_kafka
from doodlestats.io.storage import configure_spark, delta_storage_options
from doodlestats.io.uris import is_uri, join
from doodlestats.runtime import cli
from doodlestats.runtime.config import ConfigError, load_config
from doodlestats.runtime.logs import logger

# The modules that import Spark (session, source, fs, pipeline, sinks) are imported in the
# functions that use them: --help and argument errors stay fast and need no Spark.

PROG = "backfill"
_log = logger(PROG)



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = cli.ArgumentParser(prog="jobs/backfill.py", description=__doc__)
    src = ap.add_argument_group("input (one of)")
    src.add_argument("--input", action="append", metavar="PATH",
                     help="file, folder or glob of JSONL / .gz (repeatable; a URI works), or - for stdin")
    src.add_argument("--topic", help="Kafka topic to read between --from and --to")
    src.add_argument("--from", dest="start", default="earliest",
                     help="Kafka: earliest (default), or a record time: epoch seconds or ISO-8601")
    src.add_argument("--to", dest="end", default="latest", help="Kafka: latest (default), or a record time")
    src.add_argument("--bootstrap-servers", help="Kafka bootstrap servers ([kafka] bootstrap_servers)")
    ch = ap.add_argument_group("chunks")
    ch.add_argument("--chunk", choices=["day", "hour"], default="day", help="Kafka: cut at every UTC day/hour")
    ch.add_argument("--chunk-frames", type=int, default=5_000_000, help="Kafka: at most this many frames a chunk")
    ch.add_argument("--chunk-bytes", type=int, default=4 << 30,
                    help="files: about this many bytes a chunk (4 GiB, ~2M frames; a bigger plain file is cut)")
    out = ap.add_argument_group("output")
    out.add_argument("--delta-path", help="root of the Delta tables ([paths] delta)")
    out.add_argument("--checkpoint", help="where the backfill keeps its progress (default: a folder below "
                                          "[paths] checkpoint named after the input)")
    out.add_argument("--print", action="store_true", help="final results as JSON lines on stdout")
    out.add_argument("--metrics-file", help="at the end, write run metrics as JSON")
    cnt = ap.add_argument_group("counting")
    cnt.add_argument("--parser", choices=["jvm", "python", "spark"], help="parse path ([job] parser)")
    cnt.add_argument("--rsd", type=float, help="relative standard deviation of the per-minute sketches")
    ap.add_argument("--conf-file", help="configuration file (default conf/doodle.toml)")
    args = ap.parse_args(argv)
    if bool(args.input) == bool(args.topic):
        ap.error("give either --input PATH (files or -) or --topic TOPIC")
    if args.input and "-" in args.input and len(args.input) > 1:
        ap.error("--input - (stdin) cannot be combined with other inputs")
    for name in ("chunk_frames", "chunk_bytes"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.topic:
        for flag, v in (("--from", args.start), ("--to", args.end)):
            if v not in ("earliest", "latest"):
                try:
                    parse_time(v)
                except ValueError as e:
                    ap.error(f"{flag}: {e}")
    return args


def run_id(args, delta: str) -> str:
    """Identity of a backfill: the same inputs, options and Delta root resume the same progress."""
    key = {"input": args.input, "topic": args.topic, "from": args.start, "to": args.end, "chunk": args.chunk,
           "chunk_frames": args.chunk_frames, "chunk_bytes": args.chunk_bytes, "delta": delta}
    if args.input == ["-"]:
        key["stdin"] = time.time()  # stdin cannot be read twice: every run is a new backfill
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class Progress:
    """done/total, frames, rate and ETA on stderr: one updating line on a terminal, a line
    per chunk otherwise."""

    def __init__(self, total_chunks: int, total_size: int, unit: str):
        self.total, self.total_size, self.unit = total_chunks, total_size, unit
        self.t0, self.done, self.size_done, self.frames = time.time(), 0, 0, 0
        self.tty = sys.stderr.isatty()

    def update(self, chunk_size: int, frames: int, label: str, skipped: bool = False) -> None:
        self.done += 1
        self.size_done += chunk_size
        self.frames += frames
        el = max(time.time() - self.t0, 1e-6)
        frac = self.size_done / self.total_size if self.total_size else self.done / max(self.total, 1)
        eta = el / frac * (1 - frac) if frac > 0 else 0
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        line = (f"backfill [{bar}] {self.done}/{self.total} chunks | {self.frames:,} frames | "
                f"{self.frames / el:,.0f} frames/s | ETA {int(eta) // 60}m{int(eta) % 60:02d}s | "
                f"{'skipped (done before) ' if skipped else ''}{label}")
        if self.tty:
            sys.stderr.write("\r" + line[:200].ljust(200))
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def stdin_inputs(spark, cfg, checkpoint: str, rid: str) -> list[str]:
    """stdin spooled to local files (and copied next to the checkpoint when that is a URI:
    executors elsewhere cannot see the driver's disk)."""
    from doodlestats.io import source
    from doodlestats.io.fs import HadoopFS
    local = os.path.join(str(cfg.path("checkpoint")) if not is_uri(checkpoint) else "/tmp", "backfill-stdin", rid)
    inputs = source.spool_stdin(local)
    if not is_uri(checkpoint):
        return inputs
    fs, up = HadoopFS(spark), []
    for p in inputs:
        dst = join(checkpoint, "stdin", os.path.basename(p))
        fs.write_bytes(dst, Path(p).read_bytes())
        up.append(dst)
    return up


def plan_chunks(spark, cfg, args, checkpoint: str, rid: str):
    """(chunks, unit) of the input: a Kafka range, files, or stdin (None if stdin was empty)."""
    from doodlestats.io import source
    if args.topic:
        return source.kafka_chunks(cfg, args.topic, args.start, args.end, args.chunk, args.chunk_frames), "frames"
    inputs = stdin_inputs(spark, cfg, checkpoint, rid) if args.input == ["-"] else args.input
    if not inputs:
        return None, "bytes"
    return source.file_chunks(spark, inputs, args.chunk_bytes), "bytes"


def open_spark(args, cfg, overrides: dict, delta: str, checkpoint: str):
    """The session (object-store settings included) and the config, falling back to the
    Python parser when the JVM one is not on the classpath."""
    from doodlestats.runtime.session import get_spark, has_fast_parser
    spark = get_spark("backfill", cfg)
    configure_spark(spark, cfg, checkpoint=checkpoint, outputs=[delta])
    if cfg.job.parser == "jvm" and not has_fast_parser(spark):
        _log.warning(f"{PROG}: warning: doodle-udf.jar is not on the classpath; falling back to --parser python")
        cfg = load_config(args.conf_file, {**overrides, "job.parser": "python"})
    return spark, cfg


def run_chunks(spark, cfg, args, chunks, unit: str, delta: str, checkpoint: str, rid: str) -> None:
    """Every chunk not done yet through the pipeline, then the open minutes as final."""
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.io.sinks import StdoutSink
    totals = Totals(show=False)
    pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, sinks=[StdoutSink()] if args.print else [],
                                   storage_options=delta_storage_options(delta, cfg),
                                   app_id=f"backfill:{rid}", sketches=True, on_batch=totals)
    total = sum(c.size for c in chunks)
    _log.info(f"{PROG}: {len(chunks)} chunk(s), {total:,} {unit} → {delta} | checkpoint {checkpoint}")
    bar = Progress(len(chunks), total, unit)
    started = time.time()
    for i, chunk in enumerate(chunks):
        if pipeline.done(i):
            bar.update(chunk.size, 0, chunk.label, skipped=True)
            continue
        rep = pipeline.process_batch(chunk.read(spark, cfg), i)
        bar.update(chunk.size, rep.frames, chunk.label)
    final = pipeline.flush()
    q = " ".join(f"{k}={v}" for k, v in sorted(totals.quarantined.items())) or "none"
    _log.info(f"{PROG}: done in {time.time() - started:.1f}s: {totals.totals['frames']:,} frames, "
              f"{totals.totals['counted']:,} counted, quarantined {q}; {len(final)} minute(s) final at the end")
    if args.metrics_file:
        Path(args.metrics_file).write_text(json.dumps({
            **totals.totals, "seconds": round(time.time() - started, 3), "chunks": len(chunks),
            "quarantined": dict(totals.quarantined)}, indent=1))


def body(args) -> int:
    from doodlestats.runtime.session import require_connectors
    overrides = {"kafka.bootstrap_servers": args.bootstrap_servers, "job.parser": args.parser, "job.rsd": args.rsd,
                 "job.mode": "exact", "paths.delta": args.delta_path}
    try:
        cfg = load_config(args.conf_file, overrides)
        require_connectors(kafka=bool(args.topic), prog=PROG)
        if args.topic:  # before Spark: refused credentials/certificate or no broker, in one line
            check_kafka(cfg, need_input=False)
    except (ConfigError, KafkaUnavailable) as e:
        raise cli.JobError(str(e)) from None
    delta = str(cfg.path("delta"))
    rid = run_id(args, delta)
    checkpoint = args.checkpoint or join(str(cfg.path("checkpoint")), "backfill", rid)
    spark, cfg = open_spark(args, cfg, overrides, delta, checkpoint)
    try:
        try:
            chunks, unit = plan_chunks(spark, cfg, args, checkpoint, rid)
        except (FileNotFoundError, ValueError) as e:  # no such input, no such topic
            raise cli.JobError(str(e)) from None
        if chunks is None:
            _log.info(f"{PROG}: stdin was empty, nothing to do")
            return cli.OK
        run_chunks(spark, cfg, args, chunks, unit, delta, checkpoint, rid)
    finally:
        spark.stop()
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, parse_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
