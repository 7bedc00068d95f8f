"""What the jobs' command lines share: argument errors in one line, failures in one line
with an exit status, and the driver's process set-up.

    from doodlestats.runtime import cli

    def body(args) -> int:
        ...
        raise cli.JobError("no minute_stats table below data/delta", 2)   # one line, exit 2

    def main(argv=None) -> int:
        return cli.run(PROG, parse_args, body, argv)   # parse_args built on cli.ArgumentParser

Exit statuses every job uses: 0 done, 1 the work failed, 2 bad arguments or nothing to
work on (missing table, unreachable broker, bad configuration); a job may add its own
(``minute_stats``: 75, the broker was away longer than it waits).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from doodlestats.runtime.logs import logger

__all__ = ["OK", "FAILED", "USAGE", "JobError", "ArgumentParser", "first_line", "run"]

OK, FAILED, USAGE = 0, 1, 2


class JobError(Exception):
    """A failure the user reads as one line (``<prog>: error: <message>``), and its exit status."""

    def __init__(self, message: str, code: int = USAGE):
        super().__init__(message)
        self.code = code


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``<job>: error: <message> (see --help)``, exit 2.
    ``job`` is the name in the error line (default: ``prog`` without folder and ``.py``)."""

    def __init__(self, *args, job: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.job = job or self.prog.rsplit("/", 1)[-1].removesuffix(".py")

    def error(self, message: str):
        self.exit(USAGE, f"{self.job}: error: {message} (see --help)\n")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def run(prog: str, parse: Callable[[list[str] | None], argparse.Namespace],
        body: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """The driver's process set-up, ``parse(argv)``, then ``body(args)``'s exit status; a
    :class:`JobError` becomes its one line on standard error and its status."""
    from doodlestats.runtime.session import register_driver
    register_driver()
    args = parse(argv)
    try:
        return body(args)
    except JobError as e:
        logger(prog).error(f"{prog}: error: {e}")
        return e.code
