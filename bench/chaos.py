"""Chaos: SIGKILL the live job at random moments while the loader streams, restart it
from its checkpoint each time, and check that the results are still exact.

    python -m bench.chaos                                   # `make chaos`: 1M frames at 1,000/s (~17 min), 5 kills
    python -m bench.chaos --frames 30000 --kills 2          # a smoke run (~3 min)
    python -m bench.chaos --kafka-port 59092                # own broker on 127.0.0.1:59092 (controller 59093)
    python -m bench.chaos --input data/stream.jsonl.gz --truth data/stream.truth.json

1. Input: N frames (default 1,000,000) with the sample's parameters (users 100k, seed
   1, event rate = ``--rate``) *plus injected defects* — malformed frames of every
   parse reason, bit-flipped timestamps, numeric-string timestamps and frames delayed
   by up to 4 s (within the 5 s watermark) — generated once into ``bench/.work/`` with
   the generator's truth. (``make sample``'s file has no defects, so it could not show
   that every bad frame is quarantined exactly once; ``--input``/``--truth`` use it or
   any other file anyway.)
2. A fresh input topic (``[kafka] input_partitions``), output topic, Delta root and
   checkpoint. The job starts live (``./spark-submit.sh jobs/minute_stats.py``, 1 s
   trigger, not ``--available-now``); once it printed its first batch line the loader
   starts as a subprocess (``python -m tools.loader FILE --rate R``).
3. ``--kills`` moments (default 5) are drawn with a seeded RNG (``--seed``) over the
   expected load time, at least ``--min-gap`` seconds apart, and printed. At each one
   the job's whole process tree is SIGKILLed — the spark-submit process group (driver
   JVM, which holds the executors in local mode, and the Python driver) and the
   pyspark daemon's own group (the Python workers) — and started again from its
   checkpoint at once, live. A kill never comes earlier than ``--min-up`` seconds after
   the previous restart printed its first batch line (so each kill hits a job that
   runs; a restart slower than the schedule moves the following kills later).
4. When the loader has finished, the job is let drain (its committed offsets reach the
   topic's end), stopped with SIGTERM, and a final ``--available-now`` pass on the same
   checkpoint makes the last open minutes final.
5. Checks, all against the generator's truth (never the job's own output): Delta
   ``minute_stats`` = truth per minute (unique users and frames) and every minute
   final; one row per minute; ``minute_uids`` one row per (minute, uid) and per-minute
   counts = truth; ``quarantine`` one row per source coordinate (topic, partition,
   offset), per-reason counts = the injected defects, every quarantined ``raw`` a line of
   the input; counted + quarantined frames = frames loaded; the last ``minuteStats``
   value per key = truth and final. Exit status 1 if a check fails.

Report: ``bench/results/chaos-<date>.json`` and ``.md`` (with ``--frames``: in
``bench/.work/smoke/``): each kill (seconds after the load started, batch planned /
committed at that moment, restart → first batch line), totals, pass/fail per check, the
load average. Scratch data (Delta, checkpoint, logs) is in ``bench/.work/chaos/``.

The pieces here (``RunSpace``, ``LiveJob``, ``Loader``, ``checkpoint_progress``,
``committed_offsets``, ``check_exact`` ...) are also used by ``bench.soak`` and
``tests/test_chaos.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

try:
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    GEN_PARAMS,
    REPO_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    BenchError,
    broker,
    delete_topics,
    fmt_int,
    machine_info,
    python,
    rel,
    run_process,
    say,
    spark_cmd,
    topic_messages,
    write_json,
)
from bench.latency import ResultReader, stop_job, wait_first_batch

DEFAULT_CONF = REPO_ROOT / "conf" / "doodle.toml"
FRAMES, RATE, KILLS, SEED = 1_000_000, 1000.0, 5, 7
# defects injected into the chaos input (fractions of frames; see tools/generator.py)
DEFECTS = {"malformed_frac": 0.005, "bitflip_frac": 0.0005, "string_ts_frac": 0.05,
           "delay_prob": 0.01, "max_delay": 4}
NOT_QUARANTINED = ("string_ts", "delayed")   # truth "defects" that are valid frames
START_TIMEOUT_S = 300
DRAIN_TIMEOUT_S = 600


# --------------------------------------------------------------------------- set-up
def own_conf(kafka_port: int, work: Path) -> Path:
    """conf/doodle.toml with the broker on 127.0.0.1:``kafka_port`` (controller port + 1),
    written to ``work/doodle-<port>.toml``."""
    text = DEFAULT_CONF.read_text()
    text = re.sub(r'(?m)^bootstrap_servers = ".*"$', f'bootstrap_servers = "127.0.0.1:{kafka_port}"', text)
    text = re.sub(r"(?m)^controller_port = \d+$", f"controller_port = {kafka_port + 1}", text)
    path = work / f"doodle-{kafka_port}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@contextmanager
def own_broker(cfg) -> Iterator[bool]:
    """:func:`bench.common.broker` (use the broker that answers, else start the embedded
    one and stop it at the end); a broker on another address than conf/doodle.toml's keeps
    its data and PID file in ``bench/.work/kafka-<port>/``, apart from `make kafka-up`'s."""
    from doodlestats.runtime.config import load_config
    if cfg.kafka.bootstrap_servers != load_config(DEFAULT_CONF).kafka.bootstrap_servers and \
            "DOODLE_KAFKA_DIR" not in os.environ:
        os.environ["DOODLE_KAFKA_DIR"] = str(WORK_DIR / f"kafka-{cfg.kafka.port}")
    with broker(cfg) as started:
        yield started


