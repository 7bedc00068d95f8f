"""Crash points: a test-only hook that kills the job at one commit point of a batch.

A micro-batch makes its results durable in steps (:meth:`MinuteStatsPipeline._commit
<doodlestats.batch.pipeline.MinuteStatsPipeline>`); a crash between any two of them must
leave nothing lost and nothing counted twice after a restart. The pipeline names each
point with :func:`reached`; nothing happens unless a point is armed:

=================== ===================================================================
``staged``          the executors wrote the batch's files; no Delta commit yet
``minute_uids``     the new (minute, uid) pairs are committed
``quarantine``      the quarantine rows are committed
``kafka``           the results are delivered to ``minuteStats``
``stdout``          the results are printed (``--print``)
``minute_stats``    ``minute_stats`` is merged; the state file is not written yet
``state``           the state file is written; Spark has not committed the batch
=================== ===================================================================

Armed by the environment of a real job — ``DOODLE_CRASH_AT=minute_uids`` (the first batch
that reaches the point) or ``DOODLE_CRASH_AT=kafka@3`` (batch 3 or later) — the process
kills itself with SIGKILL: no ``finally``, no flush, as a lost machine. Tests in-process
arm a point with an action of their own::

    faults.arm("minute_stats", action=boom)     # boom() raises
    faults.disarm()
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

__all__ = ["ENV", "POINTS", "arm", "disarm", "reached"]

ENV = "DOODLE_CRASH_AT"
POINTS = ("staged", "minute_uids", "quarantine", "kafka", "stdout", "minute_stats", "state")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_armed: tuple[str, int, Callable[[], None]] | None = None


def arm(point: str, from_batch: int = 0, action: Callable[[], None] = _kill) -> None:
    """Crash (``action()``) the first time ``point`` is reached in a batch ``>= from_batch``.

    Raises ValueError for a point not in :data:`POINTS`."""
    global _armed
    if point not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {point!r} (choose from {', '.join(POINTS)})")
    _armed = (point, from_batch, action)


def disarm() -> None:
    global _armed
    _armed = None


def reached(point: str, batch_id: int) -> None:
    """The pipeline passed ``point`` of batch ``batch_id``: crash here if it is armed."""
    if _armed is None or _armed[0] != point or batch_id < _armed[1]:
        return
    action = _armed[2]
    disarm()  # once
    action()


def _from_env() -> None:
    spec = os.environ.get(ENV, "").strip()
    if spec:
        point, _, batch = spec.partition("@")
        arm(point, int(batch) if batch else 0)


_from_env()
