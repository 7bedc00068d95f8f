"""Fast pure-Python frame parser (the non-JVM path, e.g. inside Spark ``mapInArrow``).

``parse_frame(raw)`` returns exactly what :func:`doodlestats.batch.reference.reference_parse` returns
(tests/test_parser.py checks it on random and mutated documents), using ``orjson`` for the common
case and handing every doubtful case to the reference:

* orjson is strict RFC 8259 like the reference, but it *rejects* some documents that
  ``json.loads`` accepts: lone surrogate escapes (``"\\ud800"``), numbers that overflow a double
  (``1e400``), nesting deeper than 1024. Any orjson error therefore falls back to the reference
  (which is also what classifies real garbage as ``malformed_json``), so the fast path only needs
  orjson's *accepted* documents to be a subset of the reference's, with the same values.
* orjson turns integers beyond 64 bits into floats, and its float parsing is not guaranteed to
  round like the reference's ``float()``; a root ``ts`` that is a float is therefore also
  decided by the reference (rare: ts is normally an int or a digit string).
* nesting deeper than :data:`~doodlestats.batch.reference.MAX_DEPTH` (512) is malformed in the contract
  but fine for orjson: a frame with more than MAX_DEPTH opening brackets in total goes to the
  reference (a cheap ``bytes.count`` bound; real frames never get near it).
"""

from __future__ import annotations

from typing import Iterable

import orjson

from doodlestats.batch.reasons import BAD_TS, BAD_UID, MALFORMED_JSON, MISSING_TS, MISSING_UID
from doodlestats.batch.reference import MAX_DEPTH, reference_parse

__all__ = ["TS_MAX", "parse_frame", "parse_batch"]

TS_MAX = 253402300799

Result = tuple[int | None, str | None, str | None]

_MISSING = object()
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_MIN_DEEP_LEN = 2 * MAX_DEPTH + 2  # shortest document that can nest deeper than MAX_DEPTH


def parse_frame(raw: bytes | bytearray | memoryview | None) -> Result:
    """``(ts, uid, reason)`` of one Kafka message value, identical to ``reference_parse``."""
    if raw is None:
        return None, None, MALFORMED_JSON
    try:
        doc = _loads(raw)
    except _JSONDecodeError:
        return reference_parse(raw)
    if type(doc) is not dict:
        return None, None, MALFORMED_JSON  # valid JSON for orjson, so for json.loads too
    if len(raw) >= _MIN_DEEP_LEN:
        b = bytes(raw) if not isinstance(raw, bytes) else raw
        if b.count(b"{") + b.count(b"[") > MAX_DEPTH:
            return reference_parse(raw)

    ts = doc.get("ts", _MISSING)
    t = type(ts)
    if t is int:
        if 0 <= ts <= TS_MAX:
            ts_reason = None
        else:
            ts, ts_reason = None, BAD_TS
    elif t is str:
        if 0 < len(ts) <= 12 and ts.isascii() and ts.isdigit():
            ts, ts_reason = int(ts), None
        else:
            ts, ts_reason = None, BAD_TS
    elif ts is _MISSING:
        ts, ts_reason = None, MISSING_TS
    elif t is float:
        return reference_parse(raw)
    else:
        ts, ts_reason = None, BAD_TS

    uid = doc.get("uid", _MISSING)
    if type(uid) is str and uid:
        uid_reason = None
    elif uid is _MISSING:
        uid, uid_reason = None, MISSING_UID
    else:
        uid, uid_reason = None, BAD_UID

    return ts, uid, ts_reason or uid_reason


def parse_batch(
    values: Iterable[bytes | bytearray | memoryview | None],
) -> tuple[list[int | None], list[str | None], list[str | None]]:
    """Column-wise :func:`parse_frame`: ``(ts_list, uid_list, reason_list)``."""
    ts_out: list[int | None] = []
    uid_out: list[str | None] = []
    reason_out: list[str | None] = []
    add_ts, add_uid, add_reason = ts_out.append, uid_out.append, reason_out.append
    parse = parse_frame
    for raw in values:
        ts, uid, reason = parse(raw)
        add_ts(ts)
        add_uid(uid)
        add_reason(reason)
    return ts_out, uid_out, reason_out