def defect_frames(frames: int, rate: float, seed: int = GEN_PARAMS["seed"], users: int = GEN_PARAMS["users"],
                  out_dir: Path = WORK_DIR) -> tuple[Path, dict]:
    """``frames`` frames with the sample's parameters, event rate ``rate`` and
    :data:`DEFECTS`, generated once into ``out_dir`` (kept while its truth matches).
    Returns (path, truth)."""
    from tools.generator import GenConfig, write
    gen = GenConfig(count=frames, rate=float(rate), users=users, seed=seed, **DEFECTS)
    stem = f"chaos-{frames}-r{rate:g}-s{seed}"
    path, truth_path = out_dir / f"{stem}.jsonl.gz", out_dir / f"{stem}.truth.json"
    try:
        truth = json.loads(truth_path.read_text())
        if path.exists() and truth.get("params") == json.loads(json.dumps(gen.__dict__)):
            return path, truth
    except (OSError, ValueError):
        pass
    say(f"generating {frames:,} frames with defects into {path}")
    return path, write(gen, str(path), str(truth_path), progress=False)


# --------------------------------------------------------------------------- the job
def checkpoint_progress(checkpoint: Path) -> dict:
    """Batch ids in a job's checkpoint: ``planned`` (Spark's offset log: the batch being or
    last processed), ``committed`` (Spark's commit log) and ``state`` (the pipeline's
    state files, written after the batch's Delta commits); -1 where there is none."""
    from doodlestats.io.state import StateStore

    def ids(d: Path) -> list[int]:
        try:
            return [int(n) for n in os.listdir(d) if n.isdigit()]
        except OSError:
            return []
    spark = checkpoint / "spark"
    state = StateStore(str(checkpoint)).ids()
    return {"planned": max(ids(spark / "offsets"), default=-1),
            "committed": max(ids(spark / "commits"), default=-1),
            "state": max(state, default=-1)}


def committed_offsets(checkpoint: Path, topic: str) -> dict[int, int]:
    """End offsets per partition of ``topic`` of the job's newest committed batch ({} if none)."""
    batch = checkpoint_progress(checkpoint)["committed"]
    if batch < 0:
        return {}
    try:
        lines = (checkpoint / "spark" / "offsets" / str(batch)).read_text().splitlines()
    except OSError:
        return {}
    for line in lines[2:]:  # "v1", the batch's metadata, then one JSON line per source
        try:
            offsets = json.loads(line)
        except ValueError:
            continue
        if isinstance(offsets, dict) and topic in offsets:
            return {int(p): int(o) for p, o in offsets[topic].items()}
    return {}


def job_tree(pid: int) -> list:
    """psutil processes of a job: the root and all its descendants (alive now)."""
    import psutil
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


class LiveJob:
    """``./spark-submit.sh jobs/minute_stats.py ARGS`` live, restartable: each start logs to
    ``log_dir/job-<n>.err``; :meth:`kill` SIGKILLs its whole process tree."""

    def __init__(self, args: list, log_dir: Path, spark_flags: list | None = None, env: dict | None = None):
        self.args, self.log_dir = [str(a) for a in args], log_dir
        self.spark_flags, self.env = list(spark_flags or []), env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.started_at = self.ready_at = None
        self.ready_how = None   # "batch": a batch line; "idle": started, nothing to read
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def err(self) -> Path:
        return self.log_dir / f"job-{self.starts}.err"

    def start(self) -> None:
        self.starts += 1
        with open(self.log_dir / f"job-{self.starts}.out", "wb") as fo, open(self.err, "wb") as fe:
            self.proc = subprocess.Popen(spark_cmd("jobs/minute_stats.py", self.args, self.spark_flags),
                                         stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                         env={**os.environ, **self.env}, start_new_session=True)
        self.started_at, self.ready_at = time.monotonic(), None

    def wait_ready(self, timeout: float = START_TIMEOUT_S, idle: Callable[[], bool] | None = None) -> float:
        """Seconds from this start to the job's first ``batch`` line (raises if it died).

        With ``idle`` (True when the committed offsets are at the topic's end), a job whose
        query has started (``DOODLE_TIMINGS``' start line) with nothing to read also counts
        as ready — Spark runs no batch without new data."""
        self.ready_how = "batch"
        if idle is None:
            wait_first_batch(self.proc, self.err, timeout)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    wait_first_batch(self.proc, self.err, 2)
                    break
                except BenchError:
                    if not self.alive() or time.monotonic() > deadline:
                        raise
                    if "writeStream.start() returned" in self.err.read_text(errors="replace") and idle():
                        self.ready_how = "idle"
                        break
        self.ready_at = time.monotonic()
        return self.ready_at - self.started_at

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> dict:
        """SIGKILL the job's process groups — spark-submit's (driver JVM + Python driver)
        and the pyspark daemon's (Python workers) — then any survivor of its tree by PID."""
        import psutil
        tree = job_tree(self.proc.pid)
        pidfile = None   # spark-submit.sh's driver PID file: its EXIT trap does not run on SIGKILL
        for p in tree[1:]:
            try:
                pidfile = pidfile or p.environ().get("DOODLE_DRIVER_PIDFILE")
            except psutil.Error:
                pass
        groups = set()
        for p in tree:
            try:
                groups.add(os.getpgid(p.pid))
            except OSError:
                pass
        groups.discard(os.getpgrp())   # never this harness's own group
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except OSError:
                pass
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(tree, timeout=10)
        if pidfile:
            Path(pidfile).unlink(missing_ok=True)
        return {"processes": len(tree), "groups": len(groups), "survivors": [p.pid for p in alive]}

    def stop(self) -> str:
        """SIGTERM (the job stops after its current batch); SIGKILL of its group after 60 s."""
        return stop_job(self.proc)


