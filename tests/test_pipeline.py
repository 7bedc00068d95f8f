"""The pipeline in-process on static DataFrames (real Spark, real Delta): replays."""

from __future__ import annotations

import pytest
from conftest import write_conf

pytestmark = pytest.mark.integration

SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"


def _stored(delta):
    from doodlestats.io.tables import MINUTE_STATS, Tables
    t = Tables(delta, "x").read(MINUTE_STATS).to_pylist()
    return {r["ts"]: (r["unique_users"], r["frames"]) for r in t}


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_replay_after_a_crash_between_commits_counts_every_frame_once(spark, tmp_path, mode):
    """Batch 1 commits all its Delta writes, then dies before its state file: the
    restarted pipeline replays batch 1 and must not count its frames twice."""
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=6000, rate=40, users=400, seed=31))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    b0, b1 = df.where("offset < 3000"), df.where("offset >= 3000")
    cfg = load_config(write_conf(tmp_path / "c.toml", **{"job.mode": mode}))
    ckpt, delta = str(tmp_path / "ckpt"), str(tmp_path / "delta")

    p = MinuteStatsPipeline(spark, cfg, ckpt, delta)
    p.process_batch(b0, 0)

    def crash(_state):
        raise RuntimeError("killed after the Delta commits")
    p.store.save = crash
    with pytest.raises(RuntimeError):
        p.process_batch(b1, 1)

    restarted = MinuteStatsPipeline(spark, cfg, ckpt, delta)
    restarted.process_batch(b1, 1)
    restarted.flush()
    want = {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}
    got = _stored(delta)
    assert {m: f for m, (_, f) in got.items()} == {m: f for m, (_, f) in want.items()}
    if mode == "exact":
        assert got == want
    else:
        assert all(abs(got[m][0] - want[m][0]) <= 3 * restarted.rsd * want[m][0] for m in want)


def test_a_replayed_batch_that_completed_is_skipped(spark, tmp_path):
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=2000, rate=40, users=300, seed=32))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    cfg = load_config(write_conf(tmp_path / "c.toml"))
    p = MinuteStatsPipeline(spark, cfg, str(tmp_path / "ckpt"), str(tmp_path / "delta"))
    p.process_batch(df, 0)
    assert p.process_batch(df, 0).skipped
    p.flush()
    assert _stored(str(tmp_path / "delta")) == {m["minute"]: (m["unique_users"], m["frames"])
                                                for m in truth["minutes"]}


