"""Table maintenance next to the live job: compact the small files of the Delta tables,
checkpoint and clean up their logs, vacuum files nothing references any more.

Only date partitions before a settled date are compacted — by default the day before the
newest minute in ``minute_stats`` — so the live job, which writes the newest dates, is
never rewritten under its feet; run it from cron (e.g. hourly) while the job runs:

    ./spark-submit.sh jobs/maintain.py          # or: .venv/bin/python jobs/maintain.py (no Spark needed)
    python jobs/maintain.py --tables minute_uids --before 2016-07-12 --vacuum-hours 24

Exit status: 0 done, 1 a table could not be maintained, 2 bad arguments or no tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import _bootstrap  # noqa: F401 - doodlestats importable from a clone
from deltalake import DeltaTable

from doodlestats.io import maintenance
from doodlestats.io.storage import delta_storage_options
from doodlestats.io.tables import Tables
from doodlestats.io.uris import StorageError, to_delta_uri
from doodlestats.runtime import cli
from doodlestats.runtime.config import ConfigError, load_config
from doodlestats.runtime.logs import logger

PROG = "maintain"
_log = logger(PROG)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = cli.ArgumentParser(prog="jobs/maintain.py", description=__doc__)
    ap.add_argument("--tables", default=",".join(maintenance.TABLES),
                    help=f"comma-separated (default: {','.join(maintenance.TABLES)})")
    ap.add_argument("--before", metavar="YYYY-MM-DD",
                    help="compact date partitions before this date (default: the day before the newest minute)")
    ap.add_argument("--target-mb", type=int,
                    help="size of a compacted file, MB ([maintenance] target_mb, 128)")
    ap.add_argument("--vacuum-hours", type=int,
                    help="delete unreferenced files older than this ([maintenance] vacuum_hours, 168; at least 1: "
                         "a running batch's staged files must stay)")
    ap.add_argument("--delta-path", help="root of the Delta tables ([paths] delta); a path or a URI")
    ap.add_argument("--conf-file", help="configuration file (default conf/doodle.toml)")
    args = ap.parse_args(argv)
    args.tables = tuple(t.strip() for t in args.tables.split(",") if t.strip())
    bad = [t for t in args.tables if t not in maintenance.TABLES]
    if bad or not args.tables:
        ap.error(f"--tables: {', '.join(bad) or 'none'} (choose from {', '.join(maintenance.TABLES)})")
    if args.before is not None:
        try:
            args.before = dt.date.fromisoformat(args.before)
        except ValueError:
            ap.error(f"--before: not a date (YYYY-MM-DD): {args.before!r}")
    if (args.vacuum_hours is not None and args.vacuum_hours < 1) or (args.target_mb is not None and args.target_mb < 1):
        ap.error("--vacuum-hours and --target-mb must be at least 1")
    return args


def body(args) -> int:
    try:
        cfg = load_config(args.conf_file, {"paths.delta": args.delta_path, "maintenance.target_mb": args.target_mb,
                                           "maintenance.vacuum_hours": args.vacuum_hours})
        delta = str(cfg.path("delta"))
        tables = Tables(delta, PROG, delta_storage_options(delta, cfg))
    except (ConfigError, StorageError) as e:
        raise cli.JobError(str(e)) from None
    missing = [t for t in args.tables
               if not DeltaTable.is_deltatable(to_delta_uri(tables.path(t)), storage_options=tables.storage_options)]
    if missing:
        raise cli.JobError(f"no {', '.join(missing)} table below {delta} — run jobs/minute_stats.py first")
    _log.info(f"{PROG}: {', '.join(args.tables)} below {delta}")
    try:
        maintenance.maintain(tables, args.tables, args.before, cfg.maintenance.target_mb << 20,
                             cfg.maintenance.vacuum_hours,
                             progress=lambda rep: _log.info(f"{PROG}: {rep.line()}"))
    except Exception as e:  # noqa: BLE001 - a commit conflict, an unreachable store: one line
        raise cli.JobError(f"maintenance failed: {cli.first_line(e)}", cli.FAILED) from None
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, parse_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
