"""SparkSession for the jobs and the tests, with Kafka + Delta jars and the fast parser.

Under ``./spark-submit.sh`` the jars and settings come from the command line and
``conf/spark-defaults.conf``; :func:`get_spark` only fills what is missing, so the same
code runs under a plain ``spark-submit --packages ...`` and in-process (tests)::

    spark = get_spark("minute_stats", cfg)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from doodlestats.config import REPO_ROOT, Config

SPARK_JARS = REPO_ROOT / ".deps" / "spark-jars"
UDF_JAR = REPO_ROOT / "java" / "target" / "doodle-udf.jar"
DEFAULTS = REPO_ROOT / "conf" / "spark-defaults.conf"


def _defaults() -> dict[str, str]:
    out = {}
    for line in DEFAULTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition(" ")
            out[k] = v.strip()
    return out


def get_spark(app: str, cfg: Config, extra: dict[str, str] | None = None):
    """The active SparkSession, or a new local one configured from ``conf/``."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    in_submit = "pyspark-shell" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or \
        os.environ.get("SPARK_ENV_LOADED") == "1"
    b = SparkSession.builder.appName(app)
    if not in_submit:
        # in-process (tests, notebooks): mirror what spark-submit.sh passes
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        jars = sorted(str(p) for p in SPARK_JARS.glob("*.jar"))
        if UDF_JAR.exists():
            jars.append(str(UDF_JAR))
        b = b.master(cfg.spark.master).config("spark.driver.memory", cfg.spark.driver_memory)
        b = b.config("spark.jars", ",".join(jars))
        for k, v in _defaults().items():
            b = b.config(k, v)
        log4j = REPO_ROOT / "conf" / "spark" / "log4j2.properties"
        b = b.config("spark.driver.extraJavaOptions",
                     f"-Duser.timezone=UTC -Dlog4j2.configurationFile={log4j}")
    else:
        b = b.config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension") \
             .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog") \
             .config("spark.sql.session.timeZone", "UTC")
    b = b.config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
    for k, v in (extra or {}).items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def has_fast_parser(spark) -> bool:
    """True if the JVM parser class is on the classpath."""
    try:
        spark._jvm.java.lang.Class.forName("doodle.udf.FrameParser", True,
                                           spark._jvm.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


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
    import ctypes
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
