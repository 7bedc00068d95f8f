"""make load: every line becomes one message keyed by the root uid (.gz, plain, stdin), and
every line is accounted for — delivered, rejected into the rejects file, or reported as
failed — across oversized frames, a broker that refuses a frame, SIGTERM / Ctrl-C /
SIGKILL and --resume; --rate holds its pace."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from conftest import ROOT, write_conf

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


def _load(kafka, test_conf, args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tools.loader", *args, "--conf-file", str(test_conf)],
                          cwd=ROOT, capture_output=True, input=stdin, timeout=timeout)


def _start(test_conf, args):
    return subprocess.Popen([sys.executable, "-m", "tools.loader", *args, "--conf-file", str(test_conf)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _report(stderr: bytes) -> str:
    """The final report line (there is exactly one)."""
    lines = [x for x in stderr.decode().splitlines() if x.startswith(("load: done:", "load: STOPPED:"))]
    assert len(lines) == 1, stderr.decode()
    assert "Traceback" not in stderr.decode(), stderr.decode()
    return lines[0]


def _values(cfg, topic: str, with_ts: bool = False, with_key: bool = False) -> list:
    """Every message value of ``topic`` (read up to the end offsets: no idle wait), or
    (value, timestamp ms) / (key, value) pairs."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        todo = {p for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        out, deadline = [], time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for m in c.consume(5000, timeout=0.5):
                if m.error() is None:
                    out.append((m.value(), m.timestamp()[1]) if with_ts else
                               (m.key(), m.value()) if with_key else m.value())
                    if m.offset() + 1 >= ends[m.partition()]:
                        todo.discard(m.partition())
        assert not todo, f"could not read {topic} to its end"
        return out
    finally:
        c.close()


