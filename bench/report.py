"""Results of a benchmark run: the issue's targets, a markdown report, a bar chart, the
table on stderr, and the section of README.md between ``<!-- bench:start -->`` and
``<!-- bench:end -->``.

    from bench.report import update_readme_section
    update_readme_section(result)        # result: the dict of bench/results/<date>.json

:func:`write_all` writes ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into a folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.common import REPO_ROOT, fmt_int, write_json

README = REPO_ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

ROW_MEANING = {
    "read_ceiling": "Spark reads the topic, counts rows (no parsing)",
    "old_consumer": "replaced job: 1 Python process, confluent-kafka + orjson",
    "naive_spark": "product job, Spark `from_json` parser",
    "job_exact": "product job, exact, JVM parser",
    "job_approx": "product job, approx (HLL), JVM parser",
}


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


def evaluate_targets(rows: list[dict], latency: dict | None = None, watermark_s: int = 5) -> list[dict]:
    """The issue's targets with met/missed and by how much."""
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
    return out


# --------------------------------------------------------------------------- text
def _mark(met) -> str:
    return "✅ met" if met is True else "❌ missed" if met is False else "–"


def _runs(r: dict) -> str:
    runs = r.get("runs_frames_per_s") or []
    return " / ".join(f"{v / 1000:.0f}k" for v in runs) if len(runs) > 1 else "–"


