"""Pure-Python parts: configuration, guard planning, state store, HLL sizing, results."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from conftest import ROOT

from doodlestats.batch import guard
from doodlestats.batch.counting import hll_lg_k, hll_rsd
from doodlestats.batch.results import MinuteResult, iso
from doodlestats.io.fs import LocalFS, fs_for
from doodlestats.io.state import JobState, StateStore
from doodlestats.runtime.config import ConfigError, load_config


# ---------------------------------------------------------------- config
def test_default_config_loads_and_flags_override():
    cfg = load_config(ROOT / "conf" / "doodle.toml", {"job.mode": "approx", "job.watermark_s": "7"})
    assert cfg.job.mode == "approx" and cfg.job.watermark_s == 7
    assert cfg.kafka.input_topic == "doodle" and cfg.kafka.input_partitions == 3


@pytest.mark.parametrize("text,message", [
    ("[job]\nmode = \"fast\"\n", "job.mode"),
    ("[job]\nwatermark_s = -1\n", "job.watermark_s"),
    ("[job]\nwatermark = 5\n", "unknown setting job.watermark"),
    ("[jobs]\n", "unknown section [jobs]"),
    ("[guard]\nmax_skew_s = \"an hour\"\n", "guard.max_skew_s: expected an integer"),
    ("[kafka]\nbootstrap_servers = \"localhost\"\n", "kafka.bootstrap_servers"),
    ("[job\n", "not valid TOML"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_every_knob_in_conf_is_commented():
    lines = (ROOT / "conf" / "doodle.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = [ln for ln in lines[max(0, i - 6):i] if ln.strip()]
            assert above and (above[-1].startswith("#") or "=" in above[-1]), f"uncommented: {line}"


# ---------------------------------------------------------------- guard
def _stats(rows):
    return [dict(zip(("src", "partition", "nb", "med", "good", "total", "last"), r)) for r in rows]


def test_guard_plan_uses_neighbourhood_medians_and_falls_back():
    stats = _stats([("t", 0, 0, 1000, 900, 905, 999), ("t", 0, 1, 1100, 3, 3, 1002),
                    ("t", 1, 0, 1050, 500, 500, 499)])
    plan = guard.plan(stats, prev_ref=None, min_neighbours=5)
    refs = {(s, p, n): r for s, p, n, r in plan.refs}
    assert refs[("t", 0, 0)] == 1000 and refs[("t", 1, 0)] == 1050
    assert refs[("t", 0, 1)] == plan.batch_ref == 1000  # too few neighbours: the batch median
    assert plan.frames == 1408
    assert plan.next_ref in (1000, 1050)


def test_guard_plan_tiny_batch_keeps_previous_reference():
    plan = guard.plan(_stats([("t", 0, 7, 5000, 2, 2, 7001)]), prev_ref=1234, min_neighbours=5)
    assert plan.batch_ref == 1234 and plan.refs == [("t", 0, 7, 1234)] and plan.next_ref == 1234


def test_guard_plan_first_tiny_batch_has_no_reference():
    plan = guard.plan(_stats([("t", 0, 0, 5000, 2, 2, 1)]), prev_ref=None, min_neighbours=5)
    assert plan.refs == [("t", 0, 0, None)]  # nothing to judge against: accept


# ---------------------------------------------------------------- state
def test_state_store_replay_reads_the_state_before_the_batch(tmp_path):
    s = StateStore(tmp_path)
    assert s.load_before(0) == JobState()
    s.save(JobState(0, 100, 95, 90, {"t#0": [100, 1.0]}))
    s.save(JobState(1, 200, 195, 190))
    assert s.done(1) and not s.done(2)
    assert s.load_before(1).batch_id == 0 and s.load_before(1).partitions == {"t#0": [100, 1.0]}
    assert s.load_before(5).watermark == 195
    assert JobState(watermark=180).is_final(120) and not JobState(watermark=179).is_final(120)


def test_state_store_prunes_old_files(tmp_path):
    s = StateStore(tmp_path)
    for i in range(60):
        s.save(JobState(i))
    assert len(s.ids()) == 50 and s.ids()[-1] == 59


def test_local_fs_writes_in_one_piece_and_lists_names(tmp_path):
    fs = fs_for(f"file://{tmp_path}")
    assert isinstance(fs, LocalFS)
    fs.write_text(tmp_path / "d" / "a.json", "1")
    fs.write_text(tmp_path / "d" / "a.json", "2")
    (tmp_path / "d" / ".hidden").write_text("")
    assert [f.name for f in fs.list(tmp_path / "d")] == ["a.json"]  # no temporary file left
    assert fs.read_text(tmp_path / "d" / "a.json") == "2"
    with pytest.raises(FileExistsError):
        fs.write_text(tmp_path / "d" / "a.json", "3", overwrite=False)
    assert fs.delete(tmp_path / "d", recursive=True) and not fs.exists(tmp_path / "d") and fs.list(tmp_path / "d") == []
    with pytest.raises(ValueError, match="Spark session"):
        fs_for("s3a://bucket/ckpt")


# ---------------------------------------------------------------- approx sizing
@pytest.mark.parametrize("rsd,k", [(0.01, 14), (0.02, 12), (0.05, 9), (0.005, 16)])
def test_hll_precision_meets_requested_rsd(rsd, k):
    assert hll_lg_k(rsd) == k
    assert hll_rsd(k) <= rsd < hll_rsd(k - 1)


# ---------------------------------------------------------------- results
def test_result_json_follows_schema():
    schema = json.loads((ROOT / "schemas" / "minute_stats.schema.json").read_text())
    exact = MinuteResult(1468244400, 10, 12, "final", "exact", None, 1_800_000_000.1234).to_json()
    approx = MinuteResult(1468244400, 10, 12, "provisional", "approx", 0.0081, 1_800_000_000.0).to_json()
    jsonschema.validate(exact, schema)
    jsonschema.validate(approx, schema)
    assert exact["window_start"] == "2016-07-11T13:40:00Z" == iso(1468244400)
    assert exact["window_end"] == "2016-07-11T13:41:00Z" and "rsd" not in exact
    assert exact["emitted_at"].endswith(".123Z")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**exact, "rsd": 0.01}, schema)


def test_job_help_works_without_spark_starting():
    r = subprocess.run([sys.executable, "jobs/minute_stats.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--available-now" in r.stdout


def test_tables_of_an_earlier_version_get_the_new_columns(tmp_path):
    """A quarantine table created without ``byte_offset`` (an earlier version) gains it on
    ``ensure``; its old rows read as null and rows of the new schema append."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from doodlestats.io.tables import QUARANTINE, SCHEMAS, Tables
    old = pa.schema([f for f in SCHEMAS[QUARANTINE] if f.name != "byte_offset"])
    path = tmp_path / QUARANTINE
    write_deltalake(str(path), pa.Table.from_pylist([{"reason": "malformed_json", "line": 3}], schema=old),
                    partition_by=["date"])
    t = Tables(tmp_path, "test")
    t.ensure()
    t.append(QUARANTINE, pa.Table.from_pylist([{"reason": "bad_ts", "byte_offset": 99}], schema=SCHEMAS[QUARANTINE]), 0)
    rows = DeltaTable(str(path)).to_pyarrow_table(columns=["reason", "line", "byte_offset"]).to_pylist()
    assert sorted(rows, key=lambda r: r["reason"]) == [{"reason": "bad_ts", "line": None, "byte_offset": 99},
                                                       {"reason": "malformed_json", "line": 3, "byte_offset": None}]


