"""The batch backfill (jobs/backfill.py through ./spark-submit.sh): files and globs,
stdin, a Kafka range by record time, resuming after SIGKILL, idempotent re-runs, and a
backfill over minutes a stream already wrote. Expectations: the generator's truth or a
plain-Python recount of the frames."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time

import orjson
import pytest
from conftest import ROOT, new_topic, run_job
from test_minute_stats import delta_rows, job_args, quarantine_counts, recount, stored_minutes, truth_by_minute

pytestmark = pytest.mark.integration


def backfill(args, conf, stdin=None, check=True, timeout=900):
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(ROOT / "jobs" / "backfill.py"),
           "--conf-file", str(conf), *args]
    res = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=ROOT, input=stdin)
    res.stdout, res.stderr = res.stdout.decode(), res.stderr.decode()
    if check:
        assert res.returncode == 0, res.stderr[-5000:]
    return res


def printed(stdout: str) -> dict[int, tuple[int, int]]:
    out = {}
    for line in stdout.splitlines():
        d = orjson.loads(line)
        out[d["ts"]] = (d["unique_users"], d["frames"])  # the last value per minute wins
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Three .gz files of consecutive history with every defect, and the truth."""
    from tools.generator import GenConfig, generate
    d = tmp_path_factory.mktemp("history")
    lines, truth = generate(GenConfig(count=30_000, rate=60, users=3000, seed=81, max_delay=4, delay_prob=0.05,
                                      string_ts_frac=0.1, malformed_frac=0.01, bitflip_frac=0.002))
    for i in range(3):
        with gzip.open(d / f"part-{i}.jsonl.gz", "wb") as f:
            f.write(b"\n".join(lines[i * 10_000:(i + 1) * 10_000]) + b"\n")
    return d, lines, truth


def test_files_glob_is_exact_resumable_and_idempotent(spark, test_conf, history, tmp_path):
    d, _, truth = history
    args = ["--input", str(d / "part-*.jsonl.gz"), "--chunk-bytes", "1", "--delta-path", str(tmp_path / "delta"),
            "--checkpoint", str(tmp_path / "ckpt"), "--print"]
    # killed (SIGKILL, whole process group) once its first chunk is committed
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(ROOT / "jobs" / "backfill.py"),
           "--conf-file", str(test_conf), *args]
    errf = open(tmp_path / "first.err", "w+")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and "1/3 chunks" not in (tmp_path / "first.err").read_text():
        assert p.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    res = backfill(args, test_conf)
    assert "skipped (done before)" in res.stderr and "3/3 chunks" in res.stderr
    want = truth_by_minute(truth)
    assert stored_minutes(spark, tmp_path / "delta") == want
    bad = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    assert dict(quarantine_counts(spark, tmp_path / "delta")) == bad
    # --print: final results, the stream's schema; minutes printed before the kill come again only if
    # they changed, so the union of both runs' output is checked through Delta above and here:
    assert printed(res.stdout).items() <= want.items() and printed(res.stdout)
    # the same backfill again changes nothing
    from deltalake import DeltaTable
    tables = ("minute_stats", "minute_uids", "quarantine")
    before = {t: DeltaTable(str(tmp_path / "delta" / t)).version() for t in tables}
    again = backfill(args, test_conf)
    assert again.stdout == "" and again.stderr.count("skipped (done before)") == 3
    assert {t: DeltaTable(str(tmp_path / "delta" / t)).version() for t in before} == before


def test_stdin_prints_the_exact_final_results(test_conf, history, tmp_path):
    d, lines, truth = history
    data = b"".join(gzip.open(d / f"part-{i}.jsonl.gz").read() for i in range(3))
    res = backfill(["--input", "-", "--print", "--delta-path", str(tmp_path / "delta")], test_conf, stdin=data)
    assert printed(res.stdout) == truth_by_minute(truth)
    assert all(orjson.loads(x)["status"] in ("final", "corrected") for x in res.stdout.splitlines())


