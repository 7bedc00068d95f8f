"""Reliability of the live job against its broker.

Broker outage: the job runs live while frames stream in; its broker is stopped for 30 s
mid-stream and started again (same data folder, so topics and offsets survive); the rest
of the frames follow. The job rides it out — it waits for the broker instead of dying —
and at the end nothing is lost or counted twice: Delta ``minute_stats`` and the last
``minuteStats`` value per minute equal the generator's truth, one row per minute, and
every bad frame is in the quarantine exactly once. That test has a broker of its own
(``DOODLE_TEST_KAFKA_PORT`` + 30/31, its own folder), so stopping it leaves the session's
broker alone.

Retention gaps: frames deleted before the job read them (the admin API's delete_records
stands in for retention) — while the job was down, and while it runs behind — stop it with
one line (``on_data_loss = "fail"``) or are skipped, recorded, and everything that was
still there is counted exactly (``"skip"``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, TEST_PORT, consume_all, write_conf

pytestmark = pytest.mark.integration

PORT = TEST_PORT + 30            # this test's own broker (controller: PORT + 1)
OUTAGE_S = 30


@contextlib.contextmanager
def broker_dir(run):
    """tools.kafka_local keeps a broker's PID file and data in $DOODLE_KAFKA_DIR: point it at
    this test's folder while calling it (and give the session broker's folder back)."""
    old = os.environ.get("DOODLE_KAFKA_DIR")
    os.environ["DOODLE_KAFKA_DIR"] = str(run)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DOODLE_KAFKA_DIR", None)
        else:
            os.environ["DOODLE_KAFKA_DIR"] = old


class Job:
    """The live job as users run it (./spark-submit.sh), its stderr lines time-stamped."""

    BATCH = re.compile(r"^batch (\d+): ([\d,]+) frames")

    def __init__(self, conf, args, log_path):
        cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "jobs/minute_stats.py",
               "--conf-file", str(conf), *args]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.log.write(line)
            self.log.flush()

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def batches(self) -> list[tuple[float, int, int]]:
        """(time, batch id, frames) of every progress line."""
        out = []
        for t, line in list(self.lines):
            m = self.BATCH.match(line)
            if m:
                out.append((t, int(m.group(1)), int(m.group(2).replace(",", ""))))
        return out

    def frames(self) -> int:
        return sum(n for _, _, n in self.batches())

    def wait_for(self, what, timeout: float, why: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert self.proc.poll() is None, f"job exited ({self.proc.returncode}) {why}:\n{self.text()[-4000:]}"
            assert time.monotonic() < deadline, f"timed out {why}:\n{self.text()[-4000:]}"
            time.sleep(0.2)

    def stop(self, timeout: float = 120) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)  # the wrapper forwards it to the driver
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.reader.join(10)
            self.log.close()

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def produce(cfg, topic: str, lines: list[bytes]) -> None:
    """Keyed by uid like the loader (one user's frames in one partition, in order)."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "linger.ms": 10, "acks": "all",
                  "enable.idempotence": True})
    for i, line in enumerate(lines):
        try:
            key = str(orjson.loads(line).get("uid")).encode()
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        p.produce(topic, line, key)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def job_module():
    """The streaming runner of jobs/minute_stats.py (its publisher and broker watch)."""
    from doodlestats.runtime import streaming
    return streaming


def delta_table(path):
    from deltalake import DeltaTable
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def stored(delta) -> dict[int, tuple[int, int]]:
    """minute_stats as minute -> (unique users, frames), read with delta-rs."""
    return {r["ts"]: (r["unique_users"], r["frames"]) for r in delta_table(Path(delta) / "minute_stats")}


