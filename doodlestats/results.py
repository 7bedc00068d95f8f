"""Minute results: the JSON published to ``minuteStats``, printed by ``--print`` and
stored in ``minute_stats`` (see ``schemas/minute_stats.schema.json``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson

PROVISIONAL, FINAL, CORRECTED = "provisional", "final", "corrected"


def iso(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_iso_ms(now: float) -> str:
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class MinuteResult:
    minute: int            # epoch seconds of the minute start
    unique_users: int
    frames: int
    status: str
    mode: str
    rsd: float | None
    emitted_at: float      # unix time, seconds
    hll: bytes | None = None

    @property
    def key(self) -> str:
        return iso(self.minute)

    def to_json(self) -> dict:
        d = {"window_start": iso(self.minute), "window_end": iso(self.minute + 60), "ts": self.minute,
             "unique_users": self.unique_users, "frames": self.frames, "status": self.status,
             "mode": self.mode}
        if self.mode == "approx":
            d["rsd"] = self.rsd
        d["emitted_at"] = now_iso_ms(self.emitted_at)
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    def to_row(self, batch_id: int) -> tuple:
        """A row of the ``minute_stats`` table."""
        utc = dt.timezone.utc
        start = dt.datetime.fromtimestamp(self.minute, utc)
        return (start, dt.datetime.fromtimestamp(self.minute + 60, utc), self.minute, start.date(),
                self.unique_users, self.frames, self.status, self.mode,
                self.rsd if self.mode == "approx" else None,
                dt.datetime.fromtimestamp(self.emitted_at, utc), batch_id, self.hll)
