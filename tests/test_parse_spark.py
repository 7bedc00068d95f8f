"""The parse stage inside Spark: JVM UDF and the Python (mapInArrow) path against the
reference parser, on generator frames with every defect and on hand-made corner cases."""

from __future__ import annotations

import pytest

from doodlestats.batch.reference import reference_parse

pytestmark = pytest.mark.integration

CORNERS = [
    b'{"a":{"uid":"x","ts":1},"uid":"u","ts":5}',
    b'{"ts":"1468244384","arr":[{"uid":"no"}],"uid":"\\u0075\\u0031"}',
    b'{"uid":"u","ts":1.468244384e9}',
    b'{"uid":"u","ts":1468244384,"uid":"last"}',
    b'{"uid":"","ts":1}', b'{"uid":"u"}', b'{"ts":1}', b'[{"uid":"u","ts":1}]', b'{"uid":"u","ts":1',
    b'{"uid":"u","ts":"12x"}', b'  {"uid":"\xd0\x96","ts":7}  ', b'\xef\xbb\xbf{"uid":"u","ts":1}',
    b'{"uid":"u","ts":99999999999999999999999}', b'{"uid":"u","ts":1} x', b'',
]


@pytest.fixture(scope="module")
def frames():
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=4000, rate=50, users=300, seed=21, string_ts_frac=0.2,
                                      malformed_frac=0.1, bitflip_frac=0.01))
    return lines + CORNERS


@pytest.mark.parametrize("parser", ["jvm", "python"])
def test_spark_parse_paths_equal_the_reference(spark, frames, parser):
    from doodlestats.batch.parse import parse_frames
    df = spark.createDataFrame([(i, v) for i, v in enumerate(frames)], "i INT, value BINARY")
    got = {r["i"]: (r["ts"], r["uid"], r["reason"])
           for r in parse_frames(df, parser).select("i", "ts", "uid", "reason").collect()}
    mismatches = []
    for i, v in enumerate(frames):
        ts, uid, reason = reference_parse(v)
        want = (None, None, reason) if reason else (ts, uid, None)
        g = got[i] if got[i][2] is None else (None, None, got[i][2])
        if g != want:
            mismatches.append((v[:120], g, want))
    assert not mismatches, mismatches[:5]


def test_spark_from_json_baseline_agrees_on_valid_frames(spark, frames):
    """The naive path is only a baseline, but on valid generator frames (decoys and all)
    it must pick the root keys too."""
    from doodlestats.batch.parse import parse_frames
    generated = frames[:-len(CORNERS)]  # the corners probe semantics the baseline does not claim
    valid = [(i, v) for i, v in enumerate(generated) if reference_parse(v)[2] is None]
    df = spark.createDataFrame(valid, "i INT, value BINARY")
    got = {r["i"]: (r["ts"], r["uid"]) for r in parse_frames(df, "spark").select("i", "ts", "uid").collect()}
    for i, v in valid:
        assert got[i] == reference_parse(v)[:2], v[:200]