def test_a_quarantine_is_written_once_when_a_batch_is_replayed(spark, tmp_path):
    """A batch that died after its Delta commits is replayed: its quarantine rows (with
    their raw bytes) must not be written again."""
    from doodlestats.batch import pipeline
    from doodlestats.io.tables import QUARANTINE, Tables
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=3000, rate=40, users=300, seed=33, malformed_frac=0.05))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    cfg = load_config(write_conf(tmp_path / "c.toml"))
    ckpt, delta = str(tmp_path / "ckpt"), str(tmp_path / "delta")
    p = pipeline.MinuteStatsPipeline(spark, cfg, ckpt, delta)

    def crash(_state):
        raise RuntimeError("killed after the Delta commits")
    p.store.save = crash
    with pytest.raises(RuntimeError):
        p.process_batch(df, 0)
    pipeline.MinuteStatsPipeline(spark, cfg, ckpt, delta).process_batch(df, 0)
    want = sum(v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed"))
    assert want > 10
    q = Tables(delta, "x").read(QUARANTINE)
    assert q.num_rows == want
    assert all(r is not None for r in q.column("raw").to_pylist())


# ---------------------------------------------------------------- the guard's single pass
def _frame(ts: int, uid: str) -> bytes:
    return b'{"uid":"%s","n":{"ts":1,"uid":"decoy"},"ts":%d}' % (uid.encode(), ts)


def test_suspect_keeps_the_raw_bytes_of_far_frames_in_one_task(spark):
    """doodle_suspect (JVM, per task): the first frames of a task, a bit flip and the
    first frames after a jump are suspects; frames close to their recent neighbours are not."""
    from pyspark.sql import functions as F

    from doodlestats.batch import guard
    assert guard.register_suspect(spark), "doodle-udf.jar with doodle.udf.Suspect must be on the classpath"
    t0 = 1_466_000_000
    ts = [t0 + i for i in range(100)]
    ts[50] = t0 + (1 << 22)                     # a flipped bit: 48 days ahead
    ts += [t0 + 7200 + i for i in range(60)]    # the stream jumps two hours ahead
    df = spark.createDataFrame([(i, t) for i, t in enumerate(ts)], "i BIGINT, ts BIGINT").coalesce(1)
    got = dict(df.orderBy("i").select("i", F.expr(f"{guard.SUSPECT_FN}(ts, CAST(3600 AS BIGINT))").alias("s"))
               .collect())
    flagged = {i for i, s in got.items() if s}
    assert set(range(8)) <= flagged                       # nothing to compare with yet
    assert 50 in flagged                                  # the flip
    assert 100 in flagged                                 # first frame after the jump
    assert not flagged & (set(range(8, 50)) | set(range(51, 100)))  # plausible neighbours
    assert not flagged & set(range(140, 160))             # the new time is the new normal
    # warm-up + the flip + at most half the window + one re-sort interval after the jump
    assert len(flagged) <= 8 + 1 + (32 // 2 + 8)


def test_an_outlier_that_was_not_a_suspect_is_quarantined_with_its_bytes(spark, tmp_path, capsys):
    """A partition that *starts* two hours ahead of the rest of its neighbourhood: the
    running median calls those frames plausible, the neighbourhood median does not. They
    are quarantined as ts_outlier with their raw bytes read again; the rest is counted."""
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.io.tables import QUARANTINE, Tables
    from doodlestats.runtime.config import load_config
    t0 = 1_466_000_040
    rows = [(t0 + 7200 + i % 30, f"early{i % 7}") for i in range(40)] + \
           [(t0 + i % 100, f"u{i % 37}") for i in range(960)]
    lines = [_frame(t, u) for t, u in rows]
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE).coalesce(1)
    cfg = load_config(write_conf(tmp_path / "c.toml"))
    delta = str(tmp_path / "delta")
    p = MinuteStatsPipeline(spark, cfg, str(tmp_path / "ckpt"), delta)
    rep = p.process_batch(df, 0)
    p.flush()
    assert "were not suspects in the first pass" in capsys.readouterr().err
    assert dict(rep.quarantined) == {"ts_outlier": 40}
    q = Tables(delta, "x").read(QUARANTINE).sort_by("offset").to_pylist()
    assert [r["offset"] for r in q] == list(range(40))
    assert [r["raw"] for r in q] == lines[:40] and {r["topic"] for r in q} == {"t"}
    want: dict[int, set] = {}
    for t, u in rows[40:]:
        want.setdefault(t - t % 60, set()).add(u)
    frames = {m: sum(1 for t, _ in rows[40:] if t - t % 60 == m) for m in want}
    assert _stored(delta) == {m: (len(u), frames[m]) for m, u in want.items()}


def test_driver_sketches_are_spark_sketches(spark):
    """approx mode builds its HLL sketches in the driver (DataSketches for Python); Spark's
    hll_* functions must read them as their own. A sketch of the same uids built by Spark
    has the same registers: unioned, each gives the same estimate as both together.
    (One sketch alone may be estimated differently — streaming updates use the HIP
    estimator, merged sketches the composite one — so registers and unions are compared.)"""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from doodlestats.batch import sketch
    uids = [f"{i:019x}" for i in range(0, 60_000, 3)] + ["Ünïcödé ✓", "日本語", "😀"]
    ours = sketch.build(pa.array(uids), 12)
    theirs = bytes(spark.createDataFrame([(u,) for u in uids], "uid STRING")
                   .agg(F.hll_sketch_agg("uid", 12).alias("s")).collect()[0]["s"])

    def spark_union(sketches):
        return (spark.createDataFrame([(bytearray(x),) for x in sketches], "s BINARY")
                .agg(F.hll_sketch_estimate(F.hll_union_agg("s", True)).alias("n")).collect()[0]["n"])
    from datasketches import hll_sketch

    def registers(x):  # the HLL_8 image ends with its 2^12 one-byte registers
        return bytes(hll_sketch.deserialize(x).serialize_updatable())[-(1 << 12):]
    assert registers(ours) == registers(theirs)
    more = sketch.build(pa.array([f"x{i}" for i in range(5000)]), 12)
    n = sketch.union([ours, more], 12)[1]
    assert spark_union([ours, more]) == spark_union([theirs, more]) == n
    assert abs(n - len(uids) - 5000) <= 3 * 1.04 / 2 ** 6 * (len(uids) + 5000)
    assert abs(sketch.estimate(ours) - len(uids)) <= 3 * 1.04 / 2 ** 6 * len(uids)
