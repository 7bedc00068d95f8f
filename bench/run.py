"""Benchmarks of doodle minute stats, side by side on the same Kafka topic.

    python -m bench.run                      # `make bench`: the 1M-frame sample (make sample)
    python -m bench.run --frames 20000 --smoke   # `make bench-smoke`: CI, a few minutes
    python -m bench.run --frames 20000 --smoke --rows job_exact --skip-parsers --skip-latency \
        --backlog-frames 60000 --garbage-frames 2000     # only the backlog and poison rows
    python -m bench.run --frames 20000 --smoke --rows none --skip-parsers --skip-latency \
        --no-poison                                      # only backfill vs DuckDB

Steps (progress on stderr, the result table on stdout):

1. input: ``data/stream.jsonl.gz`` or, with ``--frames N``, N generated frames
   (rate 1000, users 100k, seed 1) in ``bench/.work/``; loaded into the topic
   ``bench-<frames>`` unless it already holds exactly that many messages. The embedded
   broker is started if none answers (and stopped again at the end).
2. throughput rows, one process each: read_ceiling, old_consumer, naive_spark,
   job_exact, job_approx (``bench/rows.py``), in interleaved rounds (``--repeat``,
   default 3): the median run of each row is reported, with every run's frames/s.
   Job rows also record what the driver received (rows, bytes) and the driver's and
   executors' CPU seconds (``bench.rows.job_cost``).
   Then, once each: ``backlog`` (job_exact on ``--backlog-frames`` generated frames,
   seed 3, topic ``bench-<N>``; default 3M, off with ``--smoke``), and the poison rows
   (``--no-poison`` skips them): ``replay`` (the input twice into a fresh topic, the job
   after each load: the second run's frames are all late) and ``garbage``
   (``--garbage-frames`` lines of ~2 KB that are not JSON).
   Then backfill vs DuckDB (``bench/backfill.py``, ``--no-backfill`` skips it):
   ``duckdb_jsonl``, ``backfill_jsonl``, ``duckdb_gz24``, ``backfill_gz24`` on the input
   (``.jsonl.gz``) and its plain ``.jsonl`` copy in ``bench/.work/``, in the same
   interleaved rounds; each result checked against the input's truth file.
3. parse paths in Spark (``bench/parsers.py``) unless ``--skip-parsers``.
4. live latency (``bench/latency.py``) unless ``--skip-latency``.
   Then the floor (``bench/floor.py``, ``--no-floor`` skips it): Spark's minimal stateless
   query vs the job, per micro-batch of 1,000 frames — wall p50/p90, Spark jobs and driver
   CPU per batch — on ``--floor-frames`` frames with defects (20,000; ``--smoke`` 3,000) in
   topics of a broker of its own (127.0.0.1:29092, started and stopped by the step).
5. ``bench/results/<date>.{json,md,png}`` — with the costs per 1M frames and a projection
   to more executor cores (``bench.report.projection``) — and the section of
   docs/performance.md between ``<!-- bench:start -->``/``<!-- bench:end -->``
   (``--no-docs`` skips it; ``--smoke``: ``bench/.work/smoke/``, the page untouched).

Exit status: 0 if every step ran, 1 if a step failed (the others still run and the
results are written), 2 for a problem to fix first (missing sample, broker, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    BenchError,
    broker,
    frames_file,
    guarded,
    load_cfg,
    machine_info,
    median_run,
    prepare_topic,
    rel,
    run_process,
    say,
    spark_cmd,
)
from bench.rows import ROWS

QUIET_LOAD = 1.5
BACKLOG_FRAMES, BACKLOG_SEED = 3_000_000, 3
GARBAGE_FRAMES, SMOKE_GARBAGE = 1_000_000, 2_000
SMOKE_BACKFILL = 20_000
FLOOR_FRAMES, SMOKE_FLOOR_FRAMES = 20_000, 3_000


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help="generate N frames instead of using data/stream.jsonl.gz")
    ap.add_argument("--smoke", action="store_true",
                    help="quick check (CI): short latency run, one repetition, results to bench/.work/smoke/")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated throughput rows to run (default: all; 'none': no throughput rows)")
    ap.add_argument("--repeat", type=int, help="runs of each throughput row, interleaved; the median run "
                                               "(by frames/s) is reported (default 3, --smoke 1)")
    ap.add_argument("--skip-parsers", action="store_true", help="skip the parse-path comparison")
    ap.add_argument("--skip-latency", action="store_true", help="skip the live latency run")
    ap.add_argument("--backlog-frames", type=int,
                    help=f"frames of the backlog row (job_exact on generated frames, seed {BACKLOG_SEED}); "
                         f"0: no backlog row (default {BACKLOG_FRAMES:,}, --smoke 0)")
    ap.add_argument("--poison", action=argparse.BooleanOptionalAction, default=True,
                    help="run the poison rows: replay of final minutes, garbage burst (default: on)")
    ap.add_argument("--garbage-frames", type=int,
                    help=f"garbage lines of the poison row (default {GARBAGE_FRAMES:,}, --smoke {SMOKE_GARBAGE:,})")
    ap.add_argument("--backfill", action=argparse.BooleanOptionalAction, default=True,
                    help="run the backfill-vs-DuckDB rows on the input and its plain copy (default: on)")
    ap.add_argument("--backfill-frames", type=int,
                    help="input of the backfill rows: N generated frames (default: the run's input; "
                         f"--smoke: at most {SMOKE_BACKFILL:,})")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="run the floor step: Spark's minimal stateless query vs the job, per micro-batch of "
                         "1,000 frames, on its own broker (bench/floor.py; default: on)")
    ap.add_argument("--floor-frames", type=int,
                    help=f"frames of the floor step's input, with defects (default {FLOOR_FRAMES:,}, "
                         f"--smoke {SMOKE_FLOOR_FRAMES:,})")
    ap.add_argument("--floor-kafka-port", type=int, default=29092,
                    help="port of the floor step's own broker (default 29092; controller = port + 1)")
    ap.add_argument("--floor-master", help="spark-submit --master of the floor step (default: [spark] master), "
                                           "e.g. spark://127.0.0.1:7077 after `make cluster-up`")
    ap.add_argument("--parser-frames", type=int, default=200_000, help="frames for the parse paths (200000)")
    ap.add_argument("--latency-duration", type=float, help="live replay seconds (default 150, --smoke 40)")
    ap.add_argument("--key", choices=["uid", "none"], default="uid",
                    help="message key when loading the topic (default uid, like `make load`)")
    ap.add_argument("--no-profile", action="store_true",
                    help="run the Spark rows without event log and step timings")
    ap.add_argument("--out-dir", help="where results go (default bench/results, --smoke bench/.work/smoke)")
    ap.add_argument("--no-docs", "--no-readme", dest="no_docs", action="store_true",
                    help="do not update the bench section of docs/performance.md (--no-readme: the old name)")
    ap.add_argument("--bootstrap-servers", help="Kafka to use (default: [kafka] bootstrap_servers); "
                                                "only the default one is started when down")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- steps
def run_parsers(input_path: Path, limit: int, repeat: int, work: Path) -> dict:
    """bench/parsers.py under spark-submit (its own JVM), results read back."""
    out = work / "parsers" / "parsers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = spark_cmd("bench/parsers.py", ["--input", input_path, "--limit", limit, "--repeat", repeat,
                                         "--out", out])
    say(f"parsers: {limit:,} frames, best of {repeat}")
    res = run_process(cmd, out.parent, "parsers", timeout=3600)
    d = res.output("parsers", out)
    d["wall_s"], d["peak_rss_mb"] = res.wall_s, res.peak_rss_mb
    return d


def where_time_goes(rows: list[dict]) -> str:
    """Plain-text evidence: per-step timings and the event-log breakdown of the Spark rows."""
    from bench.eventlog import render
    from bench.render import binary_bytes
    out = []
    for r in rows:
        if r.get("error"):
            continue
        if r.get("steps_s"):
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in r["steps_s"].items())
            out.append(f"{r['name']}: query {r['query_s']:.1f}s, in batches {r.get('batch_s', 0):.1f}s "
                       f"({r.get('batches')} batches); steps summed: {steps}")
        ev = r.get("eventlog")
        if ev:
            cats = "; ".join(f"{c} {d.get('run_s', 0):.1f}s task ({d.get('cpu_s', 0):.1f}s CPU)"
                             for c, d in ev["categories"].items())
            runs = f" ({r['runs_in_eventlog']} runs)" if r.get("runs_in_eventlog", 1) > 1 else ""
            out.append(f"{r['name']}: event log{runs}: jobs running {ev['jobs_busy_s']:.1f}s of {ev['span_s']:.1f}s "
                       f"({ev['jobs']} jobs), driver-only {ev['driver_only_s']:.1f}s; task time "
                       f"{ev['task_run_s']:.1f}s (CPU {ev['task_cpu_s']:.1f}s, GC {ev['task_gc_s']:.1f}s): {cats}; "
                       f"task results to the driver {binary_bytes(ev.get('result_bytes', 0))}"
                       + (f" ({n:,} rows)" if (n := (r.get("cost") or {}).get("driver_rows")) is not None else ""))
    job = next((r for r in rows if r["name"] == "job_exact" and r.get("eventlog")), None)
    if job:
        out += ["", "job_exact, event log detail:", render(job["eventlog"])]
    return "\n".join(out)


def _step(name: str, fn, failures: list[str]):
    """Run one step; a failure is recorded and reported, the run goes on."""
    try:
        return fn()
    except BenchError as e:
        say(f"{name} FAILED: {e}")
        failures.append(f"{name}: {str(e).splitlines()[0]}")
    except Exception as e:  # noqa: BLE001 - report and continue with the other steps
        say(f"{name} FAILED: {e!r}\n{traceback.format_exc()}")
        failures.append(f"{name}: {e!r}")
    return None


# --------------------------------------------------------------------------- main
def plan(args: argparse.Namespace) -> dict:
    """The run's settings from its flags (checked), with the ``--smoke`` defaults."""
    rows = [r.strip() for r in args.rows.split(",") if r.strip() and r.strip() != "none"]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise BenchError(f"unknown rows: {', '.join(sorted(unknown))} (known: {', '.join(ROWS)})")
    s = args.smoke
    p = {"rows": rows, "work": WORK_DIR / ("smoke" if s else "runs"),
         "out_dir": Path(args.out_dir) if args.out_dir else (WORK_DIR / "smoke" if s else RESULTS_DIR),
         "repeat": 1 if s else 2, "rounds": args.repeat or (1 if s else 3),
         "duration": args.latency_duration or (40.0 if s else 150.0), "profile": not args.no_profile,
         "backlog": args.backlog_frames if args.backlog_frames is not None else (0 if s else BACKLOG_FRAMES),
         "garbage": args.garbage_frames if args.garbage_frames is not None else
         (SMOKE_GARBAGE if s else GARBAGE_FRAMES), "floor": args.floor_frames or (SMOKE_FLOOR_FRAMES if s else
                                                                                  FLOOR_FRAMES)}
    if p["rounds"] < 1:
        raise BenchError("--repeat must be >= 1")
    if p["backlog"] < 0 or p["garbage"] < 1:
        raise BenchError("--backlog-frames must be >= 0 and --garbage-frames >= 1")
    if args.backfill_frames is not None and args.backfill_frames < 1:
        raise BenchError("--backfill-frames must be >= 1")
    if p["floor"] < 4:
        raise BenchError("--floor-frames must be >= 4")
    return p


