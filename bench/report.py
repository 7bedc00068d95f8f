"""Results of a benchmark run: the issue's targets, a markdown report, a bar chart, the
table on stderr, and the section of docs/performance.md between ``<!-- bench:start -->``
and ``<!-- bench:end -->``. Also what the driver and the executors cost per 1M frames
(:func:`cost_rows`), the floor step's per-batch comparison (:func:`floor_md`), the poison
rows, and a projection to more executor cores
(:func:`projection` — computed from measured CPU seconds, not measured itself).

    from bench.report import update_performance_section
    update_performance_section(result)   # result: the dict of bench/results/<date>.json

:func:`write_all` writes ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into a folder
(``bench.render``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from bench import render
from bench.common import REPO_ROOT
from bench.render import f1, fmt_int

#: The page whose bench section a full run rewrites (it used to be README.md).
PERFORMANCE_PAGE = REPO_ROOT / "docs" / "performance.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

ROW_MEANING = {
    "read_ceiling": "Spark reads the topic, counts rows (no parsing)",
    "old_consumer": "replaced job: 1 Python process, confluent-kafka + orjson",
    "naive_spark": "product job, Spark `from_json` parser",
    "job_exact": "product job, exact, JVM parser",
    "job_approx": "product job, approx (HLL), JVM parser",
}
COST_ROWS = ("naive_spark", "job_exact", "job_approx")
PER = 1_000_000
PROJECTION_CORES = (2, 8, 32, 128)
SIZING_RATES = (100_000, 1_000_000, 10_000_000)
BACKFILL_RATE, BACKFILL_DAYS = 47_404, 730   # two years of history at the sample's mean rate
DRIVER_NOTE = ("Driver CPU = the Python driver process + (the spark-submit JVM − the tasks' executor CPU "
               "time): an approximation. In local mode that JVM also runs the executors, so their JIT "
               "compilation, garbage-collection and Kafka client threads count as driver CPU here (an upper "
               "bound of the driver's share); executor CPU = the tasks' `Executor CPU Time` from Spark's event "
               "log (a lower bound of the executors' share). Bytes to the driver = the sum of every task's "
               "`Result Size` (event log). Per 1M = value × 1,000,000 / the run's frames; a one-shot run "
               "includes the JVM's, the session's and the query's start-up.")


# --------------------------------------------------------------------------- targets
def _rate(rows: list[dict], name: str) -> float | None:
    return next((r["frames_per_s"] for r in rows if r["name"] == name and r.get("frames_per_s")), None)


def _ratio_target(label: str, value: float | None, base: float | None, factor: float, base_name: str) -> dict:
    t = {"target": label, "threshold": factor, "unit": f"× {base_name}"}
    if value is None or not base:
        return {**t, "value": None, "met": None, "margin": "not measured"}
    ratio = value / base
    met = ratio >= factor
    if met:
        margin = f"met: {ratio:.2f}× ({ratio / factor - 1:+.0%} over the target)"
    else:
        margin = (f"missed: {ratio:.2f}× of {factor:g}× ({ratio / factor - 1:+.0%}); "
                  f"needs {fmt_int(base * factor)} frames/s, has {fmt_int(value)}")
    return {**t, "value": round(ratio, 3), "met": met, "margin": margin}


def evaluate_targets(rows: list[dict], latency: dict | None = None, watermark_s: int = 5,
                     backfill: dict | None = None) -> list[dict]:
    """The issue's targets with met/missed and by how much (with ``backfill``, the result of
    :func:`bench.backfill.measure`, also the backfill's against DuckDB)."""
    job = _rate(rows, "job_exact")
    out = []
    t = {"target": "job_exact ≥ 200,000 frames/s", "threshold": 200_000, "unit": "frames/s"}
    if job is None:
        out.append({**t, "value": None, "met": None, "margin": "not measured"})
    else:
        met = job >= 200_000
        out.append({**t, "value": round(job, 1), "met": met,
                    "margin": (f"met by {job / 200_000 - 1:+.0%}" if met else
                               f"missed by {1 - job / 200_000:.0%} ({fmt_int(job)} of 200,000; "
                               f"needs {200_000 / job:.2f}× faster)")})
    out.append(_ratio_target("job_exact ≥ 4× old_consumer", job, _rate(rows, "old_consumer"), 4, "old_consumer"))
    out.append(_ratio_target("job_exact ≥ 4× naive_spark", job, _rate(rows, "naive_spark"), 4, "naive_spark"))
    out.append(_ratio_target("job_exact ≥ 70% of read_ceiling", job, _rate(rows, "read_ceiling"), 0.7,
                             "read_ceiling"))
    if latency and not latency.get("error"):
        for kind, limit, label in (("provisional", 2.0, "provisional latency p99 ≤ 2 s"),
                                   ("final", watermark_s + 2.0, f"final latency p99 ≤ watermark + 2 s "
                                                                f"= {watermark_s + 2:g} s")):
            p99 = (latency.get(kind) or {}).get("p99_s")
            t = {"target": label, "threshold": limit, "unit": "s"}
            if p99 is None:
                out.append({**t, "value": None, "met": None, "margin": "no such results in the live run"})
            else:
                met = p99 <= limit
                out.append({**t, "value": p99, "met": met,
                            "margin": (f"met: p99 {p99:.2f}s ({limit - p99:.2f}s to spare)" if met else
                                       f"missed: p99 {p99:.2f}s, {p99 - limit:.2f}s over")})
    if backfill:
        out += [{k: v for k, v in t.items() if k not in ("row", "exact")} for t in backfill.get("targets") or []]
    return out


