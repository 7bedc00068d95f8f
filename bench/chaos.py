"""Chaos: SIGKILL the live job at random moments while the loader streams, restart it
from its checkpoint each time, and check that the results are still exact.

    python -m bench.chaos                                   # `make chaos`: 1M frames at 1,000/s (~17 min), 5 kills
    python -m bench.chaos --frames 30000 --kills 2          # a smoke run (~3 min)
    python -m bench.chaos --kafka-port 59092                # own broker on 127.0.0.1:59092 (controller 59093)
    python -m bench.chaos --input data/stream.jsonl.gz --truth data/stream.truth.json

1. Input: N frames (default 1,000,000) with the sample's parameters (users 100k, seed
   1, event rate = ``--rate``) *plus injected defects* — malformed frames of every
   parse reason, bit-flipped timestamps, numeric-string timestamps and frames delayed
   by up to 4 s (within the 5 s watermark) — generated once into ``bench/.work/`` with
   the generator's truth. (``make sample``'s file has no defects, so it could not show
   that every bad frame is quarantined exactly once; ``--input``/``--truth`` use it or
   any other file anyway.)
2. A fresh input topic (``[kafka] input_partitions``), output topic, Delta root and
   checkpoint. The job starts live (``./spark-submit.sh jobs/minute_stats.py``, 1 s
   trigger, not ``--available-now``); once it printed its first batch line the loader
   starts as a subprocess (``python -m tools.loader FILE --rate R``).
3. ``--kills`` moments (default 5) are drawn with a seeded RNG (``--seed``) over the
   expected load time, at least ``--min-gap`` seconds apart, and printed. At each one
   the job's whole process tree is SIGKILLed — the spark-submit process group (driver
   JVM, which holds the executors in local mode, and the Python driver) and the
   pyspark daemon's own group (the Python workers) — and started again from its
   checkpoint at once, live. A kill never comes earlier than ``--min-up`` seconds after
   the previous restart printed its first batch line (so each kill hits a job that
   runs; a restart slower than the schedule moves the following kills later).
4. When the loader has finished, the job is let drain (its committed offsets reach the
   topic's end), stopped with SIGTERM, and a final ``--available-now`` pass on the same
   checkpoint makes the last open minutes final.
5. Checks, all against the generator's truth (never the job's own output): Delta
   ``minute_stats`` = truth per minute (unique users and frames) and every minute
   final; one row per minute; ``minute_uids`` one row per (minute, uid) and per-minute
   counts = truth; ``quarantine`` one row per source coordinate (topic, partition,
   offset), per-reason counts = the injected defects, every quarantined ``raw`` a line of
   the input; counted + quarantined frames = frames loaded; the last ``minuteStats``
   value per key = truth and final. Exit status 1 if a check fails.

Report: ``bench/results/chaos-<date>.json`` and ``.md`` (with ``--frames``: in
``bench/.work/smoke/``): each kill (seconds after the load started, batch planned /
committed at that moment, restart → first batch line), totals, pass/fail per check, the
load average. Scratch data (Delta, checkpoint, logs) is in ``bench/.work/chaos/``.

The job, the loader and the run's topics and tables are ``bench.livejob``'s;
``check_exact`` and ``verdict`` are also used by ``bench.soak``, ``run`` by ``tests/test_chaos.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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
    rel,
    say,
    topic_messages,
)
from bench.livejob import (
    FACTS,
    LiveJob,
    LoadAverage,
    Loader,
    RunSpace,
    checkpoint_progress,
    common_args,
    conf_for,
    read_topic_results,
    recorded,
    report_main,
    spark_flags,
    stop_all,
)

FRAMES, RATE, KILLS, SEED = 1_000_000, 1000.0, 5, 7
# defects injected into the chaos input (fractions of frames; see tools/generator.py)
DEFECTS = {"malformed_frac": 0.005, "bitflip_frac": 0.0005, "string_ts_frac": 0.05,
           "delay_prob": 0.01, "max_delay": 4}
NOT_QUARANTINED = ("string_ts", "delayed")   # truth "defects" that are valid frames


def defect_frames(frames: int, rate: float, seed: int = GEN_PARAMS["seed"], users: int = GEN_PARAMS["users"],
                  out_dir: Path = WORK_DIR) -> tuple[Path, dict]:
    """``frames`` frames with the sample's parameters, event rate ``rate`` and
    :data:`DEFECTS`, generated once into ``out_dir`` (kept while its truth matches).
    Returns (path, truth)."""
    from tools.generator import GenConfig, write
    gen = GenConfig(count=frames, rate=float(rate), users=users, seed=seed, **DEFECTS)
    stem = f"chaos-{frames}-r{rate:g}-s{seed}"
    path, truth_path = out_dir / f"{stem}.jsonl.gz", out_dir / f"{stem}.truth.json"
    try:
        truth = json.loads(truth_path.read_text())
        if path.exists() and truth.get("params") == json.loads(json.dumps(gen.__dict__)):
            return path, truth
    except (OSError, ValueError):
        pass
    say(f"generating {frames:,} frames with defects into {path}")
    return path, write(gen, str(path), str(truth_path), progress=False)


def kill_schedule(rng: random.Random, kills: int, duration: float, min_gap: float,
                  lo_frac: float = 0.05, hi_frac: float = 0.85) -> list[float]:
    """``kills`` moments (seconds after the load started), uniform in
    [lo_frac, hi_frac] × ``duration``, sorted, at least ``min_gap`` apart (the gap shrinks to
    fit if the window is too short)."""
    lo, hi = lo_frac * duration, hi_frac * duration
    gap = min(min_gap, (hi - lo) / max(kills, 1))
    free = hi - lo - gap * (kills - 1)
    return [round(lo + x + i * gap, 1) for i, x in enumerate(sorted(rng.uniform(0, free) for _ in range(kills)))]


# --------------------------------------------------------------------------- checks
def check(ok: bool, detail: str) -> dict:
    return {"ok": bool(ok), "detail": detail}


def _diff(got: dict, want: dict, limit: int = 5) -> str:
    keys = sorted(set(got) | set(want))
    bad = [k for k in keys if got.get(k) != want.get(k)]
    if not bad:
        return f"{len(want)} minutes equal"
    return f"{len(bad)} of {len(keys)} minutes differ, e.g. " + "; ".join(
        f"{k}: got {got.get(k)} want {want.get(k)}" for k in bad[:limit])


def _dups(counts: Counter) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def _digest(b: bytes) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


def _table(delta: Path, name: str, columns: list[str]):
    from deltalake import DeltaTable
    return DeltaTable(str(delta / name)).to_pyarrow_table(columns=columns)


def _minute_checks(delta: Path, want: dict) -> tuple[dict, dict]:
    """``minute_stats`` and ``minute_uids`` against the truth; also the counts per minute."""
    ms = _table(delta, "minute_stats", ["window_start", "ts", "unique_users", "frames", "status"]).to_pylist()
    got = {r["ts"]: (r["unique_users"], r["frames"]) for r in ms}
    statuses = Counter(r["status"] for r in ms)
    dup = _dups(Counter(r["window_start"] for r in ms))
    uids = _table(delta, "minute_uids", ["minute", "uid"])
    distinct = uids.group_by(["minute", "uid"]).aggregate([]).num_rows
    per_minute = {r["minute"]: r["minute_count"] for r in uids.group_by("minute").aggregate(
        [("minute", "count")]).to_pylist()}
    want_users = {m: u for m, (u, _) in want.items()}
    return {"minute_stats = truth": check(got == want, _diff(got, want)),
            "minute_stats all final": check(set(statuses) == {"final"}, str(dict(statuses))),
            "minute_stats one row per minute": check(dup == 0, f"{len(ms)} rows, {dup} duplicate(s)"),
            "minute_uids one row per (minute, uid)": check(
                distinct == uids.num_rows, f"{uids.num_rows:,} rows, {uids.num_rows - distinct:,} duplicate(s)"),
            "minute_uids per minute = truth": check(per_minute == want_users, _diff(per_minute, want_users)),
            }, got


def _quarantine_checks(delta: Path, truth: dict, input_path: Path | None) -> tuple[dict, int]:
    """One row per source coordinate, the injected defects by reason, raw bytes = input lines."""
    import pyarrow.compute as pc

    from tools.loader import open_lines
    q = _table(delta, "quarantine", ["reason", "raw", "topic", "partition", "offset"])
    qdup = _dups(Counter(zip(*(q.column(c).to_pylist() for c in ("topic", "partition", "offset")))))
    reasons = dict(Counter(q.column("reason").to_pylist()))
    wq = {k: v for k, v in truth["defects"].items() if k not in NOT_QUARANTINED and v}
    out = {"quarantine one row per (topic, partition, offset)": check(qdup == 0, f"{q.num_rows:,} rows, "
                                                                                 f"{qdup} duplicate(s)"),
           "quarantine = injected defects": check(reasons == wq, f"got {reasons}, injected {wq}")}
    if input_path is not None:
        lines = Counter(_digest(x.rstrip(b"\r\n")) for x in open_lines(str(input_path)) if x.rstrip(b"\r\n"))
        raw = Counter(_digest(b) for b in q.column("raw").to_pylist() if b is not None)
        missing = sum((raw - lines).values()) + int(pc.sum(pc.is_null(q.column("raw"))).as_py() or 0)
        out["quarantined raw bytes are input lines"] = check(
            missing == 0, f"{q.num_rows:,} rows, {missing} not a line of {input_path.name}")
    return out, q.num_rows


def check_exact(delta: Path, truth: dict, results: list[dict] | None, input_path: Path | None = None) -> dict:
    """The end-of-run checks (see the module docstring): name → {"ok", "detail"}."""
    want = {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}
    checks, got = _minute_checks(delta, want)
    quarantine, quarantined = _quarantine_checks(delta, truth, input_path)
    checks.update(quarantine)
    counted = sum(f for _, f in got.values())
    checks["counted + quarantined = frames"] = check(
        counted + quarantined == truth["frames"],
        f"{counted:,} + {quarantined:,} = {counted + quarantined:,} of {truth['frames']:,}")
    if results is not None:
        last = {r.get("window_start"): r for r in results}
        kgot = {r["ts"]: (r["unique_users"], r["frames"]) for r in last.values()}
        kst = Counter(r["status"] for r in last.values())
        checks["minuteStats last value per key = truth"] = check(
            kgot == want and set(kst) == {"final"}, f"{_diff(kgot, want)}; statuses {dict(kst)}; "
                                                    f"{len(results):,} messages")
    return checks


def verdict(rs: RunSpace, truth: dict, errors: list[str], input_path: Path | None = None) -> tuple[list, dict]:
    """A run's output messages and :func:`check_exact`'s checks, plus "the run finished"."""
    results = read_topic_results(rs.cfg, rs.out_topic)
    try:
        checks = check_exact(rs.delta, truth, results, input_path)
    except Exception as e:  # noqa: BLE001 - e.g. a table was never created: a failed check
        checks = {"tables readable": check(False, f"{type(e).__name__}: {e}")}
    checks["the run finished"] = check(not errors, "; ".join(x.splitlines()[0] for x in errors) or "no error")
    return results, checks


# --------------------------------------------------------------------------- the run
@dataclass
class ChaosRun:
    """What :func:`run` needs; ``conf`` points every client at the broker to use."""

    input: Path
    truth: dict
    conf: Path
    work: Path
    rate: float = RATE
    kills: int = KILLS
    seed: int = SEED
    min_gap_s: float = 60.0
    min_up_s: float = 3.0
    live: bool = False
    spark_flags: list = field(default_factory=list)
    keep: bool = False


def run(c: ChaosRun) -> dict:
    """The whole chaos experiment (steps 2–5 of the module docstring); returns the result
    dict with ``checks`` and ``ok``. The broker must answer at ``c.conf``'s address."""
    rs = RunSpace.new(c.conf, "chaos", c.work)
    frames = c.truth["frames"]
    schedule = kill_schedule(random.Random(c.seed), c.kills, frames / c.rate, c.min_gap_s)
    say(f"chaos: {frames:,} frames of {c.input.name} at {c.rate:g}/s (~{frames / c.rate:.0f}s) into {rs.topic}; "
        f"kills at {', '.join(f'{t:.1f}' for t in schedule)} s after the load starts (seed {c.seed})")
    job = LiveJob(rs.args, rs.logs, c.spark_flags)
    log: dict = {"kills": [], "restart_failures": [], "unexpected_exits": [], "errors": []}
    facts: dict = dict.fromkeys(FACTS)
    loader = None
    t_wall0 = time.monotonic()
    with LoadAverage() as load:
        with recorded("chaos", log["errors"], lambda: stop_all(loader, job)):
            job.start()
            facts["job_ready_s"] = round(job.wait_ready(), 1)
            say(f"chaos: job ready after {facts['job_ready_s']:.0f}s; starting the loader")
            loader = Loader(c.input, rs.topic, c.conf, c.rate, rs.logs / "loader.err", c.live)
            for i, at in enumerate(schedule, 1):
                log["kills"].append(_kill_at(c, rs, job, loader, i, at, log))
            facts["load_s"] = round(loader.wait(), 1)
            facts["rate_achieved"] = round(frames / facts["load_s"], 1)
            say(f"chaos: loader done: {frames:,} frames in {facts['load_s']:.0f}s "
                f"({facts['rate_achieved']:,.0f}/s); draining")
            facts.update(rs.finish(job, c.spark_flags))
        results, checks = verdict(rs, c.truth, log["errors"], c.input)
    res = {"kind": "chaos", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "input": rel(c.input), "frames": frames,
           "rate_target": c.rate, "loader_live": c.live, "seed": c.seed, "kills_planned": c.kills,
           "schedule_s": schedule, "min_gap_s": c.min_gap_s, "min_up_s": c.min_up_s, "spark_flags": c.spark_flags,
           "topic": rs.topic, **facts,
           "job_starts": job.starts + (facts["final_pass_s"] is not None), "batch_lines": rs.batch_lines(), **log,
           "truth": {"minutes": len(c.truth["minutes"]), "valid_frames": c.truth["valid_frames"],
                     "defects": c.truth["defects"]},
           "output_messages": len(results), "load_average": load.summary(),
           "wall_s": round(time.monotonic() - t_wall0, 1), "run_dir": rel(rs.run_dir)}
    r = [k["restart_to_first_batch_s"] for k in log["kills"] if "restart_to_first_batch_s" in k]
    res["restart_to_first_batch_s"] = {"min": min(r, default=None), "max": max(r, default=None),
                                       "mean": round(sum(r) / len(r), 1) if r else None}
    parts = [k["startup"] for k in log["kills"] if k.get("startup")]
    res["restart_parts_mean_s"] = {p: round(sum(x.get(p, 0) for x in parts) / len(parts), 1)
                                   for p in dict.fromkeys(q for x in parts for q in x)} if parts else {}
    res["checks"] = {**checks, **_kill_checks(res, c.kills)}
    res["ok"] = all(x["ok"] for x in res["checks"].values())
    rs.clean(c.keep)
    return res


