"""Kafka security end to end: a broker with a SASL_SSL listener (its CA and certificate
made here with openssl), the loader, the job and the ``minuteStats`` topic through it —
SASL/PLAIN and SCRAM — against the generator's truth; credentials or a certificate the
broker refuses end the job within seconds with one line; the password appears in no
output, log, event log, checkpoint, table or metrics file.

The broker is our own (``tools.kafka_local up --sasl-ssl-port``), on DOODLE_TEST_KAFKA_PORT
+ 100 (PLAINTEXT), + 101 (controller), + 102 (SASL_SSL), and stopped by its PID.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, TEST_PORT, write_conf
from test_minute_stats import truth_by_minute

pytestmark = pytest.mark.integration

PLAIN_PORT, CONTROLLER_PORT, SASL_SSL_PORT = TEST_PORT + 100, TEST_PORT + 101, TEST_PORT + 102
USER = "doodle-job"
TOKEN = uuid.uuid4().hex  # what the leak checks look for: survives any quoting of the password
PASSWORD = f'Pw-{TOKEN}-"q\\\'$'  # quote, backslash, apostrophe, dollar: the JAAS/properties escaping
CREDS = {"DOODLE_KAFKA_USERNAME": USER, "DOODLE_KAFKA_PASSWORD": PASSWORD}
CLI = [sys.executable, "-m", "tools.kafka_local"]


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert TOKEN.encode() not in data, f"the password appears in {where}"


def client_conf(path: Path, ssl_dir: Path, **overrides) -> Path:
    return write_conf(path, **{"kafka.bootstrap_servers": f"127.0.0.1:{SASL_SSL_PORT}",
                               "kafka.controller_port": CONTROLLER_PORT, "kafka.security_protocol": "SASL_SSL",
                               "kafka.ssl_ca_location": str(ssl_dir / "ca.pem"), **overrides})


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """The SASL_SSL broker for this module, started and stopped through the CLI that users
    run; yields (folder, certificates folder, broker run folder)."""
    d = tmp_path_factory.mktemp("secure")
    broker_conf = write_conf(d / "broker.toml", **{"kafka.bootstrap_servers": f"127.0.0.1:{PLAIN_PORT}",
                                                   "kafka.controller_port": CONTROLLER_PORT})
    env = {**os.environ, **CREDS, "DOODLE_KAFKA_DIR": str(d / "run")}
    r = subprocess.run([*CLI, "make-certs", str(d / "ssl")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == str(d / "ssl" / "ca.pem"), r.stderr
    up = [*CLI, "up", "--conf-file", str(broker_conf), "--sasl-ssl-port", str(SASL_SSL_PORT),
          "--ssl-dir", str(d / "ssl")]
    r = subprocess.run(up, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert r.returncode == 0, r.stderr
        assert f"SASL_SSL listener on 127.0.0.1:{SASL_SSL_PORT}" in r.stderr
        assert_no_secret(r.stdout + r.stderr, "the output of `kafka_local up`")
        # again: the same broker; with another password: refused, one line (its PLAIN users are fixed)
        again = subprocess.run(up, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
        other = subprocess.run(up, cwd=ROOT, env={**env, "DOODLE_KAFKA_PASSWORD": "Zq9-other"}, capture_output=True,
                               text=True, timeout=60)
        assert other.returncode == 2 and "with these certificates and users" in other.stderr, other.stderr
        assert len(other.stderr.strip().splitlines()) == 1 and "Zq9" not in other.stderr
        yield d, d / "ssl", d / "run"
    finally:
        subprocess.run([*CLI, "down", "--conf-file", str(broker_conf)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sample(secure):
    """A small generated stream and its truth (the generator's, not the job's)."""
    from tools.generator import GenConfig, write
    d = secure[0]
    gen = GenConfig(count=12_000, rate=60, users=1500, seed=23, max_delay=3, delay_prob=0.05,
                    string_ts_frac=0.05, malformed_frac=0.01)
    truth = write(gen, str(d / "s.jsonl.gz"), str(d / "s.truth.json"))
    return d / "s.jsonl.gz", truth


def end_offsets(cfg, topic: str) -> int:
    """Sum of the topic's high watermarks, read through the secured listener."""
    from confluent_kafka import Consumer, TopicPartition

    from doodlestats.io.kafka import client_settings
    c = Consumer({**client_settings(cfg), "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions)
    finally:
        c.close()


def consume(cfg, topic: str, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """Every message of ``topic`` through the secured listener."""
    from confluent_kafka import Consumer

    from doodlestats.io.kafka import client_settings
    c = Consumer({**client_settings(cfg), "group.id": f"t-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    out, idle, deadline = [], 0, time.monotonic() + timeout
    while time.monotonic() < deadline and not (idle >= 6 and out):
        m = c.poll(0.5)
        if m is None:
            idle += 1
        elif not m.error():
            idle = 0
            out.append((m.key(), m.value()))
    c.close()
    return out


@pytest.fixture
def with_creds(monkeypatch):
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)


def test_loader_loads_through_sasl_ssl(secure, sample, with_creds):
    """`python -m tools.loader FILE --conf-file CONF` with SASL/PLAIN over SSL."""
    from doodlestats.runtime.config import load_config
    d, ssl_dir, _ = secure
    conf = client_conf(d / "loader.toml", ssl_dir, **{"kafka.sasl_mechanism": "PLAIN"})
    r = subprocess.run([sys.executable, "-m", "tools.loader", str(sample[0]), "--topic", "loaded",
                        "--conf-file", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_no_secret(r.stdout + r.stderr, "the loader's output")
    assert end_offsets(load_config(conf), "loaded") == 12_000


def test_loader_with_a_wrong_password_stops_at_once(secure, sample, tmp_path):
    d, ssl_dir, _ = secure
    conf = client_conf(tmp_path / "loader.toml", ssl_dir)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tools.loader", str(sample[0]), "--topic", "refused",
                        "--conf-file", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DOODLE_KAFKA_USERNAME": USER, "DOODLE_KAFKA_PASSWORD": f"not-{TOKEN}"})
    assert r.returncode == 2 and time.monotonic() - t0 < 15, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "rejected the credentials" in r.stderr, r.stderr
    assert_no_secret(r.stdout + r.stderr, "the loader's output")


@pytest.fixture(scope="module")
def good_run(secure, sample):
    """The job through SASL_SSL (SCRAM-SHA-512), with Spark's event log on; returns
    (conf, folder, CompletedProcess)."""
    from confluent_kafka import Producer

    from doodlestats.io.kafka import client_settings
    from doodlestats.runtime.config import load_config
    from tools.loader import open_lines
    d, ssl_dir, _ = secure
    conf = client_conf(d / "job.toml", ssl_dir, **{"kafka.sasl_mechanism": "SCRAM-SHA-512"})
    old = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    try:
        cfg = load_config(conf)
        p = Producer({**client_settings(cfg), "linger.ms": 20, "acks": "all", "enable.idempotence": True})
        for line in open_lines(str(sample[0])):
            p.produce(cfg.kafka.input_topic, line.rstrip(b"\n"))
            p.poll(0)
        assert p.flush(60) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    (d / "events").mkdir()
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "--conf", "spark.eventLog.enabled=true",
           "--conf", "spark.eventLog.compress=false", "--conf", f"spark.eventLog.dir=file://{d / 'events'}",
           str(ROOT / "jobs" / "minute_stats.py"),
           "--conf-file", str(conf), "--available-now", "--print", "--delta-path", str(d / "delta"),
           "--checkpoint", str(d / "ckpt"), "--metrics-file", str(d / "metrics.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **CREDS})
    assert res.returncode == 0, res.stderr[-5000:]
    return conf, d, res


def test_job_end_to_end_through_sasl_ssl(good_run, sample, with_creds):
    """Spark's Kafka source (Java client, PEM truststore), the minuteStats publisher and the
    admin check all pass SCRAM-SHA-512 over SSL; Delta, stdout and the topic hold the truth."""
    from deltalake import DeltaTable

    from doodlestats.runtime.config import load_config
    conf, d, res = good_run
    want = truth_by_minute(sample[1])
    rows = DeltaTable(str(d / "delta" / "minute_stats")).to_pyarrow_table().to_pylist()
    assert {r["ts"]: (r["unique_users"], r["frames"]) for r in rows} == want
    printed = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert {r["ts"]: (r["unique_users"], r["frames"]) for r in printed} == want
    cfg = load_config(conf)
    last = {}
    for k, v in consume(cfg, cfg.kafka.output_topic):
        last[k.decode()] = orjson.loads(v)
    assert {r["ts"]: (r["unique_users"], r["frames"]) for r in last.values()} == want
    assert all(r["status"] == "final" for r in last.values())


def test_password_is_in_no_output_log_or_file(good_run, secure):
    """stdout, stderr, the metrics file, the checkpoint (Spark's offsets and our state), the
    Delta tables, Spark's event log (plans with the source options, properties), the
    broker's logs, `--help`: no trace of the password."""
    conf, d, res = good_run
    assert_no_secret(res.stdout, "the job's stdout")
    assert_no_secret(res.stderr, "the job's stderr")
    events = b"".join(f.read_bytes() for f in (d / "events").rglob("*") if f.is_file())
    assert b"SparkListenerSQLExecutionStart" in events and b"KafkaV2[Subscribe[doodle]]" in events  # readable
    checked = 0
    for root in (d / "ckpt", d / "delta", d / "events", secure[2]):
        for f in root.rglob("*"):
            if f.is_file() and f.name != "server.properties":  # the broker's own config holds its users (0600)
                assert_no_secret(f.read_bytes(), str(f))
                checked += 1
    assert_no_secret((d / "metrics.json").read_bytes(), "the metrics file")
    assert checked > 20
    assert oct((secure[2] / "server.properties").stat().st_mode & 0o777) == "0o600"
    for cmd in ([sys.executable, str(ROOT / "jobs" / "minute_stats.py"), "--help"],
                [*CLI, "--help"], [sys.executable, "-m", "tools.loader", "--help"]):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **CREDS}, timeout=60)
        assert r.returncode == 0, r.stderr
        assert_no_secret(r.stdout + r.stderr, f"{' '.join(cmd[1:])}")


EXPLAIN = """
import sys
sys.path.insert(0, {jobs!r})
from doodlestats.runtime.config import load_config
from doodlestats.runtime.session import get_spark
from doodlestats.runtime.streaming import kafka_source
cfg = load_config({conf!r})
df = kafka_source(get_spark("explain", cfg), cfg)
df.explain(True)
print(df._jdf.queryExecution().toString())
"""


@pytest.mark.xfail("spark.sql.redaction.string.regex" not in (ROOT / "conf" / "spark-defaults.conf").read_text(),
                   reason="conf/spark-defaults.conf does not set spark.sql.redaction.string.regex yet", strict=True)
def test_explain_of_the_kafka_source_hides_the_password(good_run, tmp_path):
    """Spark 4.0 prints a stream's options in its analyzed plan unredacted (inside the v1
    relation of StreamingRelationV2): conf/spark-defaults.conf redacts JAAS lines with
    ``spark.sql.redaction.string.regex``."""
    conf = good_run[0]
    script = tmp_path / "explain.py"
    script.write_text(EXPLAIN.format(jobs=str(ROOT / "jobs"), conf=str(conf)))
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(script)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, **CREDS})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kafka.sasl.jaas.config" in r.stdout and "redacted" in r.stdout  # the options are printed
    assert_no_secret(r.stdout + r.stderr, "explain() of the job's Kafka source")


def _job_until_check(conf: Path, env: dict, tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(ROOT / "jobs" / "minute_stats.py"),
           "--conf-file", str(conf), "--available-now", "--delta-path", str(tmp / "delta"),
           "--checkpoint", str(tmp / "ckpt")]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **env})
    return res, time.monotonic() - t0


def test_wrong_password_fails_fast_with_one_line(secure, tmp_path):
    d, ssl_dir, _ = secure
    conf = client_conf(tmp_path / "c.toml", ssl_dir)
    wrong = {"DOODLE_KAFKA_USERNAME": USER, "DOODLE_KAFKA_PASSWORD": f"not-{TOKEN}"}
    res, took = _job_until_check(conf, wrong, tmp_path)
    assert res.returncode == 2, res.stderr
    assert took < 20, f"took {took:.0f}s"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("minute_stats:")]
    assert ours == [f"minute_stats: error: Kafka at 127.0.0.1:{SASL_SSL_PORT} rejected the credentials "
                    f"(PLAIN authentication failed) — check DOODLE_KAFKA_USERNAME/DOODLE_KAFKA_PASSWORD "
                    f"and kafka.sasl_mechanism"], res.stderr
    # the rest is spark-submit's JVM start-up (its own warnings), before any SparkContext:
    # no librdkafka log lines ("%3|...|FAIL|..."), no traceback
    jvm = re.compile(r"WARNING: Using incubator modules|\d\d:\d\d:\d\d WARN Utils: ")
    assert all(jvm.match(line) for line in lines if line not in ours), res.stderr
    assert res.stdout == ""
    assert_no_secret(res.stdout + res.stderr, "the output of a refused job")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "delta").exists()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_every_mechanism_logs_in_with_the_escaped_password(secure, tmp_path, with_creds, mechanism):
    """The broker's JAAS line (PLAIN) and SCRAM credentials hold the password with its
    quote, backslash, apostrophe and dollar intact; endpoint identification on."""
    from doodlestats.io.kafka import check_kafka
    from doodlestats.runtime.config import load_config
    check_kafka(load_config(client_conf(tmp_path / "c.toml", secure[1], **{"kafka.sasl_mechanism": mechanism})),
                need_input=True)


