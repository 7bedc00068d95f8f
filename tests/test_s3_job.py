"""The job with its checkpoint and Delta tables on an S3-compatible object store (a real
moto server on 127.0.0.1, started by tools/s3_local.py): Spark's S3A for the checkpoint
and the executors' files, delta-rs for the driver's commits, the job's state files on S3.
Two runs (a restart in between) give the exact truth of everything produced."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import ROOT, new_topic, produce, write_conf
from test_minute_stats import recount

pytestmark = pytest.mark.integration

BUCKET = "doodle-job"
KEY_ENV, SECRET_ENV = "DOODLE_TEST_S3_ACCESS_KEY", "DOODLE_TEST_S3_SECRET_KEY"


def min_of(line: bytes) -> int:
    ts = int(json.loads(line)["ts"])
    return ts - ts % 60


def test_checkpoint_and_delta_on_s3_give_exact_results_across_a_restart(kafka, tmp_path):
    from doodlestats.io.storage import delta_storage_options
    from doodlestats.io.tables import MINUTE_STATS, QUARANTINE, Tables
    from doodlestats.runtime.config import load_config
    from tools import s3_local
    from tools.generator import GenConfig, generate
    lines, _ = generate(GenConfig(count=12_000, rate=100, users=1500, seed=71))
    garbage = [b"{not json %d" % i for i in range(50)]
    topic, out_topic = new_topic(kafka, "s3", 3), new_topic(kafka, "s3-out", 1)
    with s3_local.running_server(bucket=BUCKET, folder=tmp_path / "s3") as s3:
        overrides = {k: v for k, v in s3.overrides().items()}
        overrides.update({"storage.access_key_env": KEY_ENV, "storage.secret_key_env": SECRET_ENV})
        conf = write_conf(tmp_path / "s3.toml", **overrides)
        env = {**os.environ, **s3.env(KEY_ENV, SECRET_ENV)}
        ckpt, delta = f"s3a://{BUCKET}/ckpt", f"s3a://{BUCKET}/delta"
        args = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(ROOT / "jobs" / "minute_stats.py"),
                "--conf-file", str(conf), "--topic", topic, "--output-topic", out_topic,
                "--checkpoint", ckpt, "--delta-path", delta, "--max-offsets-per-trigger", "3000"]
        for part in (lines[:7000] + garbage, lines[7000:]):  # second run: a restart from the S3 checkpoint
            produce(kafka, topic, part)
            res = subprocess.run(args + ["--available-now"], capture_output=True, text=True, timeout=900,
                                 cwd=ROOT, env=env)
            assert res.returncode == 0, res.stderr[-5000:]
        os.environ.update(s3.env(KEY_ENV, SECRET_ENV))
        cfg = load_config(conf)
        t = Tables(delta, "check", storage_options=delta_storage_options(delta, cfg))
        got = {r["ts"]: (r["unique_users"], r["frames"]) for r in t.read(MINUTE_STATS).to_pylist()}
        want = recount(lines)
        # minutes both runs touched are late in the second (corrected): still exact
        assert got == want
        q = t.read(QUARANTINE).to_pylist()
        assert sorted(r["raw"] for r in q if r["reason"] == "malformed_json") == sorted(garbage)
        # the first run ends with every minute it saw final: the second run's frames of those minutes are late
        first_end = max(recount(lines[:7000])) + 60
        late = [x for x in lines[7000:] if min_of(x) + 60 <= first_end]
        assert late and sorted(r["raw"] for r in q if r["reason"] == "late") == sorted(late)
        assert {r["reason"] for r in q} == {"malformed_json", "late"}
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="ckpt/")["Contents"]]
        assert any(k.startswith("ckpt/doodle_state/") for k in keys) and any(k.startswith("ckpt/spark/") for k in keys)
        assert not any(os.path.exists(p) for p in ("s3a:", ROOT / "s3a:"))  # nothing landed on a local disk


def test_the_object_store_away_for_30s_mid_stream_loses_nothing(kafka, tmp_path):
    """The S3 server frozen (SIGSTOP: requests hang, as a store that does not answer) for
    30 s while the live job runs on it and frames keep coming; then back (SIGCONT). The job
    waits for it or stops with its "try again" status (75) and is started again; after a
    final pass every minute equals a plain recount of what was produced."""
    import signal
    import time

    from test_outage import Job

    from doodlestats.io.storage import delta_storage_options
    from doodlestats.io.tables import MINUTE_STATS, Tables
    from doodlestats.runtime.config import load_config
    from tools import s3_local
    from tools.generator import GenConfig, generate
    lines, _ = generate(GenConfig(count=9_000, rate=100, users=1500, seed=72))
    topic, out_topic = new_topic(kafka, "s3o", 3), new_topic(kafka, "s3o-out", 1)
    with s3_local.running_server(bucket=BUCKET, folder=tmp_path / "s3") as s3:
        overrides = {**s3.overrides(), "storage.access_key_env": KEY_ENV, "storage.secret_key_env": SECRET_ENV,
                     "job.warm_up_frames": 0}
        conf = write_conf(tmp_path / "s3.toml", **overrides)
        os.environ.update(s3.env(KEY_ENV, SECRET_ENV))
        delta = f"s3a://{BUCKET}/delta"
        args = ["--topic", topic, "--output-topic", out_topic, "--checkpoint", f"s3a://{BUCKET}/ckpt",
                "--delta-path", delta, "--max-offsets-per-trigger", "1500", "--trigger", "0.5"]
        produce(kafka, topic, lines[:3000])
        job = Job(conf, args, tmp_path / "job.err")
        try:
            job.wait_for(lambda: job.frames() >= 3000, 300, "for the first frames")
            os.kill(s3.pid, signal.SIGSTOP)
            try:
                produce(kafka, topic, lines[3000:6000])
                time.sleep(30)
            finally:
                os.kill(s3.pid, signal.SIGCONT)
            produce(kafka, topic, lines[6000:])
            deadline = time.monotonic() + 400
            while job.proc.poll() is None and job.frames() < len(lines) and time.monotonic() < deadline:
                time.sleep(0.5)
            code = job.proc.poll()
            assert code in (None, 75), f"exit {code}:\n{job.text()[-4000:]}"
            waited = code is None
        finally:
            status = job.stop() if job.proc.poll() is None else job.proc.returncode
            job.kill()
        assert status in (0, 75), job.text()[-4000:]
        res = subprocess.run([str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "jobs/minute_stats.py",
                              "--conf-file", str(conf), *args, "--available-now"], capture_output=True, text=True,
                             timeout=900, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-5000:]
        t = Tables(delta, "check", storage_options=delta_storage_options(delta, load_config(conf)))
        got = {r["ts"]: (r["unique_users"], r["frames"]) for r in t.read(MINUTE_STATS).to_pylist()}
        assert got == recount(lines), f"waited through it: {waited}"
