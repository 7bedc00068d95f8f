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


@pytest.mark.integration
def test_read_tasks_follow_the_batch_size(kafka, spark, tmp_path):
    """The job's Kafka stream (``kafka_source`` with ``read_split``): at most
    ``frames_per_task`` frames a read task — a batch of 6,000 frames in 3 partitions is 6
    tasks at 1,000 a task, and one task per partition at 50,000."""
    import dataclasses

    from doodlestats.runtime.streaming import kafka_source
    topic = new_topic(kafka, "split", 3)
    for part in range(3):   # 2,000 in each partition (keyless frames may all stick to one)
        produce(kafka, topic, [b'{"ts": 1, "uid": "u%d-%d"}' % (part, i) for i in range(2000)], partition=part)

    def tasks(frames_per_task: int) -> list[int]:
        job = dataclasses.replace(kafka.job, frames_per_task=frames_per_task, starting_offsets="earliest")
        cfg = dataclasses.replace(kafka, job=job, kafka=dataclasses.replace(kafka.kafka, input_topic=topic))
        seen: list[int] = []
        (kafka_source(spark, cfg).writeStream.trigger(availableNow=True)
         .foreachBatch(lambda df, _i: seen.append(df.rdd.getNumPartitions()))
         .option("checkpointLocation", str(tmp_path / f"ckpt-{frames_per_task}")).start().awaitTermination(120))
        return seen
    assert tasks(50_000) == [3]
    assert tasks(1_000)[0] >= 6
