"""The replaced job, reimplemented faithfully as the baseline: ONE Python process,
a confluent-kafka Consumer and orjson, a set of uids per minute, and a minute's
count printed only when a later minute shows up (so the newest minute is never
printed while the stream runs — the behaviour the product job replaced).

    python -m bench.old_consumer --topic bench-1000000 [--metrics-file m.json]

It reads every partition of the topic from the beginning (``assign``, no consumer
group) and exits at the end of the topic. Frames of a minute that was already
printed are dropped (counted as ``late``); frames it cannot parse are skipped
(``bad``). stdout: one ``<minute ISO> <unique users>`` line per printed minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import orjson


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.old_consumer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topic", required=True, help="topic to read from the beginning")
    ap.add_argument("--bootstrap-servers", help="default: [kafka] bootstrap_servers")
    ap.add_argument("--metrics-file", help="write {frames, seconds, ...} here as JSON at the end")
    ap.add_argument("--quiet", action="store_true", help="do not print the minute lines")
    return ap.parse_args(argv)


def consume(bootstrap: str, topic: str, out=sys.stdout) -> dict:
    """Consume ``topic`` to its end; print minute counts the old way; return metrics."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from doodlestats.batch.results import iso
    t_start = time.time()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-old-consumer",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "fetch.max.bytes": 52428800, "queued.min.messages": 200000})
    md = c.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        raise SystemExit(f"old_consumer: error: topic {topic!r} does not exist")
    parts = sorted(md.partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    eof: set[int] = set()
    minutes: dict[int, set] = {}
    current = None            # newest minute seen
    frames = bad = late = printed = 0
    t_first = None
    loads = orjson.loads
    while len(eof) < len(parts):
        for msg in c.consume(1000, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                raise SystemExit(f"old_consumer: error: {err}")
            if t_first is None:
                t_first = time.time()
            frames += 1
            try:
                d = loads(msg.value())
                ts, uid = int(d["ts"]), d["uid"]
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            m = ts - ts % 60
            if current is None or m > current:
                # a later minute appeared: every older minute is done — print them
                for old in sorted(k for k in minutes if k < m):
                    if out is not None:
                        out.write(f"{iso(old)} {len(minutes[old])}\n")
                    printed += 1
                    del minutes[old]
                current = m
            elif m < current:
                late += 1     # its minute was already printed (the old job dropped it)
                continue
            minutes.setdefault(m, set()).add(uid)
    t_end = time.time()
    c.close()
    if out is not None:
        out.flush()
    return {"frames": frames, "bad": bad, "late": late, "minutes_printed": printed,
            "minutes_unprinted": len(minutes),
            "seconds": round(t_end - t_start, 3),                       # incl. connect + assign
            "seconds_from_first": round(t_end - (t_first or t_end), 3)}


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import load_cfg, require_broker
    cfg = load_cfg(args.bootstrap_servers)
    require_broker(cfg, "old_consumer")
    m = consume(cfg.kafka.bootstrap_servers, args.topic, None if args.quiet else sys.stdout)
    print(f"old_consumer: {m['frames']:,} frames in {m['seconds']:.2f}s "
          f"({m['frames'] / max(m['seconds'], 1e-9):,.0f} frames/s), {m['minutes_printed']} minutes printed, "
          f"{m['minutes_unprinted']} never printed, late {m['late']}, bad {m['bad']}", file=sys.stderr)
    if args.metrics_file:
        Path(args.metrics_file).write_text(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
