"""Table maintenance (doodlestats/io/maintenance.py, jobs/maintain.py): small files of the
settled dates compacted, the newest dates untouched, every row kept — on its own, and next
to a live job, whose results must stay exact (expectations: a plain-Python recount)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pyarrow as pa
import pytest
from conftest import ROOT, new_topic, produce, write_conf
from test_minute_stats import delta_rows, job_args, recount, stored_minutes
from test_outage import Job

DAY = 86_400
T0 = 1_468_195_200  # 2016-07-11T00:00:00Z


def _pairs(minute: int, users: range) -> pa.Table:
    from doodlestats.io.tables import MINUTE_UIDS, SCHEMAS, minute_date
    m = pa.array([minute] * len(users), pa.int64())
    return pa.table({"minute": m, "date": minute_date(m), "uid": [f"u{u}" for u in users],
                     "batch_id": pa.array([0] * len(users), pa.int64())}, schema=SCHEMAS[MINUTE_UIDS])


def test_settled_dates_are_compacted_and_the_newest_left_alone(tmp_path):
    from deltalake import DeltaTable

    from doodlestats.io.maintenance import maintain, settled_before
    from doodlestats.io.tables import MINUTE_STATS, MINUTE_UIDS, Tables
    t = Tables(tmp_path, "test")
    t.ensure()
    batch = 0
    for day in range(3):
        for k in range(6):  # six small files per date
            t.append(MINUTE_UIDS, _pairs(T0 + day * DAY + 60 * k, range(k * 10, k * 10 + 25)), batch)
            batch += 1
    from doodlestats.batch.results import FINAL, MinuteResult, rows_table
    t.upsert_minutes(rows_table([MinuteResult(T0 + 2 * DAY + 300, 1, 1, FINAL, "exact", None, 0.0)], 0), 0)
    assert settled_before(t) == dt.date(2016, 7, 12)  # the day before the newest minute

    def by_date():
        acts = pa.table(DeltaTable(str(tmp_path / MINUTE_UIDS)).get_add_actions(flatten=True)).to_pylist()
        out: dict = {}
        for a in acts:
            out[str(a["partition.date"])] = out.get(str(a["partition.date"]), 0) + 1
        return out
    rows_before = sorted(tuple(r.values()) for r in DeltaTable(str(tmp_path / MINUTE_UIDS)).to_pyarrow_table()
                         .to_pylist())
    assert by_date() == {"2016-07-11": 6, "2016-07-12": 6, "2016-07-13": 6}
    reports = maintain(t, (MINUTE_UIDS, MINUTE_STATS), vacuum_hours=1)
    assert by_date() == {"2016-07-11": 1, "2016-07-12": 6, "2016-07-13": 6}  # only the settled date
    assert reports[0].removed == 6 and reports[0].added == 1 and reports[0].files_after == 13
    rows_after = sorted(tuple(r.values()) for r in DeltaTable(str(tmp_path / MINUTE_UIDS)).to_pyarrow_table()
                        .to_pylist())
    assert rows_after == rows_before


def test_the_job_runs_maintenance_in_the_background_every_n_batches(tmp_path):
    """:class:`Scheduled` as the live job uses it: the third batch starts a run in a thread
    of its own, which compacts the settled date; the batches in between start none."""
    from doodlestats.batch.results import FINAL, MinuteResult, rows_table
    from doodlestats.io.maintenance import Scheduled
    from doodlestats.io.tables import MINUTE_UIDS, Tables
    t = Tables(tmp_path, "test")
    t.ensure()
    for day in range(3):
        for k in range(3):
            t.append(MINUTE_UIDS, _pairs(T0 + day * DAY + 60 * k, range(k, k + 5)), day * 3 + k)
    t.upsert_minutes(rows_table([MinuteResult(T0 + 2 * DAY, 1, 1, FINAL, "exact", None, 0.0)], 0), 0)
    said: list[str] = []
    upkeep = Scheduled(lambda: Tables(tmp_path, "maintain"), every_batches=3, every_minutes=0,
                       target_bytes=1 << 20, vacuum_hours=1, say=said.append)
    upkeep.on_batch()
    upkeep.on_batch()
    assert upkeep.thread is None
    upkeep.on_batch()
    upkeep.close(120)
    assert upkeep.runs == 1 and upkeep.failures == 0 and upkeep.thread is not None
    assert said and said[0].startswith("maintenance in") and "minute_uids 9 → 7 files" in said[0], said
    upkeep.on_batch()
    assert upkeep.batches == 1  # counting again towards the next run


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path):
    for args, want in ((["--tables", "nope"], "maintain: error: --tables: nope"),
                       (["--before", "yesterday"], "maintain: error: --before: not a date"),
                       (["--vacuum-hours", "0"], "maintain: error: --vacuum-hours and --target-mb"),
                       (["--delta-path", str(tmp_path / "none")], "maintain: error: no minute_uids")):
        r = subprocess.run([sys.executable, "jobs/maintain.py", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and r.stderr.startswith(want) and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.integration
def test_maintenance_next_to_a_live_job_keeps_the_results_exact(kafka, spark, tmp_path):
    """Three days of frames, 1,000 per partition per day (the guard's neighbourhoods stay
    within a day); the live job runs small batches while jobs/maintain.py compacts the
    first day; the minutes and pairs end exact and the first day is one file a table."""
    from deltalake import DeltaTable

    from tools.generator import GenConfig, generate
    topic, out_topic = new_topic(kafka, "maint", 3), new_topic(kafka, "maint-out", 1)
    every = []
    for day in range(3):
        lines, _ = generate(GenConfig(count=3000, rate=1, users=400, seed=40 + day, start_ts=T0 + day * DAY + 3600))
        for p in range(3):
            produce(kafka, topic, lines[p::3], partition=p)
        every += lines
    conf = write_conf(tmp_path / "conf.toml")
    job = Job(conf, job_args(topic, out_topic, tmp_path, "--max-offsets-per-trigger", "600", "--trigger", "0.2"),
              tmp_path / "job.err")
    try:
        job.wait_for(lambda: job.frames() >= 4500, 400, "for half the frames")
        r = subprocess.run([sys.executable, "jobs/maintain.py", "--conf-file", str(conf), "--delta-path",
                            str(tmp_path / "delta"), "--before", "2016-07-12", "--vacuum-hours", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert job.frames() < len(every), "the job was done before the maintenance ran"
        job.wait_for(lambda: job.frames() >= len(every), 400, "for every frame")
    finally:
        assert job.stop() == 0, job.text()[-3000:]
    assert stored_minutes(spark, tmp_path / "delta") == recount(every)
    pairs = {(r["minute"], r["uid"]) for r in delta_rows(spark, tmp_path / "delta", "minute_uids")}
    want = {(int(x["ts"]) - int(x["ts"]) % 60, x["uid"]) for x in map(json.loads, every)}
    assert pairs == want
    acts = pa.table(DeltaTable(str(tmp_path / "delta" / "minute_uids")).get_add_actions(flatten=True)).to_pylist()
    assert sum(1 for a in acts if str(a["partition.date"]) == "2016-07-11") == 1
    assert "minute_uids:" in r.stderr and "compacted" in r.stderr
