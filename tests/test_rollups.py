"""Rollups (jobs/rollups.py, doodlestats/history/rollups.py): hour/day/week/month/year uniques as a
true union of users, exact and approx, incremental — on real Spark and real Delta tables
written by the pipeline. Expectations come from a plain-Python recount of the generated
frames (its own calendar arithmetic), never from the code under test.
"""

from __future__ import annotations

import calendar
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, consume_all, new_topic, write_conf

GRAINS = ("hour", "day", "week", "month", "year")
# Saturday 2017-12-30 22:00 UTC: 40,000 frames ~2.5 s apart run to Monday 2018-01-01 01:46,
# so the data crosses day, ISO-week, month and year boundaries
START = calendar.timegm((2017, 12, 30, 22, 0, 0))
GEN = dict(count=40000, rate=0.4, users=600, seed=41, string_ts_frac=0.05)
B_START = calendar.timegm((2018, 1, 1, 2, 0, 0))        # the second batch: later minutes, same day
LATE = [(calendar.timegm((2018, 1, 1, 1, 40, 7)), "late-user-0001"),   # minutes already final
        (calendar.timegm((2018, 1, 1, 1, 44, 31)), "late-user-0002")]


# ---------------------------------------------------------------- the independent recount
def utc_period(ts: int, grain: str) -> int:
    """Start of the UTC period holding ``ts``, with datetime (weeks: ISO, from Monday)."""
    d = datetime.fromtimestamp(ts, timezone.utc)
    if grain == "hour":
        p = d.replace(minute=0, second=0)
    elif grain == "day":
        p = d.replace(hour=0, minute=0, second=0)
    elif grain == "week":
        p = (d - timedelta(days=d.isocalendar().weekday - 1)).replace(hour=0, minute=0, second=0)
    elif grain == "month":
        p = d.replace(day=1, hour=0, minute=0, second=0)
    else:
        p = d.replace(month=1, day=1, hour=0, minute=0, second=0)
    return int(p.timestamp())


def recount(lines: list[bytes]) -> list[tuple[int, str]]:
    """(ts, uid) of every frame: the generated frames here are all valid (ts may be a string)."""
    out = []
    for b in lines:
        d = orjson.loads(b)
        out.append((int(d["ts"]), d["uid"]))
    return out


def truth(pairs: list[tuple[int, str]], grain: str) -> dict[int, tuple[int, int]]:
    """period start -> (distinct uids, frames)."""
    users, frames = defaultdict(set), defaultdict(int)
    for ts, uid in pairs:
        p = utc_period(ts, grain)
        users[p].add(uid)
        frames[p] += 1
    return {p: (len(users[p]), frames[p]) for p in users}


def _frame(ts: int, uid: str) -> bytes:
    return b'{"uid":"%s","n":{"ts":1,"uid":"decoy"},"ts":%d}' % (uid.encode(), ts)


# ---------------------------------------------------------------- tables written by the pipeline
def _source(spark, lines: list[bytes], path: Path, first_offset: int = 0):
    """A static DataFrame of Kafka-like source rows (one topic partition, offsets in order)."""
    from pyspark.sql import functions as F
    path.write_bytes(b"\n".join(lines) + b"\n")
    return (spark.read.text(str(path)).coalesce(1)
            .select(F.col("value").cast("binary").alias("value"), F.lit("t").alias("topic"),
                    F.lit(0).alias("partition"), (F.monotonically_increasing_id() + first_offset).alias("offset"),
                    F.lit(None).cast("string").alias("file"), F.lit(None).cast("bigint").alias("line")))


@pytest.fixture(scope="module")
def frames():
    from tools.generator import GenConfig, generate
    lines, gen_truth = generate(GenConfig(start_ts=START, **GEN))
    pairs = recount(lines)
    # the recount reads the frames as the generator meant them
    minutes = defaultdict(set)
    for ts, uid in pairs:
        minutes[ts - ts % 60].add(uid)
    assert {m: len(u) for m, u in minutes.items()} == {m["minute"]: m["unique_users"] for m in gen_truth["minutes"]}
    assert max(ts for ts, _ in pairs) - min(ts for ts, _ in pairs) > 86400
    return lines, pairs


def _pipeline_tables(spark, lines, root: Path, mode: str) -> Path:
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.runtime.config import load_config
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_conf(root / "c.toml", **{"job.mode": mode}))
    p = MinuteStatsPipeline(spark, cfg, str(root / "ckpt"), str(root / "delta"))
    p.process_batch(_source(spark, lines, root / "a.jsonl"), 0)
    p.flush()
    return root