def throughput(p: dict, topic: str, failures: list[str]) -> list[dict]:
    """The throughput rows in interleaved rounds (drift on the machine hits every row alike):
    the median run of each."""
    from bench.rows import run_row
    runs: dict[str, list[dict]] = {name: [] for name in p["rows"]}
    errors: dict[str, str] = {}
    for k in range(p["rounds"]):
        if p["rounds"] > 1:
            say(f"round {k + 1} of {p['rounds']}")
        for name in p["rows"]:
            row = _step(name, lambda name=name: run_row(name, topic, p["work"], profile=p["profile"],
                                                         repeat_ceiling=p["repeat"]), failures)
            if row is None:
                errors[name] = failures[-1]
            else:
                runs[name].append(row)
    return [median_run(runs[n]) if runs[n] else {"name": n, "error": errors[n]} for n in p["rows"]]


def poison_rows(cfg, frames, p: dict, key: str, failures: list[str]) -> dict:
    """The replay and garbage rows; one that does not finish or whose quarantine is off fails."""
    from bench.rows import run_garbage, run_replay
    out = {}
    for name, fn in (("replay", lambda: run_replay(cfg, frames, p["work"], profile=p["profile"], key=key)),
                     ("garbage", lambda: run_garbage(cfg, p["garbage"], p["work"], profile=p["profile"]))):
        row = _step(name, fn, failures)
        out[name] = row if row is not None else {"name": name, "error": failures[-1]}
        if row is not None and not (row.get("finished") and row.get("quarantine_ok")):
            failures.append(f"{name}: " + ("did not finish" if not row.get("finished") else
                                           "quarantine counts not as expected"))
    return out