def _kill_checks(res: dict, planned: int) -> dict:
    kills = res["kills"]
    return {"every restart reached its first batch": check(
                not res["restart_failures"], f"{len(kills)} kill(s), {len(res['restart_failures'])} failed restart(s)"),
            "no kill left a process behind": check(
                all(not k["survivors"] for k in kills), f"{sum(len(k['survivors']) for k in kills)} survivor(s)"),
            "the job never died by itself": check(not res["unexpected_exits"],
                                                  f"{len(res['unexpected_exits'])} unexpected exit(s)"),
            f"{planned} kills done": check(len(kills) == planned, f"{len(kills)} of {planned}")}


def _wait_for_moment(c: ChaosRun, rs: RunSpace, job: LiveJob, loader: Loader, at: float, log: dict) -> None:
    """Until ``at`` s into the load, with a job that has run ``min_up_s`` since its first
    batch; a job that died by itself meanwhile is noted and started again."""
    while True:
        now = time.monotonic()
        if not job.alive():
            log["unexpected_exits"].append({"at_s": round(now - loader.started_at, 1),
                                            "returncode": job.proc.returncode, "log": rel(job.err)})
            say(f"chaos: the job exited by itself ({job.proc.returncode}); restarting")
            job.start()
            job.wait_ready(idle=rs.idle)
            continue
        if now - loader.started_at >= at and job.ready_at is not None and now - job.ready_at >= c.min_up_s:
            return
        time.sleep(0.05)