def test_metrics_lag_per_partition_from_sparks_progress():
    """Lag = latest − end offset per partition, in frames and in seconds at the last rate."""
    from doodlestats.runtime.metrics import JobMetrics
    m = JobMetrics()
    m.on_progress({"batchId": 3, "processedRowsPerSecond": 200.0, "inputRowsPerSecond": 150.0,
                   "durationMs": {"triggerExecution": 1500},
                   "sources": [{"endOffset": '{"t": {"0": 100, "1": 40}}',  # JSON, and pyspark 4.0's str(dict)
                                "latestOffset": str({"t": {"0": 130, "1": 40}})}]})
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in m.registry.collect() for s in f.samples if s.name.startswith(("doodle_consumer", "doodle_spark"))}
    assert got[("doodle_consumer_lag_frames", (("partition", "0"), ("topic", "t")))] == 30
    assert got[("doodle_consumer_lag_frames", (("partition", "1"), ("topic", "t")))] == 0
    assert got[("doodle_consumer_lag_seconds", (("partition", "0"), ("topic", "t")))] == 30 / (200 / 2)
    assert got[("doodle_spark_trigger_seconds", ())] == 1.5


def test_the_dashboard_plots_only_metrics_the_job_serves():
    import json
    import re

    from doodlestats.runtime.metrics import JobMetrics
    served = {s.name for f in JobMetrics().registry.collect() for s in f.samples} | \
        {f.name for f in JobMetrics().registry.collect()}
    served |= {n + "_total" for n in served} | {n + "_bucket" for n in served}
    dash = json.loads((ROOT / "conf" / "grafana" / "doodle-minute-stats.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"doodle_[a-z_]+", t["expr"])}
    assert used and used <= served, used - served