def test_kafka_range_by_record_time_and_over_a_streams_minutes(kafka, spark, test_conf, tmp_path):
    """Day 1 and day 2 of record time in one topic: --from day 2 reads only day 2. Then a
    backfill of day-1 frames into the tables a stream wrote for other frames of the same
    minutes: users are the union, frames the sum."""
    from confluent_kafka import Producer

    from tools.generator import GenConfig, generate
    lines, _ = generate(GenConfig(count=8000, rate=40, users=600, seed=82))
    day1, day2 = lines[::2], lines[1::2]  # the same minutes, different frames
    topic = new_topic(kafka, "history", 3)
    # idempotent: in order even when a fresh topic's first batches are retried (a retried day-1
    # batch landing after day-2 records would put day-1 frames inside the day-2 offset range)
    prod = Producer({"bootstrap.servers": kafka.kafka.bootstrap_servers, "enable.idempotence": True})
    # record times (ms) one day apart, recent: the broker's retention (7 days) deletes older records
    t2 = (int(time.time()) // 86400 - 1) * 86_400_000 + 3_600_000  # yesterday 01:00 UTC
    t1 = t2 - 86_400_000
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t2 / 1000))
    for i, line in enumerate(day1):
        prod.produce(topic, line, timestamp=t1 + i)
    assert prod.flush(60) == 0
    for i, line in enumerate(day2):
        prod.produce(topic, line, timestamp=t2 + i)
    assert prod.flush(60) == 0
    res = backfill(["--topic", topic, "--from", since, "--print",
                    "--delta-path", str(tmp_path / "d2")], test_conf)
    assert printed(res.stdout) == recount(day2)

    # a stream counted day-1 frames; a backfill of the day-2 frames merges into its minutes
    stream_topic, out_topic = new_topic(kafka, "live", 3), new_topic(kafka, "live-out", 1)
    from conftest import produce
    produce(kafka, stream_topic, day1)
    run_job(job_args(stream_topic, out_topic, tmp_path, "--available-now"), test_conf)
    assert stored_minutes(spark, tmp_path / "delta") == recount(day1)
    res = backfill(["--topic", topic, "--from", since, "--delta-path", str(tmp_path / "delta")],
                   test_conf)
    both = recount(lines)
    assert stored_minutes(spark, tmp_path / "delta") == both  # users: union; frames: sum (disjoint frames)

    # an hour and a day that span the stream run and the backfill: exact union of both
    import json

    from doodlestats.history.rollups import Rollups
    for grain, size in (("hour", 3600), ("day", 86400)):
        want_users, want_frames = {}, {}
        for line in lines:
            d = json.loads(line)
            p = int(d["ts"]) - int(d["ts"]) % size
            want_users.setdefault(p, set()).add(d["uid"])
            want_frames[p] = want_frames.get(p, 0) + 1
        rep = Rollups(spark, str(tmp_path / "delta")).run(grain, "exact", full=True)
        assert {r.start: (r.unique_users, r.frames) for r in rep.results} == \
            {p: (len(u), want_frames[p]) for p, u in want_users.items()}


