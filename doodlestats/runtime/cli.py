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
import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

from doodlestats.runtime.logs import logger

__all__ = ["OK", "FAILED", "USAGE", "JobError", "ArgumentParser", "first_line", "run", "register_driver",
           "route_stderr_past_spark_submit"]

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
    register_driver()
    args = parse(argv)
    try:
        return body(args)
    except JobError as e:
        logger(prog).error(f"{prog}: error: {e}")
        return e.code


def register_driver() -> None:
    """Tell ./spark-submit.sh this driver's PID (it forwards SIGTERM/Ctrl-C here) and
    route stderr past spark-submit (see :func:`route_stderr_past_spark_submit`)."""
    pidfile = os.environ.get("DOODLE_DRIVER_PIDFILE")
    if pidfile:
        try:
            Path(pidfile).write_text(f"{os.getpid()}\n")
        except OSError:
            pass
    route_stderr_past_spark_submit()


def route_stderr_past_spark_submit() -> None:
    """Send this driver's stderr to spark-submit's stderr.

    Under ``spark-submit`` the Python driver is a child of the JVM, which merges the
    child's stderr into its own *stdout*. Jobs promise that stdout carries only their
    results (``--print``), so logs and tracebacks are routed to the JVM's stderr instead.
    A no-op outside spark-submit or where /proc is not available.
    """
    ppid = os.getppid()
    try:
        if b"SparkSubmit" not in Path(f"/proc/{ppid}/cmdline").read_bytes():
            return
    except OSError:
        return
    fd = _dup_from(ppid, 2)
    if fd is None:
        try:  # same file, own offset: fine for terminals and pipes
            fd = os.open(f"/proc/{ppid}/fd/2", os.O_WRONLY | os.O_APPEND)
        except OSError:
            return
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)


def _dup_from(pid: int, target_fd: int) -> int | None:
    """Duplicate another process's file descriptor (pidfd_getfd, Linux >= 5.6): the very
    same open file, sharing its offset. None where not permitted or not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    try:
        fd = libc.syscall(438, pidfd, target_fd, 0)  # SYS_pidfd_getfd on x86_64 and arm64
        return fd if fd >= 0 else None
    finally:
        os.close(pidfd)