def _kill_at(c: ChaosRun, rs: RunSpace, job: LiveJob, loader: Loader, i: int, at: float, log: dict) -> dict:
    """Kill ``i``: wait for its moment, SIGKILL the job's tree, start it again, time its
    first batch."""
    _wait_for_moment(c, rs, job, loader, at, log)
    progress = checkpoint_progress(rs.ckpt)
    loaded = topic_messages(rs.cfg, rs.topic)
    t_kill = time.monotonic()   # the SIGKILL's moment (the two reads above describe the job at it)
    tree = job.kill()
    k = {"kill": i, "scheduled_s": at, "at_s": round(t_kill - loader.started_at, 1), "during_load": loader.running,
         "frames_in_topic": loaded, "batch_planned": progress["planned"], "batch_committed": progress["committed"],
         "batch_state": progress["state"], "batch_in_flight": progress["planned"] > progress["committed"],
         "load1": round(os.getloadavg()[0], 2), **tree}
    say(f"chaos: kill {i} at {k['at_s']:.1f}s (scheduled {at:.1f}s): batch {progress['planned']} "
        f"{'in flight' if k['batch_in_flight'] else 'committed'}, {tree['processes']} processes "
        f"in {tree['groups']} group(s) killed, {len(tree['survivors'])} survivor(s); restarting")
    job.start()
    try:
        k["restart_to_first_batch_s"] = round(job.wait_ready(idle=rs.idle), 1)
    except BenchError as e:
        log["restart_failures"].append({"kill": i, "error": str(e).replace(f"{REPO_ROOT}/", "")[:2000]})
        raise BenchError(f"restart {i} failed: {e}") from None
    k["ready_by"], k["startup"] = job.ready_how, job.startup()
    k["kill_to_first_batch_s"] = round(job.ready_at - t_kill, 1)
    say(f"chaos: restart {i}: first batch {k['restart_to_first_batch_s']:.1f}s after the restart")
    return k


