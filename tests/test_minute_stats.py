"""End to end: generated streams with a known truth → Kafka → jobs/minute_stats.py
(through ./spark-submit.sh) → minuteStats + Delta. Expectations come from the
generator's ground truth or a plain-Python recount, never from the job itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema
import orjson
import pytest
from conftest import ROOT, consume_all, new_topic, produce, run_job, write_conf

pytestmark = pytest.mark.integration

RESULT_SCHEMA = json.loads((ROOT / "schemas" / "minute_stats.schema.json").read_text())


# ---------------------------------------------------------------- helpers
def last_per_key(messages) -> dict[str, dict]:
    """What a consumer keeping the last value per key sees."""
    out = {}
    for k, v in messages:
        out[k.decode()] = orjson.loads(v)
    return out


def truth_by_minute(truth: dict) -> dict[int, tuple[int, int]]:
    return {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}


def recount(lines: list[bytes]) -> dict[int, tuple[int, int]]:
    """Plain-Python recount of VALID generator lines: minute -> (unique uids, frames)."""
    users, frames = defaultdict(set), Counter()
    for line in lines:
        d = json.loads(line)
        ts = int(d["ts"])
        m = ts - ts % 60
        users[m].add(d["uid"])
        frames[m] += 1
    return {m: (len(users[m]), frames[m]) for m in users}


def delta_rows(spark, path: Path, table: str):
    return spark.read.format("delta").load(str(path / table)).collect()


def stored_minutes(spark, delta: Path) -> dict[int, tuple[int, int]]:
    return {r["ts"]: (r["unique_users"], r["frames"]) for r in delta_rows(spark, delta, "minute_stats")}


def quarantine_counts(spark, delta: Path) -> Counter:
    return Counter(r["reason"] for r in delta_rows(spark, delta, "quarantine"))


def job_args(topic: str, out_topic: str, tmp: Path, *extra: str) -> list[str]:
    return ["--topic", topic, "--output-topic", out_topic, "--delta-path", str(tmp / "delta"),
            "--checkpoint", str(tmp / "ckpt"), *extra]


# ---------------------------------------------------------------- the main scenario
@pytest.fixture(scope="module")
def stream(kafka, tmp_path_factory):
    """~6 minutes of frames over 3 partitions with every defect, loaded by the loader."""
    from tools.generator import GenConfig, write
    from tools.loader import load
    d = tmp_path_factory.mktemp("stream")
    cfg = GenConfig(count=40_000, rate=110, users=4000, seed=11, max_delay=4, delay_prob=0.05,
                    string_ts_frac=0.1, malformed_frac=0.01, bitflip_frac=0.002)
    truth = write(cfg, str(d / "s.jsonl.gz"), str(d / "truth.json"), progress=False)
    topic = new_topic(kafka, "e2e", 3)
    assert load(str(d / "s.jsonl.gz"), kafka.kafka.bootstrap_servers, topic, progress=False) == 40_000
    return topic, truth


@pytest.fixture(scope="module")
def exact_run(kafka, stream, test_conf, tmp_path_factory):
    topic, truth = stream
    tmp = tmp_path_factory.mktemp("exact")
    out_topic = new_topic(kafka, "out", 1)
    res = run_job(job_args(topic, out_topic, tmp, "--available-now", "--print",
                           "--max-offsets-per-trigger", "9000"), test_conf)
    return tmp, out_topic, res, truth


def test_exact_final_counts_in_kafka_equal_truth(kafka, exact_run):
    tmp, out_topic, res, truth = exact_run
    msgs = consume_all(kafka, out_topic)
    last = last_per_key(msgs)
    want = truth_by_minute(truth)
    got = {v["ts"]: (v["unique_users"], v["frames"]) for v in last.values()}
    assert got == want
    assert all(v["status"] == "final" and v["mode"] == "exact" for v in last.values())
    for k, v in msgs:
        jsonschema.validate(orjson.loads(v), RESULT_SCHEMA)
        assert k.decode() == orjson.loads(v)["window_start"]


def test_exact_final_counts_in_delta_equal_truth(spark, exact_run):
    tmp, _, _, truth = exact_run
    assert stored_minutes(spark, tmp / "delta") == truth_by_minute(truth)
    rows = delta_rows(spark, tmp / "delta", "minute_stats")
    assert len(rows) == len(truth["minutes"])  # one row per minute
    assert {r["status"] for r in rows} == {"final"}
    # the (minute, uid) pairs behind the rollups: every counted user, each pair once
    pairs = spark.read.format("delta").load(str(tmp / "delta" / "minute_uids"))
    assert pairs.count() == pairs.select("minute", "uid").distinct().count()
    per_minute = pairs.groupBy("minute").count().collect()
    assert {r["minute"]: r["count"] for r in per_minute} == {m: u for m, (u, _) in truth_by_minute(truth).items()}


def test_print_writes_only_final_json_lines(exact_run):
    _, _, res, truth = exact_run
    lines = res.stdout.splitlines()
    assert lines, "nothing printed"
    last = {}
    for line in lines:
        v = json.loads(line)  # stdout holds nothing but result JSON
        jsonschema.validate(v, RESULT_SCHEMA)
        assert v["status"] in ("final", "corrected")
        last[v["ts"]] = (v["unique_users"], v["frames"])
    assert last == truth_by_minute(truth)


def test_a_reader_of_the_replaced_consumer_keeps_working(kafka, exact_run):
    """Readers of the old topic know only ts, ts_str and count: they get the truth."""
    import datetime as dt
    _, out_topic, _, truth = exact_run
    seen = {}
    for _k, v in consume_all(kafka, out_topic):
        d = orjson.loads(v)
        legacy = {"ts": d["ts"], "ts_str": d["ts_str"], "count": d["count"]}  # the old reader's fields
        at = dt.datetime.fromtimestamp(legacy["ts"], dt.timezone.utc)
        assert legacy["ts_str"] == at.strftime("%Y-%m-%d %H:%M:%S")
        seen[legacy["ts"]] = legacy["count"]
    assert seen == {m: u for m, (u, _) in truth_by_minute(truth).items()}


def test_quarantine_counts_per_reason_equal_truth(spark, exact_run):
    tmp, _, res, truth = exact_run
    got = quarantine_counts(spark, tmp / "delta")
    want = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    assert dict(got) == want  # and no frame within the watermark was judged late
    raw = delta_rows(spark, tmp / "delta", "quarantine")
    assert all(r["raw"] is not None and r["topic"] and r["offset"] is not None for r in raw)
    for reason in want:
        assert f"{reason}=" in res.stderr  # progress line reports counts per reason


def test_provisional_results_come_before_final(kafka, exact_run):
    _, out_topic, _, _ = exact_run
    seen: dict[str, list[str]] = defaultdict(list)
    for k, v in consume_all(kafka, out_topic):
        seen[k.decode()].append(orjson.loads(v)["status"])
    with_provisional = [s for s in seen.values() if s[0] == "provisional"]
    assert with_provisional, "no minute had an early (provisional) result"
    for statuses in seen.values():
        assert statuses[-1] == "final"
        assert "final" not in statuses[:-1] or statuses.index("final") > statuses.index(statuses[0])
        first_final = statuses.index("final")
        assert all(s == "provisional" for s in statuses[:first_final])


def test_progress_line_per_batch(exact_run):
    _, _, res, _ = exact_run
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("batch ")]
    assert len(lines) >= 4  # 40k frames at 9k per trigger
    for ln in lines:
        for part in ("frames", "input", "processed", "watermark", "open minutes", "driver rows", "quarantined"):
            assert part in ln


def test_approx_within_stated_bound(kafka, spark, stream, test_conf, tmp_path):
    topic, truth = stream
    out_topic = new_topic(kafka, "outa", 1)
    run_job(job_args(topic, out_topic, tmp_path, "--available-now", "--mode", "approx", "--rsd", "0.01"),
            test_conf)
    last = last_per_key(consume_all(kafka, out_topic))
    want = truth_by_minute(truth)
    errors = []
    for v in last.values():
        assert v["mode"] == "approx" and 0 < v["rsd"] <= 0.01
        exact_users, exact_frames = want[v["ts"]]
        assert v["frames"] == exact_frames
        errors.append(abs(v["unique_users"] - exact_users) / exact_users)
    assert len(errors) == len(want)
    rsd = next(iter(last.values()))["rsd"]
    # README's bound: every minute within 3 rsd, the mean within 1 rsd
    assert max(errors) <= 3 * rsd, errors
    assert sum(errors) / len(errors) <= rsd, errors
    assert stored_minutes(spark, tmp_path / "delta").keys() == want.keys()


# ---------------------------------------------------------------- guard
@pytest.mark.parametrize("start", ["history", "live"])
def test_one_bit_flip_in_a_stream_does_not_stop_later_minutes(kafka, spark, test_conf, tmp_path, start):
    """A far-future and a far-past ts inside the stream: both quarantined as ts_outlier;
    the watermark does not jump, so no later frame is late and every minute is final."""
    from tools.generator import GenConfig, generate
    start_ts = 1468244384 if start == "history" else int(time.time()) - 300
    lines, truth = generate(GenConfig(count=12_000, rate=50, users=800, seed=5, start_ts=start_ts))
    future = orjson.loads(lines[6000])
    future["ts"] = int(future["ts"]) ^ (1 << 30)
    past = orjson.loads(lines[8999])
    past["ts"] = int(past["ts"]) ^ (1 << 21)
    stream = lines[:6000] + [orjson.dumps(future)] + lines[6000:9000] + [orjson.dumps(past)] + lines[9000:]
    topic = new_topic(kafka, "guard", 1)
    produce(kafka, topic, stream)
    out_topic = new_topic(kafka, "outg", 1)
    # 1,500 per trigger: the future frame is the first frame of its micro-batch
    run_job(job_args(topic, out_topic, tmp_path, "--available-now", "--max-offsets-per-trigger", "1500"),
            test_conf)
    assert quarantine_counts(spark, tmp_path / "delta") == Counter({"ts_outlier": 2})
    last = last_per_key(consume_all(kafka, out_topic))
    assert {v["ts"]: (v["unique_users"], v["frames"]) for v in last.values()} == truth_by_minute(truth)
    assert {v["status"] for v in last.values()} == {"final"}


# ---------------------------------------------------------------- late frames / skew
def test_lagging_partition_is_late_and_corrected(kafka, spark, test_conf, tmp_path):
    """Partition 2 arrives after the others were final: its frames are quarantined as
    late and counted into corrected results, so the stored counts end exact."""
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=9000, rate=40, users=600, seed=9))
    parts = {p: [ln for i, ln in enumerate(lines) if i % 3 == p] for p in range(3)}
    topic = new_topic(kafka, "skew", 3)
    out_topic = new_topic(kafka, "outs", 1)
    produce(kafka, topic, parts[0], partition=0)
    produce(kafka, topic, parts[1], partition=1)
    run_job(job_args(topic, out_topic, tmp_path, "--available-now"), test_conf)
    assert stored_minutes(spark, tmp_path / "delta") == recount(parts[0] + parts[1])

    produce(kafka, topic, parts[2], partition=2)
    run_job(job_args(topic, out_topic, tmp_path, "--available-now"), test_conf)
    assert quarantine_counts(spark, tmp_path / "delta") == Counter({"late": len(parts[2])})
    late_rows = delta_rows(spark, tmp_path / "delta", "quarantine")
    assert all(r["minute"] is not None and r["partition"] == 2 for r in late_rows)
    assert stored_minutes(spark, tmp_path / "delta") == truth_by_minute(truth)
    last = last_per_key(consume_all(kafka, out_topic))
    assert {v["ts"]: (v["unique_users"], v["frames"]) for v in last.values()} == truth_by_minute(truth)
    assert {v["status"] for v in last.values()} == {"corrected"}


def test_late_frames_without_corrections_are_only_quarantined(kafka, spark, test_conf, tmp_path):
    from tools.generator import GenConfig, generate
    lines, _ = generate(GenConfig(count=6000, rate=40, users=500, seed=10))
    first, late = lines[:4000], lines[:600]  # the second run replays early minutes again
    topic = new_topic(kafka, "nolate", 1)
    out_topic = new_topic(kafka, "outn", 1)
    produce(kafka, topic, first)
    run_job(job_args(topic, out_topic, tmp_path, "--available-now", "--no-late-corrections"), test_conf)
    produce(kafka, topic, late)
    run_job(job_args(topic, out_topic, tmp_path, "--available-now", "--no-late-corrections"), test_conf)
    assert quarantine_counts(spark, tmp_path / "delta") == Counter({"late": 600})
    assert stored_minutes(spark, tmp_path / "delta") == recount(first)


# ---------------------------------------------------------------- crash and restart
def test_killed_and_restarted_job_ends_with_the_same_exact_results(kafka, spark, test_conf, tmp_path):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=24_000, rate=80, users=2000, seed=13, malformed_frac=0.01))
    topic = new_topic(kafka, "crash", 3)
    out_topic = new_topic(kafka, "outc", 1)
    produce(kafka, topic, lines)
    args = job_args(topic, out_topic, tmp_path, "--max-offsets-per-trigger", "3000", "--trigger", "0.5")
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "jobs/minute_stats.py",
           "--conf-file", str(test_conf), *args]
    log = open(tmp_path / "run1.err", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait for two committed batches, then crash hard
            if (tmp_path / "run1.err").read_text().count("\nbatch ") + \
                    (tmp_path / "run1.err").read_text().startswith("batch ") >= 2:
                break
            assert p.poll() is None, (tmp_path / "run1.err").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("job made no progress")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.close()
    # the restart also maintains its tables in the background after every batch
    upkeep = write_conf(tmp_path / "upkeep.toml", **{"maintenance.every_batches": 1})
    res = run_job(args + ["--available-now"], upkeep)
    assert "minute_stats: maintenance in " in res.stderr and "maintenance failed" not in res.stderr, res.stderr[-3000:]
    assert stored_minutes(spark, tmp_path / "delta") == truth_by_minute(truth)
    want_q = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    assert dict(quarantine_counts(spark, tmp_path / "delta")) == want_q  # no duplicates either
    last = last_per_key(consume_all(kafka, out_topic))
    assert {v["ts"]: (v["unique_users"], v["frames"]) for v in last.values()} == truth_by_minute(truth)


# ---------------------------------------------------------------- CLI
def test_help_lists_the_flags():
    r = subprocess.run([sys.executable, "jobs/minute_stats.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0
    for flag in ("--bootstrap-servers", "--topic", "--output-topic", "--starting-offsets", "--delta-path",
                 "--checkpoint", "--mode", "--watermark", "--trigger", "--available-now", "--print",
                 "--conf-file"):
        assert flag in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--mode", "fuzzy"], "invalid choice"),
    (["--watermark", "-3"], "job.watermark_s: must be >= 0"),
    (["--rsd", "0.9"], "job.rsd"),
    (["--starting-offsets", "yesterday"], "job.starting_offsets"),
])
def test_bad_values_rejected_before_spark_starts(args, message):
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "jobs/minute_stats.py", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and "SparkContext" not in r.stderr


# ---------------------------------------------------------------- files source
def test_files_source_counts_and_quarantines_with_file_and_line(kafka, spark, test_conf, tmp_path):
    import gzip

    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=8000, rate=40, users=700, seed=17, malformed_frac=0.02))
    inp = tmp_path / "in"
    inp.mkdir()
    halves = {"a.jsonl.gz": lines[:4000], "b.jsonl": lines[4000:]}
    with gzip.open(inp / "a.jsonl.gz", "wb") as f:
        f.write(b"\n".join(halves["a.jsonl.gz"]) + b"\n")
    (inp / "b.jsonl").write_bytes(b"\n".join(halves["b.jsonl"]) + b"\n")
    out_topic = new_topic(kafka, "outf", 1)
    run_job(["--source", "files", "--input-path", str(inp), "--output-topic", out_topic,
             "--delta-path", str(tmp_path / "delta"), "--checkpoint", str(tmp_path / "ckpt"),
             "--available-now"], test_conf)
    assert stored_minutes(spark, tmp_path / "delta") == truth_by_minute(truth)
    want_q = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    assert dict(quarantine_counts(spark, tmp_path / "delta")) == want_q
    for r in delta_rows(spark, tmp_path / "delta", "quarantine"):  # coordinates point at the line
        name = Path(r["file"]).name
        assert halves[name][r["line"] - 1] == bytes(r["raw"])


def test_sigterm_stops_a_live_job_cleanly_after_its_batch(kafka, spark, test_conf, tmp_path):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=3000, rate=30, users=300, seed=23))
    topic = new_topic(kafka, "term", 1)
    out_topic = new_topic(kafka, "outt", 1)
    produce(kafka, topic, lines)
    cmd = [str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "jobs/minute_stats.py", "--conf-file",
           str(test_conf), *job_args(topic, out_topic, tmp_path, "--trigger", "1")]
    err = open(tmp_path / "live.err", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "batch 0:" not in (tmp_path / "live.err").read_text():
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "live.err").read_text()[-3000:]
            time.sleep(0.3)
        os.kill(p.pid, signal.SIGTERM)  # spark-submit.sh execs spark-submit: this is the JVM
        assert p.wait(timeout=120) == 0, (tmp_path / "live.err").read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        err.close()
    log = (tmp_path / "live.err").read_text()
    assert "stopping after the current batch" in log
    # everything counted so far is durable: provisional results equal the truth so far
    stored = stored_minutes(spark, tmp_path / "delta")
    want = truth_by_minute(truth)
    assert stored and all(stored[m] == want[m] for m in stored)
