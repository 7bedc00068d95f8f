"""Soak: the job live for minutes under >= 5,000 frames/s — consumer lag, memory over
time, latency, exactness.

    python -m bench.soak                                 # `make soak`: 5,000 frames/s for 20 min
    python -m bench.soak --rate 2000 --duration 60       # a smoke run (~3 min)
    python -m bench.soak --kafka-port 59092              # own broker on 127.0.0.1:59092

1. A fresh data set: ``rate × duration`` frames (default 1,650,000) from
   ``tools.generator`` with ``--rate R`` — the event clock advances R frames per second on
   average, so the data's time runs at the loader's pace — users 100k, seed 5,
   ``start_ts`` = now, no defects, with the generator's truth; in ``bench/.work/``
   (deleted after the run unless ``--keep``).
2. A fresh topic, Delta root and checkpoint (``bench.livejob.RunSpace``); the job live
   (1 s trigger, with its warm-up); once it printed its first batch line,
   ``python -m tools.loader FILE --rate R`` (subprocess) produces the file, evenly paced.
3. While it runs: every 0.5 s the topic's end offsets (the production timeline); every
   2 s the job's committed offsets (Spark's offset and commit logs in its checkpoint),
   the RSS of every process of the job's tree by class — ``driver JVM`` (in local mode
   it also runs the executors' tasks), ``python driver``, ``python workers`` (the
   pyspark daemon and its workers) — and the load average; every 10 s the driver JVM's
   heap (``jstat -gc``). The output topic is consumed as it is written.
4. After the load: the job drains, stops on SIGTERM, and a final ``--available-now``
   pass finalises the last minute; Delta and the last ``minuteStats`` value per key
   are checked against the truth (``bench.chaos.check_exact``).

Definitions:

* lag, frames: the topic's end minus the end offsets of the job's newest committed batch
  (summed over partitions); lag, seconds: the age of the oldest frame not committed yet
  (now − the moment the topic's end passed it, from the production timeline; 0 when
  caught up). A batch in progress counts as lag until it commits.
* provisional latency (``bench.latency.latencies``): ``emitted_at`` − production time of
  the F-th frame of the minute, F = the result's ``frames``; frame i of the file (in
  event-time order) was produced when the topic's end reached i + 1 (interpolated
  between samples, the loader produces in file order).
* final latency: ``emitted_at`` of the final result − the moment the stream reached the
  minute's end (the first frame of the next minute was produced). With event time =
  wall time this is ``bench.latency``'s "emitted_at − minute end".
* steady: from the moment the driver JVM's committed heap first reached 95 % of its
  largest size (it grows to its cap in the first ~3 minutes at 5,000 frames/s; RSS rises
  with it), not before a quarter of the load, at the latest the last third.
* memory flat: the least-squares slope of each class's RSS over the steady part of the
  load is at most ``FLAT_MB_PER_MIN`` (5 MB/min).
* live set flat: the driver JVM's live heap by class is recorded every ``--heap-every``
  seconds from a quarter into the load and at its end (``jcmd GC.class_histogram``, a
  full GC each: ~1 s pauses). Without ``byte[]`` and ``long[]`` (data buffers whose volume
  follows the batches in flight: it swings by ±150 MB) its slope over the steady samples
  is at most ``LIVE_FLAT_MB_PER_MIN`` (1 MB/min); and the live SparkSession count does
  not grow (Spark 4.0.1 kept one per micro-batch: +3.7 MB/min, invisible in RSS once the
  heap reached its cap). 20 minutes by default, so that the steady part is long enough
  to tell a slope of 1 MB/min.

Report: ``bench/results/soak-<date>.json``, ``.md`` and ``.png`` (lag and RSS over time);
with another ``--rate``/``--duration`` than the defaults in ``bench/.work/smoke/``.
"""

from __future__ import annotations

import argparse
import bisect
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import render
from bench.chaos import check, verdict
from bench.common import (
    GEN_PARAMS,
    RESULTS_DIR,
    WORK_DIR,
    percentile,
    process_tree,
    rel,
    say,
    summary,
)
from bench.latency import WARMUP_S, _epoch, batch_times, latencies
from bench.livejob import (
    FACTS,
    LiveJob,
    LoadAverage,
    Loader,
    Periodic,
    ResultReader,
    RunSpace,
    committed_offsets,
    common_args,
    conf_for,
    process_class,
    recorded,
    report_main,
    spark_flags,
    stop_all,
)

