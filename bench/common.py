"""Shared plumbing of the benchmark harness: paths, logging, machine facts, input data,
the Kafka broker and topics, and running a command while sampling its memory.

Everything here is small and synchronous; the modules that measure something
(``read_ceiling``, ``old_consumer``, ``parsers``, ``latency`` ...) use it, and
``bench.run`` wires them together.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


def _truth_of(truth_path: Path) -> dict | None:
    try:
        return json.loads(truth_path.read_text())
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
        truth = _truth_of(SAMPLE_TRUTH)
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
    truth = _truth_of(truth_path) if path.exists() else None
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
    """Exit with ONE clear line if the broker does not answer."""
    if not broker_answers(cfg):
        raise SystemExit(f"{prog}: error: Kafka at {cfg.kafka.bootstrap_servers} does not answer — "
                         "start it with `make kafka-up`")


@contextmanager
def broker(cfg, may_start: bool = True) -> Iterator[bool]:
    """Use the broker at the configured address; start the embedded one if none answers.

    Yields True if this call started it — and then stops it (by its PID file) on exit.
    Only the default address of conf/doodle.toml can be started here.
    """
    from tools import kafka_local
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
        raise BenchError(f"could not start Kafka ({e}) — try `make kafka-up`") from None
    try:
        yield True
    finally:
        say("stopping the broker this run started")
        kafka_local.down()


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
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
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

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cmd"] = " ".join(map(str, self.cmd))
        d["stdout"], d["stderr"] = rel(self.stdout), rel(self.stderr)
        return d


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


def fmt_int(x: float | int | None) -> str:
    """``1234567.8`` → ``1,234,568``; None → ``–``."""
    return "–" if x is None else f"{x:,.0f}"
