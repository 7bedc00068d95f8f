"""The pure steps of a batch, without Kafka or Spark: minute bucketing and the final
rule, the watermark, the batch summary, the output schema defined once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doodlestats.batch import reasons  # noqa: E402
from doodlestats.batch.driver import BatchSummary  # noqa: E402
from doodlestats.batch.results import FIELDS, MINUTE_STATS_SCHEMA, MinuteResult, json_schema  # noqa: E402
from doodlestats.batch.window import Watermark, is_final, minute_of  # noqa: E402


def test_minute_bucketing_and_final_rule():
    assert minute_of(1451606459) == 1451606400 and minute_of(1451606460) == 1451606460
    assert not is_final(1451606400, None)
    assert not is_final(1451606400, 1451606459) and is_final(1451606400, 1451606460)


def test_watermark_follows_the_slowest_active_partition_and_never_goes_back():
    clock = Watermark(delay_s=5, idle_s=30)
    wm, parts = clock.advance(None, {}, {"t#0": 1000, "t#1": 900}, now=0.0)
    assert wm == 895
    wm, parts = clock.advance(wm, parts, {"t#0": 1100}, now=10.0)   # t#1 still active and slow
    assert wm == 895
    wm, parts = clock.advance(wm, parts, {"t#0": 1200}, now=31.0)   # t#1 idle for 31 s: ignored
    assert wm == 1195
    wm, parts = clock.advance(wm, parts, {"t#1": 950}, now=32.0)    # t#1 is back, behind: no step back
    assert wm == 1195
    _, parts = clock.advance(wm, parts, {"t#0": 1300}, now=400.0)   # silent 10x idle: forgotten
    assert set(parts) == {"t#0"}


def test_batch_summary_counts_frames_minutes_partitions_and_reasons():
    rows = [
        {"minute": 60, "src": "t", "partition": 0, "reason": None, "n": 10, "max_ts": 100, "unkept": 0},
        {"minute": 120, "src": "t", "partition": 1, "reason": None, "n": 5, "max_ts": 130, "unkept": 0},
        {"minute": 0, "src": "t", "partition": 1, "reason": reasons.LATE, "n": 2, "max_ts": 30, "unkept": 0},
        {"minute": None, "src": "t", "partition": 0, "reason": reasons.TS_OUTLIER, "n": 3, "max_ts": 9e9, "unkept": 1},
        {"minute": None, "src": "t", "partition": 0, "reason": reasons.MALFORMED_JSON, "n": 4, "max_ts": None,
         "unkept": 0},
    ]
    s = BatchSummary.of(rows, late_corrections=True)
    assert s.frames == 24 and s.unkept == 1
    assert s.counted_per_minute == {60: 10, 120: 5, 0: 2}
    assert s.partition_max == {"t#0": 100, "t#1": 130} and s.max_ts == 130  # late / outliers never count
    assert dict(s.quarantined) == {"late": 2, "ts_outlier": 3, "malformed_json": 4}
    assert BatchSummary.of(rows, late_corrections=False).counted_per_minute == {60: 10, 120: 5}


def test_output_schema_is_defined_once():
    """The JSON schema file, the published value and the Delta row come from FIELDS."""
    assert json.loads((ROOT / "schemas" / "minute_stats.schema.json").read_text()) == json_schema(), \
        "regenerate: python -m doodlestats.batch.results > schemas/minute_stats.schema.json"
    names = [f.name for f in FIELDS]
    stored = [f.name for f in FIELDS if f.stored]
    assert MINUTE_STATS_SCHEMA.names[:len(stored)] == stored
    r = MinuteResult(1468244400, 10, 12, "final", "approx", 0.0081, 1_800_000_000.0, b"sk")
    assert list(r.to_json()) == names
    jsonschema.validate(r.to_json(), json_schema())
    row = r.to_row(7)
    assert set(row) == set(MINUTE_STATS_SCHEMA.names) and row["batch_id"] == 7 and row["hll"] == b"sk"


def test_emit_rule_statuses():
    import doctest

    from doodlestats.batch import driver, guard
    assert doctest.testmod(driver, verbose=False).failed == 0
    assert doctest.testmod(guard, verbose=False).failed == 0
    from doodlestats.batch.driver import statuses
    # nothing final without a watermark; a touched minute is never emitted twice
    assert statuses([0, 60], [], [0, 60], None) == [(0, "provisional"), (60, "provisional")]
    assert statuses([0], [], [0, -60, -120], 0) == [(0, "provisional"), (-120, "final"), (-60, "final")]


def test_values_carry_the_legacy_names_of_the_replaced_consumer():
    r = MinuteResult(1468244400, 10, 12, "final", "exact", None, 1_800_000_000.0).to_json()
    assert r["ts"] == 1468244400 and r["ts_str"] == "2016-07-11 13:40:00" and r["count"] == r["unique_users"] == 10
