"""SparkSession for the jobs and the tests, with Kafka + Delta jars and the fast parser.

Under ``./spark-submit.sh`` the jars and settings come from the command line and
``conf/spark-defaults.conf``; :func:`get_spark` only fills what is missing, so the same
code runs under a plain ``spark-submit`` and in-process (tests)::

    require_connectors(prog="minute_stats")      # one line and exit if a jar is missing
    spark = get_spark("minute_stats", cfg)

The plain form — ``spark-submit jobs/minute_stats.py`` from the activated ``.venv`` —
works because ``make setup`` writes ``conf/spark/spark-defaults.conf`` (git-ignored: it
names the fetched jars by absolute path, see ``tools/plain_conf.py``) and makes
``conf/spark`` the configuration folder of the virtualenv's Spark. Any Spark 4.0 can use
it too: ``SPARK_CONF_DIR=conf/spark spark-submit jobs/minute_stats.py``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import SparkSession

from doodlestats.runtime.config import REPO_ROOT, Config

__all__ = ["SPARK_JARS", "STORAGE_JARS", "UDF_JAR", "CONF_DIR", "PLAIN_DEFAULTS", "CONNECTORS", "local_jars",
           "get_spark", "require_connectors", "has_fast_parser", "register_jvm_function"]

SPARK_JARS = REPO_ROOT / ".deps" / "spark-jars"
#: Hadoop's S3A file system and the AWS SDK modules it uses (maven/storage-jars.pom.xml)
STORAGE_JARS = REPO_ROOT / ".deps" / "storage-jars"
UDF_JAR = REPO_ROOT / "java" / "target" / "doodle-udf.jar"
DEFAULTS = REPO_ROOT / "conf" / "spark-defaults.conf"
#: The configuration folder of the plain form (log4j2.properties + a generated
#: spark-defaults.conf); ./spark-submit.sh names its log4j2.properties by option instead (its
#: SPARK_CONF_DIR is an empty folder: the driver's class archive allows no other).
CONF_DIR = REPO_ROOT / "conf" / "spark"
PLAIN_DEFAULTS = CONF_DIR / "spark-defaults.conf"

#: A class of each piece a job may need on the driver's classpath.
CONNECTORS = {
    "kafka": ("org.apache.spark.sql.kafka010.KafkaSourceProvider", "Spark's Kafka connector"),
    "delta": ("io.delta.sql.DeltaSparkSessionExtension", "Delta Lake"),
    "udf": ("doodle.udf.FrameParser", "the fast parser (java/target/doodle-udf.jar)"),
}


def local_jars() -> list[Path]:
    """The jars ``make setup`` fetched and built: Kafka connector, Delta, object-store
    connectors, fast parser. The one list: ./spark-submit.sh (``--jars``), in-process
    sessions and the plain form's ``conf/spark/spark-defaults.conf`` use it."""
    jars = sorted(SPARK_JARS.glob("*.jar")) + sorted(STORAGE_JARS.glob("*.jar"))
    if UDF_JAR.exists():
        jars.append(UDF_JAR)
    return jars


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

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    in_submit = _in_submit()
    b = SparkSession.builder.appName(app)
    if not in_submit:
        # in-process (tests, notebooks): mirror what spark-submit.sh passes
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        jars = [str(p) for p in local_jars()]
        b = b.master(cfg.spark.master).config("spark.driver.memory", cfg.spark.driver_memory)
        b = b.config("spark.jars", ",".join(jars))
        for k, v in _defaults().items():
            b = b.config(k, v)
        log4j = REPO_ROOT / "conf" / "spark" / "log4j2.properties"
        b = b.config("spark.driver.extraJavaOptions",
                     f"-Duser.timezone=UTC -Dlog4j2.configurationFile={log4j}")
    else:
        # without Delta's jar, naming its extension costs a logged stack trace per session
        if not _has_submit_gateway() or not _missing(_submit_jvm(), ["delta"]):
            b = b.config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension") \
                 .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        b = b.config("spark.sql.session.timeZone", "UTC")
    b = b.config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
    for k, v in (extra or {}).items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _in_submit() -> bool:
    """True in a driver that spark-submit started (its JVM is already running)."""
    return "pyspark-shell" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or \
        os.environ.get("SPARK_ENV_LOADED") == "1"