def on_broker(args, cfg, frames, topic: str, p: dict, failures: list[str]) -> dict:
    """Every step that uses the run's broker: the throughput rows, backlog, poison, backfill,
    parse paths, live latency."""
    out: dict = {"topic_load": prepare_topic(cfg, frames, topic, key=args.key),
                 "rows": throughput(p, topic, failures), "backlog": None, "poison": None, "backfill": None,
                 "parsers": None, "latency": None}
    if p["backlog"]:
        from bench.rows import run_backlog

        def _backlog():
            bf = frames if p["backlog"] == frames.count else frames_file(p["backlog"], seed=BACKLOG_SEED)
            prepare_topic(cfg, bf, f"bench-{bf.count}", key=args.key)
            return run_backlog(f"bench-{bf.count}", bf.count, p["work"], profile=p["profile"])
        out["backlog"] = _step("backlog", _backlog, failures)
    if args.poison:
        out["poison"] = poison_rows(cfg, frames, p, args.key, failures)
    if args.backfill:
        from bench.backfill import measure as measure_backfill
        n = args.backfill_frames or (SMOKE_BACKFILL if args.smoke and frames.count > SMOKE_BACKFILL else None)
        bf = frames if n is None or n == frames.count else frames_file(n)
        out["backfill"] = _step("backfill", lambda: measure_backfill(bf, p["work"], p["rounds"], failures=failures),
                                failures)
    if not args.skip_parsers:
        n = min(args.parser_frames, frames.count)
        out["parsers"] = _step("parsers", lambda: run_parsers(frames.path, n, p["repeat"], p["work"]), failures)
    if not args.skip_latency:
        from bench.latency import measure
        out["latency"] = _step("latency", lambda: measure(frames.path, p["duration"], p["work"],
                                                          args.bootstrap_servers), failures) or {"error": failures[-1]}
    return out