RATE, DURATION, SEED = 5000.0, 1200.0, 5
FLAT_MB_PER_MIN = 5.0
LIVE_FLAT_MB_PER_MIN = 1.0
#: instances counted in every live-heap sample whatever their size: a leak of per-batch
#: objects (Spark 4.0.1 kept every cloned SparkSession, SPARK-54753) shows here first
WATCH_CLASSES = ("org.apache.spark.sql.classic.SparkSession", "org.apache.spark.sql.execution.QueryExecution",
                 "org.apache.spark.broadcast.TorrentBroadcast", "org.apache.spark.sql.delta.Snapshot",
                 "org.apache.kafka.clients.consumer.KafkaConsumer")
SESSION_CLASS, SESSION_SLACK = WATCH_CLASSES[0], 10
HEAP_EVERY_S = 60.0   # live heap by class every minute from a quarter into the load
RATE_FLOOR = 0.99   # the loader's pacer never exceeds its rate and forgives stalls: it ends a bit below it
CLASSES = ("driver JVM", "python driver", "python workers")


# --------------------------------------------------------------------------- data
def soak_frames(rate: float, duration: float, users: int, seed: int, out_dir: Path) -> tuple[Path, dict]:
    """A fresh data set of ``rate × duration`` frames whose event time starts now."""
    from tools.generator import GenConfig, write
    n = int(rate * duration)
    path = out_dir / f"soak-{n}-r{rate:g}.jsonl.gz"
    say(f"soak: generating {n:,} frames (event rate {rate:g}/s, {users:,} users, seed {seed}) into {path}")
    t0 = time.monotonic()
    truth = write(GenConfig(count=n, rate=float(rate), users=users, seed=seed, start_ts=int(time.time())),
                  str(path), str(path.with_suffix("").with_suffix(".truth.json")), progress=False)
    say(f"soak: generated in {time.monotonic() - t0:.0f}s")
    return path, truth


# --------------------------------------------------------------------------- samples
class Timeline:
    """(time, topic end) samples, non-decreasing; :meth:`reach` is when the end first
    reached a count (linear between samples)."""

    def __init__(self):
        self.t: list[float] = []
        self.end: list[int] = []

    def add(self, t: float, end: int) -> None:
        if self.end and end < self.end[-1]:
            return
        self.t.append(t)
        self.end.append(end)

    def reach(self, x: int) -> float | None:
        i = bisect.bisect_left(self.end, x)
        if i >= len(self.end):
            return None
        if i == 0 or self.end[i] == self.end[i - 1]:
            return self.t[i]
        e0, e1, t0, t1 = self.end[i - 1], self.end[i], self.t[i - 1], self.t[i]
        return t0 + (t1 - t0) * (x - e0) / (e1 - e0)


class MinuteTimes:
    """Production times of the frames of one minute (file positions ``first``, ``first + 1``
    ...) as a sequence, for ``bench.latency.latencies``."""

    def __init__(self, timeline: Timeline, first: int, n: int):
        self.timeline, self.first, self.n = timeline, first, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> float:
        t = self.timeline.reach(self.first + k + 1)
        return t if t is not None else float("inf")


def minute_positions(truth: dict) -> dict[int, tuple[int, int]]:
    """minute → (file position of its first frame, frames) for a file in event-time order."""
    out, pos = {}, 0
    for m in sorted(truth["minutes"], key=lambda x: x["minute"]):
        out[m["minute"]] = (pos, m["frames"])
        pos += m["frames"]
    return out


def tree_rss(pid: int) -> tuple[dict[str, float], dict[str, int], int | None]:
    """RSS in MB and process count per class, and the JVM's PID."""
    import psutil
    rss = dict.fromkeys(CLASSES, 0.0)
    count = dict.fromkeys(CLASSES, 0)
    jvm = None
    tree = process_tree(pid)
    classes = {p.pid: process_class(p) for p in tree}
    for p in tree:
        cls = classes[p.pid]
        try:   # a JVM's child that is a JVM too is a fork about to exec (Hadoop's shell calls):
            fork = cls == "driver JVM" and classes.get(p.ppid()) == "driver JVM"   # its pages are the parent's
        except psutil.Error:
            continue
        if cls is None or fork:
            continue
        try:
            rss[cls] += p.memory_info().rss / 2**20
        except psutil.Error:
            continue
        count[cls] += 1
        jvm = p.pid if cls == "driver JVM" and jvm is None else jvm
    return {k: round(v, 1) for k, v in rss.items()}, count, jvm


