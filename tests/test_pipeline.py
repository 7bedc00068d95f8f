"""The pipeline in-process on static DataFrames (real Spark, real Delta): replays."""

from __future__ import annotations

import pytest

from conftest import write_conf

pytestmark = pytest.mark.integration

SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"


def _stored(delta):
    from doodlestats.tables import MINUTE_STATS, Tables
    t = Tables(delta, "x").read(MINUTE_STATS).to_pylist()
    return {r["ts"]: (r["unique_users"], r["frames"]) for r in t}


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_replay_after_a_crash_between_commits_counts_every_frame_once(spark, tmp_path, mode):
    """Batch 1 commits all its Delta writes, then dies before its state file: the
    restarted pipeline replays batch 1 and must not count its frames twice."""
    from doodlestats.config import load_config
    from doodlestats.generator import GenConfig, generate
    from doodlestats.pipeline import MinuteStatsPipeline
    lines, truth = generate(GenConfig(count=6000, rate=40, users=400, seed=31))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    b0, b1 = df.where("offset < 3000"), df.where("offset >= 3000")
    cfg = load_config(write_conf(tmp_path / "c.toml", **{"job.mode": mode}))
    ckpt, delta = str(tmp_path / "ckpt"), str(tmp_path / "delta")

    p = MinuteStatsPipeline(spark, cfg, ckpt, delta, progress=False)
    p.process_batch(b0, 0)

    def crash(_state):
        raise RuntimeError("killed after the Delta commits")
    p.store.save = crash
    with pytest.raises(RuntimeError):
        p.process_batch(b1, 1)

    restarted = MinuteStatsPipeline(spark, cfg, ckpt, delta, progress=False)
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
    from doodlestats.config import load_config
    from doodlestats.generator import GenConfig, generate
    from doodlestats.pipeline import MinuteStatsPipeline
    lines, truth = generate(GenConfig(count=2000, rate=40, users=300, seed=32))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    cfg = load_config(write_conf(tmp_path / "c.toml"))
    p = MinuteStatsPipeline(spark, cfg, str(tmp_path / "ckpt"), str(tmp_path / "delta"), progress=False)
    p.process_batch(df, 0)
    assert p.process_batch(df, 0).skipped
    p.flush()
    assert _stored(str(tmp_path / "delta")) == {m["minute"]: (m["unique_users"], m["frames"])
                                                for m in truth["minutes"]}


def test_a_quarantine_is_written_once_when_a_batch_is_replayed(spark, tmp_path):
    """A batch that died after its Delta commits is replayed: its quarantine rows (with
    their raw bytes) must not be written again."""
    from doodlestats import pipeline
    from doodlestats.config import load_config
    from doodlestats.generator import GenConfig, generate
    from doodlestats.tables import QUARANTINE, Tables
    lines, truth = generate(GenConfig(count=3000, rate=40, users=300, seed=33, malformed_frac=0.05))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    cfg = load_config(write_conf(tmp_path / "c.toml"))
    ckpt, delta = str(tmp_path / "ckpt"), str(tmp_path / "delta")
    p = pipeline.MinuteStatsPipeline(spark, cfg, ckpt, delta, progress=False)

    def crash(_state):
        raise RuntimeError("killed after the Delta commits")
    p.store.save = crash
    with pytest.raises(RuntimeError):
        p.process_batch(df, 0)
    pipeline.MinuteStatsPipeline(spark, cfg, ckpt, delta, progress=False).process_batch(df, 0)
    want = sum(v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed"))
    assert want > 10
    q = Tables(delta, "x").read(QUARANTINE)
    assert q.num_rows == want
    assert all(r is not None for r in q.column("raw").to_pylist())
