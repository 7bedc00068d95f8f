"""Backfill speed against DuckDB: the same files, the same run, one machine.

==================  =====================================================================
``duckdb_jsonl``    DuckDB (``SET threads=2``) on the plain ``.jsonl`` copy of the input:
                    ``read_ndjson(file, columns={ts: 'VARCHAR', uid: 'VARCHAR'})``,
                    ``try_cast(ts AS BIGINT)``, minute = ``ts - ts % 60``, grouped by minute
                    with ``count(DISTINCT uid)`` and ``count(*)``
``backfill_jsonl``  ``./spark-submit.sh jobs/backfill.py --input <the .jsonl copy>`` with
                    fresh Delta tables and checkpoint, the default chunk size: one big file,
                    read in byte-range splits by every core
``duckdb_gz24``     the DuckDB query on 24 ``.jsonl.gz`` files (the input cut into 24
                    consecutive pieces, as a day of hourly files; DuckDB reads files in
                    parallel, each ``.gz`` on one thread)
``backfill_gz24``   the backfill on the same 24 files (a ``.gz`` cannot split: one task a file)
==================  =====================================================================

frames/s: DuckDB — frames / the query's time (``execute`` to the fetched result, in its
own process after ``import duckdb`` and ``connect``: Python start-up excluded); the
backfill — frames / ``seconds`` of the job's ``--metrics-file`` (from the first chunk to
the end of the final flush, JVM and session start excluded); ``wall_s`` is the whole
process. Both results are checked against the input's truth file (per minute: unique
users, frames); DuckDB's only when the input has no invalid frames (``count(*)`` counts
every line, and a frame without a valid ``ts`` falls into a NULL minute, where the backfill
quarantines it).

The plain copy and the 24 files are written once, next to the generated inputs in
``bench/.work/`` (``<stem>.jsonl``, ``<stem>-24/``), and reused while newer than the ``.gz``.

    python -m bench.backfill --frames 20000            # the four rows alone, one round
    python -m bench.backfill --repeat 3                # on data/stream.jsonl.gz

``bench.run`` runs them with ``--backfill`` (the default); ``--no-backfill`` skips them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import render
from bench.common import (
    WORK_DIR,
    BenchError,
    Frames,
    drop_tables,
    fresh_dir,
    machine_info,
    median_run,
    python,
    read_truth,
    rel,
    run_process,
    say,
    spark_cmd,
    with_load,
    write_json,
)
from bench.render import fmt_int

ROWS = ("duckdb_jsonl", "backfill_jsonl", "duckdb_gz24", "backfill_gz24")
PAIRS = (("jsonl", 0.35), ("gz24", 0.8))   # backfill_<fmt> ≥ factor × duckdb_<fmt>, exact
PIECES = 24
DUCKDB_THREADS = 2
SMOKE_FRAMES = 20_000
TIMEOUT_S = 3600
# two years of history at the sample's mean rate (the same figure as bench.report.BACKFILL_RATE)
HISTORY_RATE, HISTORY_DAYS = 47_404, 730
HISTORY_FRAMES = HISTORY_RATE * 86_400 * HISTORY_DAYS

EXACT = {True: "exact", False: "NOT exact", None: "not checked"}

QUERY = """
SELECT ts - ts % 60 AS minute, count(DISTINCT uid) AS unique_users, count(*) AS frames
FROM (SELECT try_cast(ts AS BIGINT) AS ts, uid
      FROM read_ndjson(?, columns = {ts: 'VARCHAR', uid: 'VARCHAR'}))
