"""make load: every line becomes one message, keyed by the root uid; .gz, plain and stdin."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from conftest import ROOT, consume_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=3000, rate=100, users=200, seed=4, malformed_frac=0.05))
    d = tmp_path_factory.mktemp("load")
    (d / "s.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(d / "s.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return d, lines


def _load(kafka, test_conf, args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tools.loader", *args, "--conf-file", str(test_conf)],
                          cwd=ROOT, capture_output=True, input=stdin, timeout=300)


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.gz", "-"])
def test_every_line_is_one_message_keyed_by_root_uid(kafka, test_conf, sample, name):
    d, lines = sample
    topic = f"load-{name.replace('.', '-').replace('-', 'x')}-{len(lines)}"
    stdin = (d / "s.jsonl").read_bytes() if name == "-" else None
    r = _load(kafka, test_conf, [name if name == "-" else str(d / name), "--topic", topic], stdin)
    assert r.returncode == 0, r.stderr.decode()
    assert f"done, {len(lines):,} frames into {topic}".encode() in r.stderr
    got = consume_all(kafka, topic)
    assert sorted(v for _, v in got) == sorted(lines)
    from doodlestats.reference import reference_parse
    for k, v in got:
        ts, uid, reason = reference_parse(v)
        if uid is not None and reason in (None, "missing_ts", "bad_ts"):
            assert k == uid.encode()  # root uid, never a nested decoy
    # a topic the loader created has the configured partitions, and keys spread over them
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": kafka.kafka.bootstrap_servers}).list_topics(topic, timeout=10)
    assert len(md.topics[topic].partitions) == kafka.kafka.input_partitions


def test_missing_input_and_down_broker_are_clear_errors(kafka, test_conf, tmp_path):
    r = _load(kafka, test_conf, [str(tmp_path / "nope.jsonl")])
    assert r.returncode == 2 and b"input not found" in r.stderr
    from conftest import write_conf
    conf = write_conf(tmp_path / "down.toml", **{"kafka.bootstrap_servers": "127.0.0.1:29999"})
    r = subprocess.run([sys.executable, "-m", "tools.loader", "-", "--conf-file", str(conf)], cwd=ROOT,
                       capture_output=True, input=b"{}\n", timeout=120)
    assert r.returncode == 2 and b"make kafka-up" in r.stderr


def test_rate_paces_evenly(kafka, test_conf, tmp_path):
    """--rate 1000: 3,000 frames take ~3 s (2.5–4 s on a busy box), all delivered."""
    import time
    f = tmp_path / "r.jsonl"
    f.write_bytes(b"".join(b'{"ts":%d,"uid":"u%d"}\n' % (1468244384 + i // 100, i % 50) for i in range(3000)))
    topic = f"load-rate-{time.time_ns()}"
    t0 = time.monotonic()
    r = _load(kafka, test_conf, [str(f), "--topic", topic, "--rate", "1000"])
    dt = time.monotonic() - t0
    assert r.returncode == 0, r.stderr.decode()
    # process start + broker handshake ~1 s on top of the 3 s of pacing
    assert 2.5 <= dt <= 5.5, dt
    assert len(consume_all(kafka, topic)) == 3000