def job_args(conf: Path, topic: str, out_topic: str, delta: Path, checkpoint: Path, *extra) -> list[str]:
    return ["--conf-file", str(conf), "--topic", topic, "--output-topic", out_topic,
            "--delta-path", str(delta), "--checkpoint", str(checkpoint), *map(str, extra)]


@dataclass
class RunSpace:
    """A fresh input topic, output topic, Delta root, checkpoint and log folder for one run,
    and the job's arguments for them."""

    cfg: object
    conf: Path
    topic: str
    out_topic: str
    run_dir: Path

    @classmethod
    def new(cls, conf: Path, prefix: str, work: Path) -> "RunSpace":
        from doodlestats.runtime.config import load_config
        from tools.kafka_local import ensure_topic
        cfg = load_config(conf)
        stamp = time.strftime("%Y%m%d%H%M%S")
        rs = cls(cfg, conf, f"{prefix}-{stamp}", f"{prefix}-out-{stamp}", work / stamp)
        rs.logs.mkdir(parents=True, exist_ok=True)
        ensure_topic(cfg, rs.topic, cfg.kafka.input_partitions)
        ensure_topic(cfg, rs.out_topic, 1)
        return rs

    @property
    def delta(self) -> Path:
        return self.run_dir / "delta"

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoint"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def args(self) -> list[str]:
        return job_args(self.conf, self.topic, self.out_topic, self.delta, self.ckpt,
                        "--trigger", self.cfg.job.trigger_s)

    def idle(self) -> bool:
        """The job's committed offsets are at the input topic's end."""
        return sum(committed_offsets(self.ckpt, self.topic).values()) >= topic_messages(self.cfg, self.topic)

    def finish(self, job: "LiveJob", spark_flags: list | None = None) -> dict:
        """After the load: let the live job drain, stop it with SIGTERM, run the final
        ``--available-now`` pass. Returns drain_s, job_stop, stopped_at (epoch), final_pass_s."""
        if job.ready_at is None and job.alive():
            job.wait_ready(idle=self.idle)
        out = {"drain_s": round(wait_drained(job, self.ckpt, self.cfg, self.topic), 1)}
        out["stopped_at"] = time.time()
        out["job_stop"] = job.stop()
        say(f"drained in {out['drain_s']:.0f}s; job {out['job_stop']}; final --available-now pass")
        fin = final_pass(self.args, self.logs, spark_flags)
        out["final_pass_s"] = fin.wall_s
        if fin.returncode != 0:
            raise BenchError(f"the final --available-now pass exited with {fin.returncode}; see {fin.stderr}\n"
                             f"{fin.tail()}")
        return out

    def results(self) -> list[dict]:
        """Every value the run published to its output topic, in order."""
        return read_topic_results(self.cfg.kafka.bootstrap_servers, self.out_topic, self.cfg)

    def verdict(self, truth: dict, errors: list[str], input_path: Path | None = None) -> tuple[list[dict], dict]:
        """The run's output messages and :func:`check_exact`'s checks, plus "the run finished"."""
        results = self.results()
        try:
            checks = check_exact(self.delta, truth, results, input_path)
        except Exception as e:  # noqa: BLE001 - e.g. a table was never created: a failed check
            checks = {"tables readable": _check(False, f"{type(e).__name__}: {e}")}
        checks["the run finished"] = _check(not errors, "; ".join(x.splitlines()[0] for x in errors) or "no error")
        return results, checks

    def batch_lines(self) -> int:
        return sum(1 for line in _all_lines(self.logs) if line.startswith("batch "))

    def clean(self, keep: bool) -> None:
        if not keep:
            delete_topics(self.cfg, [self.topic, self.out_topic])
            shutil.rmtree(self.delta, ignore_errors=True)
            shutil.rmtree(self.ckpt, ignore_errors=True)


