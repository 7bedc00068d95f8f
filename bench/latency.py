"""Live latency: replay frames at live rate into a fresh topic while the job runs live,
and measure how late its minute results are.

    python -m bench.latency --input data/stream.jsonl.gz --duration 150 [--out l.json]

1. Start ``./spark-submit.sh jobs/minute_stats.py --trigger 1`` (live, no
   ``--available-now``) on a fresh input topic, output topic, Delta path and
   checkpoint; wait until it prints its first ``batch`` line on stderr.
2. Replay the frames at live rate: each frame's root ``ts`` is rewritten (orjson) to
   ``T0 + (ts - first_ts)`` — ``T0`` the next whole second of the wall clock — and the
   frame is produced during that very wall-clock second (the frames of one event
   second are spread evenly over it). So a frame's event time is its production time,
   floored to the second, and the relative order and the per-second counts of the
   file are kept (~1,000 frames/s on average; the file is replayed in a loop if it is
   shorter than ``--duration``).
3. Consume the output topic while it runs; stop the job with SIGTERM (it stops after
   the current batch; SIGKILL of its process tree only after 60 s); delete the topics.
   Starting, watching and stopping the job is ``bench.livejob.LiveJob``'s.

Definitions (all times are this machine's wall clock; the job stamps ``emitted_at``):

* provisional latency of a provisional result for minute m with ``frames`` = F:
  ``emitted_at − production time of the F-th frame of minute m``. A result counting F
  frames of m can only exist once the F-th frame was produced, so this is how long
  it took that newest counted frame to show in a published count (the frames of a
  batch are approximately a prefix of production order: 3 partitions, read at the
  same instant).
* final latency: ``emitted_at(final) − minute end`` (``m + 60``). The watermark alone
  makes this ≥ ``watermark_s`` (5 s): a minute closes when a frame ≥ 5 s past its
  end has been counted.

Targets: provisional within 2 s, final within watermark + 2 s (p99). ``provisional_warm``
repeats the provisional statistics without the first 15 s of the replay (the first
batches of a fresh JVM are slow); the targets are judged on all results.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

try:
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, BenchError, RssSampler, delete_topics, drop_tables, load_cfg, rel, say, summary
from bench.livejob import LiveJob, ResultReader

WARMUP_S = 15          # provisional_warm ignores results emitted in the first 15 s of the replay


# --------------------------------------------------------------------------- replay
def replay_schedule(lines: list[bytes]):
    """Yield ``(line, second_offset, index_in_second, frames_in_second)`` forever
    (looping over ``lines``), keeping the file's event-time seconds."""
    import orjson
    ts = []
    for line in lines:
        try:
            t = orjson.loads(line).get("ts")
            ts.append(int(t))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            ts.append(None)
    valid = [t for t in ts if t is not None]
    if not valid:
        raise BenchError("no frame with a root ts in the replay input")
    first, span = valid[0], max(valid) - valid[0] + 1
    groups: dict[int, list[bytes]] = {}
    last = 0
    for line, t in zip(lines, ts):
        if t is None:
            continue
        off = max(t - first, last)   # never back in time: a delayed frame joins the current second
        last = off
        groups.setdefault(off, []).append(line)
    order = sorted(groups)
    cycle = 0
    while True:
        for off in order:
            g = groups[off]
            for j, line in enumerate(g):
                yield line, cycle * span + off, j, len(g)
        cycle += 1


class Replayer:
    """Produces frames at live rate with rewritten ``ts`` and records production times."""

    def __init__(self, bootstrap: str, topic: str, lines: list[bytes]):
        from confluent_kafka import Producer
        self.topic = topic
        self.lines = lines
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                                  "enable.idempotence": True})  # no compression on loopback, like the loader
        self.produced: dict[int, list[float]] = {}   # minute -> production times in order
        self.frames = 0
        self.max_behind = 0.0
        self.errors: list[str] = []

    def run(self, t0: int, duration: float, stop: threading.Event) -> None:
        import orjson
        produce, poll = self.producer.produce, self.producer.poll
        end = t0 + duration

        def on_delivery(err, _m):
            if err is not None:
                self.errors.append(str(err))

        for line, off, j, cnt in replay_schedule(self.lines):
            if stop.is_set():
                break
            target = t0 + off + j / cnt
            if target >= end:
                break
            now = time.time()
            if target > now:
                time.sleep(target - now)
            else:
                self.max_behind = max(self.max_behind, now - target)
            d = orjson.loads(line)
            new_ts = t0 + off
            d["ts"] = str(new_ts) if isinstance(d.get("ts"), str) else new_ts
            uid = d.get("uid")
            while True:
                try:
                    produce(self.topic, orjson.dumps(d), uid.encode() if isinstance(uid, str) else None,
                            on_delivery=on_delivery)
                    break
                except BufferError:
                    poll(0.01)
            self.produced.setdefault(new_ts - new_ts % 60, []).append(time.time())
            self.frames += 1
            if self.frames % 200 == 0:
                poll(0)
        self.producer.flush(30)


# --------------------------------------------------------------------------- statistics
def _epoch(iso_ms: str) -> float:
    return datetime.fromisoformat(iso_ms.replace("Z", "+00:00")).timestamp()


