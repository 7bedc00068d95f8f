"""bench.floor's arithmetic and report, without Kafka or Spark: per-batch figures with the
warm-up left out, CPU per extra batch, the job's metrics file with and without its
per-batch list, and the n/a it reports for what is missing."""

import tomllib

from bench import floor
from bench.report import floor_md, text_table


def _batches(seconds, jobs=None, first_id=0):
    out = []
    for i, s in enumerate(seconds):
        b = {"batch_id": first_id + i, "frames": 1000, "seconds": s}
        if jobs is not None:
            b["spark_jobs"] = jobs
        out.append(b)
    return out


def _run(size, rnd, batches, n, py, jvm, tree=None):
    return {"size": size, "round": rnd, "batches": batches, "n_batches": n, "python_driver_cpu_s": py,
            "jvm_cpu_s": jvm, "tree_cpu_s": tree}


def test_warm_batches_skips_the_first_two_in_batch_order_and_empty_ones():
    bs = _batches([9.0, 8.0, 1.0, 2.0])[::-1] + [{"batch_id": 7, "frames": 0, "seconds": 0.01}]
    assert [b["seconds"] for b in floor.warm_batches(bs)] == [1.0, 2.0]
    assert floor.warm_batches(None) == []


def test_side_figures_wall_jobs_and_cpu_per_extra_batch():
    runs = [_run("half", 1, _batches([5, 5, 0.3, 0.3, 0.3], jobs=1), 5, 10.0, 40.0, 55.0),
            _run("full", 1, _batches([5, 5] + [0.3] * 7 + [0.5], jobs=1), 10, 12.0, 45.0, 62.0),
            _run("half", 2, _batches([5, 5, 0.3, 0.3, 0.3], jobs=1), 5, 10.0, 40.0, 55.0),
            _run("full", 2, _batches([5, 5] + [0.3] * 8, jobs=1), 10, 13.0, 46.0, 65.0),
            {"size": "full", "round": 3, "error": "boom"}]
    f = floor.side_figures(runs)
    assert f["runs"] == 4
    assert f["wall"]["n"] == 3 + 8 + 3 + 8 and f["wall"]["p50_s"] == 0.3 and f["wall"]["max_s"] == 0.5
    assert f["spark_jobs"] == {"n": 22, "p50": 1, "max": 1}
    cpu = f["cpu_per_extra_batch"]
    assert cpu["python_driver_cpu_s"]["rounds"] == [0.4, 0.6]
    assert cpu["driver_cpu_s"]["rounds"] == [1.4, 1.8]
    assert cpu["driver_cpu_s"]["p50"] == 1.4          # bench.latency's percentile: the lower middle
    assert cpu["tree_cpu_s"]["rounds"] == [1.4, 2.0]
    assert f["batches"] == {"half": [5, 5], "full": [10, 10]}


def test_job_metrics_without_a_batch_list_give_na_but_still_a_cpu_per_batch():
    assert floor.job_batches({"batches": 12}) == (None, 12)
    assert floor.job_batches({}) == (None, None)
    lst = _batches([1.0, 2.0])
    assert floor.job_batches({"per_batch": lst}) == (lst, 2)
    assert floor.job_batches({"per_batch": lst, "batches": 2}) == (lst, 2)
    product = floor.side_figures([_run("half", 1, None, 5, 10.0, 40.0), _run("full", 1, None, 10, 20.0, 60.0)])
    assert product["wall"] is None and product["spark_jobs"] is None
    assert product["cpu_per_extra_batch"]["driver_cpu_s"]["p50"] == 6.0
    fl = floor.side_figures([_run("half", 1, _batches([1, 1, 0.25], jobs=1), 3, 5.0, 20.0),
                             _run("full", 1, _batches([1, 1, 0.25, 0.25, 0.25], jobs=1), 5, 6.0, 21.0)])
    r = floor.ratios(fl, product)
    assert r["wall_p50"] is None and r["driver_cpu_per_batch"] == 6.0 and r["python_driver_cpu_per_batch"] == 4.0
    res = {"frames": 10_000, "half_frames": 5_000, "input": "x.jsonl.gz", "defects": {"bad_ts": 3},
           "max_offsets_per_trigger": 1000, "warmup_batches": 2, "rounds": 1, "local_mode": True,
           "floor": fl, "product": product, "ratios": r, "notes": [floor.LOCAL_NOTE], "failures": []}
    md = floor_md(res)
    assert "| wall p50, s | 0.250 | n/a | n/a |" in md
    assert "| Spark jobs per batch, p50 | 1 (max 1) | n/a |  |" in md
    assert "| driver CPU s per extra batch (Python + JVM) | 1.000 | 6.000 | 6.00× |" in md
    assert "incl. executors" in md and "includes the executors' work" in md
    table = text_table({"results": [], "targets": [], "floor": res})
    assert "floor: wall p50, s" in table and "n/a" in table


def test_floor_step_failure_is_reported():
    assert floor_md({"error": "floor: boom"}) == "floor step failed: floor: boom"


def test_write_conf_points_at_the_runs_own_broker(tmp_path):
    p = floor.write_conf(tmp_path / "c.toml", 29092)
    raw = tomllib.loads(p.read_text())
    orig = tomllib.loads(floor.CONF.read_text())
    assert raw["kafka"]["bootstrap_servers"] == "127.0.0.1:29092" and raw["kafka"]["controller_port"] == 29093
    assert raw["job"] == orig["job"] and raw["paths"] == orig["paths"]
    from doodlestats.runtime.config import load_config
    assert load_config(p).kafka.port == 29092
