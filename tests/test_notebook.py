"""notebooks/minute_stats.ipynb, executed headless on a small data set.

The data set is made in-process (real Spark, real Delta): the pipeline runs twice on the
same frames — once in exact mode, once in approx mode, each into its own Delta root —
with malformed and bit-flipped frames, and with a second micro-batch that brings frames
for minutes that are already final (late, hence corrected) and leaves the newest minute
open (provisional). Then the notebook runs in a kernel of this virtualenv (ipykernel,
driven by nbclient), pointed at both roots by DOODLE_DELTA / DOODLE_APPROX_DELTA; any
cell error fails the test, and the main plot must be written as a real PNG.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
from conftest import ROOT, write_conf

pytestmark = pytest.mark.integration

NOTEBOOK = ROOT / "notebooks" / "minute_stats.ipynb"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"
START = 1468245300  # 2016-07-11 13:55:00 UTC: the data crosses an hour


def make_runs(spark, tmp: Path, count: int = 3300, rate: float = 10, users: int = 400,
              late: int = 200, late_rate: float = 3, modes=("exact", "approx")) -> dict[str, str]:
    """Delta roots (mode -> path) of pipeline runs over the same two micro-batches.

    Batch 0: the first two thirds of a generated stream (3 % malformed, 0.5 % bit flips,
    2 % delayed within the watermark). Batch 1: ``late`` frames of other users for the
    first minutes (final by then: quarantined as late and counted into corrected
    results), then the rest of the stream. No flush: the newest minute stays provisional.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate
    lines, _ = generate(GenConfig(count=count, rate=rate, users=users, seed=41, start_ts=START,
                                  malformed_frac=0.03, bitflip_frac=0.005, delay_prob=0.02, max_delay=3))
    late_lines, _ = generate(GenConfig(count=late, rate=late_rate, users=users // 2, seed=42, start_ts=START))
    cut = count * 2 // 3
    batches = [lines[:cut], late_lines + lines[cut:]]
    frames, offset = [], 0
    for n, batch in enumerate(batches):  # Parquet files, so that executors read them (no huge tasks)
        path = tmp / f"batch-{n}.parquet"
        pq.write_table(pa.table({
            "value": pa.array(batch, pa.binary()), "topic": pa.array(["doodle"] * len(batch)),
            "partition": pa.array([0] * len(batch), pa.int32()),
            "offset": pa.array(range(offset, offset + len(batch)), pa.int64()),
            "file": pa.nulls(len(batch), pa.string()), "line": pa.nulls(len(batch), pa.int64())}), path)
        frames.append(spark.read.schema(SOURCE).parquet(str(path)))
        offset += len(batch)
    roots = {}
    for mode in modes:
        cfg = load_config(write_conf(tmp / f"{mode}.toml", **{"job.mode": mode}))
        root = tmp / f"delta-{mode}"
        p = MinuteStatsPipeline(spark, cfg, str(tmp / f"ckpt-{mode}"), str(root))
        for batch_id, df in enumerate(frames):
            p.process_batch(df, batch_id)
        roots[mode] = str(root)
    return roots


def execute(env: dict[str, str], timeout: float = 240):
    """Run the notebook in a kernel of the virtualenv's Python; returns the executed notebook."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    kernels = Path(env["DOODLE_TEST_KERNELS"])
    (kernels / "doodle-venv").mkdir(parents=True, exist_ok=True)
    (kernels / "doodle-venv" / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "doodle (.venv)", "language": "python"}))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = KernelManager(kernel_name="doodle-venv", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=False,
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def png_info(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decompressed image data) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    return width, height, len(set(zlib.decompress(idat)))


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def hour_uniques(text: str) -> dict[str, int]:
    """The notebook's table "per hour (...)": start -> unique_users."""
    lines = text[text.index("per hour ("):].splitlines()[2:]
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or not parts[0].startswith("20"):
            break
        out[f"{parts[0]} {parts[1]}"] = int(parts[2])
    return out


def expected_hour_uniques(root: str) -> dict[str, int]:
    """Distinct uids per UTC hour, recounted in plain Python from the minute_uids pairs."""
    from doodlestats.io.tables import MINUTE_UIDS, Tables
    hours: dict[int, set] = {}
    for r in Tables(root, "test").read(MINUTE_UIDS, columns=["minute", "uid"]).to_pylist():
        hours.setdefault(r["minute"] - r["minute"] % 3600, set()).add(r["uid"])
    return {time.strftime("%Y-%m-%d %H:%M", time.gmtime(h)): len(u) for h, u in sorted(hours.items())}


def test_the_notebook_runs_headless_and_writes_the_main_plot(spark, tmp_path):
    t0 = time.monotonic()
    roots = make_runs(spark, tmp_path)
    made = time.monotonic() - t0
    png = tmp_path / "main.png"
    nb = execute({"DOODLE_DELTA": roots["exact"], "DOODLE_APPROX_DELTA": roots["approx"],
                  "DOODLE_NOTEBOOK_PNG": str(png), "DOODLE_TEST_KERNELS": str(tmp_path / "kernels")})
    ran = time.monotonic() - t0 - made
    print(f"data set {made:.1f}s, notebook {ran:.1f}s")

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = outputs_text(nb)
    assert f"python: {VENV_PYTHON}" in text or not VENV_PYTHON.exists(), text[:2000]
    for status in ("provisional", "final", "corrected"):  # the data set has every status
        assert status in text
    assert "late frames: 200 in 2 minute(s)" in text
    assert "equals minute_stats.unique_users in every minute: True" in text
    assert "frames per minute equal in both runs: True" in text
    assert text.count("approx vs exact, ") == 2  # Spark's sketches of minute_uids and the approx run
    assert hour_uniques(text) == expected_hour_uniques(roots["exact"])
    images = sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 5

    data = png.read_bytes()
    width, height, values = png_info(data)
    assert width >= 600 and height >= 300 and len(data) > 10_000
    assert values > 20  # a drawn chart, not a blank canvas


def test_the_parameters_cell_comes_first_and_has_the_defaults():
    import nbformat
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    ns: dict = {}
    exec(code[0].source, ns)  # noqa: S102 - the notebook's own parameters cell
    assert ns["DELTA"] == "data/delta" and ns["APPROX_DELTA"] is None
    assert all(not c.get("outputs") for c in code), "commit the notebook without outputs"
