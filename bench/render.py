"""The one renderer of the benchmarks' results: numbers, markdown tables and check lists,
aligned plain-text tables, the machine and code lines, plots, and writing a result's
files (``<stem>.json``, ``.md`` and ``.png``).

The benchmarks build their rows; every table and plot of ``bench/results/`` is drawn here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from bench.common import write_json

DASH = "–"


# --------------------------------------------------------------------------- numbers
def num(x, nd: int = 0, unit: str = "", na: str = DASH) -> str:
    """``1234567.8`` → ``1,234,568`` (``nd`` decimals, then ``unit``); None → ``na``."""
    return na if x is None else f"{x:,.{nd}f}{unit}"


def fmt_int(x) -> str:
    """``1234567.8`` → ``1,234,568``; None → ``–``."""
    return num(x)


def f1(x) -> str:
    """One decimal; None → ``–``."""
    return num(x, 1)


def or_dash(x) -> str:
    return DASH if x is None else str(x)


def binary_bytes(n) -> str:
    """``1536`` → ``1.5 KB`` (powers of 1024); None → ``–``."""
    if n is None:
        return DASH
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def decimal_size(n: float) -> str:
    """Decimal units for large volumes: ``6.3 PB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"


def short_rate(x: float) -> str:
    """``1.00M``, ``100k``, ``9,000``."""
    return f"{x / 1e6:,.2f}M" if x >= 1e6 else f"{x / 1e3:,.0f}k" if x >= 1e4 else f"{x:,.0f}"


def plural(k, word: str) -> str:
    k = k or 0
    return f"{k:,} {word}" + ("" if k == 1 else "es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def times(x, na: str = DASH) -> str:
    """A ratio: ``1.23×``."""
    return na if x is None else f"{x:.2f}×"


def all_runs(values: Sequence[float] | None) -> str:
    """Every run's frames/s in thousands (``33k / 33k / 32k``), ``–`` for a single run."""
    return " / ".join(f"{v / 1000:,.0f}k" for v in values) if values and len(values) > 1 else DASH


def mark(met) -> str:
    """A target: ``✅ met``, ``❌ missed`` or ``–`` (not measured)."""
    return "✅ met" if met is True else "❌ missed" if met is False else DASH


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --------------------------------------------------------------------------- tables
def table(header: Sequence[str], rows: Sequence[Sequence], align: str = "") -> list[str]:
    """A markdown table; ``align`` has one letter per column, ``r`` right-aligned (missing
    letters: left)."""
    rule = "|" + "|".join("---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def checks(named: dict) -> list[str]:
    """The pass/fail list of a run: ``{name: {"ok", "detail"}}``."""
    return table(["check", "result", "detail"],
                 [(n, "✅ pass" if c["ok"] else "❌ FAIL", c["detail"]) for n, c in named.items()])


def targets(ts: list[dict]) -> list[str]:
    """The targets with met/missed and by how much."""
    return table(["target", "result", "by how much"], [(t["target"], mark(t["met"]), t["margin"]) for t in ts])


def text_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """Plain text, columns padded to their widest cell: the first left-, the others
    right-aligned."""
    cells = [[str(c) for c in r] for r in (header, *rows)]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)).rstrip()
            for r in cells]


# --------------------------------------------------------------------------- lines
def machine_line(m: dict) -> str:
    """Cores, CPU, memory, pyspark and the load average at the start."""
    return (f"{m['cores']} cores ({m['cpu_model']}), {m['memory_gb']:g} GB RAM, pyspark "
            f"{m.get('versions', {}).get('pyspark')}; load average at start "
            f"{', '.join(map(str, m.get('load_avg_at_start', [])))}")


def live_run_line(res: dict) -> str:
    """The machine, the load during a live run (``res['load_average']``) and its code."""
    la = res["load_average"]
    return (f"{machine_line(res['machine'])}; during the run (1 min, every 5 s) min {la['load1_min']} / "
            f"mean {la['load1_mean']} / max {la['load1_max']}. {code_line(res.get('code'))}")


def code_line(code: dict | None) -> str:
    """One sentence on the code a run used (``bench.livejob.code_during``)."""
    if not code:
        return ""
    out = f"Code: commit {code['commit']}"
    if code.get("product_commit") and code["product_commit"] != code["commit"]:
        out += f" (product files as of {code['product_commit']})"
    if code.get("uncommitted"):
        out += f" with uncommitted changes to {', '.join(code['uncommitted'])}"
    if code.get("changed_during_run"):
        end = code["at_end"]
        out += f"; it changed during the run (at the end: {end['commit']}" + \
               (f" + {', '.join(end['uncommitted'])}" if end["uncommitted"] else "") + ")"
    return out + (code["note"] if code.get("note") else "") + "."


def errors_sentence(errors: list[str]) -> str:
    return (" Errors: " + "; ".join(e.splitlines()[0] for e in errors)) if errors else ""


# --------------------------------------------------------------------------- files
def write(out_dir: Path, stem: str, result: dict, md: str,
          plot: Callable[[dict, Path], None] | None = None) -> dict[str, Path]:
    """Write ``stem.json`` (the result), ``stem.md`` and, with ``plot``, ``stem.png`` into
    ``out_dir``; returns their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    write_json(paths["json"], result)
    tmp = out_dir / f"{stem}.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, paths["md"])
    if plot is not None:
        paths["png"] = out_dir / f"{stem}.png"
        plot(result, paths["png"])
    return paths


def figure(path: Path, draw: Callable, nrows: int = 1, ncols: int = 1, figsize=(10, 5), **kw) -> None:
    """The one plot helper: ``draw(fig, axes)`` on a matplotlib figure (Agg backend) of
    ``nrows × ncols`` axes (a 2-D array), saved as PNG at ``path`` atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kw)
    draw(fig, axes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def bar_labels(ax, bars, values, horizontal: bool = False) -> None:
    """``123k`` at the end of each bar."""
    for b, v in zip(bars, values):
        if horizontal:
            ax.annotate(f"{v / 1000:,.0f}k", (v, b.get_y() + b.get_height() / 2), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        else:
            ax.annotate(f"{v / 1000:,.0f}k", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=8)