@pytest.fixture(scope="module")
def exact_root(spark, frames, tmp_path_factory):
    return _pipeline_tables(spark, frames[0], tmp_path_factory.mktemp("exact"), "exact")


@pytest.fixture(scope="module")
def approx_root(spark, frames, tmp_path_factory):
    return _pipeline_tables(spark, frames[0], tmp_path_factory.mktemp("approx"), "approx")


def _copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root, dst)
    return dst


def _got(results) -> dict[int, tuple[int, int]]:
    return {r.start: (r.unique_users, r.frames) for r in results}


# ---------------------------------------------------------------- pure parts
def test_periods_match_an_independent_calendar():
    import random

    from doodlestats.history.periods import period_end, period_start
    rng = random.Random(5)
    samples = [rng.randrange(0, 4_102_444_800) for _ in range(3000)] + \
              [START, B_START, calendar.timegm((2016, 2, 29, 23, 59, 59)), calendar.timegm((2018, 1, 1, 0, 0, 0)) - 1]
    for ts in samples:
        for g in GRAINS:
            s = period_start(ts, g)
            assert s == utc_period(ts, g), (ts, g)
            e = period_end(s, g)
            assert e > ts >= s and utc_period(e, g) == e and utc_period(e - 1, g) == s, (ts, g)
    assert datetime.fromtimestamp(period_start(START, "week"), timezone.utc).isoformat() == "2017-12-25T00:00:00+00:00"


@pytest.mark.parametrize("text,want", [
    ("2018-01-01", calendar.timegm((2018, 1, 1, 0, 0, 0))),
    ("2018-01-01T02:30:00Z", calendar.timegm((2018, 1, 1, 2, 30, 0))),
    ("2018-01-01T02:30", calendar.timegm((2018, 1, 1, 2, 30, 0))),
    ("2018-01-01T03:30:00+01:00", calendar.timegm((2018, 1, 1, 2, 30, 0))),
    ("1514773800", calendar.timegm((2018, 1, 1, 2, 30, 0))),
])
def test_times_are_iso_or_epoch_seconds(text, want):
    from doodlestats.history.periods import parse_time
    assert parse_time(text) == want


def test_schema_file_is_generated_from_the_one_definition():
    from doodlestats.history.rollups import json_schema
    assert json.loads((ROOT / "doodlestats" / "schemas" / "rollup.schema.json").read_text()) == json_schema(), \
        "regenerate: python -m doodlestats.history.rollups > doodlestats/schemas/rollup.schema.json"


def test_result_json_carries_the_legacy_names_and_follows_the_schema():
    import jsonschema

    from doodlestats.history.rollups import RollupResult, json_schema
    schema = json_schema()
    exact = RollupResult("week", calendar.timegm((2017, 12, 25, 0, 0, 0)), 812, 1003, "exact", None).to_json()
    approx = RollupResult("month", calendar.timegm((2017, 12, 1, 0, 0, 0)), 812, 1003, "approx", 0.00813).to_json()
    jsonschema.validate(exact, schema)
    jsonschema.validate(approx, schema)
    assert exact == {"period_start": "2017-12-25T00:00:00Z", "period_end": "2018-01-01T00:00:00Z", "grain": "week",
                     "unique_users": 812, "frames": 1003, "mode": "exact", "ts": 1514160000,
                     "ts_str": "2017-12-25 00:00:00", "count": 812}
    assert approx["period_end"] == "2018-01-01T00:00:00Z" and approx["rsd"] == 0.00813
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**exact, "rsd": 0.01}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in approx.items() if k != "rsd"}, schema)


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/rollups.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("args,message", [
    (["--grain", "fortnight"], "argument --grain: invalid choice 'fortnight'"),
    (["--mode", "fuzzy"], "argument --mode: invalid choice"),
    (["--from", "yesterday"], "argument --from: expected an ISO-8601 date"),
    (["--from", "2018-01-02", "--to", "2018-01-01"], "--from (2018-01-02T00:00:00Z) must be before --to"),
    (["--grain", "day,week", "--output-topic", "dayStats"], "--output-topic takes one --grain"),
    (["--rsd", "0.9"], "job.rsd"),
    (["--frm", "2018-01-01"], "unrecognized arguments"),
])
def test_bad_flags_are_one_line_and_exit_2(args, message):
    r = _cli(args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("rollups: error: "), r.stderr
    assert message in r.stderr and r.stdout == ""


def test_help_lists_the_flags():
    r = _cli(["--help"])
    assert r.returncode == 0
    for flag in ("--grain", "--from", "--to", "--mode", "--full", "--delta-path", "--conf-file", "--print",
                 "--output-topic"):
        assert flag in r.stdout


def test_no_minute_tables_is_one_line(tmp_path):
    r = _cli(["--delta-path", str(tmp_path / "nothing")])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"rollups: error: no minute_stats table below {tmp_path / 'nothing'} — run jobs/minute_stats.py first, "
        f"or pass --delta-path"]