@pytest.mark.parametrize("case", ["scram_wrong_password", "other_ca", "no_ca", "missing_ca_file",
                                  "not_a_pem_file", "plaintext_port", "no_password_variable"])
def test_every_refusal_is_one_line_within_seconds(secure, tmp_path, with_creds, monkeypatch, case):
    """The admin check before Spark starts (check_kafka) names each problem; the same
    check guards the loader's wait and the backfill."""
    from doodlestats.io.kafka import KafkaRejected, check_kafka
    from doodlestats.runtime.config import load_config
    from tools.kafka_local import make_certs
    d, ssl_dir, _ = secure
    cfg = load_config(client_conf(tmp_path / "c.toml", ssl_dir))
    k = cfg.kafka
    if case == "scram_wrong_password":
        monkeypatch.setenv("DOODLE_KAFKA_PASSWORD", "nope")
        k, expect = dataclasses.replace(k, sasl_mechanism="SCRAM-SHA-256"), "rejected the credentials (SCRAM-SHA-256"
    elif case == "other_ca":
        k, expect = dataclasses.replace(k, ssl_ca_location=str(make_certs(tmp_path / "other"))), \
            f"the broker's certificate could not be verified — it must be signed by a CA of kafka.ssl_ca_location " \
            f"({tmp_path / 'other' / 'ca.pem'}) and name the host connected to"
    elif case == "no_ca":
        k, expect = dataclasses.replace(k, ssl_ca_location=""), "the system's CA certificates"
    elif case == "missing_ca_file":
        k, expect = dataclasses.replace(k, ssl_ca_location=str(tmp_path / "none.pem")), \
            f"kafka.ssl_ca_location: cannot read {tmp_path / 'none.pem'} (No such file or directory)"
    elif case == "not_a_pem_file":
        (tmp_path / "x.pem").write_text("hello\n")
        k, expect = dataclasses.replace(k, ssl_ca_location=str(tmp_path / "x.pem")), "is not a PEM file"
    elif case == "plaintext_port":
        k, expect = dataclasses.replace(k, bootstrap_servers=f"127.0.0.1:{PLAIN_PORT}"), "does not speak SSL"
    else:
        monkeypatch.delenv("DOODLE_KAFKA_PASSWORD")
        expect = "environment variable DOODLE_KAFKA_PASSWORD (kafka.sasl_password_env) is not set"
    t0 = time.monotonic()
    with pytest.raises(KafkaRejected) as e:
        check_kafka(dataclasses.replace(cfg, kafka=k), need_input=True)
    assert time.monotonic() - t0 < 5
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert_no_secret(str(e.value), "the error")


def test_spark_options_carry_the_security_settings(secure, with_creds):
    """What Spark's Kafka source gets: the Java client's names, a PEM truststore, the JAAS
    line with the escaped password (exercised end to end above)."""
    from doodlestats.io.kafka import spark_kafka_options
    from doodlestats.runtime.config import load_config
    d, ssl_dir, _ = secure
    o = spark_kafka_options(load_config(client_conf(d / "o.toml", ssl_dir)))
    assert o["kafka.security.protocol"] == "SASL_SSL" and o["kafka.sasl.mechanism"] == "PLAIN"
    assert o["kafka.ssl.truststore.type"] == "PEM" and o["kafka.ssl.truststore.location"] == str(ssl_dir / "ca.pem")
    assert o["kafka.ssl.endpoint.identification.algorithm"] == "https"
    assert o["kafka.sasl.jaas.config"] == ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                                           f'username="{USER}" password="Pw-{TOKEN}-\\"q\\\\\'$";')
