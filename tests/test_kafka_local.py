"""The embedded broker: real Kafka 4.x in KRaft mode, started and stopped by our script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, TEST_PORT, consume_all, new_topic, produce, write_conf

pytestmark = pytest.mark.integration

# ports of this file's own brokers, apart from the session broker (TEST_PORT, + 1), so that
# suites started with different DOODLE_TEST_KAFKA_PORT values do not collide
SECOND_PORT, SECOND_CONTROLLER_PORT, SPARE_CONTROLLER_PORT = TEST_PORT + 10, TEST_PORT + 11, TEST_PORT + 12


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
    conf = write_conf(tmp_path / "b.toml", **{"kafka.bootstrap_servers": f"127.0.0.1:{SECOND_PORT}",
                                               "kafka.controller_port": SECOND_CONTROLLER_PORT})
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
        assert s.connect_ex(("127.0.0.1", SECOND_PORT)) != 0


def test_port_in_use_is_one_clear_line(tmp_path, monkeypatch):
    from doodlestats.runtime.config import load_config
    from tools import kafka_local
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        conf = write_conf(tmp_path / "p.toml", **{"kafka.bootstrap_servers": f"127.0.0.1:{port}",
                                                   "kafka.controller_port": SPARE_CONTROLLER_PORT})
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


# ---------------------------------------------------------------- the SASL_SSL listener
def test_make_certs_ca_and_broker_certificate_for_localhost(tmp_path):
    """A CA that verifies the broker's certificate, which names localhost and 127.0.0.1;
    private keys readable by their owner only; a second call keeps the files."""
    from tools import kafka_local
    ca = kafka_local.make_certs(tmp_path / "ssl")
    assert ca == tmp_path / "ssl" / "ca.pem"
    ks = tmp_path / "ssl" / kafka_local.KEYSTORE_FILE
    pem = ks.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and pem.count("-----BEGIN CERTIFICATE-----") == 2
    (tmp_path / "broker.crt").write_text(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
    v = subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", "sslserver", str(tmp_path / "broker.crt")],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "broker.crt"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    for private in (ks, tmp_path / "ssl" / "ca.key"):
        assert oct(private.stat().st_mode & 0o777) == "0o600"
    before = ca.read_bytes()
    assert kafka_local.make_certs(tmp_path / "ssl") == ca and ca.read_bytes() == before


def test_server_properties_with_a_sasl_ssl_listener(tmp_path, cfg):
    """The PLAINTEXT listener stays (broker, controller, `up`); SASL_SSL is added with PLAIN
    and SCRAM, a PEM keystore, and the password escaped for .properties and JAAS."""
    import re

    from tools import kafka_local
    kafka_local.make_certs(tmp_path)
    password = 'p"w\\x Ж\t'
    props = kafka_local.server_properties(cfg, kafka_local.SaslSsl(19999, tmp_path, {"alice": password}))
    h, p, c = cfg.kafka.host, cfg.kafka.port, cfg.kafka.controller_port
    assert f"listeners=PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c},SASL_SSL://{h}:19999\n" in props
    assert f"advertised.listeners=PLAINTEXT://{h}:{p},SASL_SSL://{h}:19999\n" in props
    assert "inter.broker.listener.name=PLAINTEXT\n" in props
    assert "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL\n" in props
    assert "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n" in props
    assert f"listener.name.sasl_ssl.ssl.keystore.location={tmp_path / kafka_local.KEYSTORE_FILE}\n" in props
    jaas = re.search(r"^listener\.name\.sasl_ssl\.plain\.sasl\.jaas\.config=(.*)$", props, re.M).group(1)
    # .properties: \\ → \ , \uXXXX → char, \t → tab; then JAAS: \" → " and \\ → \
    assert jaas == 'org.apache.kafka.common.security.plain.PlainLoginModule required user_alice=' \
                   '"p\\\\"w\\\\\\\\x \\u0416\\t";'
    assert "SASL_SSL" not in kafka_local.server_properties(cfg)
    assert password not in repr(kafka_local.SaslSsl(1, tmp_path, {"alice": password}))


def test_sasl_ssl_needs_certificates_users_and_a_plaintext_config(tmp_path, cfg, monkeypatch):
    import dataclasses

    from tools import kafka_local
    with pytest.raises(kafka_local.BrokerError, match="make-certs"):
        kafka_local.server_properties(cfg, kafka_local.SaslSsl(19999, tmp_path / "none", {"a": "b"}))
    kafka_local.make_certs(tmp_path)
    with pytest.raises(kafka_local.BrokerError, match="SASL user name"):
        kafka_local.server_properties(cfg, kafka_local.SaslSsl(19999, tmp_path, {"a b": "c"}))
    with pytest.raises(kafka_local.BrokerError, match="line break"):
        kafka_local.server_properties(cfg, kafka_local.SaslSsl(19999, tmp_path, {"a": "b\nc"}))
    monkeypatch.delenv("DOODLE_KAFKA_PASSWORD", raising=False)
    monkeypatch.setenv("DOODLE_KAFKA_USERNAME", "alice")
    with pytest.raises(kafka_local.BrokerError, match="DOODLE_KAFKA_USERNAME and DOODLE_KAFKA_PASSWORD"):
        kafka_local.sasl_users_from_env(cfg)
    monkeypatch.setenv("DOODLE_KAFKA_PASSWORD", "pw")
    assert kafka_local.sasl_users_from_env(cfg) == {"alice": "pw"}
    secured = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, security_protocol="SASL_SSL"))
    with pytest.raises(kafka_local.BrokerError, match="--sasl-ssl-port"):
        kafka_local.up(secured)


def test_cli_make_certs_and_sasl_flags(tmp_path):
    cli = [sys.executable, "-m", "tools.kafka_local"]
    r = subprocess.run([*cli, "make-certs", str(tmp_path / "c")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "c" / "ca.pem"), r.stderr
    for args, message in ((["make-certs"], "make-certs needs a folder"),
                          (["up", "--sasl-ssl-port", "19999"], "--sasl-ssl-port and --ssl-dir go together"),
                          (["status", "--sasl-ssl-port", "1", "--ssl-dir", "x"], "go together, with `up`")):
        r = subprocess.run([*cli, *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr, r.stderr
