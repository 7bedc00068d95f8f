"""Produce JSONL frames into Kafka: one line → one message.

    python -m tools.loader data/stream.jsonl.gz [--topic doodle] [--key uid|none]
    zcat x.jsonl.gz | python -m tools.loader -

The producer batches (linger 20 ms, 1 MiB batches), idempotently; compression is off by
default (on loopback it costs CPU and buys nothing; ``--compression lz4`` for a remote
broker). Gzip input is inflated by ISA-L in its own thread. Messages are
keyed by the frame's root ``uid`` (read with simdjson's lazy root lookup; frames that
cannot be parsed get no key), so that every frame of one user lands in one partition,
in file order: per-user order is kept and a partition's watermark is not skewed by one
heavy user. ``--key none`` skips that look-up (round-robin batches) when speed matters
more. A progress line goes to stderr every 2 s and a final count at the end; a delivery
failure makes the exit status non-zero (nothing is dropped silently).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from doodlestats.config import REPO_ROOT, ConfigError, load_config

MARKERS = REPO_ROOT / ".run" / "loaded"


def open_lines(path: str):
    """Binary line iterator over a JSONL file, a ``.gz`` file or ``-`` (stdin)."""
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    if p.suffix == ".gz":
        # ISA-L inflate in its own thread (GIL released): ~3x the speed of the gzip module
        from isal import igzip_threaded
        return igzip_threaded.open(p, "rb", threads=1)
    return open(p, "rb", buffering=1 << 20)


def topic_end_offsets(bootstrap: str, topic: str) -> int:
    """Sum of the high watermarks of ``topic`` (0 if it does not exist)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "doodle-loader-probe",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        total = 0
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += hi
        return total
    finally:
        c.close()


def load(path: str, bootstrap: str, topic: str, key: str = "uid", progress: bool = True,
         compression: str = "none") -> int:
    """Produce every line of ``path`` to ``topic``; returns the number of messages delivered."""
    from confluent_kafka import Producer

    failures: list[str] = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "batch.size": 1 << 20,
        "compression.type": compression,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1 << 20,
        "enable.idempotence": True,
        "acks": "all",
        "delivery.report.only.error": True,  # callbacks only for failures: 1M Python calls saved
    })
    parser = None
    if key == "uid":
        import simdjson
        parser = simdjson.Parser()
    produce, poll = producer.produce, producer.poll
    n = 0
    t0 = last = time.monotonic()
    for line in open_lines(path):
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        k = None
        if parser is not None:
            try:
                doc = parser.parse(line)
                u = doc.get("uid") if isinstance(doc, simdjson.Object) else None
                k = u.encode() if isinstance(u, str) else None
                del doc
            except (ValueError, RuntimeError):
                k = None
        while True:
            try:
                produce(topic, line, k, on_delivery=on_delivery)
                break
            except BufferError:
                poll(0.05)
        n += 1
        if n % 20_000 == 0:
            poll(0)
            now = time.monotonic()
            if progress and now - last >= 2:
                last = now
                print(f"load: {n:,} frames, {n / (now - t0):,.0f} frames/s", file=sys.stderr, flush=True)
    remaining = producer.flush(120)
    dt = time.monotonic() - t0
    if remaining or failures:
        raise RuntimeError(f"{len(failures) + remaining} of {n} messages were not delivered "
                           f"(first error: {failures[0] if failures else 'flush timed out'})")
    if progress:
        print(f"load: done, {n:,} frames into {topic} in {dt:.1f}s ({n / max(dt, 1e-9):,.0f} frames/s)",
              file=sys.stderr, flush=True)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.loader", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="JSONL file, .gz file, or - for stdin")
    ap.add_argument("--topic", help="target topic (default: [kafka] input_topic); created if missing")
    ap.add_argument("--bootstrap-servers", help="default: [kafka] bootstrap_servers")
    ap.add_argument("--key", choices=["uid", "none"], default="uid", help="message key (default uid)")
    ap.add_argument("--compression", choices=["none", "lz4", "zstd", "gzip", "snappy"], default="none",
                    help="producer compression (default none: on loopback it only costs CPU; "
                         "use lz4 for a remote broker)")
    ap.add_argument("--once", action="store_true",
                    help="skip if this file was already loaded into the topic (used by `make run`)")
    ap.add_argument("--conf-file")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.conf_file)
    except ConfigError as e:
        print(f"load: error: {e}", file=sys.stderr)
        return 2
    topic = args.topic or cfg.kafka.input_topic
    bootstrap = args.bootstrap_servers or cfg.kafka.bootstrap_servers
    from tools import kafka_local
    cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, bootstrap_servers=bootstrap))
    try:
        kafka_local.wait_ready(cfg, timeout=15)
    except kafka_local.BrokerError as e:
        print(f"load: error: Kafka at {bootstrap} does not answer ({e}) — run `make kafka-up`", file=sys.stderr)
        return 2
    marker = None
    if args.once and args.input != "-":
        p = Path(args.input).resolve()
        marker = MARKERS / f"{topic}--{p.name}--{p.stat().st_size}--{int(p.stat().st_mtime)}"
        if marker.exists():
            before = int(marker.read_text().split()[0])
            if topic_end_offsets(bootstrap, topic) >= before:
                print(f"load: {args.input} already loaded into {topic}; skipping (--once)", file=sys.stderr)
                return 0
    kafka_local.ensure_topic(cfg, topic, cfg.kafka.input_partitions)
    try:
        n = load(args.input, bootstrap, topic, key=args.key, compression=args.compression)
    except FileNotFoundError as e:
        print(f"load: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"load: error: {e}", file=sys.stderr)
        return 1
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{topic_end_offsets(bootstrap, topic)} {n}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
