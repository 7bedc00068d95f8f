"""docker-compose.yml can't run here (no Docker engine); it must agree with conf/."""

from __future__ import annotations

import yaml
from conftest import ROOT

from doodlestats.runtime.config import load_config


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_matches_conf():
    cfg = load_config(ROOT / "conf" / "doodle.toml")
    c = _compose()
    kafka = c["services"]["kafka"]
    env = kafka["environment"]
    # host port published = the configured bootstrap port, bound to loopback only
    assert f"127.0.0.1:{cfg.kafka.port}:{cfg.kafka.port}" in kafka["ports"]
    assert f"PLAINTEXT://{cfg.kafka.host}:{cfg.kafka.port}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert f":{cfg.kafka.controller_port}" in env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, as the embedded broker
    assert int(env["KAFKA_NUM_PARTITIONS"]) == cfg.kafka.input_partitions
    # one limit for the broker and every producer, as the embedded broker's message.max.bytes
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == cfg.kafka.max_message_bytes
    init = " ".join(c["services"]["kafka-init"]["command"])
    assert f"--topic {cfg.kafka.input_topic} --partitions {cfg.kafka.input_partitions}" in init
    assert f"--topic {cfg.kafka.output_topic} --partitions {cfg.kafka.output_partitions}" in init


def test_compose_image_matches_broker_jars():
    """The compose image runs the same Kafka version as the jars `make setup` fetches."""
    import re
    pom = (ROOT / "maven" / "kafka-broker.pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    for name in ("kafka", "kafka-init"):
        assert _compose()["services"][name]["image"] == f"apache/kafka:{version}"
