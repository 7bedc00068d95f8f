"""Minute results — the one definition of the output schema.

:data:`FIELDS` is the single source of the result's shape. From it come

* the JSON value published to ``minuteStats`` and printed by ``--print``
  (:meth:`MinuteResult.to_json`),
* the JSON schema ``schemas/minute_stats.schema.json`` (:func:`json_schema`; a test
  checks the file equals it — regenerate with ``python -m doodlestats.batch.results``),
* the Arrow schema of the Delta table ``minute_stats`` (:data:`MINUTE_STATS_SCHEMA`):
  the same fields, typed, plus the storage-only columns ``date``, ``batch_id``, ``hll``.

Example::

    r = MinuteResult(1451606400, 812, 1003, FINAL, "exact", None, time.time())
    r.to_bytes()    # b'{"window_start":"2016-01-01T00:00:00Z",...}'
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import orjson
import pyarrow as pa

__all__ = ["PROVISIONAL", "FINAL", "CORRECTED", "STATUSES", "MODES", "FIELDS", "MINUTE_STATS_SCHEMA",
           "Field", "Published", "MinuteResult", "json_schema", "object_schema", "rows_table", "iso", "now_iso_ms"]

PROVISIONAL, FINAL, CORRECTED = "provisional", "final", "corrected"
STATUSES = (PROVISIONAL, FINAL, CORRECTED)
MODES = ("exact", "approx")  # counting modes: exact distinct uids, or HyperLogLog sketches
_TS = pa.timestamp("us", tz="UTC")
_MINUTE_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:00Z$"


@dataclass(frozen=True)
class Field:
    """One field of a published value: its JSON schema and, if ``stored``, its column."""

    name: str
    json: dict            # JSON-schema fragment of the published value
    arrow: pa.DataType    # column type in minute_stats
    required: bool = True
    description: str = ""
    stored: bool = True   # a column of minute_stats (the legacy names are not)


FIELDS: tuple[Field, ...] = (
    Field("window_start", {"type": "string", "pattern": _MINUTE_PATTERN}, _TS,
          description="Start of the UTC minute, ISO-8601."),
    Field("window_end", {"type": "string", "pattern": _MINUTE_PATTERN}, _TS,
          description="End (exclusive) of the minute."),
    Field("ts", {"type": "integer"}, pa.int64(), description="Epoch seconds of window_start."),
    Field("unique_users", {"type": "integer", "minimum": 0}, pa.int64(),
          description="Distinct uids of the minute (an estimate in approx mode)."),
    Field("frames", {"type": "integer", "minimum": 0}, pa.int64(), description="Counted frames of the minute."),
    Field("status", {"enum": list(STATUSES)}, pa.string(),
          description="provisional: the minute is still open; final: the watermark passed its end; "
                      "corrected: late frames changed a final minute."),
    Field("mode", {"enum": list(MODES)}, pa.string()),
    Field("rsd", {"type": "number", "exclusiveMinimum": 0}, pa.float64(), required=False,
          description="Relative standard deviation of the HyperLogLog estimate (approx only)."),
    Field("emitted_at", {"type": "string"}, _TS,
          description="When the job published this value, ISO-8601 UTC with milliseconds."),
    # the names the replaced consumer published: its readers keep working when they switch
    Field("ts_str", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:00$"},
          pa.string(), stored=False,
          description="Legacy name: window_start as 'YYYY-MM-DD HH:MM:SS' (UTC), as the replaced consumer "
                      "published it."),
    Field("count", {"type": "integer", "minimum": 0}, pa.int64(), stored=False,
          description="Legacy name: the same value as unique_users."),
)

# storage-only columns of the Delta table, after the published fields
MINUTE_STATS_SCHEMA = pa.schema([(f.name, f.arrow) for f in FIELDS if f.stored] + [
    ("date", pa.date32()), ("batch_id", pa.int64()), ("hll", pa.binary())])


def object_schema(schema_id: str, title: str, description: str, fields) -> dict:
    """A published value's JSON schema from its field definitions (``rsd`` exactly in approx mode)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "title": title,
        "description": description,
        "type": "object",
        "required": [f.name for f in fields if f.required],
        "properties": {f.name: {**f.json, **({"description": f.description} if f.description else {})}
                       for f in fields},
        "if": {"properties": {"mode": {"const": "approx"}}},
        "then": {"required": ["rsd"]},
        "else": {"not": {"required": ["rsd"]}},
        "additionalProperties": False,
    }


