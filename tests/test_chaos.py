"""Chaos, short: the live job SIGKILLed twice while the loader streams, restarted from its
checkpoint each time — the results still equal the generator's truth exactly.

The same experiment as `make chaos` (``bench.chaos.run``) on 30,000 frames with injected
defects, loaded at 1,000 frames/s by ``tools.loader`` (a subprocess), on the session's
real broker, with real Spark and real Delta tables. Expectations come from the
generator's truth only (``bench.chaos.check_exact``).
"""

from __future__ import annotations

import pytest
from conftest import write_conf

pytestmark = pytest.mark.integration


def test_two_sigkills_while_the_loader_streams_change_nothing(kafka, tmp_path):
    from bench.chaos import ChaosRun, defect_frames, run
    inp, truth = defect_frames(30_000, 1000, seed=21, users=5000, out_dir=tmp_path)
    assert truth["frames"] == 30_000 and sum(v for k, v in truth["defects"].items()
                                             if k not in ("string_ts", "delayed")) > 50
    # no warm-up: three live starts on a shared 2-core box stay within the time budget
    conf = write_conf(tmp_path / "chaos.toml", **{"job.warm_up_frames": 0})
    res = run(ChaosRun(inp, truth, conf, tmp_path / "chaos", rate=1000, kills=2, seed=3, min_gap_s=5,
                       min_up_s=1, spark_flags=["--driver-memory", "1g"]))
    failed = {name: c["detail"] for name, c in res["checks"].items() if not c["ok"]}
    assert not failed, failed
    assert res["ok"]
    kills = res["kills"]
    assert len(kills) == 2
    assert kills[0]["during_load"] and kills[0]["frames_in_topic"] < 30_000
    assert all(k["processes"] >= 3 and not k["survivors"] for k in kills)   # bash, JVM, Python driver at least
    assert all(k["restart_to_first_batch_s"] is not None for k in kills)
    # each restart said where its start went (no warm-up on a restart), and the parts add up
    assert all(k["startup"]["warm-up"] == 0 and k["startup"]["session"] > 0 for k in kills), kills
    assert all(abs(sum(v for p, v in k["startup"].items() if p not in ("up_s", "first_batch_s"))
                   - k["startup"]["up_s"]) < 0.5 for k in kills), kills
    assert res["job_starts"] == 4   # first start, two restarts, the final --available-now pass
    assert res["spark_flags"] == ["--driver-memory", "1g"]   # a results file says how the job was run
