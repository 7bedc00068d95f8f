"""The embedded broker: real Kafka 4.x in KRaft mode, started and stopped by our script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, consume_all, new_topic, produce, write_conf

pytestmark = pytest.mark.integration


def test_topics_exist_with_configured_partitions(kafka):
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": kafka.kafka.bootstrap_servers}).list_topics(timeout=10)
    assert len(md.topics[kafka.kafka.input_topic].partitions) == kafka.kafka.input_partitions == 3
    assert len(md.topics[kafka.kafka.output_topic].partitions) == kafka.kafka.output_partitions


def test_produce_consume_round_trip(kafka):
    topic = new_topic(kafka, "roundtrip")
    sent = [f'{{"uid":"u{i}","ts":{1468244384 + i},"x":"\\u0416"}}'.encode() for i in range(500)]
    produce(kafka, topic, sent)
    got = [v for _, v in consume_all(kafka, topic)]
    assert sorted(got) == sorted(sent)


def test_up_is_idempotent(kafka):
    from tools import kafka_local
    pid = kafka_local.running_pid()
    assert pid is not None
    assert kafka_local.up(kafka) == pid  # second start: same process, nothing new


def test_second_broker_up_twice_then_down_leaves_nothing(tmp_path):
    """A separate broker on other ports, driven through the CLI that `make` uses."""
    conf = write_conf(tmp_path / "b.toml", **{"kafka.bootstrap_servers": "127.0.0.1:29092",
                                               "kafka.controller_port": 29093})
    env = {**os.environ, "DOODLE_KAFKA_DIR": str(tmp_path / "run")}
    cli = [sys.executable, "-m", "tools.kafka_local"]
    r1 = subprocess.run([*cli, "up", "--conf-file", str(conf)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    pid = int((tmp_path / "run" / "broker.pid").read_text())
    try:
        r2 = subprocess.run([*cli, "up", "--conf-file", str(conf)], env=env, cwd=ROOT, capture_output=True, text=True)
        assert r2.returncode == 0 and "already running" in r2.stderr
        assert int((tmp_path / "run" / "broker.pid").read_text()) == pid
    finally:
        r3 = subprocess.run([*cli, "down", "--conf-file", str(conf)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r3.returncode == 0, r3.stderr
    assert not (tmp_path / "run" / "broker.pid").exists()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 29092)) != 0


def test_port_in_use_is_one_clear_line(tmp_path, monkeypatch):
    from tools import kafka_local
    from doodlestats.config import load_config
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        conf = write_conf(tmp_path / "p.toml", **{"kafka.bootstrap_servers": f"127.0.0.1:{port}",
                                                   "kafka.controller_port": 29193})
        monkeypatch.setenv("DOODLE_KAFKA_DIR", str(tmp_path / "run"))
        with pytest.raises(kafka_local.BrokerError, match=f"port 127.0.0.1:{port} is already in use"):
            kafka_local.up(load_config(conf))


def test_missing_java_or_jars_say_what_to_run(tmp_path, monkeypatch, cfg):
    from tools import kafka_local
    monkeypatch.setenv("DOODLE_KAFKA_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(kafka_local, "JARS", tmp_path / "nojars")
    with pytest.raises(kafka_local.BrokerError, match="make setup"):
        kafka_local.up(cfg)
    monkeypatch.setattr(kafka_local.shutil, "which", lambda name: None)
    with pytest.raises(kafka_local.BrokerError, match="java not found"):
        kafka_local.up(cfg)


def test_cli_error_exit_code_and_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[kafka]\nbootstrap_servers = "nonsense"\n')
    r = subprocess.run([sys.executable, "-m", "tools.kafka_local", "up", "--conf-file", str(bad)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "bootstrap_servers" in r.stderr
