"""Table maintenance: the small files of every micro-batch compacted, the Delta logs
checkpointed and cleaned up, unreferenced files vacuumed — safe next to the live job.

A micro-batch adds Parquet files to ``minute_uids`` and ``quarantine`` and rewrites a
file of ``minute_stats``; at one batch a second that is ~86,000 files and commits per
table per day. :func:`maintain` compacts (delta-rs ``optimize.compact``) only the date
partitions **before** a settled date — by default the day before the newest minute in
``minute_stats`` — so it never rewrites what a running batch writes or reads: the live
job appends to and merges into the newest dates (its Delta commits name their dates, so
delta-rs finds no conflict with a compaction of older ones), and a late frame's
correction reads the files its batch saw in the log, which a vacuum keeps for
``vacuum_hours`` (7 days by default, as Delta's own default). Then a log checkpoint and
the clean-up of log entries older than the table's log retention.

    reports = maintain(Tables("data/delta", "maintain"))      # jobs/maintain.py

The live job runs the same in a background thread (:class:`Scheduled`, ``[maintenance]``
every N batches or minutes), on a :class:`Tables` of its own, so a batch never waits for it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from doodlestats.io.tables import MINUTE_STATS, MINUTE_UIDS, QUARANTINE, Tables
from doodlestats.runtime.cli import first_line
from doodlestats.runtime.config import MaintenanceConf

__all__ = ["TABLES", "TARGET_FILE_BYTES", "VACUUM_HOURS", "TableReport", "Scheduled", "settled_before", "maintain"]

TABLES = (MINUTE_UIDS, QUARANTINE, MINUTE_STATS)
TARGET_FILE_BYTES = MaintenanceConf.target_mb << 20
VACUUM_HOURS = MaintenanceConf.vacuum_hours


@dataclass
class TableReport:
    table: str
    before: str                      # partitions strictly before this date were compacted
    files_before: int = 0
    files_after: int = 0
    removed: int = 0                 # files the compaction replaced
    added: int = 0                   # files it wrote
    vacuumed: int = 0                # unreferenced files deleted
    version: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.table}: {self.files_before:,} → {self.files_after:,} files (compacted {self.removed:,} "
                f"into {self.added:,} in dates before {self.before}), {self.vacuumed:,} vacuumed, "
                f"version {self.version}, {self.seconds:.1f}s" + "".join(f"; {n}" for n in self.notes))


def settled_before(tables: Tables) -> dt.date | None:
    """The day before the newest minute of ``minute_stats`` (None: no minute yet): every
    date before it is settled — the live job writes the newest dates only."""
    acts = tables.table(MINUTE_STATS).get_add_actions(flatten=True)
    names = acts.schema.names
    if "max.ts" not in names or acts.num_rows == 0:
        return None
    newest = max((v for v in acts.column("max.ts").to_pylist() if v is not None), default=None)
    if newest is None:
        return None
    return dt.datetime.fromtimestamp(int(newest), dt.timezone.utc).date() - dt.timedelta(days=1)


def maintain(tables: Tables, names: tuple[str, ...] = TABLES, before: dt.date | None = None,
             target_bytes: int = TARGET_FILE_BYTES, vacuum_hours: int = VACUUM_HOURS,
             progress=None) -> list[TableReport]:
    """Compact, checkpoint, clean up and vacuum each table of ``names``; ``before``: the
    first date left as it is (default :func:`settled_before`). ``progress`` gets each
    table's report as it is done."""
    before = before or settled_before(tables)
    out = []
    for name in names:
        rep = _one(tables, name, before, target_bytes, vacuum_hours)
        out.append(rep)
        if progress is not None:
            progress(rep)
    return out


def _one(tables: Tables, name: str, before: dt.date | None, target_bytes: int, vacuum_hours: int) -> TableReport:
    t0 = time.time()
    table = tables.table(name)
    rep = TableReport(name, before.isoformat() if before else "-", files_before=len(table.file_uris()))
    if before is not None:
        m = table.optimize.compact(partition_filters=[("date", "<", before.isoformat())], target_size=target_bytes)
        rep.removed, rep.added = int(m.get("numFilesRemoved", 0)), int(m.get("numFilesAdded", 0))
    else:
        rep.notes.append("no minute yet: nothing compacted")
    table.update_incremental()
    table.create_checkpoint()
    table.cleanup_metadata()
    rep.vacuumed = len(table.vacuum(retention_hours=vacuum_hours, dry_run=False, enforce_retention_duration=False))
    table.update_incremental()
    rep.files_after, rep.version = len(table.file_uris()), table.version()
    rep.seconds = time.time() - t0
    return rep


class Scheduled:
    """:func:`maintain` in a background thread of the live job, every ``every_batches``
    batches or ``every_minutes`` minutes, whichever comes first (0: that trigger off); one
    run at a time. A run that fails is one line to ``say`` and tried again at the next
    trigger; the job goes on.

    ``make_tables()`` gives the run its own :class:`Tables` (the job's are the batch thread's).
    :meth:`on_batch` is called after each committed batch; :meth:`close` waits for a run.
    """

    def __init__(self, make_tables: Callable[[], Tables], every_batches: int, every_minutes: float,
                 target_bytes: int, vacuum_hours: int, say: Callable[[str], None]):
        self.make_tables, self.say = make_tables, say
        self.every_batches, self.every_s = every_batches, every_minutes * 60
        self.target_bytes, self.vacuum_hours = target_bytes, vacuum_hours
        self.batches, self.last = 0, time.monotonic()
        self.runs, self.failures = 0, 0
        self.thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.every_batches > 0 or self.every_s > 0

    def due(self) -> bool:
        return (self.every_batches > 0 and self.batches >= self.every_batches) or \
            (self.every_s > 0 and time.monotonic() - self.last >= self.every_s)

    def on_batch(self, _report=None) -> None:
        """A batch was committed: start a run if one is due and none is running."""
        self.batches += 1
        if not self.enabled or not self.due() or (self.thread is not None and self.thread.is_alive()):
            return
        self.batches, self.last = 0, time.monotonic()
        self.thread = threading.Thread(target=self._run, name="doodle-maintenance", daemon=True)
        self.thread.start()

    def close(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        t0 = time.time()
        try:
            reps = maintain(self.make_tables(), target_bytes=self.target_bytes, vacuum_hours=self.vacuum_hours)
        except Exception as e:  # noqa: BLE001 - a conflict, an unreachable store: say it, try at the next trigger
            self.failures += 1
            self.say(f"maintenance failed (tried again at the next trigger): {first_line(e)[:300]}")
            return
        self.runs += 1
        self.say(f"maintenance in {time.time() - t0:.1f}s: " + "; ".join(
            f"{r.table} {r.files_before:,} → {r.files_after:,} files, {r.vacuumed:,} vacuumed" for r in reps))