def jvm_heap(pid: int) -> dict | None:
    """Heap used and committed (MB) and GC counts of a JVM, from ``jstat -gc``."""
    try:
        out = subprocess.run(["jstat", "-gc", str(pid)], capture_output=True, text=True, timeout=20).stdout
        head, vals = out.split("\n")[:2]
        g = {k: float(v) for k, v in zip(head.split(), vals.split()) if v != "-"}   # "-": not this GC's
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    used = sum(g.get(k, 0) for k in ("S0U", "S1U", "EU", "OU")) / 1024
    committed = sum(g.get(k, 0) for k in ("S0C", "S1C", "EC", "OC")) / 1024
    return {"heap_used_mb": round(used, 1), "heap_committed_mb": round(committed, 1),
            "young_gcs": int(g.get("YGC", 0)), "full_gcs": int(g.get("FGC", 0))}


def jvm_histogram(pid: int, top: int = 40) -> dict | None:
    """The JVM's live heap by class (``jcmd PID GC.class_histogram``, which runs a full GC
    first): total MB and the ``top`` classes by bytes."""
    try:
        out = subprocess.run(["jcmd", str(pid), "GC.class_histogram"], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows, total = [], None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith(":") and parts[1].isdigit():
            rows.append({"class": parts[3], "instances": int(parts[1]), "mb": round(int(parts[2]) / 2**20, 1)})
        elif parts[:1] == ["Total"] and len(parts) >= 3 and parts[2].isdigit():
            total = round(int(parts[2]) / 2**20, 1)
    if not rows:
        return None
    watch = {r["class"]: r["instances"] for r in rows if r["class"] in WATCH_CLASSES}
    return {"live_heap_mb": total, "top": sorted(rows, key=lambda r: -r["mb"])[:top],
            "watch": {c: watch.get(c, 0) for c in WATCH_CLASSES}}


class Sampler:
    """The samples of step 3 (see the module docstring), taken by one daemon thread."""

    def __init__(self, rs: RunSpace, job: LiveJob, tick: float = 0.5, heap_every: float = HEAP_EVERY_S):
        from confluent_kafka import Consumer
        self.rs, self.job, self.tick = rs, job, tick
        self.consumer = Consumer({"bootstrap.servers": rs.cfg.kafka.bootstrap_servers, "group.id": "bench-soak",
                                  "enable.auto.commit": False})
        self.partitions = sorted(self.consumer.list_topics(rs.topic, timeout=10).topics[rs.topic].partitions)
        self.timeline = Timeline()
        self.samples: list[dict] = []   # every 2 s: t, end, committed, rss, count, load1
        self.heap: list[dict] = []      # every 10 s
        self.histograms: list[dict] = []  # live heap by class: from a quarter into the load every
        self.histogram_at: float | None = None   # heap_every s, and at its end; epoch s of the next one
        self.heap_every = heap_every
        self.jvm: int | None = None
        self.n = 0
        self.thread = Periodic(tick, self.sample, "soak-sampler")

    def end(self) -> int:
        from confluent_kafka import TopicPartition
        return sum(self.consumer.get_watermark_offsets(TopicPartition(self.rs.topic, p), timeout=5)[1]
                   for p in self.partitions)

    def sample(self) -> None:
        t = time.time()
        end = self.end()
        self.timeline.add(t, end)
        self.n += 1
        if self.n % max(1, round(2 / self.tick)) and self.n > 1:
            return
        committed = sum(committed_offsets(self.rs.ckpt, self.rs.topic).values())
        rss, count, jvm = tree_rss(self.job.proc.pid) if self.job.alive() else ({}, {}, None)
        self.jvm = jvm or self.jvm
        self.samples.append({"t": t, "end": end, "committed": committed, "rss_mb": rss, "processes": count,
                             "load1": round(os.getloadavg()[0], 2)})
        if jvm is not None and self.n % max(1, round(10 / self.tick)) == 0:
            h = jvm_heap(jvm)
            if h:
                self.heap.append({"t": t, **h})
        if jvm is not None and self.histogram_at is not None and t >= self.histogram_at:
            self.histogram_at = t + self.heap_every if self.heap_every > 0 else None
            self.histogram()

    def histogram(self) -> None:
        """Record the driver JVM's live heap by class (a full GC: a pause of ~1 s)."""
        t = time.time()
        h = jvm_histogram(self.jvm) if self.jvm is not None else None
        if h:
            self.histograms.append({"t": t, **h})

    def lag(self, s: dict) -> tuple[int, float]:
        """(frames, seconds) of lag at sample ``s``."""
        frames = max(0, s["end"] - s["committed"])
        if not frames:
            return 0, 0.0
        t = self.timeline.reach(s["committed"] + 1)
        return frames, round(max(0.0, s["t"] - t), 3) if t is not None else 0.0

    def close(self) -> None:
        self.thread.halt()
        self.consumer.close()


# --------------------------------------------------------------------------- statistics
def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (epoch s, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return round(60 * sum((t - mt) * (v - mv) for t, v in points) / var, 2)


def steady_from(heap: list[dict], t0: float, t1: float) -> float:
    """Epoch s from which the load counts as steady: once the driver JVM's committed heap
    first reached 95 % of its largest size during the load (the heap grows to its cap in
    the first minutes: RSS rises with it, which is sizing, not a leak), and not before a
    quarter of the load; at the latest the last third."""
    during = [h for h in heap if t0 <= h["t"] <= t1]
    top = max((h["heap_committed_mb"] for h in during), default=0)
    grown = next((h["t"] for h in during if h["heap_committed_mb"] >= 0.95 * top), t0)
    return min(max(grown, t0 + (t1 - t0) / 4), t1 - (t1 - t0) / 3)


def memory(samples: list[dict], t0: float, t1: float, steady: float | None = None) -> dict:
    """Per class: RSS at the start and end of the load, max, slope over its steady part
    (from ``steady``, epoch s; default: the last 3/4)."""
    out = {}
    win = [s for s in samples if t0 <= s["t"] <= t1 and s["rss_mb"]]
    late = [s for s in win if s["t"] >= (steady if steady is not None else t0 + (t1 - t0) / 4)]
    for cls in (*CLASSES, "total"):
        def v(s, cls=cls):
            return sum(s["rss_mb"].values()) if cls == "total" else s["rss_mb"].get(cls, 0.0)
        vals = [v(s) for s in win]
        out[cls] = {"start_mb": round(vals[0], 1) if vals else None, "end_mb": round(vals[-1], 1) if vals else None,
                    "max_mb": round(max(vals), 1) if vals else None,
                    "slope_steady_mb_per_min": slope_mb_per_min([(s["t"], v(s)) for s in late])}
    return out


def final_latencies(results: list[tuple[float, dict]], timeline: Timeline, pos: dict) -> dict:
    """Final latency against the moment the stream reached the minute's end (see above)."""
    vals = []
    for _, r in results:
        nxt = pos.get(r.get("ts", 0) + 60)
        if r.get("status") != "final" or nxt is None:
            continue
        t = timeline.reach(nxt[0] + 1)
        if t is not None:
            vals.append(_epoch(r["emitted_at"]) - t)
    return summary(vals)


# --------------------------------------------------------------------------- the run
def run(conf: Path, rate: float, duration: float, users: int, seed: int, keep: bool,
        spark_flags: list | None = None, heap_every: float = HEAP_EVERY_S) -> dict:
    """The whole soak (steps 1–4 of the module docstring); the broker must answer at
    ``conf``'s address. Returns the result dict with ``checks`` and ``ok``."""
    rs = RunSpace.new(conf, "soak", WORK_DIR / "soak")
    inp, truth = soak_frames(rate, duration, users, seed, rs.run_dir)
    job = LiveJob(rs.args, rs.logs, spark_flags)
    reader = ResultReader(rs.cfg.kafka.bootstrap_servers, rs.out_topic)
    reader.start()
    live: dict = {"sampler": None, "loader": None}
    errors: list[str] = []
    facts: dict = dict.fromkeys(FACTS)
    t_wall0 = time.monotonic()

    def cleanup() -> None:
        if live["sampler"] is not None:
            live["sampler"].close()
        stop_all(live["loader"], job)
        reader.close()

    with LoadAverage() as load:
        with recorded("soak", errors, cleanup):
            _load(rs, job, live, inp, truth, rate, duration, heap_every, facts)
            facts.update(rs.finish(job, spark_flags))
        _, checks = verdict(rs, truth, errors)
    res = {"kind": "soak", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "frames": truth["frames"],
           "rate_target": rate, "duration_target_s": duration, "users": users, "seed": seed, "topic": rs.topic,
           "spark_flags": list(spark_flags or []), **facts, "errors": errors,
           "truth": {"minutes": len(truth["minutes"]), "valid_frames": truth["valid_frames"]},
           "load_average": load.summary(), "wall_s": round(time.monotonic() - t_wall0, 1),
           "batch_seconds": batch_times(rs.logs / "job-1.err"), "run_dir": rel(rs.run_dir)}
    if live["sampler"] is not None and facts.get("load_end"):
        res.update(measurements(live["sampler"], reader.results, truth, facts))
        checks.update(soak_checks(res, rate, duration))
    res["checks"] = checks
    res["ok"] = all(x["ok"] for x in checks.values())
    rs.clean(keep)
    if not keep:
        inp.unlink(missing_ok=True)
    return res


def _load(rs: RunSpace, job: LiveJob, live: dict, inp: Path, truth: dict, rate: float, duration: float,
          heap_every: float, facts: dict) -> None:
    """Start the job, then the sampler and the loader; wait for the end of the load."""
    job.start()
    facts["job_ready_s"] = round(job.wait_ready(), 1)
    sampler = live["sampler"] = Sampler(rs, job, heap_every=heap_every)
    sampler.thread.start()
    say(f"soak: job ready after {facts['job_ready_s']:.0f}s; loading {truth['frames']:,} frames at {rate:g}/s")
    facts["load_start"] = time.time()
    facts["event_minus_wall_s"] = round(truth["ts_min"] - facts["load_start"], 1)
    sampler.histogram_at = facts["load_start"] + duration / 4
    live["loader"] = Loader(inp, rs.topic, rs.conf, rate, rs.logs / "loader.err")
    facts["load_s"] = round(live["loader"].wait(), 1)
    sampler.histogram_at = None
    sampler.histogram()
    facts["load_end"] = facts["load_start"] + facts["load_s"]
    facts["rate_achieved"] = round(truth["frames"] / facts["load_s"], 1)
    say(f"soak: loaded in {facts['load_s']:.0f}s ({facts['rate_achieved']:,.0f}/s); draining")


def measurements(sampler: Sampler, results: list, truth: dict, facts: dict) -> dict:
    """Lag, memory, latency and the production rate from the samples and the results
    (``(receive time, value)`` pairs) of a run."""
    t0, t1 = facts["load_start"], facts["load_end"]
    steady = steady_from(sampler.heap, t0, t1)
    series = []
    for s in sampler.samples:
        lf, ls = sampler.lag(s)
        series.append({"t_s": round(s["t"] - t0, 1), "end": s["end"], "committed": s["committed"], "lag_frames": lf,
                       "lag_s": ls, "rss_mb": s["rss_mb"], "processes": s["processes"], "load1": s["load1"]})
    during = [x for x in series if 0 <= x["t_s"] <= t1 - t0]
    lf = [x["lag_frames"] for x in during]
    ls = [x["lag_s"] for x in during]
    pos = minute_positions(truth)
    produced = {m: MinuteTimes(sampler.timeline, first, n) for m, (first, n) in pos.items()}
    stopped = facts.get("stopped_at", time.time())
    live = [(recv, r) for recv, r in results if "emitted_at" in r and _epoch(r["emitted_at"]) <= stopped]
    lat = latencies(live, produced, t0 + WARMUP_S)
    # the slowest 10 s of the load, from the production timeline
    tl = sampler.timeline
    windows = [(tl.end[j] - tl.end[i]) / (tl.t[j] - tl.t[i]) for i in range(len(tl.t))
               for j in (bisect.bisect_left(tl.t, tl.t[i] + 10),) if j < len(tl.t) and t0 <= tl.t[i] and tl.t[j] <= t1]
    n1, n99 = truth["frames"] // 100, truth["frames"] * 99 // 100   # edges: the 0.5 s samples blur them
    first, last = tl.reach(n1), tl.reach(n99)
    return {
        "rate_produced": round((n99 - n1) / (last - first), 1) if first and last and last > first else None,
        "lag": {"samples": len(during), "frames_max": max(lf, default=None), "frames_p99": percentile(lf, 99),
                "frames_p50": percentile(lf, 50), "seconds_max": max(ls, default=None),
                "seconds_p99": percentile(ls, 99), "seconds_p50": percentile(ls, 50)},
        "rate_min_10s": round(min(windows), 1) if windows else None,
        "steady_from_s": round(steady - t0, 1),
        "memory": memory(sampler.samples, t0, t1, steady), "flat_criterion_mb_per_min": FLAT_MB_PER_MIN,
        "live_structure": live_structure(sampler.histograms, t0, steady),
        "jvm_heap": [{**h, "t_s": round(h["t"] - t0, 1)} for h in sampler.heap],
        "jvm_live_heap": [{**h, "t_s": round(h["t"] - t0, 1)} for h in sampler.histograms],
        "latency": {"provisional": lat["provisional"], "provisional_warm": lat["provisional_warm"],
                    "final": final_latencies(live, sampler.timeline, pos), "final_vs_event_clock": lat["final"],
                    "provisional_unmatched": lat["provisional_unmatched"], "results": lat["results"],
                    "kafka_delivery": lat["kafka_delivery"]},
        "series": series,
    }


def soak_checks(res: dict, rate: float, duration: float) -> dict:
    mem = res["memory"]
    flat = {c: mem[c]["slope_steady_mb_per_min"] for c in (*CLASSES, "total")}
    ls = res.get("live_structure") or {}
    return {
        f"loader held >= {RATE_FLOOR:.0%} of {rate:,.0f} frames/s": check(
            (res["rate_produced"] or 0) >= RATE_FLOOR * rate,
            f"{render.fmt_int(res['rate_produced'])} frames/s from the 1st to the 99th percentile frame (loader "
            f"process "
            f"{render.fmt_int(res['rate_achieved'])}/s incl. its start), slowest 10 s "
            f"{render.fmt_int(res['rate_min_10s'])}/s"),
        f"load lasted >= {duration:.0f} s": check((res["load_s"] or 0) >= duration * 0.99, f"{res['load_s']} s"),
        **sessioncheck(res.get("jvm_live_heap") or []),
        f"memory flat (RSS slope from t = {res['steady_from_s']:.0f} s, the heap at its size, <= "
        f"{FLAT_MB_PER_MIN:g} MB/min per class)": check(
            all(v is not None and v <= FLAT_MB_PER_MIN for v in flat.values()),
            ", ".join(f"{c} {v} MB/min" for c, v in flat.items())),
        **({f"live set flat (live heap without byte[]/long[] buffers, slope from t = {res['steady_from_s']:.0f} s "
            f"<= {LIVE_FLAT_MB_PER_MIN:g} MB/min)": check(
                ls["slope_mb_per_min"] <= LIVE_FLAT_MB_PER_MIN,
                f"{ls['slope_mb_per_min']} MB/min over {ls['samples']} samples "
                f"({' → '.join(f'{v:,.0f}' for v in ls['mb'])} MB)")}
           if ls.get("slope_mb_per_min") is not None else {}),
    }


def live_structure(hist: list[dict], t0: float, steady: float) -> dict:
    """The driver JVM's live heap without ``byte[]`` and ``long[]`` — the data buffers
    (fetched Kafka records, cached batches, broadcast join tables, pages of running tasks)
    whose volume follows the batches in flight — over the samples from ``steady``: what
    is left is the live set's structure (sessions, plans, maps, listeners); its slope is
    where a leak of per-batch objects shows (the SparkSession leak of Spark 4.0.1: +3.7
    MB/min; the whole live heap swings ±150 MB with the buffers)."""
    pts = []
    for h in hist:
        if h["t"] < steady or h.get("live_heap_mb") is None:
            continue
        arrays = sum(r["mb"] for r in h["top"] if r["class"] in ("[B", "[J"))
        pts.append((h["t"], round(h["live_heap_mb"] - arrays, 1)))
    return {"samples": len(pts), "from_s": round(steady - t0, 1), "mb": [v for _, v in pts],
            "slope_mb_per_min": slope_mb_per_min(pts)}


def sessioncheck(hist: list[dict]) -> dict:
    """SparkSessions do not pile up: the live count at the end of the load is within
    ``SESSION_SLACK`` of the first sample (each micro-batch clones one; Spark 4.0.1 never
    freed them, ~70 KB each — SPARK-54753). No check with fewer than two samples."""
    counts = [h["watch"][SESSION_CLASS] for h in hist if SESSION_CLASS in h.get("watch", {})]
    if len(counts) < 2:
        return {}
    return {f"SparkSessions do not pile up (end <= first + {SESSION_SLACK})": check(
        counts[-1] <= counts[0] + SESSION_SLACK, f"live SparkSession instances {' → '.join(map(str, counts))}")}


# --------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    n = render.fmt_int
    lines = [f"# Soak run {res['date']}", "", render.live_run_line(res), "",
             f"**{render.verdict(res['ok'])}** — {res['frames']:,} fresh frames (event time from "
             f"{res.get('event_minus_wall_s')} s off the wall clock at the load's start) produced by the loader at "
             f"{n(res.get('rate_produced'))} frames/s (target {res['rate_target']:,.0f}; slowest 10 s "
             f"{n(res.get('rate_min_10s'))}/s) for {res['load_s']} s into `{res['topic']}`, the job live "
             f"(ready after {res['job_ready_s']} s); drained {render.or_dash(res['drain_s'])} s after the load, "
             f"final pass {render.or_dash(res['final_pass_s'])} s. Wall time {res['wall_s']:.0f} s."
             + render.errors_sentence(res["errors"])]
    if res.get("lag"):
        lines += _measured_markdown(res)
    return "\n".join([*lines, "", *render.checks(res["checks"])]) + "\n"


def _measured_markdown(res: dict) -> list[str]:
    """Lag, latency, batches, RSS, the JVM heap and the live heap of a run that loaded."""
    n = render.fmt_int
    lag, lat, b = res["lag"], res["latency"], res["batch_seconds"]
    out = ["", *render.table(["consumer lag during the load", "p50", "p99", "max"],
                             [("frames", n(lag["frames_p50"]), n(lag["frames_p99"]), n(lag["frames_max"])),
                              ("seconds", lag["seconds_p50"], lag["seconds_p99"], lag["seconds_max"])], "lrrr"),
           "", *render.table(["latency", "n", "p50 s", "p99 s", "max s"],
                             [(k, lat[k]["n"], lat[k]["p50_s"], lat[k]["p99_s"], lat[k]["max_s"])
                              for k in ("provisional", "provisional_warm", "final")], "lrrrr"),
           "", f"Live batches: n {b['n']}, p50 {b['p50_s']} s, p99 {b['p99_s']} s, max {b['max_s']} s "
               f"(processing time per batch).", "",
           *render.table(["RSS, MB", "start", "end", "max", f"slope from t = {res['steady_from_s']:.0f} s, MB/min"],
                         [(c, n(x["start_mb"]), n(x["end_mb"]), n(x["max_mb"]), x["slope_steady_mb_per_min"])
                          for c, x in res["memory"].items()], "lrrrr")]
    if res["jvm_heap"]:
        h0, h1 = res["jvm_heap"][0], res["jvm_heap"][-1]
        out += ["", f"Driver JVM heap (jstat): used {h0['heap_used_mb']:,.0f} → {h1['heap_used_mb']:,.0f} MB, "
                    f"committed {h0['heap_committed_mb']:,.0f} → {h1['heap_committed_mb']:,.0f} MB, "
                    f"{h1['young_gcs'] - h0['young_gcs']} young / {h1['full_gcs'] - h0['full_gcs']} full GCs "
                    f"between t = {h0['t_s']} s and {h1['t_s']} s."]
    return out + live_heap_markdown(res.get("jvm_live_heap") or [])


def live_heap_markdown(hist: list[dict]) -> list[str]:
    """The live-heap snapshots side by side: the classes that are largest at the end."""
    if not hist:
        return []
    rows = [(f"`{row['class']}`", *(next((f"{r['mb']:,.1f}" for r in h["top"] if r["class"] == row["class"]), "–")
                                     for h in hist)) for row in hist[-1]["top"][:8]]
    rows += [(f"instances of `{cls.rsplit('.', 1)[-1]}`", *(str(h.get("watch", {}).get(cls, "–")) for h in hist))
             for cls in WATCH_CLASSES]
    return ["", "Driver JVM live heap after a full GC (`jcmd GC.class_histogram`), MB: "
                + ", ".join(f"{h['live_heap_mb']:,.0f} at t = {h['t_s']:.0f} s" for h in hist) + ".", "",
            *render.table(["class", *(f"MB at {h['t_s']:.0f} s" for h in hist)], rows, "l" + "r" * len(hist))]


def plot(res: dict, path: Path) -> None:
    """Lag (frames and seconds) and RSS per class over the time since the load started."""
    s, lag = res["series"], res["lag"]
    t = [x["t_s"] for x in s]

    def draw(_fig, axes) -> None:
        ax1, ax2 = axes[0][0], axes[1][0]
        ax1.plot(t, [x["lag_frames"] for x in s], color="#1f77b4", lw=1, label="lag, frames")
        ax1.set_ylabel("lag, frames", color="#1f77b4")
        ax1b = ax1.twinx()
        ax1b.plot(t, [x["lag_s"] for x in s], color="#d62728", lw=1, label="lag, seconds")
        ax1b.set_ylabel("lag, seconds (oldest uncommitted frame)", color="#d62728")
        ax1.set_title(f"soak {res['date']}: {render.fmt_int(res['rate_produced'])} frames/s for "
                      f"{res['load_s']:.0f} s — lag max {render.fmt_int(lag['frames_max'])} frames / "
                      f"{lag['seconds_max']} s, p99 {render.fmt_int(lag['frames_p99'])} / {lag['seconds_p99']} s",
                      fontsize=9)
        for cls, color in zip((*CLASSES, "total"), ("#2ca02c", "#9467bd", "#ff7f0e", "#7f7f7f")):
            v = [(sum(x["rss_mb"].values()) if cls == "total" else x["rss_mb"].get(cls)) if x["rss_mb"] else None
                 for x in s]
            ax2.plot(t, v, color=color, lw=1, label=f"{cls} (slope from {res['steady_from_s']:.0f} s: "
                                                    f"{res['memory'][cls]['slope_steady_mb_per_min']} MB/min)")
        if res["jvm_heap"]:
            ax2.plot([h["t_s"] for h in res["jvm_heap"]], [h["heap_used_mb"] for h in res["jvm_heap"]],
                     color="#2ca02c", ls=":", lw=1, label="driver JVM heap used (jstat)")
        for ax in (ax1, ax2):
            ax.axvline(0, color="k", lw=0.5)
            ax.axvline(res["load_s"], color="k", lw=0.5, ls="--")
        ax2.set_ylabel("RSS, MB")
        ax2.set_xlabel("seconds since the load started (dashed: load end)")
        ax2.legend(fontsize=8, loc="upper left")
    render.figure(path, draw, 2, 1, figsize=(10, 7), sharex=True)


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=RATE, help=f"loader frames/s (default {RATE:,.0f})")
    ap.add_argument("--duration", type=float, default=DURATION, help=f"seconds of load (default {DURATION:.0f})")
    ap.add_argument("--users", type=int, default=GEN_PARAMS["users"], help="uid pool of the generated data "
                                                                          f"(default {GEN_PARAMS['users']:,})")
    ap.add_argument("--heap-every", type=float, default=HEAP_EVERY_S, metavar="S",
                    help=f"the driver JVM's live heap by class every S s from a quarter into the load and at "
                         f"its end (a full GC each; default {HEAP_EVERY_S:g}; 0: only those two)")
    ap.add_argument("--seed", type=int, default=SEED, help=f"generator seed (default {SEED})")
    common_args(ap, "soak-<date>.json/.md/.png go (default bench/results/; with another --rate or "
                    "--duration bench/.work/smoke/)")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        ap.error("--rate and --duration must be > 0")
    conf = conf_for(args)
    full = args.rate == RATE and args.duration == DURATION
    out = Path(args.out_dir) if args.out_dir else (RESULTS_DIR if full else WORK_DIR / "smoke")
    return report_main("soak", conf, lambda: run(conf, args.rate, args.duration, args.users, args.seed, args.keep,
                                                 spark_flags(args), args.heap_every), out, "soak", markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