# --------------------------------------------------------------------------- costs
COST_KEYS = ("frames", "batches", "driver_rows", "result_bytes", "result_bytes_by_category", "driver_cpu_s",
             "executor_cpu_s", "python_driver_cpu_s", "jvm_cpu_s", "tree_cpu_s")
PER_1M_KEYS = ("result_bytes", "driver_cpu_s", "executor_cpu_s", "python_driver_cpu_s", "tree_cpu_s")


def cost_rows(result: dict) -> list[dict]:
    """Driver and executor costs of the job runs: the job rows, the backlog, the poison rows
    (totals, ``<key>_per_1m``, ``<key>_per_batch``)."""
    runs = [(r, "") for r in result.get("results") or [] if r["name"] in COST_ROWS]
    runs += [(result.get("backlog"), "job_exact, more batches")]
    runs += [((result.get("poison") or {}).get(k), label)
             for k, label in (("replay", "every frame late"), ("garbage", "every frame malformed"))]
    out = []
    for r, label in runs:
        if r and r.get("cost"):
            c = r["cost"]
            per, pb = c.get("per_1m") or {}, c.get("per_batch") or {}
            out.append({"row": r["name"], "label": label, **{k: c.get(k) for k in COST_KEYS},
                        **{f"{k}_per_1m": per.get(k) for k in PER_1M_KEYS},
                        "driver_rows_per_batch": pb.get("driver_rows"),
                        "driver_cpu_s_per_batch": pb.get("driver_cpu_s")})
    return out


def cost_md(costs: list[dict]) -> str:
    rows = [(f"`{c['row']}`" + (f" ({c['label']})" if c["label"] else ""), fmt_int(c["frames"]),
             fmt_int(c["batches"]),
             f"{fmt_int(c['driver_rows'])} ({fmt_int(c['driver_rows_per_batch'])})"
             if c.get("driver_rows") is not None else "–",
             f"{render.binary_bytes(c['result_bytes'])} ({render.binary_bytes(c['result_bytes_per_1m'])})",
             f1(c["driver_cpu_s_per_1m"]), f1(c["executor_cpu_s_per_1m"]), f1(c["tree_cpu_s_per_1m"]),
             f1(c["driver_cpu_s_per_batch"])) for c in costs]
    return "\n".join(render.table(
        ["run", "frames", "batches", "rows to driver (per batch)", "bytes to driver (per 1M frames)",
         "driver CPU s per 1M", "executor CPU s per 1M", "whole tree CPU s per 1M",
         "driver CPU s per batch (start-up incl.)"], rows, "lrrrrrrrr"))


POISON_WHAT = {"replay": "the input again after every minute is final: every frame late",
               "garbage": "lines of ~2 KB that are not JSON"}


