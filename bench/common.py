"""Shared plumbing of the benchmark harness: paths, logging, machine facts, input data,
the Kafka broker and topics, and running a command while sampling its memory.

Everything here is small and synchronous; the modules that measure something
(``read_ceiling``, ``old_consumer``, ``parsers``, ``latency`` ...) use it, and
``bench.run`` wires them together.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
WORK_DIR = BENCH_DIR / ".work"          # git-ignored scratch space (data, runs, smoke results)
RESULTS_DIR = BENCH_DIR / "results"
SAMPLE = REPO_ROOT / "data" / "stream.jsonl.gz"
SAMPLE_TRUTH = REPO_ROOT / "data" / "stream.truth.json"
SPARK_SUBMIT = REPO_ROOT / "spark-submit.sh"
VPY = REPO_ROOT / ".venv" / "bin" / "python"

# generator parameters of the sample (`make sample`); --frames N uses the same ones
GEN_PARAMS = {"rate": 1000.0, "users": 100_000, "seed": 1}


class BenchError(RuntimeError):
    """A problem the user must fix; the message says what to do (printed as one line)."""


def guarded(prog: str, fn) -> int:
    """Run a bench entry point: a BenchError is one line and exit 2, Ctrl-C exit 130."""
    try:
        return fn()
    except BenchError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def say(msg: str) -> None:
    """Progress output: stderr, flushed, prefixed ``bench:``."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def python() -> str:
    """The project's virtualenv interpreter (falls back to the running one)."""
    return str(VPY) if VPY.exists() else sys.executable


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (``path.tmp`` then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def fresh_dir(d: Path) -> Path:
    """``d`` emptied (created if missing)."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def drop_tables(run_dir: Path) -> None:
    """Delete a run's Delta tables and checkpoint (``delta/``, ``checkpoint/``)."""
    for d in ("delta", "checkpoint"):
        shutil.rmtree(run_dir / d, ignore_errors=True)


def with_load(fn) -> dict:
    """``fn()``'s row with the 1-minute load average before and after it (other work on the
    machine skews a row)."""
    before = os.getloadavg()[0]
    row = fn()
    row["load1_before"], row["load1_after"] = round(before, 2), round(os.getloadavg()[0], 2)
    return row


# --------------------------------------------------------------------------- statistics
def _rank(n: int, q: float) -> int:
    """Index of the nearest-rank ``q``-th percentile in ``n`` sorted values (p50 of an even
    count: the lower middle)."""
    return min(n - 1, max(0, math.ceil(q / 100 * n) - 1))


def percentile(values, q: float) -> float | None:
    """THE percentile of the benchmarks: nearest rank (a value that occurred; p50 of an even
    count is the lower middle), rounded to 3 decimals; None without values."""
    if not values:
        return None
    v = sorted(values)
    return round(v[_rank(len(v), q)], 3)


def summary(values) -> dict:
    """n, p50, p90, p99 and max (seconds) of ``values``."""
    return {"n": len(values), "p50_s": percentile(values, 50), "p90_s": percentile(values, 90),
            "p99_s": percentile(values, 99), "max_s": round(max(values), 3) if values else None}


def median_run(runs: list[dict], key: str = "frames_per_s") -> dict:
    """The median run of one row by ``key`` (:func:`percentile`'s p50), with every run's
    frames/s attached so that the spread is visible."""
    ordered = sorted(runs, key=lambda r: r[key])
    row = dict(ordered[_rank(len(ordered), 50)])
    row["runs_frames_per_s"] = [r["frames_per_s"] for r in runs]
    return row


# --------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """Cores, memory and CPU model of this machine (from /proc), plus load and versions."""
    import platform

    import psutil
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version
    versions = {}
    for dist in ("pyspark", "delta-spark", "confluent-kafka", "orjson", "pysimdjson", "duckdb", "pyarrow"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


# --------------------------------------------------------------------------- input data
@dataclass(frozen=True)
class Frames:
    """A JSONL(.gz) file of frames with its size facts."""

    path: Path
    count: int
    mean_bytes: float   # mean frame size without the newline
    truth: Path | None = None


def read_truth(truth_path: Path | None) -> dict | None:
    """The generator's truth file (None if there is none or it is unreadable)."""
    try:
        return json.loads(truth_path.read_text()) if truth_path else None
    except (OSError, ValueError):
        return None


def frames_file(frames: int | None, seed: int | None = None) -> Frames:
    """The benchmark input: the 1M sample (``frames`` None) or N generated frames.

    N frames are generated once (same parameters as ``make sample``: rate 1000,
    users 100k, seed 1, or ``seed``) into ``bench/.work/frames-N.jsonl.gz`` (another
    seed: ``frames-N-seedS.jsonl.gz``) with their truth file.
    """
    if frames is None:
        if not SAMPLE.exists():
            raise BenchError(f"{SAMPLE.relative_to(REPO_ROOT)} is missing — run `make sample` "
                             "(or pass --frames N to generate N frames)")
        truth = read_truth(SAMPLE_TRUTH)
        if truth is None:
            n, size = _count_lines(SAMPLE)
            return Frames(SAMPLE, n, size / max(n, 1), None)
        return Frames(SAMPLE, truth["frames"], truth["bytes"] / max(truth["frames"], 1), SAMPLE_TRUTH)
    if frames < 1:
        raise BenchError("--frames must be >= 1")
    params = {**GEN_PARAMS, **({"seed": seed} if seed is not None else {})}
    stem = f"frames-{frames}" + ("" if params["seed"] == GEN_PARAMS["seed"] else f"-seed{params['seed']}")
    path = WORK_DIR / f"{stem}.jsonl.gz"
    truth_path = WORK_DIR / f"{stem}.truth.json"
    truth = read_truth(truth_path) if path.exists() else None
    if truth is None or truth.get("frames") != frames or \
            (truth.get("params") or {}).get("seed", params["seed"]) != params["seed"]:
        from tools.generator import GenConfig, write
        say(f"generating {frames:,} frames (seed {params['seed']}) into {path.relative_to(REPO_ROOT)}")
        truth = write(GenConfig(count=frames, **params), str(path), str(truth_path), progress=False)
    return Frames(path, frames, truth["bytes"] / max(frames, 1), truth_path)


def _count_lines(path: Path) -> tuple[int, int]:
    from tools.loader import open_lines
    n = size = 0
    for line in open_lines(str(path)):
        line = line.rstrip(b"\r\n")
        if line:
            n += 1
            size += len(line)
    return n, size


def read_lines(path: Path, limit: int | None = None) -> list[bytes]:
    """The first ``limit`` non-empty lines of a JSONL(.gz) file, without newlines."""
    from tools.loader import open_lines
    out: list[bytes] = []
    for line in open_lines(str(path)):
        line = line.rstrip(b"\r\n")
        if line:
            out.append(line)
            if limit is not None and len(out) >= limit:
                break
    return out


# --------------------------------------------------------------------------- Kafka
def load_cfg(bootstrap: str | None = None):
    """The project configuration, with an optional bootstrap override."""
    from doodlestats.runtime.config import load_config
    return load_config(None, {"kafka.bootstrap_servers": bootstrap})


def broker_answers(cfg, timeout: float = 5.0) -> bool:
    """True if a broker answers a metadata request at ``cfg.kafka.bootstrap_servers``."""
    from tools import kafka_local
    try:
        kafka_local.wait_ready(cfg, timeout=timeout)
        return True
    except kafka_local.BrokerError:
        return False


def require_broker(cfg, prog: str) -> None:
    """Exit with ONE clear line if the broker does not answer (the rows' own processes)."""
    if not broker_answers(cfg):
        raise SystemExit(f"{prog}: error: Kafka at {cfg.kafka.bootstrap_servers} does not answer — "
                         "start it with `make kafka-up`")


@contextmanager
def broker(cfg, may_start: bool = True, run_dir: Path | None = None) -> Iterator[bool]:
    """Use the broker at the configured address; start the embedded one if none answers.

    Yields True if this call started it — and then stops it (by its PID file) on exit.
    ``run_dir``: the folder of its data and PID file (``DOODLE_KAFKA_DIR``) while it runs,
    apart from `make kafka-up`'s (a broker on another port than conf/doodle.toml's).
    """
    from tools import kafka_local
    old = os.environ.get("DOODLE_KAFKA_DIR")
    if run_dir is not None:
        os.environ["DOODLE_KAFKA_DIR"] = str(run_dir)
    try:
        if broker_answers(cfg, timeout=3):
            yield False
            return
        if not may_start:
            raise BenchError(f"Kafka at {cfg.kafka.bootstrap_servers} does not answer — start it with "
                             "`make kafka-up`")
        say(f"no broker at {cfg.kafka.bootstrap_servers}; starting the embedded one (stopped at the end)")
        try:
            kafka_local.up(cfg)
        except kafka_local.BrokerError as e:
            if run_dir is not None:
                kafka_local.down()   # its own folder's PID file: only a broker up() just started
            raise BenchError(f"could not start Kafka ({e}) — try `make kafka-up`") from None
        try:
            yield True
        finally:
            say(f"stopping the broker this run started ({cfg.kafka.bootstrap_servers})")
            kafka_local.down()
    finally:
        if run_dir is not None and old is None:
            os.environ.pop("DOODLE_KAFKA_DIR", None)
        elif run_dir is not None:
            os.environ["DOODLE_KAFKA_DIR"] = old


def delete_topics(cfg, names: Sequence[str]) -> None:
    """Delete topics (best effort, waits up to 30 s)."""
    from confluent_kafka.admin import AdminClient
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for name, fut in admin.delete_topics(list(names), operation_timeout=30).items():
        try:
            fut.result(30)
        except Exception as e:  # noqa: BLE001
            if "UNKNOWN_TOPIC" not in str(e):
                say(f"could not delete topic {name}: {e}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not set(names) & set(admin.list_topics(timeout=10).topics):
            return
        time.sleep(0.3)


def prepare_topic(cfg, frames: Frames, topic: str, key: str = "uid") -> dict:
    """Make ``topic`` hold exactly the frames of ``frames.path`` (loads it only if needed).

    A topic holding another number of messages (an interrupted load) is deleted and
    reloaded. Returns ``{"topic", "loaded", "load_s", "partitions"}``.
    """
    from tools.kafka_local import ensure_topic
    from tools.loader import load, topic_end_offsets
    partitions = cfg.kafka.input_partitions
    have = topic_end_offsets(cfg.kafka.bootstrap_servers, topic)
    if have == frames.count:
        say(f"topic {topic} already holds {have:,} frames; not reloading")
        return {"topic": topic, "loaded": False, "load_s": None, "partitions": partitions}
    if have:
        say(f"topic {topic} holds {have:,} messages, expected {frames.count:,}: recreating it")
        delete_topics(cfg, [topic])
    ensure_topic(cfg, topic, partitions)
    say(f"loading {frames.count:,} frames into {topic} (key={key})")
    t0 = time.monotonic()
    n = load(str(frames.path), cfg.kafka.bootstrap_servers, topic, key=key, progress=True)
    dt = time.monotonic() - t0
    if n != frames.count:
        raise BenchError(f"loaded {n} frames into {topic}, expected {frames.count}")
    return {"topic": topic, "loaded": True, "load_s": round(dt, 1), "partitions": partitions}


def produce(cfg, topic: str, lines, partitions: int | None = None) -> int:
    """Produce each item of ``lines`` (bytes, any content) as one unkeyed message into
    ``topic`` (created with ``partitions``, default ``[kafka] input_partitions``, if
    missing), with the loader's producer settings. Returns the messages delivered; a
    delivery failure raises :class:`BenchError`."""
    from confluent_kafka import Producer

    from tools.kafka_local import ensure_topic
    ensure_topic(cfg, topic, partitions or cfg.kafka.input_partitions)
    failures: list[str] = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))

    p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "linger.ms": 20, "batch.size": 1 << 20,
                  "compression.type": "none", "queue.buffering.max.messages": 500_000,
                  "queue.buffering.max.kbytes": 1 << 20, "enable.idempotence": True})
    n = 0
    for value in lines:
        while True:
            try:
                p.produce(topic, value, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
    left = p.flush(120)
    if failures or left:
        raise BenchError(f"producing into {topic}: {left} undelivered, {len(failures)} failed "
                         f"({failures[0] if failures else 'flush timed out'})")
    return n


def topic_messages(cfg, topic: str) -> int:
    """Messages in ``topic`` (sum of its partitions' end offsets; 0 if it does not exist)."""
    from tools.loader import topic_end_offsets
    return topic_end_offsets(cfg.kafka.bootstrap_servers, topic)


# --------------------------------------------------------------------------- processes
def process_tree(pid: int) -> list:
    """psutil processes of ``pid`` and all its descendants (alive now; [] if it is gone)."""
    import psutil
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


class RssSampler:
    """Samples the summed RSS of a process tree (root + all descendants) every ``interval`` s.

    The JVM of spark-submit, its Python driver and the pyspark daemon/workers all count.
    """

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        import psutil
        total = 0
        for p in process_tree(self.pid):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


@dataclass
class ProcResult:
    """Outcome of :func:`run_process`."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    stdout: Path
    stderr: Path
    cpu_s: float | None = None  # CPU (user + system) of the whole process tree, once it was reaped

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.stderr.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def output(self, name: str, path: Path) -> dict:
        """The JSON the run wrote to ``path``; a failed run or a missing file raises."""
        if self.returncode != 0 or not path.exists():
            raise BenchError(f"{name} failed (exit {self.returncode}); see {self.stderr}\n{self.tail()}")
        return json.loads(path.read_text())


def rel(path) -> str:
    """``path`` relative to the repository (reports name no machine's folders), else its name."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return p.name


def spark_cmd(script: str, job_args: Sequence[str] = (), spark_flags: Sequence[str] = ()) -> list[str]:
    """``./spark-submit.sh [spark flags] script [job args]``."""
    return [str(SPARK_SUBMIT), *spark_flags, script, *map(str, job_args)]


def event_log_flags(dirpath: Path) -> list[str]:
    """spark-submit flags writing an uncompressed, non-rolling event log into ``dirpath``."""
    dirpath.mkdir(parents=True, exist_ok=True)
    return ["--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{dirpath}",
            "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false"]


def _children_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_process(cmd: Sequence[str], log_dir: Path, name: str, env: dict | None = None,
                timeout: float | None = None) -> ProcResult:
    """Run ``cmd`` in its own process group with stdout/stderr to ``log_dir/name.{out,err}``,
    sampling the RSS of its process tree. On timeout the whole group is killed.

    ``cpu_s`` is the CPU time of the whole tree: this process's reaped-children rusage
    before and after (each process of the tree is reaped by its parent, so the JVM, the
    Python driver and the pyspark workers all count; the run must be the only child
    that ends meanwhile, which it is: rows run one after another)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    full_env = {**os.environ, **(env or {})}
    cpu0 = _children_cpu()
    t0 = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                cwd=REPO_ROOT, env=full_env, start_new_session=True)
        with RssSampler(proc.pid) as rss:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"{name}: timed out after {timeout:.0f}s; killing its process group")
                kill_group(proc)
                rc = -9
            except BaseException:
                kill_group(proc)
                raise
    return ProcResult(list(map(str, cmd)), rc, round(time.monotonic() - t0, 2), rss.peak_mb, out, err,
                      round(_children_cpu() - cpu0, 2))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a child started with ``start_new_session=True``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
