"""The one controller of the live job (``jobs/minute_stats.py`` without ``--available-now``)
for ``bench.latency``, ``bench.chaos`` and ``bench.soak``: start it with spark-submit, find
its process tree and Python driver, wait for its first batch, stop it (SIGTERM to the
driver, then SIGKILL of its tree by PID) or kill it (SIGKILL); what feeds it (``Loader``:
``tools.loader`` in the background) and reads its results (``ResultReader``); a run's
topics, tables and checkpoint (``RunSpace``), its drain and final ``--available-now`` pass;
the command-line flags the live benches share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bench import render
from bench.common import (
    REPO_ROOT,
    WORK_DIR,
    BenchError,
    broker,
    delete_topics,
    guarded,
    machine_info,
    process_tree,
    python,
    run_process,
    say,
    spark_cmd,
    topic_messages,
)

JOB = "jobs/minute_stats.py"
DEFAULT_CONF = REPO_ROOT / "conf" / "doodle.toml"
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60
POLL_S = 0.1               # how often the first batch line is looked for (its time is the reading's)
DRAIN_TIMEOUT_S = 600
#: what a live run records of its job (None until it happened)
FACTS = ("job_ready_s", "load_s", "rate_achieved", "drain_s", "job_stop", "final_pass_s")


# --------------------------------------------------------------------------- the job
def process_class(proc) -> str | None:
    """The class of one process of a job's tree: ``driver JVM`` (in local mode it also runs
    the executors' tasks), ``python driver``, ``python workers`` (the pyspark daemon and its
    workers); None for the spark-submit.sh shell or a process that is gone."""
    import psutil
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    exe = os.path.basename(cmd[0]) if cmd else ""
    if exe == "java":
        return "driver JVM"
    if exe.startswith("python"):
        return "python driver" if any(c.endswith(os.path.basename(JOB)) for c in cmd) else "python workers"
    return None


def driver_pid(root_pid: int) -> int | None:
    """PID of the job's Python driver (the child of spark-submit's JVM running the job)."""
    return next((p.pid for p in process_tree(root_pid)[1:] if process_class(p) == "python driver"), None)


def kill_tree(pid: int) -> dict:
    """SIGKILL a job's process groups — spark-submit's (driver JVM + Python driver) and the
    pyspark daemon's (Python workers) — then any survivor of its tree by PID."""
    import psutil
    tree = process_tree(pid)
    pidfile = None   # spark-submit.sh's driver PID file: its EXIT trap does not run on SIGKILL
    groups = set()
    for p in tree:
        try:
            groups.add(os.getpgid(p.pid))
            if p.pid != pid and not pidfile:
                pidfile = p.environ().get("DOODLE_DRIVER_PIDFILE")
        except (psutil.Error, OSError):
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
    alive = _wait_dead(tree, timeout=10)
    if pidfile:
        Path(pidfile).unlink(missing_ok=True)
    return {"processes": len(tree), "groups": len(groups), "survivors": [p.pid for p in alive]}


def _wait_dead(procs: list, timeout: float) -> list:
    """Wait until each process has exited; the ones still running after ``timeout`` s. A
    zombie has exited: it waits only for a parent that may be slow to reap it (the killed
    JVM's orphans are reaped by PID 1)."""
    import psutil

    def running(p) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if running(p)]
    return alive