GROUP BY minute
ORDER BY minute
"""


# --------------------------------------------------------------------------- inputs
def plain_copy(gz: Path, work: Path = WORK_DIR) -> Path:
    """A decompressed copy of ``gz`` in ``work`` (``<stem>.jsonl``), written once and reused
    while it is newer than ``gz``. A plain input is returned as it is."""
    if gz.suffix != ".gz":
        return gz
    dst = work / gz.name[:-3]
    if dst.exists() and dst.stat().st_mtime >= gz.stat().st_mtime and dst.stat().st_size > 0:
        return dst
    work.mkdir(parents=True, exist_ok=True)
    say(f"backfill: writing the plain copy {rel(dst)} (once)")
    tmp = dst.with_name(dst.name + ".tmp")
    with gzip.open(gz, "rb") as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 22)
    os.replace(tmp, dst)
    return dst


def pieces_copy(gz: Path, work: Path = WORK_DIR, n: int = PIECES) -> Path:
    """``gz`` cut into ``n`` consecutive ``.jsonl.gz`` files of equal line counts in
    ``work/<stem>-<n>/`` (written once, reused while newer than ``gz``); the glob of them."""
    stem = gz.name[:-len(".jsonl.gz")] if gz.name.endswith(".jsonl.gz") else gz.stem
    folder = work / f"{stem}-{n}"
    glob = folder / "part-*.jsonl.gz"
    done = folder / "_done"
    if done.exists() and done.stat().st_mtime >= gz.stat().st_mtime:
        return glob
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    say(f"backfill: writing {n} pieces of the input into {rel(folder)} (once)")
    opener = gzip.open if gz.suffix == ".gz" else open
    with opener(gz, "rb") as src:
        lines = sum(1 for _ in src)
    with opener(gz, "rb") as src:
        for i in range(n):
            with gzip.open(folder / f"part-{i:02d}.jsonl.gz", "wb", compresslevel=6) as out:
                for _ in range(lines * (i + 1) // n - lines * i // n):
                    out.write(next(src))
    done.touch()
    return glob


def defect_free(truth: dict | None) -> bool:
    """Every line of the input is a valid frame (DuckDB's counts are comparable)."""
    return bool(truth) and truth.get("valid_frames") == truth.get("frames") and \
        not any((truth.get("defects") or {}).values())


def compare(got: dict[int, tuple[int, int]], truth: dict | None) -> dict:
    """Per-minute ``(unique_users, frames)`` against the truth file's ``minutes``."""
    if truth is None:
        return {"exact": None, "minutes": len(got), "note": "no truth file for this input"}
    want = {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}
    bad = sorted({*want, *got} - {k for k in want if got.get(k) == want[k]}, key=lambda k: (k is None, k or 0))
    out = {"exact": not bad, "minutes": len(got), "minutes_expected": len(want), "mismatches": len(bad)}
    if bad:
        out["first_mismatches"] = [{"minute": k, "got": got.get(k), "expected": want.get(k)} for k in bad[:5]]
    return out


# --------------------------------------------------------------------------- DuckDB
def duckdb_query(path: Path, threads: int = DUCKDB_THREADS) -> dict:
    """The query on one file, in this process: the seconds from ``execute`` to the fetched
    result, and the result per minute."""
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET threads={int(threads)}")
    t0 = time.perf_counter()
    rows = con.execute(QUERY, [str(path)]).fetchall()
    seconds = time.perf_counter() - t0
    con.close()
    return {"seconds": round(seconds, 3), "threads": threads, "duckdb": duckdb.__version__,
            "frames": sum(r[2] for r in rows), "minutes": [list(r) for r in rows]}


def _row(name: str, path: Path, m: dict, res) -> dict:
    """The figures both kinds of row have: frames/s on the query's (or job's) own seconds."""
    return {"name": name, "input": rel(path), "frames": m["frames"], "query_s": m["seconds"],
            "frames_per_s": round(m["frames"] / m["seconds"], 1), "wall_s": res.wall_s,
            "peak_rss_mb": res.peak_rss_mb, "tree_cpu_s": res.cpu_s}


def run_duckdb(name: str, path: Path, work: Path, truth: dict | None) -> dict:
    """The DuckDB query as its own process (``python -m bench.backfill --duckdb-query``)."""
    run_dir = fresh_dir(work / name)
    metrics = run_dir / "metrics.json"
    res = run_process([python(), "-m", "bench.backfill", "--duckdb-query", path, "--threads", DUCKDB_THREADS,
                       "--metrics-file", metrics], run_dir, name, timeout=TIMEOUT_S)
    m = res.output(name, metrics)
    row = {**_row(name, path, m, res), "threads": m["threads"]}
    got = {mn: (u, f) for mn, u, f in m["minutes"]}
    if defect_free(truth):
        row["check"] = compare(got, truth)
    else:
        row["check"] = {"exact": None, "minutes": len(got),
                        "note": "not compared: the input has invalid frames, which count(*) counts and a NULL "
                                "ts puts into a NULL minute" if truth else "no truth file for this input"}
    return row


# --------------------------------------------------------------------------- the backfill
def stored_minutes(delta: Path) -> dict[int, tuple[int, int]]:
    """``minute_stats`` as ``{ts: (unique_users, frames)}`` (delta-rs)."""
    from deltalake import DeltaTable
    t = DeltaTable(str(delta / "minute_stats")).to_pyarrow_table(columns=["ts", "unique_users", "frames"])
    d = t.to_pydict()
    out: dict[int, tuple[int, int]] = {}
    for ts, u, f in zip(d["ts"], d["unique_users"], d["frames"]):
        out[ts] = (-1, -1) if ts in out else (u, f)   # one row per minute is the contract: a second mismatches
    return out


def run_backfill(name: str, path: Path, work: Path, truth: dict | None, spark_flags: list[str] = ()) -> dict:
    """``jobs/backfill.py --input path`` with fresh Delta tables and checkpoint (default
    chunk size); checks ``minute_stats`` against the truth file, then removes the tables."""
    run_dir = fresh_dir(work / name)
    metrics = run_dir / "metrics.json"
    args = ["--input", path, "--delta-path", run_dir / "delta", "--checkpoint", run_dir / "checkpoint",
            "--metrics-file", metrics]
    res = run_process(spark_cmd("jobs/backfill.py", args, spark_flags), run_dir, name, timeout=TIMEOUT_S)
    try:
        m = res.output(name, metrics)
        return {**_row(name, path, m, res), "wall_frames_per_s": round(m["frames"] / res.wall_s, 1),
                "counted": m.get("counted"), "chunks": m.get("chunks"), "quarantined": m.get("quarantined"),
                "batch_s": round(m.get("batch_seconds", 0.0), 2),
                "check": compare(stored_minutes(run_dir / "delta"), truth)}
    finally:
        drop_tables(run_dir)


def scaling(frames: Frames, work: Path, master: str, cores: list[int]) -> list[dict]:
    """``backfill_jsonl`` on a standalone cluster (``make cluster-up``) with 1, 2, …
    executor cores (``--total-executor-cores``): frames/s as the cluster grows."""
    truth, plain, out = read_truth(frames.truth), plain_copy(frames.path), []
    for n in cores:
        say(f"backfill_jsonl on {master} with {n} executor core(s)")
        row = run_backfill(f"backfill_jsonl_{n}c", plain, work, truth,
                           ["--master", master, "--total-executor-cores", str(n), "--executor-cores", "1"])
        say(f"  {fmt_int(row['frames_per_s'])} frames/s, " + ("exact" if row["check"].get("exact") else "NOT exact"))
        out.append({**row, "executor_cores": n, "master": master})
    return out


# --------------------------------------------------------------------------- the comparison
def _median(runs: list[dict]) -> dict:
    row = median_run(runs)
    exact = [r["check"].get("exact") for r in runs]
    row["exact_all_runs"] = None if None in exact else all(exact)
    return row


def _one_row(name: str, path: Path, work: Path, truth: dict | None) -> dict:
    say(f"{name}: {rel(path)}")
    row = with_load(lambda: (run_duckdb if name.startswith("duckdb") else run_backfill)(name, path, work, truth))
    say(f"{name}: {row['frames']:,} frames, {row['frames_per_s']:,.0f} frames/s (query {row['query_s']:.1f}s, "
        f"wall {row['wall_s']:.1f}s, peak RSS {row['peak_rss_mb']:,.0f} MB), " + EXACT[row["check"].get("exact")])
    return row


def measure(frames: Frames, work: Path, rounds: int = 1, cores: int | None = None,
            failures: list[str] | None = None) -> dict:
    """The four rows on ``frames`` (and its plain copy), in ``rounds`` interleaved rounds;
    the median run of each row, the ratios against the targets and the projection.
    A row that fails is recorded (``failures``) and the others still run."""
    truth = read_truth(frames.truth)
    plain = plain_copy(frames.path)
    inputs = {"jsonl": plain, "gz24": pieces_copy(frames.path)}
    runs: dict[str, list[dict]] = {n: [] for n in ROWS}
    errors: dict[str, str] = {}
    t0 = time.monotonic()
    for k in range(rounds):
        if rounds > 1:
            say(f"backfill vs DuckDB: round {k + 1} of {rounds}")
        for name in ROWS:
            try:
                runs[name].append(_one_row(name, inputs[name.split("_")[1]], work, truth))
            except BenchError as e:
                say(f"{name} FAILED: {e}")
                errors[name] = str(e).splitlines()[0]
                if failures is not None:
                    failures.append(f"{name}: {errors[name]}")
    rows = [(_median(runs[n]) if runs[n] else {"name": n, "error": errors.get(n, "no run")}) for n in ROWS]
    out = {"frames": frames.count, "input_gz": rel(frames.path), "input_jsonl": rel(plain),
           "input_gz24": rel(inputs["gz24"]), "bytes_gz": frames.path.stat().st_size,
           "bytes_gz24": sum(p.stat().st_size for p in inputs["gz24"].parent.glob(inputs["gz24"].name)),
           "bytes_jsonl": plain.stat().st_size,
           "rounds": rounds, "duckdb_threads": DUCKDB_THREADS, "cores": cores or os.cpu_count(),
           "defect_free": defect_free(truth), "truth": rel(frames.truth) if frames.truth else None,
           "rows": rows, "seconds": round(time.monotonic() - t0, 1)}
    out["targets"] = targets(out)
    out["projection"] = projection(out)
    if failures is not None:
        for t in out["targets"]:
            if t.get("exact") is False:
                failures.append(f"{t['row']}: result not exact")
    return out


def _get(bf: dict, name: str) -> dict | None:
    return next((r for r in bf.get("rows") or [] if r["name"] == name and not r.get("error")), None)


def targets(bf: dict) -> list[dict]:
    """backfill_jsonl ≥ 0.35× duckdb_jsonl, backfill_gz24 ≥ 0.8× duckdb_gz24 — and exact."""
    out = []
    for fmt, factor in PAIRS:
        b, d = _get(bf, f"backfill_{fmt}"), _get(bf, f"duckdb_{fmt}")
        t = {"target": f"backfill_{fmt} ≥ {factor:g}× duckdb_{fmt}, exact", "row": f"backfill_{fmt}",
             "threshold": factor, "unit": f"× duckdb_{fmt}"}
        if not b or not d:
            out.append({**t, "value": None, "met": None, "exact": None, "margin": "not measured"})
            continue
        ratio = b["frames_per_s"] / d["frames_per_s"]
        exact = b.get("exact_all_runs")
        fast = ratio >= factor
        met = fast and exact is not False
        if fast:
            margin = f"{ratio:.2f}× ({ratio / factor - 1:+.0%} over the target)"
        else:
            margin = (f"{ratio:.2f}× of {factor:g}× ({ratio / factor - 1:+.0%}); needs "
                      f"{fmt_int(d['frames_per_s'] * factor)} frames/s, has {fmt_int(b['frames_per_s'])}")
        margin += {True: "; exact", False: "; NOT exact", None: "; exactness not checked (no truth file)"}[exact]
        out.append({**t, "value": round(ratio, 4), "met": met, "exact": exact,
                    "margin": ("met: " if met else "missed: ") + margin})
    return out


def projection(bf: dict) -> dict:
    """Core-hours of two years of history at 47,404 frames/s from each row's measured
    frames/s per core (frames/s ÷ the cores of this machine) — a projection, not a
    measurement."""
    cores = bf.get("cores") or 2
    out = {"note": "projection from the measured frames/s per core, not a measurement",
           "history_frames_per_s": HISTORY_RATE, "days": HISTORY_DAYS, "frames": HISTORY_FRAMES,
           "cores": cores, "rows": []}
    for name in ROWS:
        r = _get(bf, name)
        if not r:
            continue
        per_core = r["frames_per_s"] / cores
        out["rows"].append({"row": name, "frames_per_s": r["frames_per_s"], "frames_per_s_per_core": round(per_core, 1),
                            "core_hours": round(HISTORY_FRAMES / per_core / 3600),
                            "days_on_this_machine": round(HISTORY_FRAMES / r["frames_per_s"] / 86_400, 1)})
    return out


# --------------------------------------------------------------------------- report
def _check(r: dict) -> str:
    c = r.get("check") or {}
    ex = r.get("exact_all_runs", c.get("exact"))
    if ex is True:
        return f"✅ exact ({render.plural(c.get('minutes'), 'minute')})"
    if ex is False:
        return f"❌ NOT exact ({c.get('mismatches')} of {c.get('minutes_expected')} minutes differ)"
    return f"– {c.get('note', 'not checked')}"


def _rows_table(bf: dict) -> list[str]:
    what = {"duckdb": f"DuckDB, {bf['duckdb_threads']} threads, `count(DISTINCT uid)` by minute",
            "backfill": "`jobs/backfill.py` (parse, guard, quarantine, exact + HLL, Delta)"}
    rows = []
    for r in bf["rows"]:
        kind = r["name"].split("_")[0]
        if r.get("error"):
            rows.append((f"`{r['name']}`", what[kind], f"❌ failed: {r['error'][:90]}", "", "", "", "", ""))
        else:
            rows.append((f"`{r['name']}`", what[kind], fmt_int(r["frames_per_s"]), render.all_runs(
                r.get("runs_frames_per_s")), f"{r['query_s']:.1f}", f"{r['wall_s']:.1f}", fmt_int(r["peak_rss_mb"]),
                _check(r)))
    return render.table(["row", "what", "frames/s", "all runs", "query s", "wall s", "peak RSS MB",
                         "per-minute result vs truth"], rows, "llrrrrrl")


def _ratios(bf: dict) -> str:
    return "Ratios (also in the targets above): " + "; ".join(
        f"{t['row']} / duckdb_{t['row'].split('_', 1)[1]} = "
        + (f"**{t['value']:.2f}×**" if t["value"] is not None else "not measured")
        + f" (target ≥ {t['threshold']:g}×: {render.mark(t['met'])}; "
        + {True: "exact", False: "NOT exact", None: "exactness not checked"}[t["exact"]] + ")"
        for t in bf["targets"]) + "."


def _projection_md(p: dict) -> list[str]:
    return ["", f"**Two years of history — a projection, not a measurement:** {HISTORY_RATE:,} frames/s × "
                f"86,400 × {HISTORY_DAYS} = {HISTORY_FRAMES:,} frames, at each row's measured frames/s per core "
                f"(frames/s ÷ {p['cores']} cores here), assuming that rate per core holds on more cores and on "
                "every day of history (the sample's ~2.1 KB frames; storage and network keep up; no start-up).", "",
            *render.table(["row", "frames/s per core", "core-hours", f"days on this machine ({p['cores']} cores)"],
                          [(f"`{r['row']}`", fmt_int(r["frames_per_s_per_core"]), fmt_int(r["core_hours"]),
                            f"{r['days_on_this_machine']:,.1f}") for r in p["rows"]], "lrrr")]


def markdown(bf: dict, targets_table: bool = True) -> str:
    """The section of the report: rows, ratios against the targets, the projection.
    ``targets_table=False``: the ratios as one sentence (the page lists the targets already)."""
    gz_mb, pl_mb = bf.get("bytes_gz24", bf["bytes_gz"]) / 1e6, bf["bytes_jsonl"] / 1e6
    lines = [f"{bf['frames']:,} frames of `{bf['input_gz']}`: its plain copy `{bf['input_jsonl']}` "
             f"({pl_mb:,.0f} MB) and {PIECES} consecutive pieces `{bf.get('input_gz24')}` ({gz_mb:,.0f} MB); "
             f"{render.plural(bf['rounds'], 'interleaved round')}, the median run of each row"
             + (" with every run's frames/s" if bf["rounds"] > 1 else "") + ".", "", *_rows_table(bf), "",
             *(render.targets(bf["targets"]) if targets_table else [_ratios(bf)]), "",
             "frames/s: DuckDB = frames / the query (execute → fetched result; Python start-up excluded); "
             "backfill = frames / the job's metrics `seconds` (first chunk → final flush; JVM and Spark "
             "session start excluded; `wall s` includes them"
             + "".join(f", {r['name']} {fmt_int(r['wall_frames_per_s'])} frames/s on wall time"
                       for r in bf["rows"] if r.get("wall_frames_per_s")) + "). "
             "DuckDB decompresses a `.gz` file on one thread (files in parallel). It has no guard, no quarantine, "
             "no stdin and does not scale out. "
             + ("The input is defect-free, so DuckDB's `count(*)` per minute is comparable with the truth file."
                if bf.get("defect_free") else
                "DuckDB's counts are not compared: the input has invalid frames, which `count(*)` counts (a "
                "frame without a valid ts in a NULL minute) and the backfill quarantines.")]
    p = bf.get("projection") or {}
    return "\n".join(lines + (_projection_md(p) if p.get("rows") else []))


def text_lines(bf: dict) -> list[str]:
    """Plain-text lines for the end of a run."""
    out = []
    for r in bf.get("rows") or []:
        if r.get("error"):
            out.append(f"{r['name']:<14} failed: {r['error']}")
        else:
            ex = r.get("exact_all_runs", (r.get("check") or {}).get("exact"))
            out.append(f"{r['name']:<14} {fmt_int(r['frames_per_s']):>10} frames/s  query {r['query_s']:.1f}s "
                       f"wall {r['wall_s']:.1f}s  " + EXACT[ex])
    out += [f"{render.mark(t['met']):<9} {t['target']}: {t['margin']}" for t in bf.get("targets") or []]
    for r in (bf.get("projection") or {}).get("rows") or []:
        if r["row"].startswith("backfill"):
            out.append(f"projection: two years of history with {r['row']}: {fmt_int(r['core_hours'])} core-hours")
    return out


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help="generate N frames instead of using data/stream.jsonl.gz")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds (default 1)")
    ap.add_argument("--out", help="write the result as JSON here")
    ap.add_argument("--master", help="instead of the four rows: backfill_jsonl on this standalone cluster "
                                     "(e.g. spark://127.0.0.1:7077 after make cluster-up) with --cores executor cores")
    ap.add_argument("--cores", default="1,2", help="with --master: executor core counts to run (default 1,2)")
    ap.add_argument("--duckdb-query", metavar="FILE", help=argparse.SUPPRESS)  # the DuckDB row's process
    ap.add_argument("--threads", type=int, default=DUCKDB_THREADS, help=argparse.SUPPRESS)
    ap.add_argument("--metrics-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.duckdb_query:
        m = duckdb_query(Path(args.duckdb_query), args.threads)
        if args.metrics_file:
            write_json(Path(args.metrics_file), m)
        else:
            print(json.dumps(m))
        return 0
    from bench.common import frames_file, guarded

    def go() -> int:
        frames, failures = frames_file(args.frames), []
        if args.master:
            rows = scaling(frames, WORK_DIR / "runs", args.master, [int(c) for c in args.cores.split(",")])
            if args.out:
                write_json(Path(args.out), {"frames": frames.count, "machine": machine_info(),
                                            "date": time.strftime("%Y-%m-%d"), "rows": rows})
            return 0 if all(r["check"].get("exact") for r in rows) else 1
        bf = measure(frames, WORK_DIR / "runs", max(1, args.repeat), failures=failures)
        if args.out:
            write_json(Path(args.out), bf)
        print(markdown(bf))
        return 1 if failures else 0
    return guarded("backfill", go)


if __name__ == "__main__":
    sys.exit(main())