def test_a_big_file_read_in_splits_equals_the_same_lines_in_small_files(spark, test_conf, history, tmp_path):
    """One plain file, cut into chunks and each chunk into splits (lines straddle every
    boundary), against the same lines in small files: the same minutes, pairs and
    quarantine rows; each quarantine row's byte offset finds its line in the big file."""
    _, lines, truth = history
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"\n".join(lines) + b"\n")
    small = tmp_path / "small"
    small.mkdir()
    for i in range(0, len(lines), 2_000):
        (small / f"part-{i // 2_000:03d}.jsonl").write_bytes(b"\n".join(lines[i:i + 2_000]) + b"\n")
    chunk = big.stat().st_size // 5 + 1  # 5 chunks of 2 splits each (MIN_SPLIT_BYTES 4 MB, 2 cores)
    runs, logs = {}, {}
    for name, inp, extra in (("big", big, ["--chunk-bytes", str(chunk)]), ("small", small, [])):
        logs[name] = backfill(["--input", str(inp), "--delta-path", str(tmp_path / name), *extra], test_conf).stderr
        runs[name] = tmp_path / name
    assert "5 chunk(s)" in logs["big"] and "1 chunk(s)" in logs["small"]
    want = truth_by_minute(truth)
    bad = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    for name, delta in runs.items():
        assert stored_minutes(spark, delta) == want, name
        assert dict(quarantine_counts(spark, delta)) == bad, name
    pairs = {n: {(r["minute"], r["uid"]) for r in delta_rows(spark, d, "minute_uids")} for n, d in runs.items()}
    assert pairs["big"] == pairs["small"] and len(pairs["big"]) == sum(u for u, _ in want.values())
    rows = {n: delta_rows(spark, d, "quarantine") for n, d in runs.items()}
    assert sorted((r["reason"], bytes(r["raw"])) for r in rows["big"]) == \
        sorted((r["reason"], bytes(r["raw"])) for r in rows["small"])
    data = big.read_bytes()
    for r in rows["big"]:
        at, raw = r["byte_offset"], bytes(r["raw"])
        assert r["file"].endswith("big.jsonl") and r["line"] is None and r["topic"] is None
        assert data[at:at + len(raw)] == raw and (at == 0 or data[at - 1:at] == b"\n"), r
    assert len({r["partition"] for r in rows["big"]}) > 1  # read by more than one split


def test_read_ranges_gives_each_line_once_with_its_byte_offset(spark, tmp_path):
    """read_ranges on a plain file (ranges and splits cut mid-line, CRLF and empty lines)
    and on a .gz (one split, offsets in the decompressed text): every line exactly once."""
    from doodlestats.io.source import read_ranges
    body = b"".join(b'{"uid":"u%d","pad":"%s"}%s' % (i, b"x" * (i * 37 % 3000), b"\r\n" if i % 7 == 0 else b"\n")
                    for i in range(6_000)) + b"\n" + b'{"last":"no newline"}'
    plain, packed = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    plain.write_bytes(body)
    packed.write_bytes(gzip.compress(body))
    want, at = [], 0
    for raw in body.split(b"\n"):
        want.append((at, raw.rstrip(b"\r")))
        at += len(raw) + 1
    size = len(body)
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 20))
    try:
        thirds = [(str(plain), a, min(size, b) - a) for a, b in ((0, size // 3), (size // 3, 2 * size // 3 + 5),
                                                                     (2 * size // 3 + 5, size))]
        for ranges, tasks in ((thirds, None), ([(str(packed), 0, packed.stat().st_size)], 1)):
            df = read_ranges(spark, ranges)
            got = sorted((r["byte_offset"], bytes(r["value"])) for r in df.collect())
            assert got == want
            n = df.rdd.getNumPartitions()
            assert n == tasks if tasks else n >= 3
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")


def test_a_kafka_range_is_read_by_at_least_as_many_tasks_as_cores(kafka, spark, cfg):
    """One partition, few frames: the range is still split into offset ranges for every
    core (minPartitions), as the stream's read is."""
    from doodlestats.io.source import kafka_chunks
    from tools.generator import GenConfig, generate
    lines, _ = generate(GenConfig(count=400, rate=40, users=50, seed=83))
    topic = new_topic(kafka, "range-tasks", 1)
    from conftest import produce
    produce(kafka, topic, lines)
    chunks = kafka_chunks(cfg, topic, "earliest", "latest", "day", 5_000_000)
    assert len(chunks) == 1 and chunks[0].size == len(lines)
    df = chunks[0].read(spark, cfg)
    assert df.rdd.getNumPartitions() >= max(spark.sparkContext.defaultParallelism, cfg.job.min_partitions, 2)
    assert df.count() == len(lines)
