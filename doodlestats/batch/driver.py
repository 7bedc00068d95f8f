"""The driver step of a micro-batch: (state, batch summary) → (results, new state). Pure.

Everything the driver decides per batch is here, as functions of plain values — no
Spark, no I/O, no clock (``now`` is an argument) — so the rules are tested on their own
(``tests/test_driver.py``, with hypothesis):

* **late**: a minute already final before the batch (:func:`doodlestats.batch.window.is_final`
  of the previous watermark) gets ``corrected`` results, starting from its stored row;
* **watermark**: the slowest active partition's largest accepted ts minus the delay,
  never backwards (:class:`doodlestats.batch.window.Watermark`);
* **emit** (:func:`statuses`): every touched minute is emitted, ``final`` once the new
  watermark passed it, else ``provisional``; open minutes the batch did not touch are
  emitted once, ``final``, when the watermark passes them; final and corrected minutes
  leave the state.

The caller reads the stored rows :func:`to_restore` names before the step, and writes
the results after it::

    stored = read_minute_stats(to_restore(state, summary))
    results, state = step(state, summary, partials, stored, counter, clock, now=time.time())
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any, Mapping

from doodlestats.batch import reasons
from doodlestats.batch.results import CORRECTED, FINAL, PROVISIONAL, MinuteResult
from doodlestats.batch.window import Watermark, is_final

__all__ = ["BatchSummary", "DriverState", "statuses", "to_restore", "step", "flush"]


@dataclass
class BatchSummary:
    """What the driver learns about a batch from its classified frames (one row per
    minute × source partition × reason, observed during the counting pass). Pure: built
    by :meth:`of`."""

    frames: int = 0
    counted_per_minute: dict[int, int] = field(default_factory=dict)
    partition_max: dict[str, int] = field(default_factory=dict)   # accepted, not late
    max_ts: int | None = None
    quarantined: Tally = field(default_factory=Tally)
    unkept: int = 0  # outliers without raw bytes in the cache

    @classmethod
    def of(cls, rows: list[dict], late_corrections: bool) -> "BatchSummary":
        s = cls()
        for r in rows:
            n, reason = r["n"], r["reason"]
            s.frames += n
            s.unkept += r["unkept"]
            if reason is not None:
                s.quarantined[reason] += n
            if reason is None or (reason == reasons.LATE and late_corrections):
                s.counted_per_minute[r["minute"]] = s.counted_per_minute.get(r["minute"], 0) + n
            if reason is None:
                key = f"{r['src']}#{r['partition']}"
                s.partition_max[key] = max(s.partition_max.get(key, r["max_ts"]), r["max_ts"])
                s.max_ts = r["max_ts"] if s.max_ts is None else max(s.max_ts, r["max_ts"])
        return s


@dataclass(frozen=True)
class DriverState:
    """What the driver keeps between batches: the watermark clock and, per open minute, the
    counted frames and the counter's value (an int, or a sketch)."""

    watermark: int | None = None
    partitions: Mapping = field(default_factory=dict)
    max_ts: int | None = None
    frames: Mapping[int, int] = field(default_factory=dict)
    values: Mapping[int, Any] = field(default_factory=dict)


def statuses(touched: list[int], late_minutes: list[int], open_minutes: list[int],
             watermark: int | None) -> list[tuple[int, str]]:
    """Which minutes a batch emits, with which status — the emit rule, defined once.

    Every minute the batch touched is emitted: ``corrected`` if it was already final before
    the batch (its frames were late), ``final`` if the new watermark passed it, else
    ``provisional``. Open minutes the batch did not touch are emitted once, as ``final``,
    when the watermark passes them.

    >>> statuses([0, 60, 120], [0], [0, 60, 120, 180, -60], watermark=125)
    [(0, 'corrected'), (60, 'final'), (120, 'provisional'), (-60, 'final')]
    """
    out = []
    for m in touched:
        out.append((m, CORRECTED if m in late_minutes else FINAL if is_final(m, watermark) else PROVISIONAL))
    out += [(m, FINAL) for m in sorted(open_minutes) if m not in touched and is_final(m, watermark)]
    return out


def to_restore(state: DriverState, summary: BatchSummary) -> list[int]:
    """Touched minutes whose stored ``minute_stats`` row the step needs: corrections of
    final minutes, and minutes this run does not hold (the tables may: a backfill over
    minutes a stream wrote adds to them)."""
    return [m for m in sorted(summary.counted_per_minute)
            if is_final(m, state.watermark) or m not in state.frames]


def step(state: DriverState, summary: BatchSummary, partials: Mapping[int, Any],
         stored: Mapping[int, dict | None], counter, clock: Watermark, now: float
         ) -> tuple[list[MinuteResult], DriverState]:
    """One batch on the driver. ``partials``: the counter's partial per minute; ``stored``:
    the rows of :func:`to_restore` (a missing minute: nothing stored); ``counter``: the
    pure value functions of :class:`doodlestats.batch.counting.Counter`."""
    touched = sorted(summary.counted_per_minute)
    late = [m for m in touched if is_final(m, state.watermark)]
    frames, values = dict(state.frames), dict(state.values)
    for m in to_restore(state, summary):
        row = stored.get(m)
        frames[m], values[m] = (int(row["frames"]) if row else 0), counter.from_row(row)
    for m in touched:
        frames[m] = frames.get(m, 0) + summary.counted_per_minute[m]
        if m in partials:
            values[m] = counter.add(values.get(m, counter.zero()), partials[m])
    watermark, partitions = clock.advance(state.watermark, state.partitions, summary.partition_max, now)
    results = [_result(m, frames, values, status, counter, now)
               for m, status in statuses(touched, late, list(frames), watermark)]
    for r in results:  # final and corrected minutes leave memory
        if r.status != PROVISIONAL:
            frames.pop(r.minute, None)
            values.pop(r.minute, None)
    seen = [x for x in (state.max_ts, summary.max_ts) if x is not None]
    return results, DriverState(watermark, partitions, max(seen) if seen else None, frames, values)


def flush(state: DriverState, counter, now: float) -> tuple[list[MinuteResult], DriverState]:
    """End of input: every open minute final; the watermark moves past the newest one, so
    frames for these minutes arriving later are late."""
    opened = sorted(state.frames)
    if not opened:
        return [], state
    results = [_result(m, state.frames, state.values, FINAL, counter, now) for m in opened]
    watermark = max(state.watermark or 0, opened[-1] + 60)
    return results, DriverState(watermark, state.partitions, state.max_ts, {}, {})


def _result(m: int, frames, values, status: str, counter, now: float) -> MinuteResult:
    v = values.get(m, counter.zero())
    return MinuteResult(m, counter.unique(v), frames.get(m, 0), status, counter.mode, counter.rsd, now,
                        counter.sketch(v))
