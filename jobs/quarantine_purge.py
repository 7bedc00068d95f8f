"""Delete quarantine rows older than N days and remove their files: the quarantine's data
at rest (raw frames, user ids among them) is kept for a bounded time.

"Older than N days" is by the row's ``date``: the UTC day the job quarantined (wrote) it —
the quarantine table's partition column, ``quarantined_at`` as a date — not the frame's
``ts`` (a replay of 2016 data would otherwise be purged the day it is written). Rows whose
date is before today (UTC) minus N days go: with N = 30 on 2026-12-01, every row written
before 2026-11-01; the last 30 days and today stay.

Two steps, both in the table's log (``DESCRIBE HISTORY`` / ``DeltaTable.history()``):

1. DELETE by a partition predicate (``date < '2026-11-01'``): whole files leave the table,
   nothing is read or rewritten.
2. VACUUM of those files with a retention of 0 hours, so that they are really deleted
   now, not after Delta's default 7 days (``enforce_retention_duration=False``). It is a
   "lite" vacuum: only files the log marks as removed go — never files a running job has
   written but not committed yet. Time travel to versions before the purge can no longer
   read the purged rows; that is the point. Then staged files of batches that died before
   their commit (never part of the table) are removed once they are older than N days.

Run it::

    make quarantine-purge                                           # [quarantine] retention_days
    ./spark-submit.sh jobs/quarantine_purge.py --days 7 --dry-run   # what would go, per day
    ./spark-submit.sh jobs/quarantine_purge.py --delta-path s3a://bucket/doodle/delta

``--days 0`` (or ``retention_days = 0``) keeps everything. It runs next to a live job:
the job appends today's partition, the purge deletes old ones (a commit conflict is
retried). Exit status: 0 done (or nothing to do), 1 the purge failed, 2 bad arguments or no
quarantine table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import _bootstrap  # noqa: F401 - doodlestats importable from a clone

from doodlestats.io.storage import delta_storage_options
from doodlestats.io.uris import StorageError, to_delta_uri
from doodlestats.runtime import cli
from doodlestats.runtime.config import ConfigError, load_config
from doodlestats.runtime.logs import logger

# delta-rs, pyarrow and the tables module are imported in the functions that use them:
# --help and argument errors stay fast.

PROG = "quarantine_purge"
COMMIT_ATTEMPTS = 5
_log = logger(PROG)



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = cli.ArgumentParser(prog="jobs/quarantine_purge.py", description=__doc__)
    ap.add_argument("--days", type=int, metavar="N",
                    help="delete rows quarantined more than N days before today, UTC "
                         "(default [quarantine] retention_days; 0 = keep forever)")
    ap.add_argument("--dry-run", action="store_true", help="print how many rows per day would go; change nothing")
    ap.add_argument("--delta-path", help="root of the Delta tables ([paths] delta); a path or a URI")
    ap.add_argument("--conf-file", help="configuration file (default conf/doodle.toml)")
    args = ap.parse_args(argv)
    if args.days is not None and args.days < 0:
        ap.error(f"argument --days: must be >= 0, got {args.days}")
    return args


def rows_per_date(dt_table) -> dict[dt.date, tuple[int, list[str]]]:
    """date → (rows, file paths) of the table's current files, from the log alone."""
    import pyarrow as pa
    acts = dt_table.get_add_actions(flatten=True)
    acts = acts if isinstance(acts, pa.Table) else pa.table(acts)
    out: dict[dt.date, tuple[int, list[str]]] = {}
    if acts.num_rows == 0:
        return out
    for path, n, day in zip(acts.column("path").to_pylist(), acts.column("num_records").to_pylist(),
                            acts.column("partition.date").to_pylist()):
        rows, files = out.get(day, (0, []))
        out[day] = (rows + int(n or 0), files + [path])
    return out


def _retry(what: str, fn):
    """Run a commit, again after a conflict with a concurrent writer (the live job)."""
    from deltalake.exceptions import CommitFailedError
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return fn()
        except CommitFailedError as e:
            if attempt == COMMIT_ATTEMPTS:
                raise
            _log.info(f"{PROG}: {what}: commit conflict ({str(e).splitlines()[0]}), "
                      f"attempt {attempt + 1} of {COMMIT_ATTEMPTS}")
            time.sleep(0.5 * attempt)