# --------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    yn = {True: "yes", False: "no"}
    kills = [(k["kill"], f"{k['at_s']} ({k['scheduled_s']})", yn[k["during_load"]], f"{k['frames_in_topic']:,}",
              f"{k['batch_planned']} / {k['batch_committed']}", yn[k["batch_in_flight"]],
              f"{k['processes']} ({k['groups']})", len(k["survivors"]), k.get("restart_to_first_batch_s", "–"),
              k.get("kill_to_first_batch_s", "–"), k["load1"]) for k in res["kills"]]
    d = res["truth"]["defects"]
    return "\n".join([
        f"# Chaos run {res['date']}", "", render.live_run_line(res), "",
        f"**{render.verdict(res['ok'])}** — {res['frames']:,} frames ({res['input']}) streamed by the loader at "
        f"{render.fmt_int(res['rate_achieved'])} frames/s (target {res['rate_target']:g}) for "
        f"{render.fmt_int(res['load_s'])} s into `{res['topic']}`; the live job was SIGKILLed {len(res['kills'])} "
        f"times (seed {res['seed']}, scheduled at {', '.join(f'{t:g}' for t in res['schedule_s'])} s) and restarted "
        f"from its checkpoint each time; {res['job_starts']} job starts in all (incl. the final `--available-now` "
        f"pass), {res['batch_lines']} batch lines. Wall time {res['wall_s']:.0f} s."
        + (f" The job's spark-submit flags: `{' '.join(res['spark_flags'])}`." if res.get("spark_flags") else "")
        + render.errors_sentence(res["errors"]), "",
        *render.table(["kill", "at s (scheduled)", "during load", "frames in topic", "batch planned / committed",
                       "in flight", "processes (groups) killed", "survivors", "restart → first batch s",
                       "kill → first batch s", "load1"], kills, "rrlrrlrrrrr"), "",
        f"First start → first batch {res['job_ready_s']} s; drain after the load {res['drain_s']} s; final pass "
        f"{res['final_pass_s']} s; {res['output_messages']:,} minuteStats messages. Truth: "
        f"{res['truth']['minutes']} minutes, {res['truth']['valid_frames']:,} valid frames, injected defects "
        f"{', '.join(f'{k}={v}' for k, v in d.items())}.", "",
        "Where a restart's time went (mean s over the restarts, from the job's `up in` line: spark-submit's JVM "
        "start to the query's start, then its first batch): "
        + (", ".join(f"{k} {v:g}" for k, v in res.get("restart_parts_mean_s", {}).items()) or "–") + ".", "",
        *render.checks(res["checks"])]) + "\n"


