"""No poison batches: a replay of frames whose minutes are already final, and a batch of
garbage lines, each pass through a job whose driver may receive only a few MB per Spark
job (``spark.driver.maxResultSize=2m``). A driver that still received one row — or the
raw bytes — per frame fails here: 30,000 late frames are ~60 MB of raw bytes.

Expectations come from a plain-Python recount of the produced lines."""

from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest
from conftest import ROOT, new_topic, produce
from test_minute_stats import job_args, recount, stored_minutes

pytestmark = pytest.mark.integration

TIGHT = ["--conf", "spark.driver.maxResultSize=2m"]


def run_tight(args, conf):
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", *TIGHT, str(ROOT / "jobs" / "minute_stats.py"),
           "--conf-file", str(conf), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=dict(os.environ))
    assert res.returncode == 0, f"job failed ({res.returncode}):\n{res.stderr[-5000:]}"
    return res


def test_replayed_history_and_garbage_pass_a_tight_driver(kafka, spark, test_conf, tmp_path):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=30_000, rate=200, users=3000, seed=41))
    topic, out_topic = new_topic(kafka, "poison", 3), new_topic(kafka, "poison-out", 1)
    args = job_args(topic, out_topic, tmp_path, "--available-now", "--max-offsets-per-trigger", "100000")
    produce(kafka, topic, lines)
    run_tight(args, test_conf)                      # every minute final at the end
    first = stored_minutes(spark, tmp_path / "delta")
    assert first == recount(lines)

    # the producer re-sends the whole history (every frame is late), then a burst of garbage
    garbage = [b"\x00garbage %d " % i + b"x" * 2000 for i in range(30_000)]
    produce(kafka, topic, lines)
    produce(kafka, topic, garbage)
    res = run_tight(args, test_conf)
    assert "Total size of serialized results" not in res.stderr
    q = spark.read.format("delta").load(str(tmp_path / "delta" / "quarantine"))
    # every frame quarantined exactly once, with its bytes; nothing of the garbage counted
    assert Counter(r["reason"] for r in q.select("reason").collect()) == \
        Counter({"late": len(lines), "malformed_json": len(garbage)})
    raws = q.where("reason = 'malformed_json'").select("raw").collect()
    assert sorted(bytes(r["raw"]) for r in raws) == sorted(garbage)
    late = q.where("reason = 'late'").select("raw").collect()
    assert sorted(bytes(r["raw"]) for r in late) == sorted(lines)
    # late frames are counted into corrected results: same users, twice the frames
    assert stored_minutes(spark, tmp_path / "delta") == {m: (u, 2 * f) for m, (u, f) in recount(lines).items()}
    statuses = {r["status"] for r in spark.read.format("delta").load(str(tmp_path / "delta" / "minute_stats"))
                .collect()}
    assert statuses == {"corrected"}
