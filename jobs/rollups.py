"""Unique users per UTC hour, day, ISO week, month or year, from the minute tables in Delta.

A true union of each period's users (exact: distinct uids of ``minute_uids``; approx:
unioned HyperLogLog sketches), computed by Spark and upserted into ``rollup_<grain>``
below the Delta root; re-runs recompute only the periods whose minutes changed. The
logic is :mod:`doodlestats.rollups`.

Run it::

    ./spark-submit.sh jobs/rollups.py --grain day --print
    ./spark-submit.sh jobs/rollups.py --grain all
    ./spark-submit.sh jobs/rollups.py --grain day --output-topic dayStats
    ./spark-submit.sh jobs/rollups.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import doodlestats  # noqa: F401
except ImportError:  # plain spark-submit from a clone: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doodlestats.rollups import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
