"""A Spark standalone cluster on this machine: one master and N workers on 127.0.0.1.

Runs the daemons of the pinned pyspark (``<pyspark>/bin/spark-class``
``org.apache.spark.deploy.master.Master`` / ``...worker.Worker``); PID files, logs and the
workers' folders live in ``.run/cluster`` (git-ignored, or ``$DOODLE_CLUSTER_DIR``)::

    python -m tools.cluster_local up        # master on 127.0.0.1:7077 (web UI 127.0.0.1:8080),
                                            # 2 workers with 1 core each; waits until both joined
    python -m tools.cluster_local status
    python -m tools.cluster_local down      # stops exactly the processes of our PID files

    ./spark-submit.sh --master spark://127.0.0.1:7077 jobs/minute_stats.py --available-now

``up`` is idempotent (a cluster started from this folder is reused; a missing worker is
started again). Jobs bring their own jars and the package (``./spark-submit.sh`` passes
``--jars`` and ``--py-files``); the workers need nothing but Java. From Python (tests)::

    with running(port=17077, webui_port=18080) as cluster:
        ... spark-submit --master cluster.master_url ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from doodlestats.runtime.config import REPO_ROOT
from tools._proc import pid_alive, port_open, terminate  # noqa: F401

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

# The daemons' own log configuration: INFO (registrations, executors) into their log files.
LOG4J = """rootLogger.level = info
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
"""


class ClusterError(RuntimeError):
    """Something the user must fix; the message says what to run."""


@dataclass(frozen=True)
class Cluster:
    """Where a running cluster listens."""
    port: int = 7077
    webui_port: int = 8080
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "1g"
    host: str = HOST

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.webui_port}"

    def state(self, timeout: float = 5.0) -> dict:
        """The master's JSON (``/json/``): workers, their state and cores, applications."""
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=timeout) as r:
            return json.load(r)

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]


def run_dir() -> Path:
    """PID files, logs, worker folders: $DOODLE_CLUSTER_DIR or .run/cluster."""
    return Path(os.environ.get("DOODLE_CLUSTER_DIR") or REPO_ROOT / ".run" / "cluster")


