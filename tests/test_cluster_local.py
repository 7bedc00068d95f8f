"""The local Spark standalone cluster (tools/cluster_local.py, `make cluster-up/down`):
a master and two 1-core workers on 127.0.0.1, started and stopped by PID.

The tests use their own ports — DOODLE_TEST_SPARK_PORT (master, default 17077) and
DOODLE_TEST_SPARK_UI_PORT (its web UI, default 18080) — and their own folder, so a cluster
started by `make cluster-up` (7077/8080) is left alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tools._proc import free_port

PORT = int(os.environ.get("DOODLE_TEST_SPARK_PORT", "17077"))
UI_PORT = int(os.environ.get("DOODLE_TEST_SPARK_UI_PORT", "18080"))
CLI = [sys.executable, "-m", "tools.cluster_local"]


def _cli(args: list[str], run: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**(env if env is not None else os.environ), "DOODLE_CLUSTER_DIR": str(run)}
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_port_in_use_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli(["up", "--port", str(port), "--webui-port", str(free_port())], tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"cluster: error: port 127.0.0.1:{port} is already in use by another process — stop it, or choose "
        f"other ports (python -m tools.cluster_local up --port P --webui-port U)"]
    assert not list((tmp_path / "run").glob("*.pid"))


def test_no_java_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the virtualenv's bin: python, no java
    r = _cli(["up", "--port", str(free_port()), "--webui-port", str(free_port())], tmp_path / "run", env=env)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("cluster: error: java not found on PATH")


def test_status_and_down_when_nothing_runs(tmp_path):
    r = _cli(["status"], tmp_path / "run")
    assert r.returncode == 1 and r.stdout.strip() == "cluster: not running"
    r = _cli(["down"], tmp_path / "run")
    assert r.returncode == 0 and r.stderr.strip() == "cluster: not running"


JOB = '''
import json, os
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("cluster-smoke").getOrCreate()
sc = spark.sparkContext
total = spark.range(100).groupBy().sum("id").collect()[0][0]

def where(rows):
    import doodlestats
    yield (os.getcwd(), doodlestats.__file__, sum(rows))

tasks = sc.parallelize(range(100), 4).mapPartitions(where).collect()
executors = sorted(str(sc._jsc.sc().getExecutorIds().mkString(",")).split(","))
print(json.dumps({"sum": total, "tasks": tasks, "executors": executors, "app": sc.applicationId}))
spark.stop()
'''


@pytest.mark.integration
def test_up_runs_a_job_on_two_workers_then_down_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    pids: dict[str, int] = {}
    r1 = _cli(["up", "--port", str(PORT), "--webui-port", str(UI_PORT)], run)
    try:
        assert r1.returncode == 0, r1.stderr
        pids = {p.stem: int(p.read_text()) for p in run.glob("*.pid")}
        assert set(pids) == {"master", "worker-1", "worker-2"}

        r2 = _cli(["up", "--port", str(PORT), "--webui-port", str(UI_PORT)], run)  # idempotent
        assert r2.returncode == 0 and "already running" in r2.stderr, r2.stderr
        assert {p.stem: int(p.read_text()) for p in run.glob("*.pid")} == pids

        from tools.cluster_local import Cluster
        state = Cluster(port=PORT, webui_port=UI_PORT).state()
        alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
        assert len(alive) == 2 and all(w["host"] == "127.0.0.1" and w["cores"] == 1 for w in alive), state

        st = _cli(["status"], run)
        assert st.returncode == 0 and f"spark://127.0.0.1:{PORT}" in st.stdout and st.stdout.count("ALIVE") == 2

        (tmp_path / "job.py").write_text(JOB)
        job = subprocess.run(
            [str(ROOT / "spark-submit.sh"), "--master", f"spark://127.0.0.1:{PORT}", "--driver-memory", "512m",
             "--executor-memory", "512m", "--conf", "spark.cores.max=2", "--conf", "spark.executor.cores=1",
             "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
             "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s", "job.py"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stderr[-4000:]
        out = json.loads(job.stdout.strip().splitlines()[-1])
        assert out["sum"] == 4950 and sum(t[2] for t in out["tasks"]) == 4950
        assert len(out["executors"]) == 2, out
        # Python ran in the executors' folders on both workers, with the shipped package
        workers = {Path(t[0]).relative_to(run).parts[0] for t in out["tasks"]}
        assert workers == {"worker-1", "worker-2"}, out["tasks"]
        assert all(t[1].endswith("doodlestats.zip/doodlestats/__init__.py") for t in out["tasks"]), out["tasks"]
        apps = {a["id"]: a for a in Cluster(port=PORT, webui_port=UI_PORT).state()["completedapps"]}
        assert apps[out["app"]]["name"] == "cluster-smoke" and apps[out["app"]]["cores"] == 2
    finally:
        r3 = _cli(["down"], run)
    assert r3.returncode == 0, r3.stderr
    assert not list(run.glob("*.pid"))
    assert all(_dead(pid) for pid in pids.values())
    leftovers = [d.name for d in Path("/proc").iterdir() if d.name.isdigit() and not _dead(int(d.name))
                 and _pgid(int(d.name)) in pids.values()]
    assert leftovers == [], "processes of the daemons' groups (executors) left running"
    assert _free(PORT) and _free(UI_PORT)


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.integration
def test_running_context_manager_starts_reuses_and_stops(tmp_path):
    from tools import cluster_local
    run = tmp_path / "run"
    with cluster_local.running(workers=1, port=PORT, webui_port=UI_PORT, dir=run) as cluster:
        assert cluster.master_url == f"spark://127.0.0.1:{PORT}"
        assert len(cluster.alive_workers()) == 1
        master = int((run / "master.pid").read_text())
        with cluster_local.running(workers=1, port=PORT, webui_port=UI_PORT, dir=run) as again:
            assert again == cluster
        assert not _dead(master)  # the inner block reused it and left it running
    assert _dead(master) and not list(run.glob("*.pid")) and _free(PORT) and _free(UI_PORT)
