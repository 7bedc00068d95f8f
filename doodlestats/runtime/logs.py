"""Diagnostics: one logger tree (``doodlestats``), one format, standard error.

Results go to standard output; every diagnostic line — progress, warnings, one-line
errors — goes through :mod:`logging` to standard error, as the bare message (the jobs'
lines carry their own ``prog:`` prefix, e.g. ``backfill: 2 chunk(s) …``,
``minute_stats: error: …``). Progress is INFO, ``…: warning: …`` WARNING, ``…: error: …``
ERROR; ``DOODLE_LOG_LEVEL=WARNING`` quiets the progress lines. The handler writes to
whatever ``sys.stderr`` is when a line is logged, so a test that swaps it sees the lines.

    from doodlestats.runtime.logs import logger
    log = logger(__name__)
    log.info("backfill: 2 chunk(s)")
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["ROOT", "FORMAT", "logger"]

ROOT = "doodlestats"
FORMAT = "%(message)s"


class _StderrHandler(logging.StreamHandler):
    """A stream handler bound to the current ``sys.stderr``, not the one at set-up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def logger(name: str) -> logging.Logger:
    """The logger ``doodlestats.<name>`` (``name`` may be a module's ``__name__``); the
    tree's handler, format and level are set up on the first call."""
    root = logging.getLogger(ROOT)
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        root.setLevel(os.environ.get("DOODLE_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")