def latencies(results: list[tuple[float, dict]], produced: dict[int, list[float]],
              warm_from: float | None = None) -> dict:
    """Provisional and final latency statistics (see the module docstring).

    ``provisional_warm`` leaves out results emitted before ``warm_from`` (the first
    live batches of a fresh JVM are slow; a live job runs for days)."""
    prov, warm, final, publish, beyond = [], [], [], [], 0
    for recv, r in results:
        m, n, status = r.get("ts"), r.get("frames"), r.get("status")
        if m is None or "emitted_at" not in r:
            continue
        emitted = _epoch(r["emitted_at"])
        publish.append(recv - emitted)
        if status == "provisional":
            times = produced.get(m, [])
            if 0 < n <= len(times):
                prov.append(emitted - times[n - 1])
                if warm_from is None or emitted >= warm_from:
                    warm.append(emitted - times[n - 1])
            else:
                beyond += 1
        elif status == "final":
            final.append(emitted - (m + 60))
    return {"provisional": summary(prov), "provisional_warm": summary(warm), "final": summary(final),
            "kafka_delivery": summary(publish),
            "provisional_unmatched": beyond,
            "results": {s: sum(1 for _, r in results if r.get("status") == s)
                        for s in ("provisional", "final", "corrected")}}


def batch_times(stderr: Path) -> dict:
    """Per-batch processing seconds of the live job (its ``batch N: ... in X s`` lines)."""
    from bench.rows import step_timings
    b = [x["seconds"] for x in step_timings(stderr).get("batch_log", []) if x["frames"] > 0]
    return summary(b)


# --------------------------------------------------------------------------- main
def measure(input_path: Path, duration: float, work: Path, bootstrap: str | None = None,
            mode: str = "exact", trigger: float = 1.0, max_lines: int = 300_000) -> dict:
    """Run the whole live experiment; returns the result dict."""
    from bench.common import fresh_dir, read_lines
    from tools.kafka_local import ensure_topic
    cfg = load_cfg(bootstrap)
    stamp = time.strftime("%Y%m%d%H%M%S")
    topic, out_topic = f"bench-live-{stamp}", f"bench-live-out-{stamp}"
    run_dir = fresh_dir(work / "latency")
    lines = read_lines(input_path, min(int(duration * 1000 * 1.1) + 1000, max_lines))
    say(f"latency: {len(lines):,} frames from {input_path.name} to replay for {duration:.0f}s; "
        f"topics {topic} → {out_topic}")
    ensure_topic(cfg, topic, cfg.kafka.input_partitions)
    ensure_topic(cfg, out_topic, 1)
    job = LiveJob(["--trigger", trigger, "--topic", topic, "--output-topic", out_topic, "--mode", mode,
                   "--delta-path", run_dir / "delta", "--checkpoint", run_dir / "checkpoint",
                   "--bootstrap-servers", cfg.kafka.bootstrap_servers], run_dir)
    reader = ResultReader(cfg.kafka.bootstrap_servers, out_topic)
    reader.start()
    try:
        t_start = time.monotonic()
        job.start()
        with RssSampler(job.proc.pid) as rss:
            ready_s = job.wait_ready()
            say(f"latency: job ready after {ready_s:.0f}s (first batch line); replaying")
            rep = Replayer(cfg.kafka.bootstrap_servers, topic, lines)
            t0 = math.ceil(time.time()) + 1
            rep.run(t0, duration, threading.Event())
            say(f"latency: replayed {rep.frames:,} frames in {time.time() - t0:.0f}s "
                f"(max {rep.max_behind:.2f}s behind schedule); letting the job catch up")
            time.sleep(min(15.0, 5 + 3 * trigger))
            stopped = job.stop()
            say(f"latency: job {stopped}")
    finally:
        if job.alive():
            job.kill()
        reader.close()
        delete_topics(cfg, [topic, out_topic])
        drop_tables(run_dir)
    with open(run_dir / "results.jsonl", "w") as fh:   # raw material for later analysis
        for recv, r in reader.results:
            fh.write(json.dumps({"received": recv, **r}) + "\n")
    res = {"duration_s": duration, "rate_per_s": round(rep.frames / duration, 1), "frames": rep.frames,
           "mode": mode, "trigger_s": trigger, "watermark_s": cfg.job.watermark_s,
           "job_ready_s": round(ready_s, 1), "replay_max_behind_s": round(rep.max_behind, 3),
           "producer_errors": rep.errors[:3], "job_stop": stopped, "peak_rss_mb": rss.peak_mb,
           "job_wall_s": round(time.monotonic() - t_start, 1), "batch_seconds": batch_times(job.err),
           **latencies(reader.results, rep.produced, t0 + WARMUP_S), "job_stderr": rel(job.err)}
    p, f = res["provisional"], res["final"]
    say(f"latency: provisional p50 {p['p50_s']}s p99 {p['p99_s']}s (n={p['n']}); "
        f"final p50 {f['p50_s']}s p99 {f['p99_s']}s (n={f['n']})")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="JSONL file (.gz ok) to replay")
    ap.add_argument("--duration", type=float, default=150, help="replay seconds (default 150)")
    ap.add_argument("--mode", choices=["exact", "approx"], default="exact", help="job mode (default exact)")
    ap.add_argument("--trigger", type=float, default=1.0, help="job trigger interval, s (default 1)")
    ap.add_argument("--bootstrap-servers", help="default: [kafka] bootstrap_servers")
    ap.add_argument("--work", default=str(REPO_ROOT / "bench" / ".work" / "runs"), help="scratch directory")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    from bench.common import broker, guarded, write_json

    def go() -> int:
        with broker(load_cfg(args.bootstrap_servers), may_start=False):
            res = measure(Path(args.input), args.duration, Path(args.work), args.bootstrap_servers, args.mode,
                          args.trigger)
        print(json.dumps(res, indent=1))
        if args.out:
            write_json(Path(args.out), res)
        return 0
    return guarded("latency", go)


if __name__ == "__main__":
    sys.exit(main())
