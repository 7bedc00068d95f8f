"""Makes the ``doodlestats`` package importable when a job runs from a clone without it
installed (a plain ``spark-submit jobs/<job>.py``): every job imports this module first."""

import sys
from pathlib import Path

try:
    import doodlestats  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