class LiveJob:
    """``./spark-submit.sh jobs/minute_stats.py ARGS`` live, restartable: each start logs to
    ``log_dir/job-<n>.{out,err}``."""

    def __init__(self, args: list, log_dir: Path, spark_flags: list | None = None, env: dict | None = None):
        self.args, self.log_dir = [str(a) for a in args], log_dir
        self.spark_flags, self.env = list(spark_flags or []), {"DOODLE_TIMINGS": "1", **(env or {})}
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
            self.proc = subprocess.Popen(spark_cmd(JOB, self.args, self.spark_flags), stdout=fo, stderr=fe,
                                         stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env={**os.environ, **self.env},
                                         start_new_session=True)
        self.started_at, self.ready_at = time.monotonic(), None

    def _batch_line(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a ``batch`` line on stderr (raises if the job died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                tail = "\n".join(self.err.read_text(errors="replace").splitlines()[-15:])
                raise BenchError(f"live job exited with {self.proc.returncode} before its first batch; "
                                 f"see {self.err}\n{tail}")
            try:
                if any(x.startswith("batch ") for x in self.err.read_text(errors="replace").splitlines()):
                    return True
            except OSError:
                pass
            time.sleep(POLL_S)
        return False

    def wait_ready(self, timeout: float = START_TIMEOUT_S, idle: Callable[[], bool] | None = None) -> float:
        """Seconds from this start to the job's first ``batch`` line (raises if it died).

        With ``idle`` (True when the committed offsets are at the topic's end), a job whose
        query has started (its ``up in`` line) with nothing to read also counts
        as ready — Spark runs no batch without new data."""
        deadline = time.monotonic() + timeout
        self.ready_how = "batch"
        while not self._batch_line(2 if idle else timeout):
            if time.monotonic() > deadline or idle is None:
                raise BenchError(f"live job printed no batch line within {timeout:.0f}s; see {self.err}")
            if "minute_stats: up in " in self.err.read_text(errors="replace") and idle():
                self.ready_how = "idle"
                break
        self.ready_at = time.monotonic()
        return self.ready_at - self.started_at

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def startup(self) -> dict:
        """Where this start's time went, from the job's ``up in`` line (seconds per part:
        process, checks, session, tables and state, warm-up, query) and its first batch line
        (``first_batch_s``); {} before the query started."""
        text = self.err.read_text(errors="replace")
        up = re.search(r"minute_stats: up in ([\d.]+)s: (.*)", text)
        if up is None:
            return {}
        out = {"up_s": float(up.group(1))}
        out.update({k.strip(): float(v) for k, v in re.findall(r"([a-z -]+?) ([\d.]+)s(?:,|$)", up.group(2).strip())})
        first = re.search(r"^batch \d+: .* in ([\d.]+)s \|", text, re.M)
        if first is not None:
            out["first_batch_s"] = float(first.group(1))
        return out

    def kill(self) -> dict:
        """SIGKILL the whole process tree (:func:`kill_tree`)."""
        out = kill_tree(self.proc.pid)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return out

    def stop(self) -> str:
        """SIGTERM to the Python driver (the job stops after its current batch); SIGKILL of
        its tree after ``STOP_TIMEOUT_S``."""
        if not self.alive():
            return f"already exited ({self.proc.returncode})"
        pid = driver_pid(self.proc.pid) or self.proc.pid
        os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            return f"stopped by SIGTERM to pid {pid} (exit {self.proc.returncode})"
        except subprocess.TimeoutExpired:
            self.kill()
            return f"did not stop within {STOP_TIMEOUT_S}s of SIGTERM; process tree killed"


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
    return {"planned": max(ids(spark / "offsets"), default=-1),
            "committed": max(ids(spark / "commits"), default=-1),
            "state": max(StateStore(str(checkpoint)).ids(), default=-1)}


def committed_offsets(checkpoint: Path, topic: str) -> dict[int, int]:
    """End offsets per partition of ``topic`` of the job's newest committed batch ({} if none)."""
    batch = checkpoint_progress(checkpoint)["committed"]
    try:
        lines = (checkpoint / "spark" / "offsets" / str(batch)).read_text().splitlines() if batch >= 0 else []
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


# --------------------------------------------------------------------------- around it
class ResultReader(threading.Thread):
    """Consumes an output topic from the beginning, keeping (receive time, result)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(name="result-reader", daemon=True)
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-live",
                                  "enable.auto.commit": False})
        md = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        self.results: list[tuple[float, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            try:
                self.results.append((time.time(), json.loads(msg.value())))
            except ValueError:
                pass
        self.consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.join(10)


def read_topic_results(cfg, topic: str, timeout: float = 120) -> list[dict]:
    """Every value of an output topic, in order (1 partition), read to its end."""
    want = topic_messages(cfg, topic)
    reader = ResultReader(cfg.kafka.bootstrap_servers, topic)
    reader.start()
    deadline = time.monotonic() + timeout
    while len(reader.results) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    reader.close()
    return [r for _, r in reader.results]


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
        self.samples: list[float] = []
        self._thread = Periodic(interval, lambda: self.samples.append(os.getloadavg()[0]), "load-average")

    def __enter__(self) -> "LoadAverage":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.halt()

    def summary(self) -> dict:
        v = [round(x, 2) for x in self.samples]
        return {"samples": len(v), "load1_min": min(v, default=None),
                "load1_mean": round(sum(v) / len(v), 2) if v else None, "load1_max": max(v, default=None)}


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


# --------------------------------------------------------------------------- a run's space
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

    def job_args(self, *extra) -> list[str]:
        return ["--conf-file", str(self.conf), "--topic", self.topic, "--output-topic", self.out_topic,
                "--delta-path", str(self.delta), "--checkpoint", str(self.ckpt), *map(str, extra)]

    @property
    def args(self) -> list[str]:
        return self.job_args("--trigger", self.cfg.job.trigger_s)

    def idle(self) -> bool:
        """The job's committed offsets are at the input topic's end."""
        return sum(committed_offsets(self.ckpt, self.topic).values()) >= topic_messages(self.cfg, self.topic)

    def wait_drained(self, job: LiveJob, timeout: float = DRAIN_TIMEOUT_S) -> float:
        """Wait until the job's committed offsets reach the topic's end; returns the seconds."""
        t0 = time.monotonic()
        end = topic_messages(self.cfg, self.topic)
        while time.monotonic() - t0 < timeout:
            if not job.alive():
                raise BenchError(f"the live job exited ({job.proc.returncode}) while draining; see {job.err}")
            if sum(committed_offsets(self.ckpt, self.topic).values()) >= end:
                return time.monotonic() - t0
            time.sleep(1)
        raise BenchError(f"the live job did not reach the end of {self.topic} within {timeout:.0f}s")

    def finish(self, job: LiveJob, spark_flags: list | None = None) -> dict:
        """After the load: let the live job drain, stop it with SIGTERM, run the final
        ``--available-now`` pass. Returns drain_s, job_stop, stopped_at (epoch), final_pass_s."""
        if job.ready_at is None and job.alive():
            job.wait_ready(idle=self.idle)
        out = {"drain_s": round(self.wait_drained(job), 1), "stopped_at": time.time(), "job_stop": job.stop()}
        say(f"drained in {out['drain_s']:.0f}s; job {out['job_stop']}; final --available-now pass")
        fin = run_process(spark_cmd(JOB, [*self.args, "--available-now"], spark_flags or []), self.logs, "final",
                          timeout=1200)
        out["final_pass_s"] = fin.wall_s
        if fin.returncode != 0:
            raise BenchError(f"the final --available-now pass exited with {fin.returncode}; see {fin.stderr}\n"
                             f"{fin.tail()}")
        return out

    def batch_lines(self) -> int:
        """``batch`` lines of every start of the job and of the final pass."""
        n = 0
        for f in sorted(self.logs.glob("job-*.err")) + [self.logs / "final.err"]:
            try:
                n += sum(1 for x in f.read_text(errors="replace").splitlines() if x.startswith("batch "))
            except OSError:
                pass
        return n

    def clean(self, keep: bool) -> None:
        if not keep:
            delete_topics(self.cfg, [self.topic, self.out_topic])
            shutil.rmtree(self.delta, ignore_errors=True)
            shutil.rmtree(self.ckpt, ignore_errors=True)


# --------------------------------------------------------------------------- set-up and CLI
def conf_for(args) -> Path:
    """The configuration every client of the run uses: ``--conf-file``, or a copy of
    conf/doodle.toml on 127.0.0.1:``--kafka-port`` (controller port + 1)."""
    if args.kafka_port:
        from tools.confcopy import conf_copy
        return conf_copy(WORK_DIR / f"doodle-{args.kafka_port}.toml", args.kafka_port)
    return Path(args.conf_file) if args.conf_file else DEFAULT_CONF


def live_broker(cfg):
    """:func:`bench.common.broker`; one on another address than conf/doodle.toml's keeps its
    data and PID file in ``bench/.work/kafka-<port>/``, apart from `make kafka-up`'s."""
    from doodlestats.runtime.config import load_config
    own = cfg.kafka.bootstrap_servers != load_config(DEFAULT_CONF).kafka.bootstrap_servers and \
        "DOODLE_KAFKA_DIR" not in os.environ
    return broker(cfg, run_dir=WORK_DIR / f"kafka-{cfg.kafka.port}" if own else None)


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
    return {"commit": "".join(git("rev-parse", "--short", "HEAD")),
            "product_commit": "".join(git("log", "-1", "--format=%h", "--", *product)),
            "uncommitted": [x[3:] for x in git("status", "--porcelain", "--", *product)]}


def code_during(start: dict) -> dict:
    """The code state at the start of a run and whether it changed before its end (other
    engineers commit to the same tree; every job start uses the tree as it is then)."""
    end = code_state()
    changed = (end["product_commit"], end["uncommitted"]) != (start["product_commit"], start["uncommitted"])
    return {**start, "changed_during_run": changed, **({"at_end": end} if changed else {})}


def report_main(prog: str, conf: Path, run: Callable[[], dict], out_dir: Path, stem: str,
                markdown: Callable[[dict], str], plot: Callable | None = None) -> int:
    """The end of ``bench.chaos``'s and ``bench.soak``'s main: ``run()`` on the run's broker,
    the machine and the code around it, the report (``out_dir/<stem>-<date>.*``); exit 0 if
    every check passed, 1 if one failed, 2 for a problem to fix first."""
    from doodlestats.runtime.config import load_config
    machine, code = machine_info(), code_state()

    def go() -> int:
        with live_broker(load_config(conf)):
            res = run()
        res["machine"], res["code"] = machine, code_during(code)
        md = markdown(res)
        paths = render.write(out_dir, f"{stem}-{time.strftime('%Y-%m-%d')}", res, md,
                             plot if plot is not None and res.get("series") else None)
        print(md)
        say(f"{prog}: {render.verdict(res['ok'])}; wrote " + ", ".join(str(x) for x in paths.values()))
        return 0 if res["ok"] else 1
    return guarded(prog, go)