def _small_lines(n: int, tag: str) -> list[bytes]:
    """``n`` distinct small frames (so a multiset comparison sees every duplicate)."""
    return [b'{"ts":%d,"uid":"u%d","n":%d,"t":"%s"}' % (1468244384 + i // 100, i % 97, i, tag.encode())
            for i in range(n)]


def _rejects(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.gz", "-"])
def test_every_line_is_one_message_keyed_by_root_uid(kafka, test_conf, sample, name):
    d, lines = sample
    topic = f"load-{name.replace('.', '-').replace('-', 'x')}-{len(lines)}"
    stdin = (d / "s.jsonl").read_bytes() if name == "-" else None
    extra = ["--progress-file", str(d / "stdin.progress.json")] if name == "-" else []
    r = _load(kafka, test_conf, [name if name == "-" else str(d / name), "--topic", topic, *extra], stdin)
    assert r.returncode == 0, r.stderr.decode()
    assert f"delivered {len(lines):,} · rejected 0 · failed 0" in _report(r.stderr)
    got = _values(kafka, topic, with_key=True)
    assert sorted(v for _, v in got) == sorted(lines)
    from doodlestats.batch.reference import reference_parse
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
    conf = write_conf(tmp_path / "down.toml", **{"kafka.bootstrap_servers": "127.0.0.1:29999"})
    r = subprocess.run([sys.executable, "-m", "tools.loader", "-", "--conf-file", str(conf)], cwd=ROOT,
                       capture_output=True, input=b"{}\n", timeout=120)
    assert r.returncode == 2 and b"make kafka-up" in r.stderr


def test_rate_paces_evenly(kafka, test_conf, tmp_path):
    """--rate 1000: 3,000 frames take ~3 s, and no window holds a burst: at most
    1000 * (T + 0.1) frames in T s (the producer stamps each message when it is produced)."""
    f = tmp_path / "r.jsonl"
    f.write_bytes(b"\n".join(_small_lines(3000, "rate")) + b"\n")
    topic = f"load-rate-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    r = _load(kafka, test_conf, [str(f), "--topic", topic, "--rate", "1000"])
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr.decode()
    report = _report(r.stderr)
    secs = float(report.split(" in ")[1].split("s ")[0])
    assert 2.5 <= secs <= 4.0, report
    assert wall <= 8.0, wall   # process start and broker handshake on top
    stamps = sorted(ts for _, ts in _values(kafka, topic, with_ts=True))
    assert len(stamps) == 3000
    assert 2800 <= stamps[-1] - stamps[0] <= 4000
    per_100ms = Counter((ts - stamps[0]) // 100 for ts in stamps)
    assert max(per_100ms.values()) <= 205, sorted(per_100ms.items())
    per_s = Counter((ts - stamps[0]) // 1000 for ts in stamps)
    assert max(per_s.values()) <= 1105, sorted(per_s.items())


def test_oversized_line_is_rejected_and_every_other_line_delivered(kafka, test_conf, tmp_path):
    """The reported case: one line above the limit among 20,000 → that line (only) in the
    rejects file, no traceback, exit 3; a 1 MB line now goes through (limit 10 MB)."""
    lines = _small_lines(20_000, "big")
    huge = b'{"ts":1468244384,"uid":"huge","pad":"' + b"x" * (11 << 20) + b'"}'
    mb = b'{"ts":1468244384,"uid":"mb","pad":"' + b"y" * (1 << 20) + b'"}'
    lines = lines[:7000] + [huge] + lines[7000:13000] + [mb] + lines[13000:]
    f = tmp_path / "big.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    topic = f"load-big-{uuid.uuid4().hex[:8]}"
    r = _load(kafka, test_conf, [str(f), "--topic", topic])
    report = _report(r.stderr)
    assert r.returncode == 3, r.stderr.decode()
    assert "delivered 20,001 · rejected 1 · failed 0" in report and "big.jsonl.rejects.jsonl" in report
    rej = _rejects(tmp_path / "big.jsonl.rejects.jsonl")
    assert [(x["line"], x["reason"], x["bytes"]) for x in rej] == [(7001, "too_large", len(huge))]
    assert rej[0]["frame"].encode() == huge   # the whole frame: nothing is lost
    want = Counter(lines)
    del want[huge]
    assert Counter(_values(kafka, topic)) == want
    prog = json.loads((tmp_path / f"big.jsonl.{topic}.loader-progress.json").read_text())
    assert prog["line"] == len(lines) and prog["complete"] and prog["rejected"] == 1


def test_a_frame_the_broker_refuses_is_rejected_alone(kafka, test_conf, tmp_path):
    """A topic whose own limit is below the producer's: the broker refuses whole batches;
    their frames are re-sent alone, so only the bad frame ends in the rejects file."""
    from confluent_kafka.admin import AdminClient, NewTopic
    topic = f"load-refuse-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 3, 1, config={"max.message.bytes": "262144"})])[topic].result(30)
    lines = _small_lines(3000, "refuse")
    bad = b'{"ts":1468244384,"uid":"u1","pad":"' + b"z" * 300_000 + b'"}'
    lines[1500] = bad
    f = tmp_path / "refuse.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    r = _load(kafka, test_conf, [str(f), "--topic", topic])
    report = _report(r.stderr)
    assert r.returncode == 3, r.stderr.decode()
    assert "delivered 2,999 · rejected 1 · failed 0" in report
    rej = _rejects(tmp_path / "refuse.jsonl.rejects.jsonl")
    assert [(x["line"], x["reason"]) for x in rej] == [(1501, "MSG_SIZE_TOO_LARGE")]
    assert Counter(_values(kafka, topic)) == Counter(lines[:1500] + lines[1501:])


def _wait_progress(path, at_least: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if json.loads(path.read_text())["line"] >= at_least:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no progress past line {at_least} within {timeout}s")


@pytest.mark.parametrize("sig,flag", [("SIGTERM", "--resume"), ("SIGINT", "--once")])
def test_stop_then_resume_sends_every_line_exactly_once(kafka, tmp_path, sig, flag):
    """SIGTERM / Ctrl-C mid-load: the queue is flushed, the report printed, exit 143/130;
    --resume (or --once, the `make run` path) sends exactly the rest; an oversized line
    stays in the rejects file once; a changed input is refused."""
    conf = write_conf(tmp_path / "small-limit.toml", **{"kafka.max_message_bytes": 65536})
    lines = _small_lines(20_000, sig)
    over = b'{"ts":1468244384,"uid":"over","pad":"' + b"o" * 70_000 + b'"}'
    lines[49] = over
    f = tmp_path / "stop.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    topic = f"load-{sig.lower()}-{uuid.uuid4().hex[:8]}"
    progress = tmp_path / f"stop.jsonl.{topic}.loader-progress.json"
    proc = _start(conf, [str(f), "--topic", topic, "--rate", "5000", flag])
    try:
        _wait_progress(progress, 2000, proc)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = _report(err)
    assert proc.returncode == {"SIGTERM": 143, "SIGINT": 130}[sig], err.decode()
    assert f"stopped by {sig}" in report and "failed 0" in report and "resume with --resume" in report
    stopped_at = json.loads(progress.read_text())["line"]
    assert 2000 <= stopped_at < len(lines)
    assert len(_values(kafka, topic)) == stopped_at - 1   # every line up to there, the oversized one rejected

    r = _load(kafka, conf, [str(f), "--topic", topic, flag])
    assert r.returncode == 3, r.stderr.decode()   # complete, one line in the rejects file
    assert f"{stopped_at:,} lines skipped" in _report(r.stderr)
    want = Counter(lines)
    del want[over]
    assert Counter(_values(kafka, topic)) == want   # no loss, no duplicate
    assert [x["line"] for x in _rejects(tmp_path / "stop.jsonl.rejects.jsonl")] == [50]

    r = _load(kafka, conf, [str(f), "--topic", topic, flag])
    assert r.returncode in (0, 3) and (b"nothing to send" in r.stderr or b"already loaded" in r.stderr), \
        r.stderr.decode()
    if flag == "--once":
        for m in (ROOT / ".run" / "loaded").glob(f"{topic}--*"):
            m.unlink()
    else:
        with open(f, "ab") as fh:
            fh.write(b'{"ts":1468244384,"uid":"late"}\n')
        r = _load(kafka, conf, [str(f), "--topic", topic, "--resume"])
        assert r.returncode == 2 and b"another load" in r.stderr, r.stderr.decode()
    assert Counter(_values(kafka, topic)) == want


def test_sigkill_then_resume_finds_what_the_killed_run_delivered(kafka, test_conf, tmp_path):
    """SIGKILL leaves a progress file up to 1 s old; --resume reads the topic from the
    offsets it recorded, recognises the frames delivered since, and sends only the rest."""
    lines = _small_lines(20_000, "kill")
    f = tmp_path / "kill.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    topic = f"load-kill-{uuid.uuid4().hex[:8]}"
    progress = tmp_path / f"kill.jsonl.{topic}.loader-progress.json"
    proc = _start(test_conf, [str(f), "--topic", topic, "--rate", "5000"])
    try:
        _wait_progress(progress, 3000, proc)
        time.sleep(0.5)   # frames delivered after the last save
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = json.loads(progress.read_text())
    had = len(_values(kafka, topic))
    assert had >= saved["line"]
    r = _load(kafka, test_conf, [str(f), "--topic", topic, "--resume"])
    assert r.returncode == 0, r.stderr.decode()
    report = _report(r.stderr)
    found = int(report.split(" found in the topic")[0].rsplit("; ", 1)[1].replace(",", "")) \
        if " found in the topic" in report else 0
    assert found == had - saved["delivered"], (report, had, saved)
    assert Counter(_values(kafka, topic)) == Counter(lines)   # exactly once despite SIGKILL
