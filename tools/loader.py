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

Pacing (chaos and soak runs): ``--rate N`` produces at most N frames per second, evenly
(frame i is due at start + i/N; after a stall at most 10 ms worth of frames go out at
once, so no window is much above N). ``--live`` paces by the frames' own root ``ts``
(the file's time spacing replayed, ``--speed F`` times faster; jumps of more than 10 s
are not waited for); both together: live, capped at N/s.
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


class Pacer:
    """Holds a producer to at most ``rate`` frames/s (``None``: no cap) and, with ``live``,
    to the spacing of the frames' own ``ts`` divided by ``speed``.

    Call :meth:`wait` before each frame with that frame's ``ts`` (``None`` if unknown).
    A schedule, not a per-frame sleep: frame i is due at ``t0 + i / rate``, and the
    loop sleeps only when it is ahead of the schedule by >= 0.2 ms, so 10,000 frames/s
    hold on a busy 2-core box. After a stall (GC, a slow broker) the schedule forgives
    all but ``burst_s`` of the lag: a stall is never followed by a burst above the rate.

    Example::

        pace = Pacer(rate=5000)
        for frame in frames:
            pace.wait()
            produce(frame)
    """

    LIVE_MAX_JUMP_S = 10.0

    def __init__(self, rate: float | None = None, live: bool = False, speed: float = 1.0,
                 burst_s: float = 0.01, clock=time.monotonic, sleep=time.sleep):
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.step = 1.0 / rate if rate else 0.0
        self.live, self.speed, self.burst_s = live, speed, burst_s
        self.clock, self.sleep = clock, sleep
        self.next = None          # when the next frame is due by the rate
        self.live_t0 = self.live_ts0 = None   # the live clock's origin: wall time, frame time
        self.live_ts = None                   # frame time the live clock has reached

    @property
    def active(self) -> bool:
        return bool(self.step or self.live)

    def wait(self, ts: float | None = None) -> None:
        now = self.clock()
        due = now
        if self.step:
            if self.next is None:
                self.next = now
            elif now - self.next > self.burst_s:
                self.next = now - self.burst_s   # a stall earns no burst
            due = self.next
            self.next += self.step
        if self.live and ts is not None:
            if self.live_t0 is None:
                self.live_t0, self.live_ts0, self.live_ts = now, ts, ts
            elif ts - self.live_ts > self.LIVE_MAX_JUMP_S:
                # a gap in the data or a wild ts: not waited for, the clock restarts here
                self.live_t0, self.live_ts0, self.live_ts = max(now, self._live_due()), ts, ts
            elif ts > self.live_ts:
                self.live_ts = ts        # frames with older ts (delayed ones) go out at once
            due = max(due, self._live_due())
        delay = due - now
        if delay >= 0.0002:
            self.sleep(delay)

    def _live_due(self) -> float:
        return self.live_t0 + (self.live_ts - self.live_ts0) / self.speed


def _seconds(t) -> float | None:
    """A frame's ``ts`` value as seconds (number or numeric string), else None."""
    if isinstance(t, str):
        try:
            t = float(t)
        except ValueError:
            return None
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def load(path: str, bootstrap: str, topic: str, key: str = "uid", progress: bool = True,
         compression: str = "none", rate: float | None = None, live: bool = False,
         speed: float = 1.0) -> int:
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
    pacer = Pacer(rate, live, speed)
    pace = pacer.wait if pacer.active else None
    parser = None
    if key == "uid" or live:
        import simdjson
        parser = simdjson.Parser()
    produce, poll = producer.produce, producer.poll
    n = 0
    t0 = last = time.monotonic()
    for line in open_lines(path):
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        k = ts = None
        if parser is not None:
            try:
                doc = parser.parse(line)
                if key == "uid":
                    u = doc.get("uid") if isinstance(doc, simdjson.Object) else None
                    k = u.encode() if isinstance(u, str) else None
                if live:
                    ts = _seconds(doc.get("ts") if isinstance(doc, simdjson.Object) else None)
                del doc
            except (ValueError, RuntimeError):
                k = ts = None
        if pace is not None:
            pace(ts)
        while True:
            try:
                produce(topic, line, k, on_delivery=on_delivery)
                break
            except BufferError:
                poll(0.05)
        n += 1
        if n % 20_000 == 0 or (pace is not None and n % 500 == 0):
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
    ap.add_argument("--rate", type=float, metavar="N",
                    help="produce at most N frames/s, evenly paced (default: as fast as possible)")
    ap.add_argument("--live", action="store_true",
                    help="pace by the frames' own root ts spacing (with --rate: also capped at N/s)")
    ap.add_argument("--speed", type=float, default=1.0, metavar="F",
                    help="with --live: replay F times faster than the frames' time (default 1)")
    ap.add_argument("--once", action="store_true",
                    help="skip if this file was already loaded into the topic (used by `make run`)")
    ap.add_argument("--conf-file")
    args = ap.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        ap.error("--rate must be > 0")
    if args.speed <= 0:
        ap.error("--speed must be > 0")
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
        n = load(args.input, bootstrap, topic, key=args.key, compression=args.compression,
                 rate=args.rate, live=args.live, speed=args.speed)
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