def test_a_30s_broker_outage_mid_stream_loses_nothing_and_counts_nothing_twice(tmp_path):
    from doodlestats.runtime.config import load_config
    from tools import kafka_local
    from tools.generator import GenConfig, generate

    conf = write_conf(tmp_path / "outage.toml", **{
        "kafka.bootstrap_servers": f"127.0.0.1:{PORT}", "kafka.controller_port": PORT + 1,
        "job.warm_up_frames": 0})  # the warm-up is not what this test is about: start faster
    cfg = load_config(conf)
    lines, truth = generate(GenConfig(count=30_000, rate=150, users=3000, seed=47, malformed_frac=0.01,
                                      bitflip_frac=0.001, max_delay=3, delay_prob=0.05))
    first, rest = lines[:15_000], lines[15_000:]
    run = tmp_path / "kafka"
    job = None
    with broker_dir(run):
        kafka_local.up(cfg)  # creates the input and output topics of cfg
    try:
        topic, out_topic = cfg.kafka.input_topic, cfg.kafka.output_topic
        # the job's minuteStats publisher on a topic of its own, to publish during the outage
        from doodlestats.batch.results import MinuteResult
        probe_cfg = load_config(conf, {"kafka.output_topic": "outage-probe"})
        kafka_local.ensure_topic(probe_cfg, "outage-probe", 1)
        mod = job_module()
        sink = mod.patient_kafka_sink(probe_cfg, mod.BrokerWatch(probe_cfg.kafka.bootstrap_servers))
        sink.write([MinuteResult(1468244400, 1, 1, "provisional", "exact", None, time.time())], 0)
        probe_errors: list = []

        def publish_during_outage():
            try:
                sink.write([MinuteResult(1468244460, 2, 3, "provisional", "exact", None, time.time())], 1)
            except Exception as e:  # noqa: BLE001 - reported by the test
                probe_errors.append(e)
        produce(cfg, topic, first)
        job = Job(conf, ["--delta-path", str(tmp_path / "delta"), "--checkpoint", str(tmp_path / "ckpt"),
                         "--max-offsets-per-trigger", "3000"], tmp_path / "job.err")
        # mid-stream: a few batches done, a backlog still to read
        job.wait_for(lambda: len(job.batches()) >= 2, 240, "before the outage")
        t_down = time.monotonic()
        with broker_dir(run):
            kafka_local.down()
        before = job.frames()
        publisher = threading.Thread(target=publish_during_outage)
        publisher.start()
        time.sleep(OUTAGE_S)
        assert job.proc.poll() is None, f"the job died during the outage:\n{job.text()[-4000:]}"
        assert publisher.is_alive() and not probe_errors  # still waiting for the broker, not failed
        with broker_dir(run):
            kafka_local.up(cfg)
        t_up = time.monotonic()
        publisher.join(120)
        assert not publisher.is_alive() and not probe_errors, probe_errors
        probe = consume_all(cfg, "outage-probe")
        assert sorted(k for k, _ in probe) == [b"2016-07-11T13:40:00Z", b"2016-07-11T13:41:00Z"]  # once each
        produce(cfg, topic, rest)
        job.wait_for(lambda: job.frames() >= len(lines), 180, "after the outage")
        assert job.stop() == 0, job.text()[-4000:]
        # how long the stream stood still: the first batch line after the broker came back
        after = [t for t, _, _ in job.batches() if t > t_up]
        stall = (after[0] - t_down) if after else None
        print(f"\noutage: broker down {t_up - t_down:.1f}s (incl. restart); frames before {before:,}; "
              f"first batch after restart {after[0] - t_up:.1f}s after the broker was back; "
              f"stream stalled {stall:.1f}s")
        print("job lines during the outage:\n  " + "\n  ".join(
            line for t, line in job.lines if t_down <= t <= (after[0] if after else t_up)))

        want = {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}
        rows = delta_table(tmp_path / "delta" / "minute_stats")
        assert len(rows) == len({r["ts"] for r in rows}), "duplicate minute_stats rows"
        assert {r["ts"]: (r["unique_users"], r["frames"]) for r in rows} == want
        pairs = delta_table(tmp_path / "delta" / "minute_uids")
        assert len(pairs) == len({(r["minute"], r["uid"]) for r in pairs}), "a (minute, uid) pair twice"
        last = {}
        for k, v in consume_all(cfg, out_topic):
            last[k.decode()] = orjson.loads(v)
        assert {v["ts"]: (v["unique_users"], v["frames"]) for v in last.values()} == want
        q = delta_table(tmp_path / "delta" / "quarantine")
        assert len(q) == len({(r["partition"], r["offset"]) for r in q}), "a frame quarantined twice"
        assert Counter(r["reason"] for r in q) == \
            Counter({k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v})
    finally:
        if job is not None:
            job.kill()
        with broker_dir(run):
            kafka_local.down()


