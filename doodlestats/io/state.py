"""The job's own small state, one JSON file per committed micro-batch, in the checkpoint.

Spark's checkpoint holds the source offsets; this file holds what the pipeline needs to
process the next batch deterministically: the event-time watermark, the per-partition
maxima, the timestamp guard's reference, the Delta versions of the batch and, for a Kafka
source, the next offset expected per partition and the gaps the job skipped (see
:func:`find_gaps`).
``<checkpoint>/doodle_state/<batch_id>.json`` is written after all Delta writes of a batch
succeeded, so a batch whose file exists is complete, and a replayed batch starts from
the file of the batch before it. The checkpoint may be a local path or any URI Spark's
Hadoop file systems know (``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``), through
:mod:`doodlestats.io.fs`: the file is written in one piece (an object store PUT, or write +
rename on a file system), so it is either there whole or not at all::

    store = StateStore(checkpoint)            # StateStore("s3a://b/ckpt", spark=spark)
    if not store.done(batch_id):
        st = store.load_before(batch_id)
        ...
        store.save(new_state)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from doodlestats.batch.window import is_final
from doodlestats.io.fs import FileSystem, LocalFS, fs_for
from doodlestats.io.uris import local_path

__all__ = ["JobState", "StateStore", "Gap", "find_gaps"]

KEEP = 50  # state files kept (older ones are pruned)
KEEP_GAPS = 1000  # gaps kept in the state (the newest; each is also a log line when found)
START = "start.json"
STATE_DIR = "doodle_state"


@dataclass(frozen=True)
class JobState:
    """What survives between micro-batches."""

    batch_id: int = -1
    max_ts: int | None = None     # largest accepted event time (unix s) so far
    watermark: int | None = None  # a minute [m, m+60) is final once m + 60 <= watermark
    ref_ts: int | None = None     # timestamp guard reference (median of the newest neighbourhoods)
    # per source partition ("topic#partition" or "file#id"): [largest accepted ts, unix time last seen]
    partitions: Mapping | None = None
    # Delta table versions right after this batch's commits: a restart reads the tables
    # AS OF these versions, so a batch whose commits were cut short is replayed exactly
    versions: dict | None = None
    # Kafka source only: per "topic#partition" the offset after the last frame read — where
    # the next batch must start unless retention deleted frames first (see find_gaps)
    offsets: dict | None = None
    # ranges of offsets that were gone from the broker and skipped (on_data_loss = "skip"),
    # oldest first: {"topic", "partition", "from", "to", "count", "batch_id", "found_at"}
    gaps: list | None = None

    def is_final(self, minute: int) -> bool:
        return is_final(minute, self.watermark)


@dataclass(frozen=True)
class Gap:
    """Offsets ``[start, end)`` of a Kafka partition that the job expected to read but the
    broker no longer had (retention deleted them while the job was down or behind)."""

    topic: str
    partition: int
    start: int  # the offset the checkpoint expected next
    end: int    # the earliest offset still there (or the first one the batch read)

    @property
    def count(self) -> int:
        """Offsets lost: frames, for a topic without transaction markers."""
        return self.end - self.start

    def describe(self) -> str:
        return (f"{self.topic} partition {self.partition}: expected offset {self.start:,}, earliest available "
                f"{self.end:,} ({self.count:,} frame(s) deleted unread)")

    def record(self, batch_id: int, found_at: float) -> dict:
        """The entry kept in :attr:`JobState.gaps`."""
        return {"topic": self.topic, "partition": self.partition, "from": self.start, "to": self.end,
                "count": self.count, "batch_id": batch_id, "found_at": round(found_at, 3)}


def find_gaps(expected: dict[str, int] | None, earliest, first: dict[str, int] | None = None) -> list[Gap]:
    """Offsets the checkpoint expects that the broker no longer has.

    ``expected``: "topic#partition" → next offset to read (:attr:`JobState.offsets`);
    ``earliest``: a function of a list of such keys returning the broker's earliest
    available offset of each (its low watermark); ``first``: the first offset a batch
    read per partition, or None before a batch (at start-up: every partition is asked).
    With ``first``, only partitions whose first offset is beyond the expected one are
    asked — a jump inside a topic without deletions (transaction markers) is no gap, so
    the broker decides — and the gap ends at the first offset read at the latest.

    >>> find_gaps({"t#0": 100, "t#1": 50}, lambda keys: {"t#0": 40, "t#1": 80})
    [Gap(topic='t', partition=1, start=50, end=80)]
    >>> find_gaps({"t#0": 100}, lambda keys: {"t#0": 300}, first={"t#0": 250})
    [Gap(topic='t', partition=0, start=100, end=250)]
    >>> find_gaps({"t#0": 100}, lambda keys: 1 / 0, first={"t#0": 100})   # nothing to ask
    []
    """
    if not expected:
        return []
    keys = sorted(k for k in expected if first is None or (k in first and first[k] > expected[k]))
    if not keys:
        return []
    low = earliest(keys)
    gaps = []
    for k in keys:
        lo = low.get(k)
        if lo is None or lo <= expected[k]:
            continue
        end = lo if first is None else min(lo, first[k])
        topic, _, part = k.rpartition("#")
        gaps.append(Gap(topic, int(part), expected[k], end))
    return gaps


class StateStore:
    """The state files of the checkpoint ``checkpoint`` (a path or URI), through ``fs``
    (default: :func:`~doodlestats.io.fs.fs_for` the checkpoint; a URI needs ``spark``)."""

    def __init__(self, checkpoint: str | os.PathLike, fs: FileSystem | None = None, spark: Any = None):
        checkpoint = str(checkpoint).rstrip("/")
        self.fs = fs or fs_for(checkpoint, spark)
        base = os.path.abspath(local_path(checkpoint)) if isinstance(self.fs, LocalFS) else checkpoint
        self.dir = f"{base}/{STATE_DIR}"

    def _file(self, batch_id: int) -> str:
        return f"{self.dir}/{batch_id:012d}.json"

    def done(self, batch_id: int) -> bool:
        """True if batch ``batch_id`` completed (its state file is there)."""
        return self.fs.exists(self._file(batch_id))

    def ids(self) -> list[int]:
        """The batch ids that have a state file, oldest first."""
        names = (f.name for f in self.fs.list(self.dir))
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def load_before(self, batch_id: int) -> JobState:
        """State after the newest batch older than ``batch_id`` (the start state if none)."""
        older = [i for i in self.ids() if i < batch_id]
        return self.load(older[-1]) if older else self.start()

    def latest(self) -> JobState:
        ids = self.ids()
        return self.load(ids[-1]) if ids else self.start()

    def start(self) -> JobState:
        """The state before the first batch: empty, or what :meth:`save_start` recorded."""
        f = f"{self.dir}/{START}"
        return JobState(**json.loads(self.fs.read_text(f))) if self.fs.exists(f) else JobState()

    def save_start(self, state: JobState) -> None:
        """Record the state the first batch starts from (a backfill starts from the Delta
        versions of the moment it began, so its counts are merged with what is there)."""
        self.fs.write_text(f"{self.dir}/{START}", json.dumps(asdict(replace(state, batch_id=-1))))

    def load(self, batch_id: int) -> JobState:
        return JobState(**json.loads(self.fs.read_text(self._file(batch_id))))

    def save(self, state: JobState) -> None:
        """Write the state of ``state.batch_id`` in one piece and prune old files."""
        self.fs.write_text(self._file(state.batch_id), json.dumps(asdict(state)))
        for old in self.ids()[:-KEEP]:
            self.fs.delete(self._file(old))