class Loader:
    """``python -m tools.loader PATH --topic T --rate R --conf-file CONF`` in the background;
    ``started_at``/``ended_at`` are monotonic times (``ended_at`` None while it runs)."""

    def __init__(self, path: Path, topic: str, conf: Path, rate: float | None, log: Path, live: bool = False):
        cmd = [python(), "-m", "tools.loader", str(path), "--topic", topic, "--conf-file", str(conf)]
        cmd += (["--rate", f"{rate:g}"] if rate else []) + (["--live"] if live else [])
        self.log = log
        with open(log, "wb") as fe:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fe, stdin=subprocess.DEVNULL,
                                         cwd=REPO_ROOT, start_new_session=True)
        self.started_at, self.ended_at = time.monotonic(), None
        threading.Thread(target=self._watch, name="loader-wait", daemon=True).start()

    def _watch(self) -> None:
        self.proc.wait()
        self.ended_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.ended_at is None

    def wait(self) -> float:
        """Wait for the end of the load; returns its seconds (raises if the loader failed)."""
        rc = self.proc.wait()
        while self.ended_at is None:
            time.sleep(0.01)
        if rc != 0:
            raise BenchError(f"the loader exited with {rc}; see {self.log}")
        return self.ended_at - self.started_at

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def final_pass(args: list[str], log_dir: Path, spark_flags: list | None = None, timeout: float = 1200):
    """The job with ``--available-now`` on the same checkpoint: reads what is left, emits the
    open minutes as final."""
    return run_process(spark_cmd("jobs/minute_stats.py", [*args, "--available-now"], spark_flags or []),
                       log_dir, "final", timeout=timeout)


