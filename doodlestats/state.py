"""The job's own small state, one JSON file per committed micro-batch.

Spark's checkpoint holds the source offsets; this file holds what the pipeline needs to
process the next batch deterministically: the event-time watermark and the timestamp
guard's reference. ``<checkpoint>/doodle_state/<batch_id>.json`` is written after all
Delta writes of a batch succeeded, so a batch whose file exists is complete, and a
replayed batch starts from the file of the batch before it::

    store = StateStore(checkpoint)
    if not store.done(batch_id):
        st = store.load_before(batch_id)
        ...
        store.save(batch_id, new_state)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

KEEP = 50  # state files kept (older ones are pruned)


@dataclass(frozen=True)
class JobState:
    """What survives between micro-batches."""

    batch_id: int = -1
    max_ts: int | None = None     # largest accepted event time (unix s) so far
    watermark: int | None = None  # a minute [m, m+60) is final once m + 60 <= watermark
    ref_ts: int | None = None     # timestamp guard reference (median of the newest neighbourhoods)
    # per source partition ("topic#partition" or "file#id"): [largest accepted ts, unix time last seen]
    partitions: dict | None = None
    # Delta table versions right after this batch's commits: a restart reads the tables
    # AS OF these versions, so a batch whose commits were cut short is replayed exactly
    versions: dict | None = None

    def is_final(self, minute: int) -> bool:
        return self.watermark is not None and minute + 60 <= self.watermark


class StateStore:
    def __init__(self, checkpoint: str | os.PathLike):
        self.dir = Path(checkpoint) / "doodle_state"

    def _file(self, batch_id: int) -> Path:
        return self.dir / f"{batch_id:012d}.json"

    def done(self, batch_id: int) -> bool:
        return self._file(batch_id).exists()

    def ids(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.dir.glob("*.json"))

    def load_before(self, batch_id: int) -> JobState:
        """State after the newest batch older than ``batch_id`` (empty state if none)."""
        older = [i for i in self.ids() if i < batch_id]
        return self.load(older[-1]) if older else JobState()

    def latest(self) -> JobState:
        ids = self.ids()
        return self.load(ids[-1]) if ids else JobState()

    def load(self, batch_id: int) -> JobState:
        return JobState(**json.loads(self._file(batch_id).read_text()))

    def save(self, state: JobState) -> None:
        """Atomically write the state of ``state.batch_id`` and prune old files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = self._file(state.batch_id)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, f)
        for old in self.ids()[:-KEEP]:
            self._file(old).unlink(missing_ok=True)