def floor_step(args, p: dict, failures: list[str]) -> dict:
    """The floor, after the run's broker: it starts and stops a broker of its own."""
    from bench.floor import DEFAULT_ROUNDS
    from bench.floor import measure as measure_floor
    floor = _step("floor", lambda: measure_floor(p["floor"], 1 if args.smoke else DEFAULT_ROUNDS, args.floor_master,
                                                 kafka_port=args.floor_kafka_port, smoke=args.smoke), failures)
    if floor is None:
        return {"error": failures[-1]}
    failures += [f"floor: {x}" for x in floor.get("failures") or []]
    return floor


def run(args: argparse.Namespace) -> int:
    t_start, started, date = time.time(), time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.strftime("%Y-%m-%d")
    load1 = os.getloadavg()[0]
    if load1 > QUIET_LOAD:
        say(f"note: load average {load1:.2f} > {QUIET_LOAD} — other work is running; numbers will be noisy")
    p = plan(args)
    frames = frames_file(args.frames)
    say(f"input {frames.path.relative_to(REPO_ROOT)}: {frames.count:,} frames, mean {frames.mean_bytes:,.0f} B")
    cfg = load_cfg(args.bootstrap_servers)
    failures: list[str] = []
    topic = f"bench-{frames.count}"
    with broker(cfg, may_start=cfg.kafka.bootstrap_servers == load_cfg().kafka.bootstrap_servers) as started_broker:
        steps = on_broker(args, cfg, frames, topic, p, failures)
    floor = floor_step(args, p, failures) if args.floor else None
    rows, backlog = steps.pop("rows"), steps["backlog"]
    result = {"date": date, "started": started, "smoke": args.smoke, "elapsed_s": round(time.time() - t_start, 1),
              "machine": machine_info(), "frames": frames.count, "frame_bytes": round(frames.mean_bytes, 1),
              "input": str(frames.path.relative_to(REPO_ROOT)), "topic": topic,
              "broker_started_by_bench": started_broker, "results": [r for r in rows if not r.get("error")],
              "failed_rows": [r for r in rows if r.get("error")], **steps, "floor": floor,
              "where_time_goes": where_time_goes(rows + ([backlog] if backlog else [])), "failures": failures}
    result["machine"]["load_avg_at_start"] = [round(load1, 2)] + result["machine"]["load_avg_at_start"][1:]
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report_run(result, cfg, p["out_dir"], update_docs=not args.smoke and not args.no_docs,
                      t_start=t_start)


def report_run(result: dict, cfg, out_dir: Path, update_docs: bool, t_start: float) -> int:
    """Targets, costs and projection; the result files, the table, the docs section."""
    from bench import report
    result["targets"] = report.evaluate_targets(result["results"], result["latency"], cfg.job.watermark_s,
                                                result["backfill"])
    result["costs"] = report.cost_rows(result)
    result["projection"] = report.projection(result, max_offsets_per_trigger=cfg.job.max_offsets_per_trigger)
    paths = report.write_all(result, out_dir, result["date"])
    print(report.text_table(result))
    say("wrote " + ", ".join(rel(x) for x in paths.values()))
    if update_docs and report.update_performance_section(
            result, link=rel(paths["md"]) if paths["md"].resolve().is_relative_to(REPO_ROOT) else None):
        say("updated the bench section of docs/performance.md")
    failures = result["failures"]
    if failures:
        say(f"{len(failures)} step(s) failed: " + "; ".join(failures))
        return 1
    say(f"done in {time.time() - t_start:.0f}s")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return guarded("bench", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
