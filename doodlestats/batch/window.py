"""Event time: the minute bucketing, the "final" rule and the per-partition watermark.

Defined once, used by the executor stages (Spark columns), the driver (Python ints) and
the tests. Pure: no Spark session, no I/O::

    minute_of(1451606459)                 # -> 1451606400
    is_final(1451606400, 1451606460)      # -> True: the watermark passed the minute's end
    clock = Watermark(delay_s=5, idle_s=30)
    wm, parts = clock.advance(None, {}, {"doodle#0": 1451606470, "doodle#1": 1451606466}, now=1000.0)
    # -> 1451606461: the slowest active partition (…466) minus the delay
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyspark.sql import functions as F

__all__ = ["MINUTE_S", "minute_of", "is_final", "minute_col", "final_col", "minute_sql", "final_sql", "Watermark"]

MINUTE_S = 60


def minute_of(ts: int) -> int:
    """Epoch seconds of the start of the UTC minute containing ``ts`` (epoch seconds)."""
    return ts - ts % MINUTE_S


def is_final(minute: int, watermark: int | None) -> bool:
    """A minute ``[m, m+60)`` is final once the watermark reached its end."""
    return watermark is not None and minute + MINUTE_S <= watermark


def minute_col(ts):
    """:func:`minute_of` as a Spark column expression."""
    return ts - F.pmod(ts, F.lit(MINUTE_S))


def final_col(minute, watermark: int | None):
    """:func:`is_final` as a Spark column expression (False without a watermark)."""
    if watermark is None:
        return F.lit(False)
    return (minute + F.lit(MINUTE_S)) <= F.lit(int(watermark))


def minute_sql(ts: str = "ts") -> str:
    """:func:`minute_of` as Spark SQL."""
    return f"({ts} - pmod({ts}, {MINUTE_S}))"


def final_sql(minute: str, watermark: int | None) -> str:
    """:func:`is_final` as Spark SQL (false without a watermark)."""
    return "false" if watermark is None else f"({minute} + {MINUTE_S} <= {int(watermark)})"


@dataclass(frozen=True)
class Watermark:
    """Per-partition watermark: the slowest *active* source partition's largest accepted
    event time minus ``delay_s``. A partition silent for ``idle_s`` seconds (processing
    time) stops holding it back; one silent for ten times that is forgotten. It never
    moves backwards."""

    delay_s: int
    idle_s: float

    def advance(self, watermark: int | None, partitions: Mapping, batch_max: Mapping[str, int],
                now: float) -> tuple[int | None, dict]:
        """(new watermark, new partitions) after a batch whose accepted, not late frames
        had the largest event time ``batch_max[partition]``. ``partitions`` maps a partition
        key to ``[largest accepted ts, unix time last seen]``."""
        parts = {k: list(v) for k, v in (partitions or {}).items() if now - v[1] <= 10 * self.idle_s}
        for key, mx in batch_max.items():
            old = parts.get(key)
            parts[key] = [mx if old is None else max(old[0], mx), now]
        active = [mx for mx, last in parts.values() if now - last <= self.idle_s]
        if active:
            cand = min(active) - self.delay_s
            watermark = cand if watermark is None else max(watermark, cand)
        return watermark, parts