def _poison_row(k: str, r: dict) -> tuple:
    if r.get("error"):
        return (f"`{k}`", POISON_WHAT[k], f"❌ step failed: {str(r['error'])[:100]}", *[""] * 7)
    q = ", ".join(f"{a} {fmt_int(b)}" for a, b in sorted((r.get("quarantine") or {}).items())) or "–"
    exp = ", ".join(f"{a} {fmt_int(b)}" for a, b in (r.get("quarantine_expected") or {}).items())
    return (f"`{k}`", POISON_WHAT[k], "✅ exit 0" if r.get("finished") else f"❌ exit {r.get('exit')}",
            fmt_int(r.get("frames")), fmt_int(r.get("frames_per_s")), f1(r.get("query_s")), f1(r.get("wall_s")),
            fmt_int(r.get("peak_rss_mb")), q, f"{'✅' if r.get('quarantine_ok') else '❌'} {exp}")


def poison_md(poison: dict) -> str:
    lines = render.table(["poison row", "what", "finished", "frames", "frames/s", "query s", "wall s",
                          "peak RSS MB (whole tree)", "quarantine", "expected"],
                         [_poison_row(k, poison[k]) for k in ("replay", "garbage") if poison.get(k)], "lllrrrrrll")
    f = (poison.get("replay") or {}).get("first_run")
    if f:
        lines += ["", f"replay, first run (fresh topic, before the frames were sent again): "
                      f"{fmt_int(f.get('frames'))} frames, {fmt_int(f.get('frames_per_s'))} frames/s, "
                      f"peak RSS {fmt_int(f.get('peak_rss_mb'))} MB."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- projection
def _row(result: dict, name: str) -> dict | None:
    return next((r for r in result.get("results") or [] if r["name"] == name and r.get("cost")), None)


NEED = ("executor_cpu_s", "driver_cpu_s", "python_driver_cpu_s")


def _basis(result: dict, out: dict) -> tuple[float, float, float, float | None] | None:
    """CPU seconds per 1M frames (executors E, driver D, Python driver P) and driver CPU per
    batch: the marginal cost backlog − job_exact if both ran, else one run's own figures
    (the basis is described in ``out``)."""
    job, bl = _row(result, "job_exact"), result.get("backlog")
    bl = bl if bl and bl.get("cost") and bl["cost"].get("executor_cpu_s") is not None else None
    jc, bc = (job or {}).get("cost") or {}, (bl or {}).get("cost") or {}
    if job and bl and all(jc.get(k) is not None and bc.get(k) is not None for k in NEED) \
            and bc["frames"] > jc["frames"]:
        df = bc["frames"] - jc["frames"]
        E, D, P = ((bc[k] - jc[k]) / df * PER for k in NEED)
        if E > 0 and D > 0:
            db = (bc.get("batches") or 0) - (jc.get("batches") or 0)
            out["basis"] = (f"marginal cost: backlog ({bc['frames']:,} frames, {render.plural(bc['batches'], 'batch')})"
                            f" − job_exact ({jc['frames']:,} frames, {render.plural(jc['batches'], 'batch')}), "
                            "so the one-off start-up of a run cancels")
            out["startup_driver_cpu_s"] = round(jc["driver_cpu_s"] - D * jc["frames"] / PER, 2)
            out["startup_executor_cpu_s"] = round(jc["executor_cpu_s"] - E * jc["frames"] / PER, 2)
            return E, D, P, (bc["driver_cpu_s"] - jc["driver_cpu_s"]) / db if db > 0 else None
        out["basis_note"] = "the marginal cost came out ≤ 0 (noise); using the backlog run's own figures"
    src, c = (("backlog", bc) if bl else ("job_exact", jc))
    if not c or any(c.get(k) is None for k in NEED) or not c.get("frames"):
        return None
    out["basis"] = (f"{src} alone ({c['frames']:,} frames, {render.plural(c['batches'], 'batch')}), start-up "
                    "included: an upper bound of the cost per frame")
    E, D, P = (c[k] / c["frames"] * PER for k in NEED)
    return E, D, P, c["driver_cpu_s"] / c["batches"] if c.get("batches") else None


def projection(result: dict, max_offsets_per_trigger: int = 1_000_000) -> dict | None:
    """Throughput with more executor cores and the cores a rate needs — a projection from
    the measured CPU seconds, not a measurement.

    Basis (:func:`_basis`): the marginal cost of more frames — (backlog − job_exact) / (their
    frames difference), both exact mode — when both ran, so the one-off start-up of a run
    cancels; else job_exact's (or the backlog's) own per-1M figures, start-up included. Model:

    * executors: ``E`` CPU s per 1M frames → ``1e6 / E`` frames/s per core, linear in the
      cores (every frame's work is per task; needs at least as many Kafka partitions /
      ``frames_per_task`` small enough for the cores, and brokers that deliver the bytes);
    * driver: ``D`` CPU s per 1M frames on one core → it is the limit from
      ``1e6 / D`` frames/s (driver CPU per second of input ≥ 1 core).
    """
    out: dict = {"note": "projection from measured CPU seconds, not a measurement"}
    basis = _basis(result, out)
    if basis is None:
        return None
    E, D, P, Db = basis
    E_hi = E + max(D - P, 0.0)   # the JVM's other CPU (JIT, GC, Kafka threads) counted as executor CPU
    per_core, drv_limit, frame_bytes = PER / E, PER / D, result.get("frame_bytes") or 0
    out.update({
        "executor_cpu_s_per_1m": round(E, 3), "driver_cpu_s_per_1m": round(D, 3),
        "python_driver_cpu_s_per_1m": round(P, 3), "executor_cpu_s_per_1m_upper": round(E_hi, 3),
        "driver_cpu_s_per_batch": round(Db, 3) if Db is not None else None,
        "batch_frames": max_offsets_per_trigger, "frame_bytes": frame_bytes,
        "frames_per_s_per_core": round(per_core, 1), "driver_limit_frames_per_s": round(drv_limit, 1),
        # the other extreme: all of the JVM's non-task CPU belongs to the executors
        "driver_limit_python_only_frames_per_s": round(PER / P, 1) if P > 0 else None,
        "driver_limit_from_cores": math.ceil(drv_limit / per_core),
        "measured_2_cores_frames_per_s": (_row(result, "job_exact") or {}).get("frames_per_s"),
        "cores": [{"cores": n, "executor_bound_frames_per_s": round(n * per_core, 1),
                   "frames_per_s": round(min(n * per_core, drv_limit), 1),
                   "limited_by": "driver" if drv_limit < n * per_core else "executors",
                   "driver_cores_busy": round(min(n * per_core, drv_limit) * D / PER, 2),
                   "kafka_mb_per_s": round(min(n * per_core, drv_limit) * frame_bytes / 1e6, 1)}
                  for n in PROJECTION_CORES],
        "sizing": [{"frames_per_s": rate, "executor_cores": math.ceil(rate * E / PER),
                    "executor_cores_upper": math.ceil(rate * E_hi / PER), "driver_cores": round(rate * D / PER, 2),
                    "jobs_needed": max(1, math.ceil(rate * D / PER)),
                    "kafka_gb_per_s": round(rate * frame_bytes / 1e9, 2)} for rate in SIZING_RATES]})
    out["backfill"] = _backfill_projection(out, E, E_hi, D, max_offsets_per_trigger, frame_bytes)
    return out


def _backfill_projection(p: dict, E: float, E_hi: float, D: float, batch: int, frame_bytes: float) -> dict:
    total = BACKFILL_RATE * 86_400 * BACKFILL_DAYS
    bf = {"frames_per_s": BACKFILL_RATE, "days": BACKFILL_DAYS, "frames": total,
          "executor_core_hours": round(total * E / PER / 3600),
          "executor_core_hours_upper": round(total * E_hi / PER / 3600),
          "driver_core_hours": round(total * D / PER / 3600), "batches": math.ceil(total / batch),
          "bytes": round(total * frame_bytes)}
    bf["core_hours"] = bf["executor_core_hours"] + bf["driver_core_hours"]
    bf["wall_days"] = {str(c["cores"]): round(total / c["frames_per_s"] / 86_400, 1) for c in p["cores"]}
    return bf


def _projection_lead(p: dict) -> list[str]:
    lines = [
        "**A projection, not a measurement**: computed from the CPU seconds measured above on this machine, "
        "assuming the executors' work grows linearly with their cores (every frame's work runs in a Spark task; "
        "read tasks for the cores (`frames_per_task`); brokers, network and storage keep up) and "
        "that the driver's per-batch work runs on one core.", "",
        f"- basis: {p['basis']}" + (f" ({p['basis_note']})" if p.get("basis_note") else ""),
        f"- executor CPU {p['executor_cpu_s_per_1m']:,.2f} s per 1M frames → {fmt_int(p['frames_per_s_per_core'])} "
        f"frames/s per executor core (upper bound of the cost, with the JVM's JIT/GC/Kafka threads moved from "
        f"the driver to the executors: {p['executor_cpu_s_per_1m_upper']:,.2f} s)",
        f"- driver CPU {p['driver_cpu_s_per_1m']:,.2f} s per 1M frames (of which the Python driver "
        f"{p['python_driver_cpu_s_per_1m']:,.2f} s)"
        + (f", {p['driver_cpu_s_per_batch']:,.2f} s per batch of up to {p['batch_frames']:,} frames"
           if p.get("driver_cpu_s_per_batch") is not None else "")
        + f" → the driver becomes the limit at **{fmt_int(p['driver_limit_frames_per_s'])} frames/s** "
          f"(driver CPU per second of input ≥ 1 core), "
        + (f"i.e. from {render.plural(p['driver_limit_from_cores'], 'executor core')} on"
           if p["driver_limit_from_cores"] > 1 else "below what one executor core delivers")]
    if p.get("driver_limit_python_only_frames_per_s"):
        lines.append(f"- if all of the JVM's CPU besides its tasks were executor work (the other extreme of the "
                     f"approximation), the Python driver alone would be the limit at "
                     f"{fmt_int(p['driver_limit_python_only_frames_per_s'])} frames/s")
    if p.get("startup_driver_cpu_s") is not None:
        lines.append(f"- one-off start-up of a run (JVM, session, query): ~{p['startup_driver_cpu_s']:.1f} s "
                     f"driver CPU, ~{p['startup_executor_cpu_s']:.1f} s executor CPU")
    if p.get("measured_2_cores_frames_per_s"):
        lines.append(f"- measured here (local[2]: driver and executors share the 2 cores, one cold batch): "
                     f"{fmt_int(p['measured_2_cores_frames_per_s'])} frames/s")
    return lines


def projection_md(p: dict | None) -> str:
    if not p:
        return "No projection: needs job_exact (and ideally the backlog row) with the event log (not --no-profile)."
    bf = p["backfill"]
    return "\n".join([
        *_projection_lead(p), "",
        *render.table(["executor cores", "projected frames/s", "limited by", "driver cores busy", "Kafka input MB/s"],
                      [(c["cores"], fmt_int(c["frames_per_s"]), c["limited_by"], f"{c['driver_cores_busy']:.2f}",
                        fmt_int(c["kafka_mb_per_s"])) for c in p["cores"]], "rrlrr"), "",
        "Sizing for live rates (CPU at 100 %: add headroom for peaks, GC and restarts):", "",
        *render.table(["live frames/s", "executor cores", "upper bound", "driver CPU (cores)",
                       "jobs (one driver core each)", "Kafka input GB/s"],
                      [(render.short_rate(z["frames_per_s"]), fmt_int(z["executor_cores"]),
                        fmt_int(z["executor_cores_upper"]), f"{z['driver_cores']:,.2f}", f"{z['jobs_needed']:,}",
                        f"{z['kafka_gb_per_s']:.2f}") for z in p["sizing"]], "rrrrrr"), "",
        "More than one job means splitting the topic's partitions between jobs; their exact counts of one "
        "minute then need a union of their `minute_uids` (approx sketches merge directly).", "",
        f"Two-year backfill at {BACKFILL_RATE:,} frames/s ({BACKFILL_RATE:,} × 86,400 × {BACKFILL_DAYS} = "
        f"{bf['frames']:,} frames, {render.decimal_size(bf['bytes'])} of JSON, {bf['batches']:,} batches of "
        f"{p['batch_frames']:,}): **{fmt_int(bf['core_hours'])} core-hours** = executors "
        f"{fmt_int(bf['executor_core_hours'])} (upper bound {fmt_int(bf['executor_core_hours_upper'])}) + driver "
        f"{fmt_int(bf['driver_core_hours'])}; wall time "
        + ", ".join(f"{d:,.1f} days with {n} executor cores" for n, d in bf["wall_days"].items())
        + " (as projected above)."])


# --------------------------------------------------------------------------- sections
def _backfill_md(bf: dict) -> str:
    from bench.backfill import markdown
    return markdown(bf, targets_table=False)


def floor_md(floor: dict) -> str:
    """The floor step (``bench/floor.py``): Spark's minimal query vs the job, per micro-batch."""
    if floor.get("error"):
        return f"floor step failed: {floor['error']}"
    from bench.floor import markdown as floor_markdown
    return floor_markdown(floor, heading=False).rstrip("\n")


def table_md(result: dict) -> str:
    """The throughput table as markdown."""
    base = _rate(result["results"], "old_consumer")
    rows = [(f"`{r['name']}`", ROW_MEANING.get(r["name"], ""), fmt_int(r.get("frames_per_s")),
             render.all_runs(r.get("runs_frames_per_s")),
             f"{r['frames_per_s'] / base:.2f}×" if base and r.get("frames_per_s") else "–",
             f"{r.get('query_s', 0):.1f}", f"{r.get('wall_s', 0):.1f}", fmt_int(r.get("peak_rss_mb")))
            for r in result["results"]]
    return "\n".join(render.table(["row", "what", "frames/s (median)", "all runs", "× old_consumer", "query s",
                                   "wall s", "peak RSS MB"], rows, "llrrrrrr"))


def parsers_md(p: dict) -> str:
    rows = [(f"`{r['name']}`", f"failed: {r['error'][:80]}", "", "") if r.get("error") else
            (f"`{r['name']}`", fmt_int(r["frames_per_s"]), f"{r['x_read_only']:.2f}",
             {True: "yes", False: "NO", None: "–"}[r.get("agrees")]) for r in p["rows"]]
    return "\n".join([f"{p['frames']:,} frames (mean {p['mean_bytes']:,.0f} B) cached in {p['partitions']} "
                      f"partitions; best of {p['repeat']}; reference for agreement: `{p['reference']}`.", "",
                      *render.table(["parse path", "frames/s", "time × read-only", "same aggregates as jvm"], rows,
                                    "lrrl")])


def latency_md(lat: dict) -> str:
    if lat.get("error"):
        return f"live run failed: {lat['error']}"

    def s(d):
        return f"{d['p50_s']:.2f} / {d['p99_s']:.2f} / {d['max_s']:.2f} (n={d['n']})" if d.get("n") else "– (n=0)"
    rows = [("provisional (emitted_at − production of newest counted frame)", s(lat["provisional"])),
            *([("provisional, without the first 15 s (warm JVM)", s(lat["provisional_warm"]))]
              if lat.get("provisional_warm") else []),
            ("final (emitted_at − minute end)", s(lat["final"])),
            ("live batch processing time", s(lat["batch_seconds"])),
            ("result delivery (consumer receive − emitted_at)", s(lat["kafka_delivery"]))]
    return "\n".join([
        f"{lat['frames']:,} frames replayed over {lat['duration_s']:.0f}s ({lat['rate_per_s']:,.0f}/s), "
        f"mode {lat['mode']}, trigger {lat['trigger_s']:g}s, watermark {lat['watermark_s']}s; "
        f"job ready after {lat['job_ready_s']:.0f}s; peak RSS {fmt_int(lat['peak_rss_mb'])} MB.", "",
        *render.table(["latency", "p50 / p99 / max s"], rows)])


def _costs_md(result: dict, page: bool) -> str:
    out = [cost_md(result["costs"]), "", DRIVER_NOTE]
    cats = next((c.get("result_bytes_by_category") for c in result["costs"] if c["row"] == "job_exact"), None)
    if cats and not page:
        out += ["", "job_exact, bytes to the driver by kind of Spark job: "
                + ", ".join(f"{k} {render.binary_bytes(v)}" for k, v in cats.items()) + "."]
    return "\n".join(out)


POISON_NOTE = ("The job's default driver memory (`[spark] driver_memory`); peak RSS is the whole process tree "
               "(spark-submit's JVM — driver and, in local mode, executors — the Python driver, pyspark workers).")
#: the optional parts of a run: (key, heading in the report, lead-in on the docs page or None: not
#: there, body(result, on the page?))
SECTIONS = (
    ("costs", "What the driver receives, driver and executor CPU",
     "What the driver receives and what each side burns, per 1M frames:", _costs_md),
    ("floor", "Per micro-batch: Spark's floor vs the job",
     "Per micro-batch of 1,000 frames, Spark's floor query vs the job (same topic, same run):",
     lambda r, _: floor_md(r["floor"])),
    ("poison", "Poison: replay of final minutes, garbage burst",
     "Poison (default driver memory; peak RSS of the whole process tree):",
     lambda r, page: ("" if page else POISON_NOTE + "\n\n") + poison_md(r["poison"])),
    ("backfill", "Backfill vs DuckDB (same file, same run)", "Backfill vs DuckDB on one machine (same file, same run):",
     lambda r, _: _backfill_md(r["backfill"])),
    ("projection", "Scale-out: a projection", "Scale-out — a projection from the CPU seconds above, not a measurement:",
     lambda r, _: projection_md(r.get("projection"))),
    ("parsers", "Parse paths (Spark, parse-only)", None, lambda r, _: parsers_md(r["parsers"])),
    ("latency", "Live latency", None, lambda r, _: latency_md(r["latency"])),
    ("where_time_goes", "Where the time goes (job_exact)", None, lambda r, _: f"```\n{r['where_time_goes']}\n```"),
)


def _shown(result: dict, key: str, page: bool) -> bool:
    if key == "projection" and not page:   # the report says why there is none
        return result.get("projection") is not None or bool(result.get("costs"))
    return bool(result.get(key))


def _sections(result: dict, page: bool) -> list[str]:
    out = []
    for key, heading, lead, body in SECTIONS:
        if (lead or not page) and _shown(result, key, page):
            out += ["", lead if page else f"## {heading}", "", body(result, page)]
    return out


def markdown(result: dict) -> str:
    """The full report of one run."""
    return "\n".join([
        f"# Benchmark {result['date']}{' (smoke)' if result.get('smoke') else ''}", "",
        f"- machine: {render.machine_line(result['machine'])}",
        f"- input: {result['frames']:,} frames, mean {result['frame_bytes']:,.0f} B ({result['input']}), "
        f"topic `{result['topic']}`", f"- started {result['started']}, took {result['elapsed_s']:.0f}s", "",
        "## Throughput (same topic, one after another)", "", table_md(result), "",
        "frames/s = frames / query time (query start → end incl. the final flush; JVM start-up "
        "excluded, it is in wall s). Each row ran in interleaved rounds; the median run is shown "
        "(query s, wall s and RSS are that run's). Peak RSS: the whole process tree (JVM + Python).", "",
        "## Targets", "", *render.targets(result["targets"]), *_sections(result, page=False)]) + "\n"


def section_markdown(result: dict, link: str | None = None) -> str:
    """The bench section of docs/performance.md: machine, date, table, targets."""
    return "\n".join([
        f"Last run {result['date']} on {render.machine_line(result['machine'])}; {result['frames']:,} frames of "
        f"~{result['frame_bytes']:,.0f} B. `make bench` reproduces it (details: `bench/README.md`"
        + (f", full report: `{link}`" if link else "") + ").", "", table_md(result), "",
        *render.targets(result["targets"]), *_sections(result, page=True)])


def update_performance_section(result: dict, page: Path = PERFORMANCE_PAGE, link: str | None = None) -> bool:
    """Replace what is between the bench markers of docs/performance.md with this run's summary.

    Does nothing (returns False) if the file or either marker is missing; only the text
    between the markers changes.
    """
    try:
        text = page.read_text()
    except OSError:
        return False
    pat = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pat.search(text):
        return False
    body = section_markdown(result, link)
    new = pat.sub(lambda _m: f"{START}\n{body}\n{END}", text, count=1)
    if new != text:
        tmp = page.with_name(page.name + ".bench.tmp")
        tmp.write_text(new)
        os.replace(tmp, page)
    return True


# --------------------------------------------------------------------------- text
def text_table(result: dict) -> str:
    """The throughput table and the targets as plain text (printed at the end of a run)."""
    base = _rate(result["results"], "old_consumer")
    lines = render.text_table(
        ["row", "frames/s", "x old", "query s", "wall s", "RSS MB", "all runs"],
        [(r["name"], fmt_int(r.get("frames_per_s")),
          f"{r['frames_per_s'] / base:.2f}" if base and r.get("frames_per_s") else "-", f"{r.get('query_s', 0):.1f}",
          f"{r.get('wall_s', 0):.1f}", fmt_int(r.get("peak_rss_mb")), render.all_runs(r.get("runs_frames_per_s")))
         for r in result["results"]])
    lines += [f"{render.mark(t['met']):<9} {t['target']}: {t['margin']}" for t in result["targets"]]
    for c in result.get("costs") or []:
        rows_1m = (c["driver_rows"] or 0) * PER / max(c["frames"] or 1, 1)
        lines.append(f"cost {c['row']:<12} per 1M frames: driver rows {fmt_int(rows_1m)}, "
                     f"bytes {render.binary_bytes(c['result_bytes_per_1m'])}, driver CPU "
                     f"{f1(c['driver_cpu_s_per_1m'])}s, executor CPU {f1(c['executor_cpu_s_per_1m'])}s "
                     f"({fmt_int(c['batches'])} batches)")
    return "\n".join(lines + _text_extras(result))


def _text_extras(result: dict) -> list[str]:
    """The floor, poison, backfill and projection lines of :func:`text_table`."""
    lines = []
    fl = result.get("floor")
    if fl:
        from bench.floor import text_table as floor_table
        lines += [f"floor: step failed: {fl['error']}"] if fl.get("error") else \
            [f"floor: {x}" for x in floor_table(fl).splitlines()]
    for k, r in (result.get("poison") or {}).items():
        lines.append(f"poison {k}: step failed: {r['error']}" if r.get("error") else
                     f"poison {k}: {'finished' if r.get('finished') else 'DID NOT FINISH'}, "
                     f"{fmt_int(r.get('frames_per_s'))} frames/s, peak RSS {fmt_int(r.get('peak_rss_mb'))} MB, "
                     f"quarantine {r.get('quarantine')} {'ok' if r.get('quarantine_ok') else 'NOT ok'}")
    if result.get("backfill"):
        from bench.backfill import text_lines
        lines += [f"backfill: {x}" for x in text_lines(result["backfill"])
                  if not x.startswith(("✅", "❌", "–"))]   # its targets are in the list above
    p = result.get("projection")
    if p:
        lines.append(f"projection: {fmt_int(p['frames_per_s_per_core'])} frames/s per executor core; driver limit "
                     f"{fmt_int(p['driver_limit_frames_per_s'])} frames/s; two-year backfill "
                     f"{fmt_int(p['backfill']['core_hours'])} core-hours")
    return lines


# --------------------------------------------------------------------------- chart
def _bars(ax, result: dict) -> None:
    rows = [r for r in result["results"] if r.get("frames_per_s")]
    names, vals = [r["name"] for r in rows], [r["frames_per_s"] for r in rows]
    bars = ax.bar(names, vals, color=["#8c8c8c" if n in ("read_ceiling", "old_consumer", "naive_spark")
                                      else "#1f77b4" for n in names])
    render.bar_labels(ax, bars, vals)
    ax.axhline(200_000, color="#d62728", ls="--", lw=1)
    ax.annotate("target 200k/s", (0, 200_000), xytext=(0, 3), textcoords="offset points", color="#d62728",
                fontsize=8)
    rc = _rate(result["results"], "read_ceiling")
    if rc:
        ax.axhline(0.7 * rc, color="#ff7f0e", ls=":", lw=1)
        ax.annotate("70% of read_ceiling", (len(names) - 1, 0.7 * rc), xytext=(0, 3), textcoords="offset points",
                    color="#ff7f0e", fontsize=8, ha="right")
    ax.set_ylabel("frames/s (query time)")
    ax.set_title(f"{result['frames']:,} frames, {result['machine']['cores']} cores — {result['date']}", fontsize=10)
    ax.tick_params(axis="x", rotation=20, labelsize=8)


def plot(result: dict, path: Path) -> None:
    """Bar chart of frames/s per row (and per parse path, if measured)."""
    parsers = result.get("parsers") or {}
    prow = [r for r in parsers.get("rows", []) if r.get("frames_per_s")]

    def draw(_fig, axes) -> None:
        _bars(axes[0][0], result)
        if prow:
            ax2, pn, pv = axes[0][1], [r["name"] for r in prow], [r["frames_per_s"] for r in prow]
            bars = ax2.barh(pn, pv, color=["#8c8c8c" if n in ("read_only", "arrow_transfer") else "#2ca02c"
                                           for n in pn])
            render.bar_labels(ax2, bars, pv, horizontal=True)
            ax2.invert_yaxis()
            ax2.set_xlabel("frames/s, parse only (cached input)")
            ax2.set_title(f"parse paths, {parsers['frames']:,} frames", fontsize=10)
    render.figure(path, draw, 1, 2 if prow else 1, figsize=(13 if prow else 7, 4.8))


def write_all(result: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``stem.json``, ``stem.md`` and ``stem.png`` into ``out_dir``."""
    return render.write(out_dir, stem, result, markdown(result), plot)
