"""UTC periods — hour, day, ISO week (Monday 00:00 UTC), month, year — and the times
the jobs accept on their command lines (pure Python, no Spark).

    >>> iso(period_start(parse_time("2016-07-13T09:30:00Z"), "week"))
    '2016-07-11T00:00:00Z'
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Iterable

from doodlestats.batch.results import iso  # noqa: F401 - the doctests use it

__all__ = ["GRAINS", "HOUR_S", "DAY_S", "WEEK_S", "FIRST_MONDAY", "period_start", "period_end", "parse_time",
           "scope", "ranges"]

GRAINS = ("hour", "day", "week", "month", "year")
HOUR_S, DAY_S, WEEK_S = 3600, 86_400, 604_800
FIRST_MONDAY = 345_600            # 1970-01-05T00:00:00Z, the first Monday after the epoch


def period_start(epoch: int, grain: str) -> int:
    """Epoch seconds of the start of the UTC period of ``grain`` holding ``epoch``.

    >>> iso(period_start(1468244384, "hour")), iso(period_start(1468244384, "day"))
    ('2016-07-11T13:00:00Z', '2016-07-11T00:00:00Z')
    >>> iso(period_start(1468244384, "week"))      # a Monday: ISO weeks
    '2016-07-11T00:00:00Z'
    >>> iso(period_start(1468800000, "week")), iso(period_start(1468244384, "month"))
    ('2016-07-18T00:00:00Z', '2016-07-01T00:00:00Z')
    >>> iso(period_start(1468244384, "year"))
    '2016-01-01T00:00:00Z'
    """
    epoch = int(epoch)
    if grain == "hour":
        return epoch - epoch % HOUR_S
    if grain == "day":
        return epoch - epoch % DAY_S
    if grain == "week":
        return epoch - (epoch - FIRST_MONDAY) % WEEK_S
    d = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    if grain == "month":
        return calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    if grain == "year":
        return calendar.timegm((d.year, 1, 1, 0, 0, 0))
    raise ValueError(f"grain must be one of {', '.join(GRAINS)}, got {grain!r}")


def period_end(start: int, grain: str) -> int:
    """End (exclusive) of the period starting at ``start``.

    >>> iso(period_end(period_start(1454284800, "month"), "month"))   # February 2016: 29 days
    '2016-03-01T00:00:00Z'
    >>> iso(period_end(1483228800, "year"))
    '2018-01-01T00:00:00Z'
    """
    if grain in ("hour", "day", "week"):
        return start + {"hour": HOUR_S, "day": DAY_S, "week": WEEK_S}[grain]
    d = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    if grain == "month":
        y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return calendar.timegm((y, m, 1, 0, 0, 0))
    if grain == "year":
        return calendar.timegm((d.year + 1, 1, 1, 0, 0, 0))
    raise ValueError(f"grain must be one of {', '.join(GRAINS)}, got {grain!r}")


def parse_time(text: str) -> int:
    """Epoch seconds of an ISO-8601 date or date-time (UTC unless it has an offset) or of
    epoch seconds.

    >>> parse_time("2016-07-11"), parse_time("2016-07-11T13:40:00Z"), parse_time("1468244400")
    (1468195200, 1468244400, 1468244400)
    >>> parse_time("2016-07-11 15:40+02:00")
    1468244400
    """
    s = text.strip()
    if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", s):
        return int(float(s))
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", s):
            d = dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc)
        else:
            d = dt.datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "zZ" and s else s)
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ValueError(f"expected an ISO-8601 date or date-time (2016-07-11, 2016-07-11T13:00:00Z) "
                         f"or epoch seconds, got {text!r}") from None
    return int(d.timestamp())


def scope(grain: str, lo: int | None, hi: int | None) -> tuple[int | None, int | None]:
    """The whole periods of ``grain`` that overlap ``[lo, hi)`` as one ``[start, end)``
    range (``None``: unbounded).

    >>> [iso(x) for x in scope("day", parse_time("2016-07-11T13:00Z"), parse_time("2016-07-12T00:00:01Z"))]
    ['2016-07-11T00:00:00Z', '2016-07-13T00:00:00Z']
    """
    a = period_start(lo, grain) if lo is not None else None
    b = period_end(period_start(hi - 1, grain), grain) if hi is not None else None
    return a, b


def ranges(starts: Iterable[int], grain: str) -> list[tuple[int, int]]:
    """Adjacent periods merged into ``[start, end)`` ranges.

    >>> ranges([7200, 0, 3600, 14400], "hour")
    [(0, 10800), (14400, 18000)]
    """
    out: list[list[int]] = []
    for s in sorted(set(starts)):
        e = period_end(s, grain)
        if out and out[-1][1] == s:
            out[-1][1] = e
        else:
            out.append([s, e])
    return [(a, b) for a, b in out]
