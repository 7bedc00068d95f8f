"""Shared fixtures: one real Kafka broker and one SparkSession per test session.

The test broker listens on its own ports (19092/19093) with its own data folder, so a
broker started by `make kafka-up` on the default ports is left alone. It is started by
``tools.kafka_local`` (the same code as `make kafka-up`) and stopped by PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# DOODLE_TEST_KAFKA_PORT lets two suites run side by side (controller = port + 1)
TEST_PORT = int(os.environ.get("DOODLE_TEST_KAFKA_PORT", "19092"))
TEST_CONTROLLER_PORT = TEST_PORT + 1


def write_conf(path: Path, **overrides) -> Path:
    """A copy of conf/doodle.toml pointing at the test broker, with ``section.key`` overrides."""
    from tools.confcopy import conf_copy
    return conf_copy(path, TEST_PORT, **{"kafka.broker_heap": "512m", "spark.driver_memory": "1g",
                                         "metrics.port": 0, **overrides})


@pytest.fixture(scope="session")
def test_conf(tmp_path_factory) -> Path:
    return write_conf(tmp_path_factory.mktemp("conf") / "test.toml")


@pytest.fixture(scope="session")
def cfg(test_conf):
    from doodlestats.runtime.config import load_config
    return load_config(test_conf)


@pytest.fixture(scope="session")
def kafka(cfg, tmp_path_factory):
    """A real Kafka broker (KRaft) for the whole session; yields the config."""
    from tools import kafka_local
    run = tmp_path_factory.mktemp("kafka")
    old = os.environ.get("DOODLE_KAFKA_DIR")
    os.environ["DOODLE_KAFKA_DIR"] = str(run)
    try:
        kafka_local.up(cfg)
        yield cfg
    finally:
        kafka_local.down()
        if old is None:
            os.environ.pop("DOODLE_KAFKA_DIR", None)
        else:
            os.environ["DOODLE_KAFKA_DIR"] = old


@pytest.fixture(scope="session")
def spark(cfg):
    from doodlestats.runtime.session import get_spark
    s = get_spark("tests", cfg)
    yield s
    s.stop()


def new_topic(cfg, prefix: str, partitions: int = 3) -> str:
    """A fresh topic name (created) for one test."""
    from tools.kafka_local import ensure_topic
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ensure_topic(cfg, name, partitions)
    return name


def produce(cfg, topic: str, lines: list[bytes], partition: int | None = None, keys: list | None = None) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "linger.ms": 10, "acks": "all"})
    for i, line in enumerate(lines):
        kw = {} if partition is None else {"partition": partition}
        p.produce(topic, line, keys[i] if keys else None, **kw)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def consume_all(cfg, topic: str, timeout: float = 20.0) -> list:
    """Every message of ``topic`` (from the beginning) as (key, value) pairs, in order per partition."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out, idle = [], 0
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            idle += 1
            if idle >= 6 and out:
                break
            continue
        idle = 0
        if m.error():
            continue
        out.append((m.key(), m.value()))
    c.close()
    return out


def run_job(args: list[str], conf: Path, timeout: float = 600, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run ``./spark-submit.sh jobs/minute_stats.py`` (the path users use) with ``args``."""
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(ROOT / "jobs" / "minute_stats.py"),
           "--conf-file", str(conf), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"job failed ({res.returncode}):\n{res.stderr[-5000:]}")
    return res
