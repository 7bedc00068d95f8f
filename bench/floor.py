"""Spark's floor vs the product, per micro-batch: what one micro-batch of 1,000 frames costs
the smallest stateless Structured Streaming query, and what it costs the job.

    python -m bench.floor                          # 20,000 frames, 2 rounds (~10 min on 2 cores)
    python -m bench.floor --smoke                  # 3,000 frames, 1 round, bench/.work/smoke/ (~3 min)
    python -m bench.floor --master spark://127.0.0.1:7077   # against `make cluster-up`
    python -m bench.floor --cluster                # start a local standalone cluster for the run (and stop it)

1. Input: ``--frames`` N (20,000) frames with the sample's parameters plus the defects of
   ``bench.chaos.DEFECTS`` (malformed frames of every parse reason, bit-flipped and
   numeric-string timestamps, delayed frames), generated once into ``bench/.work/floor/``;
   its first N/2 lines are a second input.
2. Kafka: an embedded broker of this run only — ``tools.kafka_local`` with a conf copy on
   127.0.0.1:``--kafka-port`` (29092; controller port + 1) and a fresh run folder
   (``DOODLE_KAFKA_DIR``, ``bench/.work/floor/kafka-<port>/``, deleted afterwards); stopped
   at the end by its PID (``tools.kafka_local.down``). Two fresh topics of 3 partitions:
   ``floor-<N>`` and ``floor-<N/2>``, keyed by uid (``tools.loader``).
3. In each round (``--rounds``, 2; ``--smoke`` 1), on the N/2 topic and then on the N topic:
   * the FLOOR: ``./spark-submit.sh bench/floor_query.py`` — ``maxOffsetsPerTrigger``
     1,000, ``availableNow``, ``from_json`` of ts/uid, ``minute = ts - ts % 60``, and per
     batch one ``groupBy(minute).agg(count_distinct(uid)).collect()``;
   * the PRODUCT: ``./spark-submit.sh jobs/minute_stats.py --available-now
     --max-offsets-per-trigger 1000`` (fresh Delta path, checkpoint and output topic;
     ``DOODLE_TIMINGS=1``) with ``--metrics-file``.
4. Figures, side by side:
   * per-batch wall p50 / p90: the floor's foreachBatch function; the job's ``per_batch[].seconds``
     of its metrics file — over every run of the query, each without its first
     ``WARMUP_BATCHES`` (2) batches (JIT warm-up);
   * Spark jobs per batch, p50: the floor counts its own (``SparkContext.statusTracker``,
     the query's job group); the job's ``per_batch[].spark_jobs``;
   * CPU per extra batch: ``(cpu(N) − cpu(N/2)) / (batches(N) − batches(N/2))`` per round
     (start-up cancels), p50 over rounds (nearest rank), for the Python driver, the spark-submit JVM
     (in local mode it runs the executors' tasks too), their sum ("driver CPU") and the
     whole process tree (also the pyspark workers);
   * ratios product / floor of the wall p50 and of the driver CPU per batch.
   A figure the job's metrics file does not carry (yet) is reported as "n/a".
5. ``bench/results/floor-<date>.{json,md}`` (``--smoke``: ``bench/.work/smoke/``), the table
   on stdout.

``bench.run`` runs the same :func:`measure` as its "floor" step (``--no-floor`` skips it).
Exit status: 0 every run worked, 1 a run failed (the others still ran), 2 a problem to fix
first (a port in use, set-up missing).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

try:
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import render
from bench.common import (
    GEN_PARAMS,
    REPO_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    BenchError,
    broker,
    fresh_dir,
    guarded,
    machine_info,
    percentile,
    python,
    read_lines,
    rel,
    run_process,
    say,
    spark_cmd,
    summary,
)

DEFAULT_FRAMES, SMOKE_FRAMES = 20_000, 3_000
DEFAULT_ROUNDS = 2
MAX_OFFSETS = 1_000
WARMUP_BATCHES = 2          # the first batches of each run: JIT warm-up, left out of the wall figures
KAFKA_PORT = 29092          # the run's own broker (controller: port + 1)
PARTITIONS = 3
RUN_TIMEOUT_S = 1800
FLOOR_SCRIPT = "bench/floor_query.py"
JOB_SCRIPT = "jobs/minute_stats.py"
CONF = REPO_ROOT / "conf" / "doodle.toml"
NA = "n/a"
LOCAL_NOTE = ("In local mode the spark-submit JVM runs the driver AND the executors' tasks, so its CPU "
              "(and the driver CPU = Python driver + JVM) includes the executors' work; on a cluster it is "
              "the driver's alone.")


# --------------------------------------------------------------------------- set-up
def write_conf(path: Path, port: int, **overrides) -> Path:
    """A copy of conf/doodle.toml whose [kafka] points at a broker on 127.0.0.1:``port``."""
    from tools.confcopy import conf_copy
    return conf_copy(path, port, **{"kafka.broker_heap": "512m", **overrides})


@contextmanager
def own_broker(port: int, work: Path) -> Iterator[tuple[object, Path]]:
    """An embedded broker of this run only, on 127.0.0.1:``port``, in a fresh run folder;
    yields (config, conf file). Stopped at the end (by its PID file in that folder)."""
    from doodlestats.runtime.config import load_config
    from tools._proc import port_open
    for p in (port, port + 1):
        if port_open("127.0.0.1", p):
            raise BenchError(f"port 127.0.0.1:{p} is in use — pass another --kafka-port (controller = port + 1)")
    conf = write_conf(work / f"floor-{port}.toml", port)
    cfg = load_config(conf)
    run = work / f"kafka-{port}"
    shutil.rmtree(run, ignore_errors=True)
    try:
        with broker(cfg, run_dir=run):
            yield cfg, conf
    finally:
        shutil.rmtree(run, ignore_errors=True)


def inputs(frames: int, work: Path) -> tuple[Path, Path, dict]:
    """The defect frames (generated once) and a file of their first half."""
    from bench.chaos import defect_frames
    full, truth = defect_frames(frames, GEN_PARAMS["rate"], seed=GEN_PARAMS["seed"], users=GEN_PARAMS["users"],
                                out_dir=work)
    half = work / f"{full.name.removesuffix('.jsonl.gz')}-first{frames // 2}.jsonl.gz"
    if not half.exists() or half.stat().st_mtime < full.stat().st_mtime:
        tmp = half.with_name(half.name + ".tmp")
        with gzip.open(tmp, "wb", compresslevel=1) as fh:
            for line in read_lines(full, frames // 2):
                fh.write(line + b"\n")
        os.replace(tmp, half)
    return full, half, truth


def load_topic(cfg, conf: Path, path: Path, topic: str, frames: int, log_dir: Path) -> None:
    """``python -m tools.loader`` (its own process: no Kafka client of it outlives the load)
    into a fresh topic of :data:`PARTITIONS` partitions, keyed by uid like `make load`."""
    from tools.kafka_local import ensure_topic
    from tools.loader import topic_end_offsets
    ensure_topic(cfg, topic, PARTITIONS)
    res = run_process([python(), "-m", "tools.loader", path, "--topic", topic, "--key", "uid", "--conf-file", conf,
                       "--progress-file", log_dir / f"{topic}.loader-progress.json",
                       "--rejects", log_dir / f"{topic}.rejects.jsonl", "--quiet"],
                      log_dir, f"load-{topic}", timeout=600)
    n = topic_end_offsets(cfg.kafka.bootstrap_servers, topic)
    if res.returncode != 0 or n != frames:
        raise BenchError(f"loading {topic}: exit {res.returncode}, {n} of {frames} frames in the topic; see "
                         f"{res.stderr}\n{res.tail()}")


# --------------------------------------------------------------------------- runs
def _master_flags(master: str | None) -> list[str]:
    return ["--master", master] if master else []


def run_floor(cfg, topic: str, run_dir: Path, name: str, master: str | None) -> dict:
    """One run of bench/floor_query.py; its JSON with the process facts."""
    out = run_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    ckpt = run_dir / f"{name}-checkpoint"
    shutil.rmtree(ckpt, ignore_errors=True)
    cmd = spark_cmd(FLOOR_SCRIPT, ["--bootstrap-servers", cfg.kafka.bootstrap_servers, "--topic", topic,
                                   "--checkpoint", ckpt, "--out", out, "--max-offsets-per-trigger", MAX_OFFSETS],
                    _master_flags(master))
    res = run_process(cmd, run_dir, name, timeout=RUN_TIMEOUT_S)
    shutil.rmtree(ckpt, ignore_errors=True)
    d = res.output(name, out)
    return {"batches": d.get("batches"), "n_batches": len(d.get("batches") or []), "frames": d.get("frames"),
            "python_driver_cpu_s": d.get("python_driver_cpu_s"), "jvm_cpu_s": d.get("jvm_cpu_s"),
            "query_s": d.get("query_seconds"), "master": d.get("master"), "wall_s": res.wall_s,
            "tree_cpu_s": res.cpu_s, "peak_rss_mb": res.peak_rss_mb, "stderr": rel(res.stderr)}


def job_batches(metrics: dict) -> tuple[list[dict] | None, int | None]:
    """The per-batch records of the job's metrics file (``per_batch``; None if it has none)
    and its number of batches (``batches``, else the length of the list, else None)."""
    b, n = metrics.get("per_batch"), metrics.get("batches")
    rows = [x for x in b if isinstance(x, dict)] if isinstance(b, list) else None
    if isinstance(n, int) and not isinstance(n, bool):
        return rows, n
    return rows, (len(rows) if rows is not None else None)


def run_product(cfg, conf: Path, topic: str, run_dir: Path, name: str, master: str | None) -> dict:
    """One run of the job (--available-now) on fresh tables, checkpoint and output topic."""
    metrics = run_dir / f"{name}.metrics.json"
    metrics.unlink(missing_ok=True)
    delta, ckpt = run_dir / f"{name}-delta", run_dir / f"{name}-checkpoint"
    for d in (delta, ckpt):
        shutil.rmtree(d, ignore_errors=True)
    args = ["--available-now", "--max-offsets-per-trigger", MAX_OFFSETS, "--topic", topic, "--conf-file", conf,
            "--delta-path", delta, "--checkpoint", ckpt, "--output-topic", f"{topic}-out-{name}",
            "--metrics-file", metrics]
    res = run_process(spark_cmd(JOB_SCRIPT, args, _master_flags(master)), run_dir, name,
                      env={"DOODLE_TIMINGS": "1"}, timeout=RUN_TIMEOUT_S)
    for d in (delta, ckpt):
        shutil.rmtree(d, ignore_errors=True)
    m = res.output(name, metrics)
    batches, n = job_batches(m)
    return {"batches": batches, "n_batches": n, "frames": m.get("frames"),
            "python_driver_cpu_s": m.get("python_driver_cpu_s"), "jvm_cpu_s": m.get("jvm_cpu_s"),
            "query_s": m.get("query_seconds"), "wall_s": res.wall_s, "tree_cpu_s": res.cpu_s,
            "peak_rss_mb": res.peak_rss_mb, "stderr": rel(res.stderr),
            "metrics_keys": sorted(m)}


# --------------------------------------------------------------------------- figures
CPU_KINDS = ("python_driver_cpu_s", "jvm_cpu_s", "driver_cpu_s", "tree_cpu_s")


def _cpu(run: dict, kind: str) -> float | None:
    if kind == "driver_cpu_s":
        p, j = run.get("python_driver_cpu_s"), run.get("jvm_cpu_s")
        return None if p is None or j is None else p + j
    return run.get(kind)


def warm_batches(batches: list[dict] | None, skip: int = WARMUP_BATCHES) -> list[dict]:
    """The batches of one run in batch order, without empty ones and the first ``skip``."""
    if not batches:
        return []
    rows = [b for b in batches if b.get("frames") != 0]
    rows.sort(key=lambda b: (b.get("batch_id") is None, b.get("batch_id") or 0))
    return rows[skip:]


def side_figures(runs: list[dict]) -> dict:
    """Wall, jobs and CPU-per-extra-batch figures of one side (floor or product) from its runs
    (each with ``size`` "half"/"full" and ``round``)."""
    ok = [r for r in runs if not r.get("error")]
    have_list = [r for r in ok if r.get("batches") is not None]
    walls = [float(b["seconds"]) for r in have_list for b in warm_batches(r["batches"])
             if isinstance(b.get("seconds"), (int, float))]
    jobs = [b["spark_jobs"] for r in have_list for b in warm_batches(r["batches"])
            if isinstance(b.get("spark_jobs"), (int, float))]
    out: dict = {"runs": len(ok), "wall": summary(walls) if walls else None,
                 "spark_jobs": ({"n": len(jobs), "p50": percentile(jobs, 50), "max": max(jobs)} if jobs else None),
                 "batches": {s: [r.get("n_batches") for r in ok if r["size"] == s] for s in ("half", "full")}}
    per_round: dict[str, list[float]] = {k: [] for k in CPU_KINDS}
    for k in sorted({r["round"] for r in ok}):
        pair = {r["size"]: r for r in ok if r["round"] == k}
        h, f = pair.get("half"), pair.get("full")
        if not h or not f or h.get("n_batches") is None or f.get("n_batches") is None:
            continue
        db = f["n_batches"] - h["n_batches"]
        if db <= 0:
            continue
        for kind in CPU_KINDS:
            a, b = _cpu(h, kind), _cpu(f, kind)
            if a is not None and b is not None:
                per_round[kind].append(round((b - a) / db, 4))
    out["cpu_per_extra_batch"] = {k: {"p50": percentile(v, 50), "rounds": v} if v else None
                                  for k, v in per_round.items()}
    return out


def _get(d: dict | None, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def ratios(floor: dict, product: dict) -> dict:
    def r(*path):
        a, b = _get(product, *path), _get(floor, *path)
        return round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None
    return {"wall_p50": r("wall", "p50_s"), "wall_p90": r("wall", "p90_s"),
            "driver_cpu_per_batch": r("cpu_per_extra_batch", "driver_cpu_s", "p50"),
            "python_driver_cpu_per_batch": r("cpu_per_extra_batch", "python_driver_cpu_s", "p50")}


# --------------------------------------------------------------------------- the measurement
def work_dir(smoke: bool) -> Path:
    """Scratch of the floor: inputs, the broker's run folder, per-run logs and metrics."""
    return WORK_DIR / "smoke" / "floor" if smoke else WORK_DIR / "floor"


