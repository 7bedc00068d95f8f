"""Retention gaps of a Kafka source: offsets the checkpoint expected but the broker deleted.

The job state records per partition the offset after the last frame read; frames the
broker deleted before the job read them are found at start-up and per batch
(:class:`OffsetCheck`) and either stop the job (:class:`DataLoss`, ``[job] on_data_loss =
"fail"``) or are skipped and recorded in the state (``"skip"``).
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from doodlestats.io.kafka import client_settings
from doodlestats.io.state import KEEP_GAPS, Gap, JobState, find_gaps
from doodlestats.runtime.config import Config
from doodlestats.runtime.logs import logger

__all__ = ["DataLoss", "OffsetCheck", "kafka_earliest"]

_log = logger(__name__)

class DataLoss(RuntimeError):
    """Offsets the checkpoint expects are gone from the broker (retention deleted them
    unread) and ``[job] on_data_loss`` is ``fail``. The message is the one line to show."""

    def __init__(self, gaps: list[Gap]):
        self.gaps = gaps
        total = sum(g.count for g in gaps)
        super().__init__(
            "data loss: " + "; ".join(g.describe() for g in gaps) +
            f" — the broker deleted {total:,} frame(s) before the job read them (retention). Nothing was "
            "counted past them; to go on from the earliest available offset and record the gap, run with "
            '--on-data-loss skip ([job] on_data_loss = "skip")')


def kafka_earliest(cfg: Config, topic: str):
    """A function of "topic#partition" keys → the broker's earliest available offset (low
    watermark) of each partition of ``topic`` (other topics' keys are left out)."""
    def earliest(keys: list[str]) -> dict[str, int]:
        wanted = [k for k in keys if k.rpartition("#")[0] == topic]
        if not wanted:
            return {}
        c = Consumer({**client_settings(cfg), "group.id": "doodle-offset-check", "enable.auto.commit": False})
        try:
            return {k: c.get_watermark_offsets(TopicPartition(topic, int(k.rpartition("#")[2])), timeout=30)[0]
                    for k in wanted}
        finally:
            c.close()
    return earliest


class OffsetCheck:
    """Finds offsets of a Kafka source that retention deleted before the job read them.

    The job state keeps, per partition, the offset after the last frame read
    (:attr:`JobState.offsets`). :meth:`at_start` compares it with the broker's earliest
    available offsets before the stream starts; :meth:`in_batch` does the same for a
    batch whose first offset of a partition is beyond the expected one (asking the broker
    only then). ``on_data_loss = "fail"`` raises :class:`DataLoss` (nothing of the batch
    is written); ``"skip"`` logs one line per gap, goes on, and the gaps become part of
    the next saved state (:attr:`JobState.gaps`). Spark's own check is off
    (``failOnDataLoss=false``): Spark reads from the earliest available offset, this
    decides.

    Example::

        check = OffsetCheck(kafka_earliest(cfg, "doodle"), cfg.job.on_data_loss)
        check.at_start(StateStore(checkpoint).latest())     # raises DataLoss in "fail" mode
        pipeline = MinuteStatsPipeline(spark, cfg, checkpoint, delta, offset_check=check)
    """

    def __init__(self, earliest, on_data_loss: str = "fail"):
        if on_data_loss not in ("fail", "skip"):
            raise ValueError(f"on_data_loss: expected fail or skip, got {on_data_loss!r}")
        self.earliest, self.on_data_loss = earliest, on_data_loss
        self.pending: list[Gap] = []     # skipped, not yet part of a saved state
        self.found: list[dict] = []      # every gap skipped by this run (metrics)
        self.failure: DataLoss | None = None

    def expected(self, st: JobState) -> dict[str, int]:
        """Next offset to read per partition: the state's, moved past skipped gaps."""
        exp = dict(st.offsets or {})
        for g in self.pending:
            k = f"{g.topic}#{g.partition}"
            exp[k] = max(exp.get(k, g.end), g.end)
        return exp

    def at_start(self, st: JobState) -> list[Gap]:
        """Before the stream (re)starts: every partition the state knows is asked."""
        return self._handle(find_gaps(self.expected(st), self.earliest), st.batch_id + 1)

    def in_batch(self, st: JobState, first: dict[str, int], batch_id: int) -> list[Gap]:
        """Inside batch ``batch_id`` (``first``: its first offset per partition)."""
        return self._handle(find_gaps(self.expected(st), self.earliest, first), batch_id)

    def _handle(self, gaps: list[Gap], batch_id: int) -> list[Gap]:
        if not gaps:
            return gaps
        if self.on_data_loss == "fail":
            self.failure = DataLoss(gaps)
            raise self.failure
        now = time.time()
        for g in gaps:
            _log.info(f"data loss skipped: {g.describe()} — going on from offset {g.end:,} (on_data_loss = skip); "
                      f"recorded in the job state of the next batch")
            self.found.append(g.record(batch_id, now))
        self.pending += gaps
        return gaps

    def state(self, st: JobState, last: dict[str, int], batch_id: int) -> dict:
        """``offsets`` and ``gaps`` of the state saved after ``batch_id`` (``last``: the
        last offset read per partition in it). Call :meth:`saved` once it is written."""
        offsets = {**self.expected(st), **{k: v + 1 for k, v in last.items()}}
        now = time.time()
        gaps = list(st.gaps or []) + [g.record(batch_id, now) for g in self.pending]
        return {"offsets": offsets, "gaps": gaps[-KEEP_GAPS:]}

    def saved(self) -> None:
        self.pending = []