def json_schema() -> dict:
    """The JSON schema of a published value, generated from :data:`FIELDS`."""
    return object_schema(
        "doodle/minute_stats.schema.json", "minute result",
        "Value of a message on the Kafka topic `minuteStats` (key = window_start) and of a "
        "--print line. Counts are ABSOLUTE: the sink is at-least-once, so keep the last "
        "value per key. Generated from doodlestats/batch/results.py (FIELDS).", FIELDS)


def iso(epoch_s: int | None) -> str:
    """Epoch seconds as ISO-8601 UTC (``2016-07-11T09:30:00Z``); ``"-"`` for None."""
    if epoch_s is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_iso_ms(now: float) -> str:
    """Unix time ``now`` as ISO-8601 UTC with milliseconds (``...T09:30:00.123Z``)."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Published:
    """What a published value does with its fields: JSON (``--print``, Kafka) and the
    stored columns. A subclass names its field definitions (``_fields``) and gives every
    field's Python value (``_values``); datetimes are rendered as ISO-8601 UTC."""

    _fields: tuple[Field, ...] = ()

    def _values(self) -> dict:
        raise NotImplementedError

    def _json_value(self, name: str, v):
        return v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, dt.datetime) else v

    def to_json(self) -> dict:
        return {name: self._json_value(name, v) for name, v in self._values().items() if v is not None}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    def _stored(self) -> dict:
        """The values of the fields that are table columns."""
        values = self._values()
        return {f.name: values[f.name] for f in self._fields if f.stored}


@dataclass(frozen=True)
class MinuteResult(Published):
    """The value of one minute as published (:data:`FIELDS`) and stored in ``minute_stats``."""

    minute: int            # epoch seconds of the minute start
    unique_users: int
    frames: int
    status: str
    mode: str
    rsd: float | None
    emitted_at: float      # unix time, seconds
    hll: bytes | None = None
    _fields = FIELDS

    @property
    def key(self) -> str:
        return iso(self.minute)

    def _values(self) -> dict:
        """Every field of :data:`FIELDS` as a Python value (None where it does not apply)."""
        utc = dt.timezone.utc
        return {"window_start": dt.datetime.fromtimestamp(self.minute, utc),
                "window_end": dt.datetime.fromtimestamp(self.minute + 60, utc), "ts": self.minute,
                "unique_users": self.unique_users, "frames": self.frames, "status": self.status,
                "mode": self.mode, "rsd": self.rsd if self.mode == "approx" else None,
                "emitted_at": dt.datetime.fromtimestamp(self.emitted_at, utc),
                "ts_str": dt.datetime.fromtimestamp(self.minute, utc).strftime("%Y-%m-%d %H:%M:%S"),
                "count": self.unique_users}

    def _json_value(self, name: str, v):
        return now_iso_ms(self.emitted_at) if name == "emitted_at" else super()._json_value(name, v)

    def to_row(self, batch_id: int) -> dict:
        """A row of the ``minute_stats`` table (:data:`MINUTE_STATS_SCHEMA`)."""
        v = self._stored()
        return {**v, "date": v["window_start"].date(), "batch_id": batch_id, "hll": self.hll}


def rows_table(results: list[MinuteResult], batch_id: int) -> pa.Table:
    """``results`` as ``minute_stats`` rows written by batch ``batch_id``."""
    return pa.Table.from_pylist([r.to_row(batch_id) for r in results], MINUTE_STATS_SCHEMA)


if __name__ == "__main__":  # regenerate schemas/minute_stats.schema.json
    print(json.dumps(json_schema(), indent=2))