def measure(frames: int = DEFAULT_FRAMES, rounds: int = DEFAULT_ROUNDS, master: str | None = None,
            cluster: bool = False, kafka_port: int = KAFKA_PORT, work: Path | None = None,
            smoke: bool = False) -> dict:
    """Everything of the module docstring's steps 1-4; returns the result dict (``failures``
    lists the runs that failed; the figures use the others)."""
    if frames < 2 * MAX_OFFSETS and not smoke:
        say(f"floor: note: {frames:,} frames are only {frames // MAX_OFFSETS} batches — the figures mean little")
    if frames < 4 or rounds < 1:
        raise BenchError("--frames must be >= 4 and --rounds >= 1")
    work = work or work_dir(smoke)
    t_start, started, load1 = time.time(), time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.getloadavg()
    work.mkdir(parents=True, exist_ok=True)
    full_path, half_path, truth = inputs(frames, work)
    say(f"floor: {frames:,} frames with defects ({full_path.relative_to(REPO_ROOT)}), first {frames // 2:,} as "
        f"the second input; {rounds} round(s)")
    failures: list[str] = []
    runs: dict[str, list[dict]] = {"floor": [], "product": []}
    cluster_ctx = nullcontext(None)
    if cluster:
        from tools import cluster_local
        cluster_ctx = cluster_local.running()
    with own_broker(kafka_port, work) as (cfg, conf), cluster_ctx as cl:
        if cl is not None and master and master != cl.master_url:
            raise BenchError(f"--master {master} and --cluster ({cl.master_url}) disagree")
        master = cl.master_url if cl is not None else master
        _rounds(cfg, conf, {"half": (half_path, frames // 2), "full": (full_path, frames)}, rounds, master,
                fresh_dir(work / "runs"), runs, failures)
    floor, product = side_figures(runs["floor"]), side_figures(runs["product"])
    eff_master = next((r.get("master") for r in runs["floor"] if r.get("master")), master)
    local = str(eff_master or "").startswith("local")
    return {
        "kind": "floor", "date": time.strftime("%Y-%m-%d"), "started": started, "smoke": smoke,
        "elapsed_s": round(time.time() - t_start, 1), "machine": machine_info(),
        "load_avg_before": [round(x, 2) for x in load1], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "master": eff_master, "local_mode": local, "cluster_started": bool(cluster),
        "frames": frames, "half_frames": frames // 2, "input": str(full_path.relative_to(REPO_ROOT)),
        "defects": truth.get("defects"), "max_offsets_per_trigger": MAX_OFFSETS, "warmup_batches": WARMUP_BATCHES,
        "rounds": rounds, "kafka": f"127.0.0.1:{kafka_port} (own broker, {PARTITIONS} partitions)",
        "floor": floor, "product": product, "ratios": ratios(floor, product),
        "notes": _notes(runs, product, smoke, local), "runs": runs, "failures": failures,
    }


def _rounds(cfg, conf: Path, inputs: dict, rounds: int, master: str | None, runs_dir: Path, runs: dict,
            failures: list[str]) -> None:
    """Load the two topics, then each round: floor and job on the half topic, then the full one."""
    topics = {size: f"floor-{n}" for size, (_, n) in inputs.items()}
    for size, (path, n) in inputs.items():
        say(f"floor: loading {n:,} frames into {topics[size]}")
        load_topic(cfg, conf, path, topics[size], n, runs_dir)
    sides = {"floor": lambda t, nm: run_floor(cfg, t, runs_dir, nm, master),
             "product": lambda t, nm: run_product(cfg, conf, t, runs_dir, nm, master)}
    for k in range(rounds):
        for size in inputs:
            for side, fn in sides.items():
                name = f"{side}-{size}-r{k + 1}"
                say(f"floor: round {k + 1}/{rounds}: {side} on {topics[size]}")
                try:
                    r = fn(topics[size], name)
                except BenchError as e:
                    say(f"floor: {name} FAILED: {e}")
                    failures.append(f"{name}: {str(e).splitlines()[0]}")
                    r = {"error": str(e).splitlines()[0]}
                r.update({"name": name, "size": size, "round": k + 1, "topic": topics[size]})
                runs[side].append(r)
                if not r.get("error"):
                    w = summary([b["seconds"] for b in warm_batches(r.get("batches"))
                                 if isinstance(b.get("seconds"), (int, float))])
                    say(f"floor: {name}: {r.get('n_batches')} batches, per-batch wall p50 "
                        f"{render.num(w['p50_s'], 3, ' s', NA)} (after warm-up), process wall {r['wall_s']:.0f} s")


def _notes(runs: dict, product: dict, smoke: bool, local: bool) -> list[str]:
    notes = []
    if not any(r.get("batches") for r in runs["product"] if not r.get("error")):
        notes.append("the job's metrics file has no per-batch list (`batches`) yet: its per-batch figures are n/a")
    elif product.get("spark_jobs") is None:
        notes.append("the job's per-batch records carry no `spark_jobs` yet: jobs per batch n/a")
    if smoke:
        notes.append("smoke run: a few batches per run — the harness works, the figures mean nothing")
    if local:
        notes.append(LOCAL_NOTE)
    return notes


# --------------------------------------------------------------------------- text
def _s(x, nd: int = 2) -> str:
    return render.num(x, nd, na=NA)


def _x(x) -> str:
    return render.times(x, na=NA)


def table_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(figure, floor, product, product / floor) rows of the side-by-side table."""
    f, p, q = res.get("floor") or {}, res.get("product") or {}, res.get("ratios") or {}

    def cpu(side, kind):
        return _s(_get(side, "cpu_per_extra_batch", kind, "p50"), 3)

    def jobs(side):
        j = side.get("spark_jobs")
        return NA if not j else f"{j['p50']:g} (max {j['max']:g})"

    def batches(side):
        b = side.get("batches") or {}
        return " / ".join(",".join(NA if x is None else str(x) for x in b.get(s) or []) or NA for s in ("half", "full"))

    jvm = "JVM CPU s" + (" (local mode: incl. executors)" if res.get("local_mode") else "")
    return [
        ("wall p50, s", _s(_get(f, "wall", "p50_s"), 3), _s(_get(p, "wall", "p50_s"), 3), _x(q.get("wall_p50"))),
        ("wall p90, s", _s(_get(f, "wall", "p90_s"), 3), _s(_get(p, "wall", "p90_s"), 3), _x(q.get("wall_p90"))),
        ("batches timed (after warm-up)", str(_get(f, "wall", "n") or NA), str(_get(p, "wall", "n") or NA), ""),
        ("Spark jobs per batch, p50", jobs(f), jobs(p), ""),
        ("Python driver CPU s per extra batch", cpu(f, "python_driver_cpu_s"), cpu(p, "python_driver_cpu_s"),
         _x(q.get("python_driver_cpu_per_batch"))),
        (f"{jvm} per extra batch", cpu(f, "jvm_cpu_s"), cpu(p, "jvm_cpu_s"), ""),
        ("driver CPU s per extra batch (Python + JVM)", cpu(f, "driver_cpu_s"), cpu(p, "driver_cpu_s"),
         _x(q.get("driver_cpu_per_batch"))),
        ("whole process tree CPU s per extra batch", cpu(f, "tree_cpu_s"), cpu(p, "tree_cpu_s"), ""),
        (f"batches per run ({res.get('half_frames', 0):,} / {res.get('frames', 0):,} frames)", batches(f),
         batches(p), ""),
    ]


def _round_values(res: dict) -> str:
    out = []
    for side in ("floor", "product"):
        v = _get(res.get(side), "cpu_per_extra_batch", "driver_cpu_s", "rounds")
        if v:
            out.append(f"{'job' if side == 'product' else side} " + " / ".join(f"{x:.3f}" for x in v))
    return "; ".join(out)


def markdown(res: dict, heading: bool = True) -> str:
    """The report: the side-by-side table with what each figure is (``heading``: as a file)."""
    lines = []
    if heading:
        m = res["machine"]
        smoke = " (smoke)" if res.get("smoke") else ""
        lines += [f"# Spark's floor vs the job, per micro-batch — {res['date']}{smoke}",
                  "", f"- machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']:g} GB RAM, pyspark "
                      f"{m.get('versions', {}).get('pyspark')}; load average {res['load_avg_before'][0]:.2f} before, "
                      f"{res['load_avg_after'][0]:.2f} after",
                  f"- started {res['started']}, took {res['elapsed_s']:.0f}s; master `{res.get('master') or NA}`"
                  + (" (a local standalone cluster this run started)" if res.get("cluster_started") else ""), ""]
    d = res.get("defects") or {}
    rv = _round_values(res)
    lines += [f"{res['frames']:,} generated frames with defects ("
              + ", ".join(f"{k} {v:,}" for k, v in d.items() if v) + f"; `{res['input']}`) and their first "
              f"{res['half_frames']:,}, in two topics of {PARTITIONS} partitions on the run's own broker; "
              f"`maxOffsetsPerTrigger` {res['max_offsets_per_trigger']:,}, availableNow; {res['rounds']} round(s) of "
              f"floor and job on both topics. Wall figures: every run, each without its first "
              f"{res['warmup_batches']} batches.", "",
              *render.table(["per micro-batch", "floor", "job", "job / floor"], table_rows(res), "lrrr"), "",
              "- floor: `bench/floor_query.py` — Kafka source, `from_json` of ts/uid, `try_cast`, "
              "`minute = ts - ts % 60`, one `groupBy(minute).agg(count_distinct(uid)).collect()` per batch; wall = "
              "its foreachBatch function; Spark jobs = the new job ids of the query's job group (`statusTracker`).",
              "- job: `jobs/minute_stats.py --available-now --max-offsets-per-trigger 1000`, wall and Spark jobs "
              "= `batches[].seconds` / `.spark_jobs` of its `--metrics-file` (n/a where it has none).",
              "- CPU per extra batch = (CPU on the full topic − CPU on the half) / (batches − batches), p50 "
              "over rounds (nearest rank: of two rounds the lower): start-up cancels"
              + (f" (per round, driver CPU: {rv})" if rv else "") + ". "
              "Python driver: its `getrusage`; JVM: the spark-submit process (psutil); whole tree: the "
              "reaped children's rusage (adds the pyspark workers)."]
    lines += [f"- note: {n}" for n in res.get("notes") or []]
    lines += [f"- FAILED: {x}" for x in res.get("failures") or []]
    return "\n".join(lines) + "\n"


def text_table(res: dict) -> str:
    return "\n".join(render.text_table(["per micro-batch", "floor", "job", "job/floor"], table_rows(res))
                     + [f"note: {n}" for n in res.get("notes") or []])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help=f"frames of the larger topic (default {DEFAULT_FRAMES:,}; "
                                               f"--smoke {SMOKE_FRAMES:,}); the smaller one holds half")
    ap.add_argument("--rounds", type=int, help=f"rounds of the four runs (default {DEFAULT_ROUNDS}, --smoke 1)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"quick check: {SMOKE_FRAMES:,} frames, 1 round, results to bench/.work/smoke/")
    ap.add_argument("--master", help="spark-submit --master for both queries (default: [spark] master of "
                                     "conf/doodle.toml), e.g. spark://127.0.0.1:7077 after `make cluster-up`")
    ap.add_argument("--cluster", action="store_true",
                    help="start a local standalone cluster (tools.cluster_local, 127.0.0.1:7077) for the run and stop "
                         "it afterwards (one already running from .run/cluster is used and left running)")
    ap.add_argument("--kafka-port", type=int, default=KAFKA_PORT,
                    help=f"port of the run's own broker (default {KAFKA_PORT}; controller = port + 1)")
    ap.add_argument("--out-dir",
                    help="where floor-<date>.{json,md} go (default bench/results, --smoke bench/.work/smoke)")
    args = ap.parse_args(argv)
    frames = args.frames or (SMOKE_FRAMES if args.smoke else DEFAULT_FRAMES)
    rounds = args.rounds or (1 if args.smoke else DEFAULT_ROUNDS)
    out_dir = Path(args.out_dir) if args.out_dir else (WORK_DIR / "smoke" if args.smoke else RESULTS_DIR)

    def go() -> int:
        res = measure(frames, rounds, args.master, args.cluster, args.kafka_port, work=work_dir(args.smoke),
                      smoke=args.smoke)
        paths = render.write(out_dir, f"floor-{res['date']}", res, markdown(res))
        print(text_table(res))
        say("wrote " + ", ".join(rel(p) for p in paths.values()))
        if res["failures"]:
            say(f"{len(res['failures'])} run(s) failed: " + "; ".join(res["failures"]))
            return 1
        return 0
    return guarded("floor", go)


if __name__ == "__main__":
    sys.exit(main())
