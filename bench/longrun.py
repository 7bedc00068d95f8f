"""Months in an hour: thousands of small batches over fast-forwarded event time, with the
job's background maintenance — per-batch time and the tables' file counts stay flat.

The pipeline in-process (real Spark, real Delta tables, no Kafka: this measures what the
tables do to a batch) on generated frames whose event time runs ``--minutes-per-batch``
minutes per batch, so 1,500 batches of 30 minutes are a month of dates. Every
``--maintain-every`` batches :class:`doodlestats.io.maintenance.Scheduled` compacts the
settled dates in a background thread, as the live job does (``[maintenance]``);
``--no-maintenance`` shows the same run without it. At the end the minutes are checked
against the generator's truth (exact mode).

    python -m bench.longrun                          # 1,500 batches (~30 min on 2 cores)
    python -m bench.longrun --batches 200 --no-maintenance
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import render
from bench.common import RESULTS_DIR, WORK_DIR, guarded, machine_info, percentile, rel, say

SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"
TABLES = ("minute_uids", "quarantine", "minute_stats")


def table_files(delta: Path) -> dict:
    """Per table: data files the current version references, and log entries (commits)
    since its last checkpoint (what a reader replays)."""
    from deltalake import DeltaTable
    out = {}
    for name in TABLES:
        log = delta / name / "_delta_log"
        commits = sorted(int(p.stem) for p in log.glob("*.json") if p.stem.isdigit())
        last_cp = max((int(p.name.split(".")[0]) for p in log.glob("*.checkpoint.parquet")), default=-1)
        out[name] = {"files": len(DeltaTable(str(delta / name)).file_uris()),
                     "log_since_checkpoint": sum(1 for c in commits if c > last_cp)}
    return out


def frames(batches: int, per_batch: int, minutes_per_batch: float, seed: int):
    """The generator's frames (sample-like, no defects) and truth, ``per_batch`` a batch."""
    from tools.generator import GenConfig, generate
    rate = per_batch / (minutes_per_batch * 60)
    return generate(GenConfig(count=batches * per_batch, rate=rate, users=5000, seed=seed))


def run(args) -> dict:
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.io.maintenance import Scheduled
    from doodlestats.io.tables import Tables
    from doodlestats.runtime.config import load_config
    from doodlestats.runtime.session import get_spark
    cfg = load_config(args.conf_file, {"job.mode": "exact", "metrics.port": 0})
    lines, truth = frames(args.batches, args.per_batch, args.minutes_per_batch, args.seed)
    spark = get_spark("longrun", cfg)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="longrun-", dir=WORK_DIR))
    delta = work / "delta"
    pipeline = MinuteStatsPipeline(spark, cfg, str(work / "ckpt"), str(delta))
    upkeep = Scheduled(lambda: Tables(str(delta), "maintain"), args.maintain_every if args.maintenance else 0, 0,
                       cfg.maintenance.target_mb << 20, 1, say)
    rows, t0 = [], time.time()
    for i in range(args.batches):
        chunk = lines[i * args.per_batch:(i + 1) * args.per_batch]
        df = spark.createDataFrame([(v, "t", 0, i * args.per_batch + k, None, None) for k, v in enumerate(chunk)],
                                   SOURCE)
        rep = pipeline.process_batch(df, i)
        upkeep.on_batch(rep)
        row: dict = {"batch": i, "seconds": round(rep.seconds, 3), "spark_jobs": rep.spark_jobs}
        if i % args.sample_every == 0 or i == args.batches - 1:
            row["tables"] = table_files(delta)
            say(f"batch {i:,}: {rep.seconds:.2f}s, minute_uids {row['tables']['minute_uids']['files']:,} files, "
                f"{time.time() - t0:.0f}s in")
        rows.append(row)
    upkeep.close()
    pipeline.flush()
    got = {r["ts"]: (r["unique_users"], r["frames"]) for r in pipeline.minute_table()}
    want = {m["minute"]: (m["unique_users"], m["frames"]) for m in truth["minutes"]}
    spark.stop()
    return {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "params": vars(args) | {"conf_file": None},
            "batches": rows, "maintenance_runs": upkeep.runs, "maintenance_failures": upkeep.failures,
            "exact": got == want, "minutes": len(want), "seconds": round(time.time() - t0, 1),
            "summary": summarise(rows)}


def summarise(rows: list[dict], window: int = 100) -> list[dict]:
    """Per window of ``window`` batches: p50 and p90 batch time, the last file counts."""
    out = []
    for start in range(0, len(rows), window):
        part = rows[start:start + window]
        secs = [r["seconds"] for r in part]
        last = [r["tables"] for r in part if "tables" in r][-1:]
        files = {f"{t}_files": last[0][t]["files"] for t in TABLES} if last else {}
        log = {"log_since_checkpoint": last[0]["minute_uids"]["log_since_checkpoint"]} if last else {}
        out.append({"batches": f"{start}-{start + len(part) - 1}", "p50_s": percentile(secs, 50),
                    "p90_s": percentile(secs, 90), **files, **log})
    return out


def markdown(res: dict) -> str:
    p = res["params"]
    head = (f"# Long run — {res['date']}\n\n{p['batches']:,} batches of {p['per_batch']} frames, "
            f"{p['minutes_per_batch']:g} event-time minutes a batch ({res['minutes']:,} minutes), maintenance "
            f"{'every ' + str(p['maintain_every']) + ' batches' if p['maintenance'] else 'off'} "
            f"({res['maintenance_runs']} runs, {res['maintenance_failures']} failed); exact: {res['exact']}; "
            f"{res['seconds']:,.0f} s. {render.machine_line(res['machine'])}.\n\n")
    cols = list(res["summary"][0])
    return head + "\n".join(render.table(cols, [[r.get(c, "") for c in cols] for r in res["summary"]],
                                          "l" + "r" * (len(cols) - 1))) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.longrun", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--per-batch", type=int, default=300, help="frames per batch (default 300)")
    ap.add_argument("--minutes-per-batch", type=float, default=30, help="event time per batch (default 30)")
    ap.add_argument("--maintain-every", type=int, default=100, help="batches between maintenance runs")
    ap.add_argument("--no-maintenance", dest="maintenance", action="store_false")
    ap.add_argument("--sample-every", type=int, default=25, help="count the tables' files every N batches")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--conf-file")
    ap.add_argument("--out", help="results stem (default bench/results/longrun-<date>[-nomaint])")
    args = ap.parse_args(argv)

    def go() -> int:
        res = run(args)
        stem = args.out or f"longrun-{res['date']}{'' if args.maintenance else '-nomaint'}"
        paths = render.write(RESULTS_DIR, stem, res, markdown(res))
        say(f"wrote {rel(paths['md'])}")
        print(markdown(res))
        return 0 if res["exact"] else 1
    return guarded("longrun", go)


if __name__ == "__main__":
    sys.exit(main())