# ---------------------------------------------------------------- retention gaps
def test_frames_deleted_unread_stop_the_job_with_one_line_or_are_skipped_and_recorded(kafka, test_conf, tmp_path):
    """The job stops; more frames arrive; retention deletes some of them before the job is
    back (simulated with the admin API's delete_records). ``fail`` (the default) stops with
    one line and exit 2 before anything is written; ``skip`` goes on from the earliest
    offsets, records each gap, and counts exactly the frames that were still there."""
    import json

    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    from conftest import new_topic, run_job
    from conftest import produce as produce_to
    from test_minute_stats import job_args, recount

    from doodlestats.io.state import StateStore
    from tools.generator import GenConfig, generate

    lines, _ = generate(GenConfig(count=9000, rate=60, users=900, seed=53))
    old, new = lines[:4500], lines[4500:]
    topic, out_topic = new_topic(kafka, "loss", 3), new_topic(kafka, "loss-out", 1)
    for p in range(3):
        produce_to(kafka, topic, old[p::3], partition=p)
    args = job_args(topic, out_topic, tmp_path, "--available-now")
    run_job(args, test_conf)
    for p in range(3):
        produce_to(kafka, topic, new[p::3], partition=p)
    n_old = {p: len(old[p::3]) for p in range(3)}
    # retention: partition 0 loses its first 300 new frames, partition 2 all of them, 1 none
    cut = {0: n_old[0] + 300, 2: n_old[2] + len(new[2::3])}
    admin = AdminClient({"bootstrap.servers": kafka.kafka.bootstrap_servers})
    for f in admin.delete_records([TopicPartition(topic, p, o) for p, o in cut.items()]).values():
        f.result(30)
    state_before = StateStore(str(tmp_path / "ckpt")).latest()

    res = run_job(args, test_conf, check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("minute_stats: error:")]
    assert len(errors) == 1 and "data loss" in errors[0], res.stderr[-3000:]
    for p in cut:
        assert f"{topic} partition {p}: expected offset {n_old[p]:,}, earliest available {cut[p]:,}" in errors[0]
    assert f"{topic} partition 1" not in errors[0] and "--on-data-loss skip" in errors[0]
    assert "Traceback" not in res.stderr and "Exception" not in res.stderr
    assert StateStore(str(tmp_path / "ckpt")).latest() == state_before  # nothing was processed

    metrics = tmp_path / "metrics.json"
    res = run_job(args + ["--on-data-loss", "skip", "--metrics-file", str(metrics)], test_conf)
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("data loss skipped:")]
    assert len(skipped) == 2, res.stderr[-3000:]
    want = [{"topic": topic, "partition": p, "from": n_old[p], "to": cut[p], "count": cut[p] - n_old[p]}
            for p in sorted(cut)]
    gaps = StateStore(str(tmp_path / "ckpt")).latest().gaps
    assert [{k: g[k] for k in ("topic", "partition", "from", "to", "count")} for g in gaps] == want
    assert [{k: g[k] for k in ("topic", "partition", "from", "to", "count")}
            for g in json.loads(metrics.read_text())["gaps"]] == want
    there = old + new[0::3][300:] + new[1::3]
    assert stored(tmp_path / "delta") == recount(there)

    # once recorded, a gap is not found again
    res = run_job(args, test_conf)
    assert "data loss" not in res.stderr
    assert StateStore(str(tmp_path / "ckpt")).latest().gaps == gaps


SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"