def table_md(result: dict) -> str:
    """The throughput table as markdown."""
    base = _rate(result["results"], "old_consumer")
    lines = ["| row | what | frames/s (median) | all runs | × old_consumer | query s | wall s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        x = f"{r['frames_per_s'] / base:.2f}×" if base and r.get("frames_per_s") else "–"
        lines.append(f"| `{r['name']}` | {ROW_MEANING.get(r['name'], '')} | {fmt_int(r.get('frames_per_s'))} "
                     f"| {_runs(r)} | {x} | {r.get('query_s', 0):.1f} | {r.get('wall_s', 0):.1f} "
                     f"| {fmt_int(r.get('peak_rss_mb'))} |")
    return "\n".join(lines)


def targets_md(targets: list[dict]) -> str:
    lines = ["| target | result | by how much |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {_mark(t['met'])} | {t['margin']} |")
    return "\n".join(lines)


def parsers_md(p: dict) -> str:
    lines = [f"{p['frames']:,} frames (mean {p['mean_bytes']:,.0f} B) cached in {p['partitions']} partitions; "
             f"best of {p['repeat']}; reference for agreement: `{p['reference']}`.", "",
             "| parse path | frames/s | time × read-only | same aggregates as jvm |", "|---|---:|---:|---|"]
    for r in p["rows"]:
        if r.get("error"):
            lines.append(f"| `{r['name']}` | failed: {r['error'][:80]} | | |")
            continue
        agree = {True: "yes", False: "NO", None: "–"}[r.get("agrees")]
        lines.append(f"| `{r['name']}` | {fmt_int(r['frames_per_s'])} | {r['x_read_only']:.2f} | {agree} |")
    return "\n".join(lines)


def formats_md(f: dict) -> str:
    lines = [f"{f['frames']:,} frames, one Python thread, best of {f['repeat']}.", "",
             "| format | bytes/frame | bytes/frame, lz4 per 1,000 | decode ts+uid, frames/s |",
             "|---|---:|---:|---:|"]
    for r in f["rows"]:
        lines.append(f"| {r['name']} | {fmt_int(r['bytes_per_frame'])} | {fmt_int(r['lz4_bytes_per_frame'])} "
                     f"| {fmt_int(r['decode_frames_per_s'])} |")
    return "\n".join(lines)


def latency_md(lat: dict) -> str:
    if lat.get("error"):
        return f"live run failed: {lat['error']}"
    def s(d):  # noqa: E306
        return (f"{d['p50_s']:.2f} / {d['p99_s']:.2f} / {d['max_s']:.2f} (n={d['n']})" if d.get("n") else "– (n=0)")
    return "\n".join([
        f"{lat['frames']:,} frames replayed over {lat['duration_s']:.0f}s ({lat['rate_per_s']:,.0f}/s), "
        f"mode {lat['mode']}, trigger {lat['trigger_s']:g}s, watermark {lat['watermark_s']}s; "
        f"job ready after {lat['job_ready_s']:.0f}s; peak RSS {fmt_int(lat['peak_rss_mb'])} MB.", "",
        "| latency | p50 / p99 / max s |", "|---|---|",
        f"| provisional (emitted_at − production of newest counted frame) | {s(lat['provisional'])} |",
        *([f"| provisional, without the first 15 s (warm JVM) | {s(lat['provisional_warm'])} |"]
          if lat.get("provisional_warm") else []),
        f"| final (emitted_at − minute end) | {s(lat['final'])} |",
        f"| live batch processing time | {s(lat['batch_seconds'])} |",
        f"| result delivery (consumer receive − emitted_at) | {s(lat['kafka_delivery'])} |"])


def machine_line(result: dict) -> str:
    m = result["machine"]
    v = m.get("versions", {})
    return (f"{m['cores']} cores ({m['cpu_model']}), {m['memory_gb']:g} GB RAM, pyspark {v.get('pyspark')}; "
            f"load average at start {', '.join(map(str, m.get('load_avg_at_start', [])))}")


def markdown(result: dict) -> str:
    """The full report of one run."""
    out = [f"# Benchmark {result['date']}{' (smoke)' if result.get('smoke') else ''}", "",
           f"- machine: {machine_line(result)}",
           f"- input: {result['frames']:,} frames, mean {result['frame_bytes']:,.0f} B "
           f"({result['input']}), topic `{result['topic']}`",
           f"- started {result['started']}, took {result['elapsed_s']:.0f}s", "",
           "## Throughput (same topic, one after another)", "", table_md(result), "",
           "frames/s = frames / query time (query start → end incl. the final flush; JVM start-up "
           "excluded, it is in wall s). Each row ran in interleaved rounds; the median run is shown "
           "(query s, wall s and RSS are that run's). Peak RSS: the whole process tree (JVM + Python).", "",
           "## Targets", "", targets_md(result["targets"])]
    if result.get("parsers"):
        out += ["", "## Parse paths (Spark, parse-only)", "", parsers_md(result["parsers"])]
    if result.get("formats"):
        out += ["", "## JSON vs Avro", "", formats_md(result["formats"])]
    if result.get("latency"):
        out += ["", "## Live latency", "", latency_md(result["latency"])]
    if result.get("where_time_goes"):
        out += ["", "## Where the time goes (job_exact)", "", "```", result["where_time_goes"], "```"]
    return "\n".join(out) + "\n"


def readme_markdown(result: dict, link: str | None = None) -> str:
    """The short section for README.md: machine, date, table, targets."""
    out = [f"Last run {result['date']} on {machine_line(result)}; {result['frames']:,} frames of "
           f"~{result['frame_bytes']:,.0f} B. `make bench` reproduces it (details: `bench/README.md`"
           + (f", full report: `{link}`" if link else "") + ").", "", table_md(result), "",
           targets_md(result["targets"])]
    return "\n".join(out)


def update_readme_section(result: dict, readme: Path = README, link: str | None = None) -> bool:
    """Replace what is between the bench markers of README.md with this run's summary.

    Does nothing (returns False) if the file or either marker is missing; only the text
    between the markers changes.
    """
    try:
        text = readme.read_text()
    except OSError:
        return False
    pat = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pat.search(text):
        return False
    body = readme_markdown(result, link)
    new = pat.sub(lambda _m: f"{START}\n{body}\n{END}", text, count=1)
    if new != text:
        tmp = readme.with_name(readme.name + ".bench.tmp")
        tmp.write_text(new)
        os.replace(tmp, readme)
    return True


def text_table(result: dict) -> str:
    """The throughput table and the targets as plain text (printed at the end of a run)."""
    base = _rate(result["results"], "old_consumer")
    lines = [f"{'row':<14} {'frames/s':>10} {'x old':>7} {'query s':>8} {'wall s':>7} {'RSS MB':>7}  all runs"]
    for r in result["results"]:
        x = f"{r['frames_per_s'] / base:.2f}" if base and r.get("frames_per_s") else "-"
        lines.append(f"{r['name']:<14} {fmt_int(r.get('frames_per_s')):>10} {x:>7} {r.get('query_s', 0):>8.1f} "
                     f"{r.get('wall_s', 0):>7.1f} {fmt_int(r.get('peak_rss_mb')):>7}  {_runs(r)}")
    for t in result["targets"]:
        lines.append(f"{_mark(t['met']):<9} {t['target']}: {t['margin']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- chart
def plot(result: dict, path: Path) -> None:
    """Bar chart of frames/s per row (and per parse path, if measured), Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    parsers = result.get("parsers") or {}
    prow = [r for r in parsers.get("rows", []) if r.get("frames_per_s")]
    fig, axes = plt.subplots(1, 2 if prow else 1, figsize=(13 if prow else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    rows = [r for r in result["results"] if r.get("frames_per_s")]
    names = [r["name"] for r in rows]
    vals = [r["frames_per_s"] for r in rows]
    colors = ["#8c8c8c" if n in ("read_ceiling", "old_consumer", "naive_spark") else "#1f77b4" for n in names]
    bars = ax.bar(names, vals, color=colors)
    for b, v in zip(bars, vals):
        ax.annotate(f"{v / 1000:,.0f}k", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
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
    if prow:
        ax2 = axes[0][1]
        pn = [r["name"] for r in prow]
        pv = [r["frames_per_s"] for r in prow]
        ax2.barh(pn, pv, color=["#8c8c8c" if n in ("read_only", "arrow_transfer") else "#2ca02c" for n in pn])
        for i, v in enumerate(pv):
            ax2.annotate(f"{v / 1000:,.0f}k", (v, i), xytext=(3, 0), textcoords="offset points", va="center",
                         fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xlabel("frames/s, parse only (cached input)")
        ax2.set_title(f"parse paths, {parsers['frames']:,} frames", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_all(result: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``stem.json``, ``stem.md`` and ``stem.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    write_json(paths["json"], result)
    tmp = paths["md"].with_name(paths["md"].name + ".tmp")
    tmp.write_text(markdown(result))
    os.replace(tmp, paths["md"])
    plot(result, paths["png"])
    return paths
