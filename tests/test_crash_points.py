"""A crash at each commit point of a batch, then a restart: nothing lost, nothing twice.

The pipeline in-process (real Spark, real Delta tables, results published to a real Kafka
topic) on three batches of generated frames with injected defects. Batch 1 dies at one
commit point (:mod:`doodlestats.runtime.faults`); a new pipeline over the same checkpoint
and tables — what a restarted job is — replays batch 1 as Spark would, then batch 2, then
the end-of-input flush. Every minute, (minute, uid) pair, quarantine row and the last
``minuteStats`` value per minute must equal the generator's truth, with no duplicate
(checked by ``bench.chaos.check_exact``, the checks of `make chaos`).
"""

from __future__ import annotations

import io
import json

import pytest
from conftest import consume_all, new_topic, write_conf

from doodlestats.runtime import faults

pytestmark = pytest.mark.integration

SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"
DEFECTS = {"malformed_frac": 0.01, "bitflip_frac": 0.002, "string_ts_frac": 0.05, "delay_prob": 0.01,
           "max_delay": 4}


class Crash(BaseException):
    """The process died here (BaseException: no handler of the pipeline swallows it)."""


def _crash() -> None:
    raise Crash


@pytest.fixture(scope="module")
def frames(spark):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=6000, rate=40, users=400, seed=43, **DEFECTS))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    batches = [df.where("offset < 2000"), df.where("offset >= 2000 AND offset < 4000"), df.where("offset >= 4000")]
    return [b.cache() for b in batches], truth


def _pipeline(spark, conf, tmp_path, topic):
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.io.sinks import KafkaSink, StdoutSink
    from doodlestats.runtime.config import load_config
    cfg = load_config(conf)
    sinks = [KafkaSink(cfg.kafka.bootstrap_servers, topic), StdoutSink(io.StringIO())]
    return MinuteStatsPipeline(spark, cfg, str(tmp_path / "ckpt"), str(tmp_path / "delta"), sinks=sinks)


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_crash_at_each_commit_point_then_a_restart_is_exact(spark, kafka, frames, tmp_path, point):
    from bench.chaos import check_exact
    batches, truth = frames
    conf = write_conf(tmp_path / "c.toml", **{"job.mode": "exact"})
    topic = new_topic(kafka, "crash", partitions=1)
    first = _pipeline(spark, conf, tmp_path, topic)
    first.process_batch(batches[0], 0)
    faults.arm(point, from_batch=1, action=_crash)
    try:
        with pytest.raises(Crash):
            first.process_batch(batches[1], 1)
    finally:
        faults.disarm()

    restarted = _pipeline(spark, conf, tmp_path, topic)
    replay = restarted.process_batch(batches[1], 1)
    assert replay.skipped == (point == "state")  # the state file makes a batch complete
    restarted.process_batch(batches[2], 2)
    restarted.flush()
    results = [json.loads(v) for _, v in consume_all(kafka, topic)]
    checks = check_exact(tmp_path / "delta", truth, results)
    failed = {name: c["detail"] for name, c in checks.items() if not c["ok"]}
    assert not failed, failed
    assert sum(n for k, n in truth["defects"].items() if k not in ("string_ts", "delayed")) > 20  # quarantine in play
