"""Spark with the Kafka connector, Delta and the fast parser, through ./spark-submit.sh."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import ROOT, new_topic, produce

pytestmark = pytest.mark.integration


def test_spark_submit_reads_kafka_writes_and_reads_delta(kafka, test_conf, tmp_path):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=3000, rate=20, users=300, seed=7, malformed_frac=0.02))
    topic = new_topic(kafka, "smoke")
    produce(kafka, topic, lines)
    out = tmp_path / "fc"
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "jobs/frame_counts.py",
                        "--conf-file", str(test_conf), "--topic", topic, "--delta-path", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {d["minute"]: d["frames"] for d in map(json.loads, r.stdout.splitlines())}
    want = {m["minute"]: m["frames"] for m in truth["minutes"]}
    assert got == want
    assert (out / "_delta_log").is_dir()


def test_spark_submit_passes_flags_through_and_reports_missing_job():
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "--master", "local[1]", "jobs/nope.py"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no such job: jobs/nope.py" in r.stderr