def _say(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def _port_open(port: int, host: str = HOST) -> bool:
    return port_open(host, port)


def _pid_alive(pid: int) -> bool:
    return pid_alive(pid)


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (a daemon and the executors it started)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def _pid_files() -> list[Path]:
    """Workers first (stopped before the master), then the master."""
    d = run_dir()
    return sorted(d.glob("worker-*.pid")) + ([d / "master.pid"] if (d / "master.pid").exists() else [])


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def running_cluster() -> Cluster | None:
    """The cluster started from this folder, if its master is alive."""
    d = run_dir()
    if _read_pid(d / "master.pid") is None:
        return None
    try:
        return Cluster(**json.loads((d / "cluster.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def spark_class() -> Path:
    import pyspark  # only here: `down` and `status` run before (or without) a complete virtualenv
    path = Path(pyspark.__file__).resolve().parent / "bin" / "spark-class"
    if not path.exists():
        raise ClusterError(f"{path} is missing — run `make setup`")
    return path


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("JAVA_HOME") and Path(env["JAVA_HOME"], "bin", "java").exists():
        return env
    env.pop("JAVA_HOME", None)
    if shutil.which("java", path=env.get("PATH")) is None:
        raise ClusterError("java not found on PATH — install OpenJDK 17 (e.g. apt-get install openjdk-17-jre-headless)")
    return env


def _daemon_env(base: dict[str, str]) -> dict[str, str]:
    d = run_dir()
    conf = d / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "log4j2.properties").write_text(LOG4J)
    env = {k: v for k, v in base.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env.update({
        "SPARK_HOME": str(spark_class().parent.parent),
        "SPARK_CONF_DIR": str(conf),      # not conf/spark: the daemons need no job settings
        "SPARK_LOCAL_IP": HOST,           # RPC, web UIs and executors bind 127.0.0.1
        "SPARK_LOG_DIR": str(d),
        "SPARK_DAEMON_MEMORY": "512m",
    })
    return env


def _start(name: str, args: list[str], env: dict[str, str]) -> int:
    d = run_dir()
    with open(d / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([str(spark_class()), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=d, env=env)
    (d / f"{name}.pid").write_text(f"{proc.pid}\n")  # spark-class execs the JVM: same PID
    return proc.pid


def _tail(name: str, n: int = 1500) -> str:
    try:
        return (run_dir() / f"{name}.log").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait(cluster: Cluster, pids: dict[str, int], timeout: float) -> None:
    """Until the master answers and ``cluster.workers`` workers are ALIVE."""
    deadline = time.monotonic() + timeout
    last = "master not answering"
    while time.monotonic() < deadline:
        for name, pid in pids.items():
            if not _pid_alive(pid):
                raise ClusterError(f"{name} (pid {pid}) exited during start-up; see "
                                   f"{run_dir() / (name + '.log')}\n{_tail(name)}")
        if _port_open(cluster.webui_port):
            try:
                alive = len(cluster.alive_workers())
                if alive >= cluster.workers:
                    return
                last = f"{alive} of {cluster.workers} workers registered"
            except (OSError, ValueError) as e:
                last = str(e)
        time.sleep(0.5)
    raise ClusterError(f"cluster not ready within {timeout:.0f}s ({last}); logs in {run_dir()}")


def up(workers: int = 2, port: int = 7077, webui_port: int = 8080, worker_cores: int = 1,
       worker_memory: str = "1g", timeout: float = 120.0) -> Cluster:
    """Start the master and the workers that are not running yet; wait until all joined."""
    if workers < 1 or worker_cores < 1:
        raise ClusterError("workers and worker cores must be >= 1")
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True)
    want = Cluster(port=port, webui_port=webui_port, workers=workers, worker_cores=worker_cores,
                   worker_memory=worker_memory)
    have = running_cluster()
    if have is not None and (have.port, have.webui_port) != (port, webui_port):
        raise ClusterError(f"a cluster from {d} already runs on {have.master_url} — "
                           f"`make cluster-down` first")
    env = _daemon_env(_java_env())
    pids: dict[str, int] = {}
    if have is not None:
        pids["master"] = _read_pid(d / "master.pid") or 0
    else:
        for p in (port, webui_port):
            if _port_open(p):
                raise ClusterError(f"port {HOST}:{p} is already in use by another process — stop it, or "
                                   f"choose other ports (python -m tools.cluster_local up --port P --webui-port U)")
        for stale in d.glob("*.pid"):
            stale.unlink()
        (d / "cluster.json").write_text(json.dumps(asdict(want)))
        pids["master"] = _start("master", [MASTER_CLASS, "--host", HOST, "--port", str(port),
                                           "--webui-port", str(webui_port)], env)
        _say(f"starting master (pid {pids['master']}) on {want.master_url}, web UI {want.ui_url}")
    started = []
    for i in range(1, workers + 1):
        name = f"worker-{i}"
        pid = _read_pid(d / f"{name}.pid")
        if pid is None:
            work = d / name
            (work / "tmp").mkdir(parents=True, exist_ok=True)
            wenv = {**env, "SPARK_WORKER_DIR": str(work), "SPARK_LOCAL_DIRS": str(work / "tmp")}
            pid = _start(name, [WORKER_CLASS, "--host", HOST, "--cores", str(worker_cores),
                                "--memory", worker_memory, "--webui-port", "0", "--work-dir", str(work),
                                want.master_url], wenv)
            started.append(f"{name} (pid {pid})")
        pids[name] = pid
    if have is not None:
        (d / "cluster.json").write_text(json.dumps(asdict(want)))
    if started:
        _say(f"starting {', '.join(started)}: {worker_cores} core(s), {worker_memory} each")
    t0 = time.monotonic()
    _wait(want, pids, timeout)
    if have is not None and not started:
        _say(f"already running (master pid {pids['master']}) on {want.master_url}, {workers} workers")
    else:
        _say(f"ready on {want.master_url} with {workers} workers after {time.monotonic() - t0:.1f}s "
             f"(web UI {want.ui_url})")
    return want


def _stop(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, SIGKILL after ``timeout``; then whatever is left of its process group
    (executors a worker started, their Python workers)."""
    terminate(pid, timeout, _say)
    deadline = time.monotonic() + 10
    while (left := _group(pid)) and time.monotonic() < deadline:
        for p in left:
            try:
                os.kill(p, signal.SIGKILL if time.monotonic() > deadline - 5 else signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    while _pid_alive(pid):
        time.sleep(0.1)


def down(timeout: float = 30.0) -> bool:
    """Stop the processes of our PID files (workers, then the master). True if any ran."""
    any_ran = False
    for path in _pid_files():
        pid = _read_pid(path)
        if pid is not None:
            _stop(pid, timeout)
            _say(f"stopped {path.stem} (pid {pid})")
            any_ran = True
        path.unlink(missing_ok=True)
    if not any_ran:
        _say("not running")
    return any_ran


def status() -> dict | None:
    """PIDs and the master's view of the workers, or None if no master runs."""
    c = running_cluster()
    if c is None:
        return None
    pids = {p.stem: _read_pid(p) for p in _pid_files()}
    try:
        workers = [f"{w['host']}:{w['port']} {w['state']} cores {w['coresused']}/{w['cores']}"
                   for w in c.state()["workers"]]
    except (OSError, ValueError, KeyError) as e:
        workers = [f"(master not answering: {e})"]
    return {"master_url": c.master_url, "ui_url": c.ui_url, "pids": pids, "workers": workers}


@contextmanager
def running(workers: int = 2, port: int = 7077, webui_port: int = 8080, worker_cores: int = 1,
            worker_memory: str = "1g", dir: str | os.PathLike | None = None,
            timeout: float = 120.0) -> Iterator[Cluster]:
    """A cluster for the ``with`` block: started (and afterwards stopped) unless one from the
    same folder already runs on these ports, which is then reused and left running.
    ``dir`` is the folder of its PID files and logs (default: ``run_dir()``)."""
    old = os.environ.get("DOODLE_CLUSTER_DIR")
    if dir is not None:
        os.environ["DOODLE_CLUSTER_DIR"] = str(dir)
    try:
        had = running_cluster()
        cluster = up(workers, port, webui_port, worker_cores, worker_memory, timeout)
        ours = had is None
        try:
            yield cluster
        finally:
            if ours:
                down()
    finally:
        if dir is not None:
            if old is None:
                os.environ.pop("DOODLE_CLUSTER_DIR", None)
            else:
                os.environ["DOODLE_CLUSTER_DIR"] = old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.cluster_local", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--workers", type=int, default=2, help="default 2")
    ap.add_argument("--port", type=int, default=7077, help="master port (default 7077)")
    ap.add_argument("--webui-port", type=int, default=8080, help="master web UI port (default 8080)")
    ap.add_argument("--worker-cores", type=int, default=1, help="cores per worker (default 1)")
    ap.add_argument("--worker-memory", default="1g", help="memory per worker for executors (default 1g)")
    args = ap.parse_args(argv)
    try:
        if args.command == "up":
            up(args.workers, args.port, args.webui_port, args.worker_cores, args.worker_memory)
        elif args.command == "down":
            down()
        else:
            st = status()
            if st is None:
                print("cluster: not running")
                return 1
            print(f"cluster: {st['master_url']} (web UI {st['ui_url']}); pids "
                  + ", ".join(f"{k} {v}" for k, v in st["pids"].items()))
            for w in st["workers"]:
                print(f"  worker {w}")
        return 0
    except ClusterError as e:
        print(f"cluster: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