def wait_drained(job: LiveJob, checkpoint: Path, cfg, topic: str, timeout: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until the job's committed offsets reach the topic's end; returns the seconds waited."""
    t0 = time.monotonic()
    end = topic_messages(cfg, topic)
    while time.monotonic() - t0 < timeout:
        if not job.alive():
            raise BenchError(f"the live job exited ({job.proc.returncode}) while draining; see {job.err}")
        if sum(committed_offsets(checkpoint, topic).values()) >= end:
            return time.monotonic() - t0
        time.sleep(1)
    raise BenchError(f"the live job did not reach the end of {topic} within {timeout:.0f}s")


@contextmanager
def recorded(prog: str, errors: list[str], cleanup: Callable[[], None]) -> Iterator[None]:
    """Run the block; a :class:`BenchError` ends it and is recorded in ``errors`` (the
    checks still run and fail); ``cleanup`` always runs."""
    try:
        yield
    except BenchError as e:
        errors.append(str(e).replace(f"{REPO_ROOT}/", ""))
        say(f"{prog}: {str(e).splitlines()[0]}")
    finally:
        cleanup()


def stop_all(*things) -> None:
    """SIGKILL what is still running of loaders and live jobs (None: never started)."""
    for x in things:
        if x is not None and (not isinstance(x, LiveJob) or x.alive()):
            x.kill()


class Periodic(threading.Thread):
    """Calls ``fn()`` every ``interval`` s in a daemon thread until :meth:`halt`."""

    def __init__(self, interval: float, fn: Callable[[], None], name: str = "periodic"):
        super().__init__(name=name, daemon=True)
        self.interval, self.fn = interval, fn
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.fn()
            except Exception as e:  # noqa: BLE001 - a failed sample must not end the run
                say(f"{self.name}: sample failed: {e}")
            self._halt.wait(self.interval)

    def halt(self) -> None:
        self._halt.set()
        self.join(10)


class LoadAverage:
    """Samples the 1-minute load average every ``interval`` s (started / stopped as a context)."""

    def __init__(self, interval: float = 5.0):
        self.samples: list[tuple[float, float]] = []
        self._thread = Periodic(interval, lambda: self.samples.append((time.time(), os.getloadavg()[0])),
                                "load-average")

    def __enter__(self) -> "LoadAverage":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.halt()

    def summary(self) -> dict:
        v = [round(x, 2) for _, x in self.samples]
        return {"samples": len(v), "load1_min": min(v, default=None), "load1_mean": round(sum(v) / len(v), 2)
                if v else None, "load1_max": max(v, default=None)}


# --------------------------------------------------------------------------- kill schedule
def kill_schedule(rng: random.Random, kills: int, duration: float, min_gap: float,
                  lo_frac: float = 0.05, hi_frac: float = 0.85) -> list[float]:
    """``kills`` moments (seconds after the load started), uniform in
    [lo_frac, hi_frac] × ``duration``, sorted, at least ``min_gap`` apart (the gap shrinks to
    fit if the window is too short)."""
    lo, hi = lo_frac * duration, hi_frac * duration
    gap = min(min_gap, (hi - lo) / max(kills, 1))
    free = hi - lo - gap * (kills - 1)
    return [round(lo + x + i * gap, 1) for i, x in enumerate(sorted(rng.uniform(0, free) for _ in range(kills)))]


# --------------------------------------------------------------------------- checks
def _check(ok: bool, detail: str) -> dict:
    return {"ok": bool(ok), "detail": detail}


def _diff(got: dict, want: dict, limit: int = 5) -> str:
    keys = sorted(set(got) | set(want))
    bad = [k for k in keys if got.get(k) != want.get(k)]
    if not bad:
        return f"{len(want)} minutes equal"
    return f"{len(bad)} of {len(keys)} minutes differ, e.g. " + "; ".join(
        f"{k}: got {got.get(k)} want {want.get(k)}" for k in bad[:limit])


def truth_minutes(truth: dict) -> dict[int, tuple[int, int]]:
    """minute → (unique users, frames) of the generator's truth."""
    return {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}


def expected_quarantine(truth: dict) -> dict[str, int]:
    """Quarantine rows per reason the truth implies: its injected defects."""
    return {k: v for k, v in truth["defects"].items() if k not in NOT_QUARANTINED and v}


def read_topic_results(bootstrap: str, topic: str, cfg, timeout: float = 120) -> list[dict]:
    """Every value of the output topic, in order (1 partition), read to its end."""
    want = topic_messages(cfg, topic)
    reader = ResultReader(bootstrap, topic)
    reader.start()
    deadline = time.monotonic() + timeout
    while len(reader.results) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    reader.stop.set()
    reader.join(10)
    return [r for _, r in reader.results]


def _line_digests(path: Path) -> Counter:
    from tools.loader import open_lines
    c: Counter = Counter()
    for line in open_lines(str(path)):
        line = line.rstrip(b"\r\n")
        if line:
            c[hashlib.blake2b(line, digest_size=16).digest()] += 1
    return c


def check_exact(delta: Path, truth: dict, results: list[dict] | None, input_path: Path | None = None) -> dict:
    """The end-of-run checks (see the module docstring): name → {"ok", "detail"}."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable
    want = truth_minutes(truth)
    checks = {}
    ms = DeltaTable(str(delta / "minute_stats")).to_pyarrow_table(
        columns=["window_start", "ts", "unique_users", "frames", "status"]).to_pylist()
    got = {r["ts"]: (r["unique_users"], r["frames"]) for r in ms}
    checks["minute_stats = truth"] = _check(got == want, _diff(got, want))
    statuses = Counter(r["status"] for r in ms)
    checks["minute_stats all final"] = _check(set(statuses) == {"final"}, str(dict(statuses)))
    keys = Counter(r["window_start"] for r in ms)
    dup = sum(n - 1 for n in keys.values() if n > 1)
    checks["minute_stats one row per minute"] = _check(dup == 0, f"{len(ms)} rows, {dup} duplicate(s)")

    uids = DeltaTable(str(delta / "minute_uids")).to_pyarrow_table(columns=["minute", "uid"])
    distinct = uids.group_by(["minute", "uid"]).aggregate([]).num_rows
    checks["minute_uids one row per (minute, uid)"] = _check(
        distinct == uids.num_rows, f"{uids.num_rows:,} rows, {uids.num_rows - distinct:,} duplicate(s)")
    per_minute = {r["minute"]: r["minute_count"] for r in uids.group_by("minute").aggregate(
        [("minute", "count")]).to_pylist()}
    want_users = {m: u for m, (u, _) in want.items()}
    checks["minute_uids per minute = truth"] = _check(per_minute == want_users, _diff(per_minute, want_users))

    q = DeltaTable(str(delta / "quarantine")).to_pyarrow_table(columns=["reason", "raw", "topic", "partition",
                                                                         "offset"])
    coords = Counter(zip(q.column("topic").to_pylist(), q.column("partition").to_pylist(),
                         q.column("offset").to_pylist()))
    qdup = sum(n - 1 for n in coords.values() if n > 1)
    checks["quarantine one row per (topic, partition, offset)"] = _check(
        qdup == 0, f"{q.num_rows:,} rows, {qdup} duplicate(s)")
    reasons = dict(Counter(q.column("reason").to_pylist()))
    wq = expected_quarantine(truth)
    checks["quarantine = injected defects"] = _check(reasons == wq, f"got {reasons}, injected {wq}")
    if input_path is not None:
        lines = _line_digests(input_path)
        raw = Counter(hashlib.blake2b(b, digest_size=16).digest() for b in q.column("raw").to_pylist()
                      if b is not None)
        missing = sum((raw - lines).values()) + int(pc.sum(pc.is_null(q.column("raw"))).as_py() or 0)
        checks["quarantined raw bytes are input lines"] = _check(
            missing == 0, f"{q.num_rows:,} rows, {missing} not a line of {input_path.name}")
    counted = sum(f for _, f in got.values())
    checks["counted + quarantined = frames"] = _check(
        counted + q.num_rows == truth["frames"],
        f"{counted:,} + {q.num_rows:,} = {counted + q.num_rows:,} of {truth['frames']:,}")
    if results is not None:
        last = {}
        for r in results:
            last[r.get("window_start")] = r
        kgot = {r["ts"]: (r["unique_users"], r["frames"]) for r in last.values()}
        kst = Counter(r["status"] for r in last.values())
        checks["minuteStats last value per key = truth"] = _check(
            kgot == want and set(kst) == {"final"}, f"{_diff(kgot, want)}; statuses {dict(kst)}; "
                                                    f"{len(results):,} messages")
    return checks


# --------------------------------------------------------------------------- the run
@dataclass
class ChaosRun:
    """What :func:`run` needs; ``conf`` points every client at the broker to use."""

    input: Path
    truth: dict
    conf: Path
    work: Path
    rate: float = RATE
    kills: int = KILLS
    seed: int = SEED
    min_gap_s: float = 60.0
    min_up_s: float = 3.0
    live: bool = False
    spark_flags: list = field(default_factory=list)
    keep: bool = False


def run(c: ChaosRun) -> dict:
    """The whole chaos experiment (steps 2–5 of the module docstring); returns the result
    dict with ``checks`` and ``ok``. The broker must answer at ``c.conf``'s address."""
    rs = RunSpace.new(c.conf, "chaos", c.work)
    frames = c.truth["frames"]
    expected_s = frames / c.rate
    schedule = kill_schedule(random.Random(c.seed), c.kills, expected_s, c.min_gap_s)
    say(f"chaos: {frames:,} frames of {c.input.name} at {c.rate:g}/s (~{expected_s:.0f}s) into {rs.topic}; "
        f"kills at {', '.join(f'{t:.1f}' for t in schedule)} s after the load starts (seed {c.seed})")
    job = LiveJob(rs.args, rs.logs, c.spark_flags, {"DOODLE_TIMINGS": "1"})
    kills, restarts_failed, unexpected, errors = [], [], [], []
    facts: dict = {}
    loader = None
    t_wall0 = time.monotonic()
    with LoadAverage() as load:
        with recorded("chaos", errors, lambda: stop_all(loader, job)):
            job.start()
            facts["job_ready_s"] = round(job.wait_ready(), 1)
            say(f"chaos: job ready after {facts['job_ready_s']:.0f}s; starting the loader")
            loader = Loader(c.input, rs.topic, c.conf, c.rate, rs.logs / "loader.err", c.live)
            for i, at in enumerate(schedule, 1):
                kills.append(_kill_at(c, rs, job, loader, i, at, unexpected, restarts_failed))
            facts["load_s"] = round(loader.wait(), 1)
            facts["rate_achieved"] = round(frames / facts["load_s"], 1)
            say(f"chaos: loader done: {frames:,} frames in {facts['load_s']:.0f}s "
                f"({facts['rate_achieved']:,.0f}/s); draining")
            facts.update(rs.finish(job, c.spark_flags))
        results, checks = rs.verdict(c.truth, errors, c.input)
    checks["every restart reached its first batch"] = _check(
        not restarts_failed, f"{len(kills)} kill(s), {len(restarts_failed)} failed restart(s)")
    checks["no kill left a process behind"] = _check(
        all(not k["survivors"] for k in kills), f"{sum(len(k['survivors']) for k in kills)} survivor(s)")
    checks["the job never died by itself"] = _check(not unexpected, f"{len(unexpected)} unexpected exit(s)")
    checks[f"{c.kills} kills done"] = _check(len(kills) == c.kills, f"{len(kills)} of {c.kills}")
    restarts = [k["restart_to_first_batch_s"] for k in kills if "restart_to_first_batch_s" in k]
    res = {
        "kind": "chaos", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "input": rel(c.input), "frames": frames,
        "rate_target": c.rate, "loader_live": c.live, "seed": c.seed, "kills_planned": c.kills,
        "schedule_s": schedule, "min_gap_s": c.min_gap_s, "min_up_s": c.min_up_s, "topic": rs.topic,
        **{k: None for k in ("job_ready_s", "load_s", "rate_achieved", "drain_s", "job_stop", "final_pass_s")},
        **facts, "job_starts": job.starts + ("final_pass_s" in facts), "batch_lines": rs.batch_lines(),
        "kills": kills, "restart_failures": restarts_failed, "unexpected_exits": unexpected, "errors": errors,
        "restart_to_first_batch_s": {"min": min(restarts, default=None), "max": max(restarts, default=None),
                                     "mean": round(sum(restarts) / len(restarts), 1) if restarts else None},
        "truth": {"minutes": len(c.truth["minutes"]), "valid_frames": c.truth["valid_frames"],
                  "defects": c.truth["defects"]},
        "output_messages": len(results), "load_average": load.summary(),
        "wall_s": round(time.monotonic() - t_wall0, 1), "checks": checks,
        "ok": all(x["ok"] for x in checks.values()), "run_dir": rel(rs.run_dir),
    }
    rs.clean(c.keep)
    return res


def _kill_at(c: ChaosRun, rs: RunSpace, job: LiveJob, loader: Loader, i: int, at: float,
             unexpected: list, restarts_failed: list) -> dict:
    """Kill ``i``: wait for its moment (and a job that has run ``min_up_s`` since its first
    batch), SIGKILL the job's tree, start it again, time its first batch."""
    while True:
        now = time.monotonic()
        if not job.alive():   # died without our help: note it, start it again
            unexpected.append({"at_s": round(now - loader.started_at, 1), "returncode": job.proc.returncode,
                               "log": rel(job.err)})
            say(f"chaos: the job exited by itself ({job.proc.returncode}); restarting")
            job.start()
            job.wait_ready(idle=rs.idle)
            continue
        if now - loader.started_at >= at and job.ready_at is not None and now - job.ready_at >= c.min_up_s:
            break
        time.sleep(0.05)
    t_kill = time.monotonic()
    progress = checkpoint_progress(rs.ckpt)
    loaded = topic_messages(rs.cfg, rs.topic)
    tree = job.kill()
    k = {"kill": i, "scheduled_s": at, "at_s": round(t_kill - loader.started_at, 1), "during_load": loader.running,
         "frames_in_topic": loaded, "batch_planned": progress["planned"], "batch_committed": progress["committed"],
         "batch_state": progress["state"], "batch_in_flight": progress["planned"] > progress["committed"],
         "load1": round(os.getloadavg()[0], 2),
         **tree}
    say(f"chaos: kill {i} at {k['at_s']:.1f}s (scheduled {at:.1f}s): batch {progress['planned']} "
        f"{'in flight' if k['batch_in_flight'] else 'committed'}, {tree['processes']} processes "
        f"in {tree['groups']} group(s) killed, {len(tree['survivors'])} survivor(s); restarting")
    job.start()
    try:
        k["restart_to_first_batch_s"] = round(job.wait_ready(idle=rs.idle), 1)
    except BenchError as e:
        restarts_failed.append({"kill": i, "error": str(e).replace(f"{REPO_ROOT}/", "")[:2000]})
        raise BenchError(f"restart {i} failed: {e}") from None
    k["ready_by"] = job.ready_how
    k["kill_to_first_batch_s"] = round(job.ready_at - t_kill, 1)
    say(f"chaos: restart {i}: first batch {k['restart_to_first_batch_s']:.1f}s after the restart")
    return k


def _all_lines(logs: Path) -> Iterator[str]:
    for f in sorted(logs.glob("job-*.err")) + [logs / "final.err"]:
        try:
            yield from f.read_text(errors="replace").splitlines()
        except OSError:
            pass


# --------------------------------------------------------------------------- report
def checks_markdown(checks: dict) -> list[str]:
    out = ["| check | result | detail |", "|---|---|---|"]
    out += [f"| {name} | {'✅ pass' if c['ok'] else '❌ FAIL'} | {c['detail']} |" for name, c in checks.items()]
    return out


def code_line(code: dict | None) -> str:
    """One sentence on the code a run used (see :func:`code_during`)."""
    if not code:
        return ""
    out = f"Code: commit {code['commit']}"
    if code.get("product_commit") and code["product_commit"] != code["commit"]:
        out += f" (product files as of {code['product_commit']})"
    if code.get("uncommitted"):
        out += f" with uncommitted changes to {', '.join(code['uncommitted'])}"
    if code.get("changed_during_run"):
        out += f"; it changed during the run (at the end: {code['at_end']['commit']}" + \
               (f" + {', '.join(code['at_end']['uncommitted'])}" if code["at_end"]["uncommitted"] else "") + ")"
    return out + (code["note"] if code.get("note") else "") + "."


def markdown(res: dict) -> str:
    m = res["machine"]
    la = res["load_average"]
    lines = [
        f"# Chaos run {res['date']}", "",
        f"{m['cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB; load average at start "
        f"{', '.join(map(str, m['load_avg_at_start']))}, during the run (1 min, every 5 s) "
        f"min {la['load1_min']} / mean {la['load1_mean']} / max {la['load1_max']}. {code_line(res.get('code'))}", "",
        f"**{'PASS' if res['ok'] else 'FAIL'}** — {res['frames']:,} frames ({res['input']}) streamed by the "
        f"loader at {fmt_int(res['rate_achieved'])} frames/s (target {res['rate_target']:g}) "
        f"for {fmt_int(res['load_s'])} s "
        f"into `{res['topic']}`; the live job was SIGKILLed {len(res['kills'])} times (seed {res['seed']}, "
        f"scheduled at {', '.join(f'{t:g}' for t in res['schedule_s'])} s) and restarted from its checkpoint "
        f"each time; {res['job_starts']} job starts in all (incl. the final `--available-now` pass), "
        f"{res['batch_lines']} batch lines. Wall time {res['wall_s']:.0f} s."
        + (" Errors: " + "; ".join(e.splitlines()[0] for e in res["errors"]) if res["errors"] else ""), "",
        "| kill | at s (scheduled) | during load | frames in topic | batch planned / committed | in flight "
        "| processes (groups) killed | survivors | restart → first batch s | kill → first batch s | load1 |",
        "|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for k in res["kills"]:
        lines.append(
            f"| {k['kill']} | {k['at_s']} ({k['scheduled_s']}) | {'yes' if k['during_load'] else 'no'} "
            f"| {k['frames_in_topic']:,} | {k['batch_planned']} / {k['batch_committed']} "
            f"| {'yes' if k['batch_in_flight'] else 'no'} | {k['processes']} ({k['groups']}) "
            f"| {len(k['survivors'])} | {k.get('restart_to_first_batch_s', '–')} "
            f"| {k.get('kill_to_first_batch_s', '–')} | {k['load1']} |")
    d = res["truth"]["defects"]
    lines += ["", f"First start → first batch {res['job_ready_s']} s; drain after the load {res['drain_s']} s; "
                  f"final pass {res['final_pass_s']} s; {res['output_messages']:,} minuteStats messages. "
                  f"Truth: {res['truth']['minutes']} minutes, {res['truth']['valid_frames']:,} valid frames, "
                  f"injected defects {', '.join(f'{k}={v}' for k, v in d.items())}.", ""]
    lines += checks_markdown(res["checks"])
    return "\n".join(lines) + "\n"


def write_report(res: dict, out_dir: Path, stem: str, md: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json(jp, res)
    mp.write_text(md)
    return jp, mp


# --------------------------------------------------------------------------- CLI
def common_args(ap: argparse.ArgumentParser, out_help: str) -> None:
    """The flags ``bench.chaos`` and ``bench.soak`` share."""
    ap.add_argument("--conf-file", help="configuration for the job, the loader and the broker "
                                        "(default conf/doodle.toml)")
    ap.add_argument("--kafka-port", type=int, help="use (or start) a broker on 127.0.0.1:PORT, controller PORT+1")
    ap.add_argument("--driver-memory", help="spark-submit --driver-memory (default: [spark] driver_memory)")
    ap.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                    help="spark-submit --conf KEY=VALUE for the job (repeatable)")
    ap.add_argument("--out-dir", help=f"where {out_help}")
    ap.add_argument("--keep", action="store_true", help="keep the data, topics, Delta tables and checkpoint")


def spark_flags(args) -> list[str]:
    """spark-submit flags of ``--driver-memory`` and ``--spark-conf``."""
    out = ["--driver-memory", args.driver_memory] if args.driver_memory else []
    for kv in args.spark_conf:
        out += ["--conf", kv]
    return out


def code_state() -> dict:
    """The commit the run used (HEAD, and the newest commit touching the product's files) and
    the product files that differed from it (a shared tree)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True).stdout.splitlines()
    product = ("doodlestats", "jobs", "tools", "java", "conf", "spark-submit.sh")
    changed = git("status", "--porcelain", "--", *product)
    return {"commit": "".join(git("rev-parse", "--short", "HEAD")),
            "product_commit": "".join(git("log", "-1", "--format=%h", "--", *product)),
            "uncommitted": [x[3:] for x in changed]}


def code_during(start: dict) -> dict:
    """The code state at the start of a run and whether it changed before its end (other
    engineers commit to the same tree; every job start uses the tree as it is then)."""
    end = code_state()
    changed = (end["product_commit"], end["uncommitted"]) != (start["product_commit"], start["uncommitted"])
    return {**start, "changed_during_run": changed, **({"at_end": end} if changed else {})}


def conf_for(args) -> Path:
    """The configuration every client of the run uses (``--conf-file``, or one made for
    ``--kafka-port``)."""
    if args.kafka_port:
        return own_conf(args.kafka_port, WORK_DIR)
    return Path(args.conf_file) if args.conf_file else DEFAULT_CONF


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help=f"frames to generate (default {FRAMES:,}); "
                                               "results then go to bench/.work/smoke/")
    ap.add_argument("--rate", type=float, default=RATE, help=f"loader frames/s (default {RATE:g}, the sample's "
                                                              "rate) — also the generated event rate")
    ap.add_argument("--live", action="store_true", help="loader --live: pace by the frames' own ts (capped at --rate)")
    ap.add_argument("--kills", type=int, default=KILLS, help=f"SIGKILLs (default {KILLS})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"seed of the kill moments (default {SEED})")
    ap.add_argument("--min-gap", type=float, default=60.0, help="seconds between scheduled kills, at least "
                                                                "(default 60; shrinks to fit a short load)")
    ap.add_argument("--min-up", type=float, default=3.0,
                    help="a kill waits until the restarted job has run this long after its first batch (default 3)")
    ap.add_argument("--input", help="JSONL(.gz) to stream instead of generated frames (needs --truth)")
    ap.add_argument("--truth", help="the generator's truth file of --input")
    common_args(ap, "chaos-<date>.json/.md go (default bench/results/; with --frames or --input "
                    "bench/.work/smoke/)")
    args = ap.parse_args(argv)
    if args.kills < 1 or args.rate <= 0:
        ap.error("--kills must be >= 1 and --rate > 0")
    if bool(args.input) != bool(args.truth):
        ap.error("--input and --truth go together")
    from doodlestats.runtime.config import load_config
    conf = conf_for(args)
    cfg = load_config(conf)
    machine, code = machine_info(), code_state()
    try:
        if args.input:
            inp, truth = Path(args.input), json.loads(Path(args.truth).read_text())
        else:
            inp, truth = defect_frames(args.frames or FRAMES, args.rate)
        with own_broker(cfg):
            res = run(ChaosRun(inp, truth, conf, WORK_DIR / "chaos", args.rate, args.kills, args.seed,
                               args.min_gap, args.min_up, args.live, spark_flags(args), args.keep))
    except BenchError as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        return 2
    res["machine"], res["code"] = machine, code_during(code)
    out = Path(args.out_dir) if args.out_dir else (WORK_DIR / "smoke" if args.frames or args.input else RESULTS_DIR)
    jp, mp = write_report(res, out, f"chaos-{time.strftime('%Y-%m-%d')}", markdown(res))
    print(markdown(res))
    say(f"chaos: {'PASS' if res['ok'] else 'FAIL'}; wrote {jp} and {mp}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