# ---------------------------------------------------------------- Spark
@pytest.mark.integration
def test_spark_periods_equal_the_calendar(spark):
    from pyspark.sql import functions as F

    from doodlestats.history.rollups import period_col
    samples = [START, B_START, calendar.timegm((2016, 2, 29, 23, 59, 59)), calendar.timegm((2018, 1, 1, 0, 0, 0)) - 1,
               calendar.timegm((2020, 12, 31, 23, 0, 0)), 0, 1_000_000_000, 2_000_000_000]
    df = spark.createDataFrame([(t,) for t in samples], "ts BIGINT")
    rows = df.select("ts", *[period_col(F.col("ts"), g).alias(g) for g in GRAINS]).collect()
    for r in rows:
        assert {g: r[g] for g in GRAINS} == {g: utc_period(r["ts"], g) for g in GRAINS}, r["ts"]


@pytest.mark.integration
def test_exact_rollups_are_the_union_of_each_periods_users(spark, frames, exact_root, capsys):
    from doodlestats.history.rollups import Rollups
    _, pairs = frames
    roll = Rollups(spark, str(exact_root / "delta"))
    minute_uniques = defaultdict(set)
    for ts, uid in pairs:
        minute_uniques[ts - ts % 60].add(uid)
    for grain in GRAINS:
        want = truth(pairs, grain)
        rep = roll.run(grain, "exact", full=True)
        assert _got(rep.results) == want, grain
        assert {r["ts"]: (r["unique_users"], r["frames"]) for r in roll.read(grain, "exact")} == want
        assert all(r.rsd is None and r.grain == grain for r in rep.results)
        if grain == "day":
            assert len(want) == 3
            for day, (users, _) in want.items():
                summed = sum(len(u) for m, u in minute_uniques.items() if day <= m < day + 86400)
                assert users < 0.5 * summed, (day, users, summed)
        if grain in ("week", "month", "year"):
            assert len(want) == 2  # the data crosses each boundary once
    # nothing changed: a re-run recomputes nothing and leaves the tables as they are
    before = roll.read("day")
    rep = roll.run("day", "exact")
    assert rep.how == "unchanged" and rep.recomputed == [] and rep.skipped == 3 and rep.results == []
    assert roll.read("day") == before
    assert "rollup day (exact): 0 period(s) recomputed, 3 skipped | unchanged" in capsys.readouterr().err
    # --from/--to: the whole periods overlapping [from, to), nothing else
    lo, hi = calendar.timegm((2017, 12, 31, 12, 0, 0)), calendar.timegm((2018, 1, 1, 0, 0, 1))
    rep = roll.run("day", "exact", lo=lo, hi=hi, full=True)
    days = {utc_period(lo, "day"), utc_period(hi, "day")}
    assert sorted(rep.recomputed) == sorted(days) and rep.skipped == 0
    assert _got(rep.results) == {d: v for d, v in truth(pairs, "day").items() if d in days}
    assert [r for r in roll.read("day") if r["ts"] not in days] == [r for r in before if r["ts"] not in days]


@pytest.mark.integration
def test_approx_rollups_are_within_their_error_bound(spark, frames, exact_root, approx_root):
    """Stored sketches (approx tables) and sketches built from minute_uids (exact tables)."""
    from doodlestats.history.rollups import Rollups
    _, pairs = frames
    rsd = 1.04 / 2 ** 7  # lgK 14, for [job] rsd = 0.01
    for root, grains in ((approx_root, GRAINS), (exact_root, ("hour", "week"))):
        roll = Rollups(spark, str(root / "delta"), rsd=0.01)
        for grain in grains:
            want = truth(pairs, grain)
            rep = roll.run(grain, "approx", full=True)
            got = _got(rep.results)
            assert set(got) == set(want), (root.name, grain)
            for p, (users, n) in want.items():
                assert got[p][1] == n
                assert abs(got[p][0] - users) <= 3 * rsd * users, (root.name, grain, p, got[p][0], users)
            assert all(abs(r.rsd - rsd) < 1e-4 and r.mode == "approx" for r in rep.results)


@pytest.mark.integration
def test_exact_rollups_of_approx_minutes_are_refused(spark, approx_root):
    from doodlestats.history.rollups import RollupError, Rollups
    with pytest.raises(RollupError, match="counted in approx mode .* use --mode approx"):
        Rollups(spark, str(approx_root / "delta")).run("day", "exact", full=True)