def open_quarantine(args):
    """(the quarantine's delta-rs handle, its URI, retention days); raises cli.JobError."""
    from deltalake import DeltaTable

    from doodlestats.io.tables import QUARANTINE, Tables
    try:
        cfg = load_config(args.conf_file, {"paths.delta": args.delta_path})
        delta = str(cfg.path("delta"))
        opts = delta_storage_options(delta, cfg)
    except (ConfigError, StorageError) as e:
        raise cli.JobError(str(e)) from None
    days = cfg.quarantine.retention_days if args.days is None else args.days
    uri = to_delta_uri(Tables(delta, PROG).path(QUARANTINE))
    if days == 0:
        return None, uri, 0
    try:
        if not DeltaTable.is_deltatable(uri, storage_options=opts or None):
            raise cli.JobError(f"no quarantine table at {uri} — wrong --delta-path, or the job has not run yet")
        return DeltaTable(uri, storage_options=opts or None), uri, days
    except cli.JobError:
        raise
    except Exception as e:  # noqa: BLE001 - unreachable store, bad URI: one line
        raise cli.JobError(f"cannot read {uri}: {cli.first_line(e)}") from None


def purge(table, uri: str, days: int, cutoff, old: dict) -> tuple[list[str], list[str]]:
    """Delete the rows of the ``old`` days and vacuum their files and the staged files of
    failed batches; (files removed, staged files removed). Raises cli.JobError."""
    from deltalake import CommitProperties
    files = [f for _, fs in old.values() for f in fs]
    try:
        removed: list[str] = []
        if old:
            meta = CommitProperties(custom_metadata={"doodle.purge": f"quarantine rows before {cutoff} "
                                                                     f"(retention {days} days)"})
            m = _retry("delete", lambda: table.delete(f"date < '{cutoff.isoformat()}'", commit_properties=meta))
            if m.get("num_added_files"):  # a partition predicate never rewrites; say so if it did
                _log.warning(f"{PROG}: warning: the delete rewrote {m['num_added_files']} file(s)")
            # the files just removed go now (lite: only files the log marks as removed)
            removed = _retry("vacuum", lambda: table.vacuum(retention_hours=0, enforce_retention_duration=False,
                                                            dry_run=False))
            left = sorted(set(files) - set(removed))
            if left:
                raise cli.JobError(f"{len(left)} file(s) of deleted rows are still in {uri} after the vacuum "
                                 f"(e.g. {left[0]}) — run the purge again", 1)
        # staged files of batches that died before their commit: never in the table, and
        # raw frames all the same; gone once older than the retention
        orphans = _retry("vacuum", lambda: table.vacuum(retention_hours=days * 24, enforce_retention_duration=False,
                                                        dry_run=False, full=True))
    except cli.JobError:
        raise
    except Exception as e:  # noqa: BLE001 - one line, not a stack trace
        raise cli.JobError(f"purging {uri} failed: {cli.first_line(e)}", cli.FAILED) from None
    return removed, orphans


def body(args) -> int:
    t0 = time.time()
    table, uri, days = open_quarantine(args)
    if table is None:
        _log.info(f"{PROG}: retention 0 days: the quarantine is kept forever — nothing deleted "
                  "(set [quarantine] retention_days or --days N)")
        return cli.OK
    cutoff = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days)
    per_date = rows_per_date(table)
    old = {d: v for d, v in sorted(per_date.items()) if d is not None and d < cutoff}
    rows, span = sum(n for n, _ in old.values()), (f"{min(old)} … {max(old)}" if old else "-")
    files = sum(len(fs) for _, fs in old.values())
    _log.info(f"{PROG}: {uri} (version {table.version()}) | retention {days} day(s): rows quarantined "
              f"before {cutoff} go | {rows:,} row(s) of {len(old)} day(s) ({span}) in {files:,} file(s)")
    if args.dry_run:
        for d, (n, fs) in old.items():
            print(f"{d}  {n:>12,} rows  {len(fs):>6,} files  would be deleted")
        print(f"dry run: {rows:,} row(s) of {len(old)} day(s) would be deleted; "
              f"{sum(n for n, _ in per_date.values()) - rows:,} kept")
        return cli.OK
    removed, orphans = purge(table, uri, days, cutoff, old)
    table.update_incremental()
    _log.info(f"{PROG}: done: deleted {rows:,} row(s) of {len(old)} day(s) ({span}), {len(removed):,} file(s) "
              f"removed from storage; {len(orphans):,} staged file(s) of failed batches removed; "
              f"table version {table.version()} | {time.time() - t0:.1f}s")
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, parse_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