def _has_submit_gateway() -> bool:
    """True if spark-submit's JVM waits for this process on a py4j gateway."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def _submit_jvm():
    """The JVM of the spark-submit that started this driver, without starting a SparkContext."""
    SparkContext._ensure_initialized()  # connects to spark-submit's gateway; starts nothing
    return SparkContext._jvm


def _loadable(jvm, cls: str) -> bool:
    try:
        jvm.java.lang.Class.forName(cls, False, jvm.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def _missing(jvm, pieces) -> list[str]:
    return [p for p in pieces if not _loadable(jvm, CONNECTORS[p][0])]


def _suggestion() -> str:
    """What to run instead: this very command through ./spark-submit.sh."""
    script = REPO_ROOT / "spark-submit.sh"
    here = Path.cwd().resolve()
    launcher = "./spark-submit.sh" if here == REPO_ROOT else str(script)
    job = sys.argv[0] if sys.argv and sys.argv[0] else "jobs/<job>.py"
    try:
        job = str(Path(job).resolve().relative_to(here))
    except ValueError:
        pass
    return shlex.join([launcher, job, *sys.argv[1:]])


def require_connectors(spark=None, *, kafka: bool = True, delta: bool = True, udf: bool = False,
                       prog: str | None = None) -> None:
    """Exit with one line saying what to run if a jar the job needs is not on the classpath.

    Call it right before :func:`get_spark` (``spark=None``: under spark-submit it asks the
    already running JVM, so a missing piece costs no SparkContext start-up and no Spark
    log lines) or right after it with the session. ``kafka``/``delta``/``udf`` select the
    pieces (see :data:`CONNECTORS`). Raises ``SystemExit`` with a message such as::

        minute_stats: error: Spark's Kafka connector is not on the classpath of this spark-submit
        — run `./spark-submit.sh jobs/minute_stats.py --available-now` (or `make setup` once for plain spark-submit)
    """
    prog = prog or Path(sys.argv[0] if sys.argv and sys.argv[0] else "doodlestats").stem
    pieces = [p for p, on in (("kafka", kafka), ("delta", delta), ("udf", udf)) if on]
    fetched = bool(list(SPARK_JARS.glob("spark-sql-kafka-*.jar"))) and \
        bool(list(SPARK_JARS.glob("delta-spark_*.jar"))) and (not udf or UDF_JAR.exists())
    if spark is not None:
        jvm = spark.sparkContext._jvm
    elif _in_submit() and _has_submit_gateway():
        jvm = _submit_jvm()
    else:  # in-process: get_spark adds the fetched jars itself
        if not fetched:
            raise SystemExit(f"{prog}: error: the Spark jars are not fetched yet — run `make setup`")
        return
    missing = _missing(jvm, pieces)
    if not missing:
        return
    what = " and ".join(CONNECTORS[p][1] for p in missing)
    verb = "are" if len(missing) > 1 else "is"
    if not fetched:
        hint = "run `make setup`"
    else:
        hint = f"run `{_suggestion()}`"
        if not PLAIN_DEFAULTS.exists():
            hint += " (or `make setup` once, for plain spark-submit)"
    if spark is not None:
        spark.stop()
    raise SystemExit(f"{prog}: error: {what} {verb} not on the classpath of this spark-submit — {hint}")


def has_fast_parser(spark) -> bool:
    """True if the JVM parser class is on the classpath."""
    try:
        spark._jvm.java.lang.Class.forName("doodle.udf.FrameParser", True,
                                           spark._jvm.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def register_jvm_function(spark, name: str, register) -> bool:
    """Register the SQL function ``name`` of the project's jar with ``register(jvm,
    jsession)`` unless it exists; False if the jar is not on the classpath."""
    try:
        if not spark._jsparkSession.catalog().functionExists(name):
            register(spark._jvm, spark._jsparkSession)
        return True
    except Exception:  # noqa: BLE001 - py4j: class not found
        return False
