"""The job on a real Spark standalone cluster (master + 2 one-core workers on 127.0.0.1,
started from the pinned pyspark by tools/cluster_local.py): a 6-partition topic with
late, malformed and bit-flipped frames gives the generator's exact truth — with one
worker's executor SIGKILLed after the first batch, while the next one runs: Spark runs
the lost tasks again, and nothing is lost or counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from conftest import ROOT, consume_all, new_topic, produce
from test_minute_stats import job_args, last_per_key, quarantine_counts, stored_minutes, truth_by_minute

pytestmark = pytest.mark.integration


def test_minute_stats_on_a_standalone_cluster_is_exact(kafka, spark, test_conf, tmp_path):
    from tools import cluster_local
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=24_000, rate=150, users=2000, seed=61, max_delay=4, delay_prob=0.05,
                                      string_ts_frac=0.1, malformed_frac=0.01, bitflip_frac=0.002))
    topic, out_topic = new_topic(kafka, "cluster", 6), new_topic(kafka, "cluster-out", 1)
    produce(kafka, topic, lines)
    port = int(os.environ.get("DOODLE_TEST_SPARK_PORT", "17077")) + 10
    ui_port = int(os.environ.get("DOODLE_TEST_SPARK_UI_PORT", "18080")) + 10
    with cluster_local.running(workers=2, port=port, webui_port=ui_port, dir=tmp_path / "cluster") as c:
        assert len(c.alive_workers()) == 2
        cmd = [str(ROOT / "spark-submit.sh"), "--master", c.master_url, "--driver-memory", "1g",
               "--executor-memory", "768m", str(ROOT / "jobs" / "minute_stats.py"), "--conf-file", str(test_conf),
               *job_args(topic, out_topic, tmp_path, "--available-now", "--max-offsets-per-trigger", "8000")]
        err = tmp_path / "job.err"
        with open(err, "w") as log:
            job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=dict(os.environ),
                                   start_new_session=True)
            try:
                killed = _kill_an_executor_after_the_first_batch(job, err, tmp_path / "cluster")
                assert job.wait(900) == 0, err.read_text()[-5000:]
            finally:
                if job.poll() is None:  # the whole job (its JVM and Python driver), by its process group
                    os.killpg(job.pid, signal.SIGKILL)
                    job.wait()
        text = err.read_text()
        assert "batch 2:" in text  # several micro-batches, executors on both workers
        assert killed and "Lost executor" in text, text[-3000:]  # the driver saw it go
    want = truth_by_minute(truth)
    assert stored_minutes(spark, tmp_path / "delta") == want
    got = {v["ts"]: (v["unique_users"], v["frames"]) for v in last_per_key(consume_all(kafka, out_topic)).values()}
    assert got == want
    bad = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    assert bad["ts_outlier"] and bad["malformed_json"] and truth["defects"]["delayed"]
    assert dict(quarantine_counts(spark, tmp_path / "delta")) == bad


def _kill_an_executor_after_the_first_batch(job: subprocess.Popen, err, cluster_dir) -> int:
    """SIGKILL the executor JVM of worker 1 (a child of the worker, found from its PID file)
    as soon as batch 0 is committed; its PID."""
    deadline = time.monotonic() + 300
    while "batch 0:" not in err.read_text():
        assert job.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.1)
    worker = psutil.Process(int((cluster_dir / "worker-1.pid").read_text()))
    for p in worker.children(recursive=True):
        try:
            executor = any("CoarseGrainedExecutorBackend" in a for a in p.cmdline())
        except psutil.Error:  # gone, or a zombie
            continue
        if executor:
            os.kill(p.pid, signal.SIGKILL)
            return p.pid
    return 0