# --------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help=f"frames to generate (default {FRAMES:,}); "
                                               "results then go to bench/.work/smoke/")
    ap.add_argument("--rate", type=float, default=RATE, help=f"loader frames/s (default {RATE:g}, the sample's "
                                                              "rate) — also the generated event rate")
    ap.add_argument("--live", action="store_true", help="loader --live: pace by the frames' own ts (capped at --rate)")
    ap.add_argument("--kills", type=int, default=KILLS, help=f"SIGKILLs (default {KILLS})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"seed of the kill moments (default {SEED})")
    ap.add_argument("--min-gap", type=float, default=60.0, help="seconds between scheduled kills, at least "
                                                                "(default 60; shrinks to fit a short load)")
    ap.add_argument("--min-up", type=float, default=3.0,
                    help="a kill waits until the restarted job has run this long after its first batch (default 3)")
    ap.add_argument("--input", help="JSONL(.gz) to stream instead of generated frames (needs --truth)")
    ap.add_argument("--truth", help="the generator's truth file of --input")
    common_args(ap, "chaos-<date>.json/.md go (default bench/results/; with --frames or --input "
                    "bench/.work/smoke/)")
    args = ap.parse_args(argv)
    if args.kills < 1 or args.rate <= 0:
        ap.error("--kills must be >= 1 and --rate > 0")
    if bool(args.input) != bool(args.truth):
        ap.error("--input and --truth go together")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    conf = conf_for(args)

    def run_it() -> dict:
        if args.input:
            inp, truth = Path(args.input), json.loads(Path(args.truth).read_text())
        else:
            inp, truth = defect_frames(args.frames or FRAMES, args.rate)
        return run(ChaosRun(inp, truth, conf, WORK_DIR / "chaos", args.rate, args.kills, args.seed, args.min_gap,
                            args.min_up, args.live, spark_flags(args), args.keep))
    out = Path(args.out_dir) if args.out_dir else (WORK_DIR / "smoke" if args.frames or args.input else RESULTS_DIR)
    return report_main("chaos", conf, run_it, out, "chaos", markdown)


if __name__ == "__main__":
    sys.exit(main())