def test_a_gap_inside_a_batch_fails_before_anything_is_written_or_is_skipped(spark, tmp_path):
    """The check per batch (retention deleting frames while the job runs behind): the batch's
    first offset of a partition is past the expected one and the broker's earliest offset
    says why. ``fail``: DataLoss, no commit, no state; ``skip``: the gap is in the state. A
    jump the broker does not confirm (transaction markers) is no gap."""
    from conftest import write_conf
    from test_minute_stats import recount

    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.io.offsets import DataLoss, OffsetCheck
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate

    lines, _ = generate(GenConfig(count=3000, rate=40, users=300, seed=57))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    cfg = load_config(write_conf(tmp_path / "c.toml"))
    ckpt, delta = str(tmp_path / "ckpt"), str(tmp_path / "delta")
    low = {"t#0": 0}
    asked = []

    def earliest(keys):
        asked.append(list(keys))
        return {k: low[k] for k in keys}

    p = MinuteStatsPipeline(spark, cfg, ckpt, delta, offset_check=OffsetCheck(earliest, "fail"))
    p.process_batch(df.where("offset < 1000"), 0)
    assert p.store.latest().offsets == {"t#0": 1000} and not asked
    versions = p.tables.versions()
    low["t#0"] = 1500  # offsets 1000..1499 deleted before the job read them
    with pytest.raises(DataLoss, match=r"t partition 0: expected offset 1,000, earliest available 1,500 "
                                       r"\(500 frame\(s\) deleted unread\)"):
        p.process_batch(df.where("offset >= 1500 AND offset < 2500"), 1)
    assert p.tables.versions() == versions and not p.store.done(1)

    q = MinuteStatsPipeline(spark, cfg, ckpt, delta, offset_check=OffsetCheck(earliest, "skip"))
    q.process_batch(df.where("offset >= 1500 AND offset < 2500"), 1)
    st = q.store.latest()
    assert [{k: g[k] for k in ("topic", "partition", "from", "to", "count", "batch_id")} for g in st.gaps] == \
        [{"topic": "t", "partition": 0, "from": 1000, "to": 1500, "count": 500, "batch_id": 1}]
    assert st.offsets == {"t#0": 2500}
    n = len(asked)
    q.process_batch(df.where("offset >= 2510"), 2)  # a jump of 10 the broker does not confirm
    assert len(asked) == n + 1 and q.store.latest().gaps == st.gaps and q.store.latest().offsets == {"t#0": 3000}
    q.process_batch(df.where("offset < 0"), 3)      # an empty batch keeps what is recorded
    assert q.store.latest().gaps == st.gaps and q.store.latest().offsets == {"t#0": 3000}
    q.flush()
    assert stored(delta) == recount(lines[:1000] + lines[1500:2500] + lines[2510:])


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_frames_deleted_while_the_live_job_is_behind(kafka, tmp_path, mode):
    """Retention deletes frames the running job has not read yet. ``fail``: the job stops
    with one line and exit 2; ``skip``: it goes on past them, records the gap and counts
    exactly the frames that were still there."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    from conftest import new_topic
    from conftest import produce as produce_to
    from test_minute_stats import job_args, recount

    from doodlestats.io.state import StateStore
    from tools.generator import GenConfig, generate

    lines, _ = generate(GenConfig(count=6000, rate=60, users=600, seed=59))
    topic, out_topic = new_topic(kafka, "behind", 1), new_topic(kafka, "behind-out", 1)
    produce_to(kafka, topic, lines)
    conf = write_conf(tmp_path / "c.toml", **{"job.warm_up_frames": 0, "job.on_data_loss": mode})
    job = Job(conf, job_args(topic, out_topic, tmp_path, "--max-offsets-per-trigger", "500", "--trigger", "2"),
              tmp_path / "job.err")
    try:
        job.wait_for(lambda: job.batches(), 240, "before the deletion")
        admin = AdminClient({"bootstrap.servers": kafka.kafka.bootstrap_servers})
        admin.delete_records([TopicPartition(topic, 0, 3000)])[TopicPartition(topic, 0, 3000)].result(30)
        if mode == "fail":
            assert job.proc.wait(timeout=240) == 2, job.text()[-4000:]
            job.reader.join(10)
            errors = [ln for _, ln in job.lines if ln.startswith("minute_stats: error:")]
            assert len(errors) == 1 and f"{topic} partition 0: expected offset" in errors[0] and \
                "earliest available 3,000" in errors[0], job.text()[-4000:]
            return
        job.wait_for(lambda: sum(1 for _, ln in job.lines if ln.startswith("data loss skipped:")) and
                     (StateStore(str(tmp_path / "ckpt")).latest().offsets or {}).get(f"{topic}#0") == 6000,
                     240, "reading past the deleted frames")
        assert job.stop() == 0, job.text()[-4000:]
    finally:
        job.kill()
    (gap,) = StateStore(str(tmp_path / "ckpt")).latest().gaps
    assert gap["topic"] == topic and gap["partition"] == 0 and gap["to"] == 3000 and \
        gap["count"] == 3000 - gap["from"] and 500 <= gap["from"] < 3000
    assert stored(tmp_path / "delta") == recount(lines[:gap["from"]] + lines[3000:])


def test_a_broker_away_longer_than_the_job_waits_is_one_line_and_status_75(capsys):
    """Past BROKER_PATIENCE_S the job gives up: one line (nothing is lost, start it again)
    and exit status 75 — whether Spark's reader or the publisher gave up first."""
    mod = job_module()

    class Spark:
        def stop(self):
            pass

    watch = mod.BrokerWatch("127.0.0.1:1")
    watch.down_since = time.monotonic() - mod.BROKER_PATIENCE_S - 5
    spark_gave_up = RuntimeError("[STREAM_FAILED] ... org.apache.kafka.common.errors.TimeoutException: ...")
    assert mod.failed(spark_gave_up, None, watch, Spark()) == mod.EXIT_BROKER_GONE == 75
    publisher_gave_up = RuntimeError("... doodlestats.io.sinks.PublishTimeout: results of batch 7 not delivered "
                                     "to minuteStats ...")
    assert mod.failed(publisher_gave_up, None, mod.BrokerWatch("127.0.0.1:1"), Spark()) == 75
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("minute_stats: error: Kafka at 127.0.0.1:1 has not answered for ")
                                   and "resumes from its checkpoint" in ln for ln in lines)
    assert mod.failed(RuntimeError("something else"), None, mod.BrokerWatch("x:1"), Spark()) == 1