@pytest.mark.integration
def test_new_minutes_recompute_only_the_periods_they_touch(spark, frames, exact_root, tmp_path, capsys):
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.history.rollups import Rollups
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate
    lines_a, pairs_a = frames
    root = _copy(exact_root, tmp_path / "t")
    roll = Rollups(spark, str(root / "delta"))
    for grain in GRAINS:
        roll.run(grain, "exact", full=True)

    # the stream goes on: later minutes of the last day (the same users' pool), and two
    # late frames for minutes already final (counted as corrections)
    lines_b, _ = generate(GenConfig(count=1200, rate=0.4, users=GEN["users"], seed=GEN["seed"], start_ts=B_START))
    lines_b = [_frame(ts, uid) for ts, uid in LATE] + lines_b
    pairs_b = recount(lines_b)
    cfg = load_config(write_conf(tmp_path / "c.toml", **{"job.mode": "exact"}))
    p = MinuteStatsPipeline(spark, cfg, str(root / "ckpt"), str(root / "delta"))
    rep_b = p.process_batch(_source(spark, lines_b, tmp_path / "b.jsonl", len(lines_a)), 1)
    p.flush()
    assert dict(rep_b.quarantined) == {"late": 2} and rep_b.counted == len(lines_b)

    capsys.readouterr()
    everything = pairs_a + pairs_b
    lines = []
    for grain in GRAINS:
        rep = Rollups(spark, str(root / "delta")).run(grain, "exact")
        touched = {utc_period(ts, grain) for ts, _ in pairs_b}
        untouched = {utc_period(ts, grain) for ts, _ in pairs_a} - touched
        assert rep.how == "incremental" and sorted(rep.recomputed) == sorted(touched), grain
        assert rep.skipped == len(untouched), grain
        lines.append(f"rollup {grain} (exact): {len(touched)} period(s) recomputed, {len(untouched)} skipped | "
                     f"incremental")
        assert _got(rep.results) == {p: v for p, v in truth(everything, grain).items() if p in touched}
        assert {r["ts"]: (r["unique_users"], r["frames"]) for r in roll.read(grain, "exact")} == \
            truth(everything, grain), grain
    err = capsys.readouterr().err
    assert all(line in err for line in lines), err
    assert "rollup day (exact): 1 period(s) recomputed, 2 skipped | incremental" in err
    assert "rollup year (exact): 1 period(s) recomputed, 1 skipped | incremental" in err
    assert {utc_period(ts, "hour") for ts, _ in LATE} == {calendar.timegm((2018, 1, 1, 1, 0, 0))}  # no new minutes
    # and once more: nothing left to do
    assert all(roll.run(g, "exact").recomputed == [] for g in GRAINS)


@pytest.mark.integration
def test_print_and_output_topic_carry_the_same_values(kafka, test_conf, frames, exact_root, tmp_path):
    import jsonschema

    from doodlestats.history.rollups import json_schema
    _, pairs = frames
    root = _copy(exact_root, tmp_path / "t")
    topic = new_topic(kafka, "dayStats", 1)
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(ROOT / "jobs" / "rollups.py"),
                        "--conf-file", str(test_conf), "--delta-path", (root / "delta").as_uri(), "--grain", "day",
                        "--mode", "exact", "--full", "--print", "--output-topic", topic],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    schema = json_schema()
    for v in printed:
        jsonschema.validate(v, schema)
    assert {v["ts"]: (v["unique_users"], v["frames"]) for v in printed} == truth(pairs, "day")
    assert all(v["count"] == v["unique_users"] and v["grain"] == "day" and "rsd" not in v for v in printed)
    messages = consume_all(kafka, topic)
    assert [(k.decode(), json.loads(v)) for k, v in messages] == [(v["period_start"], v) for v in printed]
    assert "rollup day (exact): 3 period(s) recomputed, 0 skipped | full" in r.stderr
    from deltalake import DeltaTable
    stored = DeltaTable(str(root / "delta" / "rollup_day")).to_pyarrow_table().to_pylist()
    assert {x["ts"]: (x["unique_users"], x["frames"]) for x in stored} == truth(pairs, "day")


@pytest.mark.integration
def test_bad_flags_through_spark_submit_are_one_line():
    """The real path: spark-submit's JVM may log its own start-up warnings; the job says
    one line, before any SparkContext."""
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "jobs/rollups.py", "--grain", "fortnight"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    ours = [x for x in r.stderr.splitlines() if x.startswith("rollups:")]
    assert ours == ["rollups: error: argument --grain: invalid choice 'fortnight' (choose from hour, day, week, "
                    "month, year, all) (see --help)"], r.stderr
    assert "Traceback" not in r.stderr and "SparkContext" not in r.stderr and r.stdout == ""
