#!/usr/bin/env bash
# Run a job of this project with spark-submit, the fetched jars and conf/spark-defaults.conf.
#
#   ./spark-submit.sh [spark-submit flags] jobs/<job>.py [job flags]
#
# Examples:
#   ./spark-submit.sh jobs/minute_stats.py --available-now --print
#   ./spark-submit.sh --master spark://host:7077 --executor-memory 4g jobs/minute_stats.py
#
# Flags before the job file go to spark-submit (they win over the defaults below);
# flags after it go to the job. The project's package is put on the driver's
# PYTHONPATH and shipped to executors with --py-files (needed on a cluster).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
die() { echo "spark-submit.sh: $*" >&2; exit 2; }

[ -x "$VENV/bin/python" ] || die "virtualenv missing — run \`make setup\` first"
[ -d "$ROOT/.deps/spark-jars" ] || die "Spark jars not fetched — run \`make setup\` first"
[ -f "$ROOT/java/target/doodle-udf.jar" ] || die "fast parser jar not built — run \`make setup\` first"
command -v java >/dev/null || die "java not found on PATH — install OpenJDK 17"

spark_flags=()
job=""
while [ $# -gt 0 ]; do
  case "$1" in
    *.py) job="$1"; shift; break ;;
    *) spark_flags+=("$1"); shift ;;
  esac
done
[ -n "$job" ] || die "usage: ./spark-submit.sh [spark-submit flags] jobs/<job>.py [job flags]"
[ -f "$job" ] || die "no such job: $job"

has_flag() { local f; for f in "${spark_flags[@]+"${spark_flags[@]}"}"; do [ "$f" = "$1" ] && return 0; done; return 1; }

# conf/doodle.toml knobs used as defaults (overridable by flags before the job file)
read -r master driver_mem < <("$VENV/bin/python" - "$ROOT" <<'PY'
import sys; sys.path.insert(0, sys.argv[1])
from doodlestats.config import load_config
c = load_config()
print(c.spark.master, c.spark.driver_memory)
PY
)

# ship the package as a zip for executors on other machines
mkdir -p "$ROOT/.deps/dist"
pyzip="$ROOT/.deps/dist/doodlestats.zip"
(cd "$ROOT" && rm -f "$pyzip" && "$VENV/bin/python" -m zipfile -c "$pyzip" doodlestats schemas >/dev/null)

jars="$(ls "$ROOT"/.deps/spark-jars/*.jar | tr '\n' ',')$ROOT/java/target/doodle-udf.jar"
defaults=(--properties-file "$ROOT/conf/spark-defaults.conf" --jars "$jars" --py-files "$pyzip")
has_flag --master || defaults+=(--master "$master")
has_flag --driver-memory || defaults+=(--driver-memory "$driver_mem")

export SPARK_HOME="${SPARK_HOME_OVERRIDE:-$("$VENV/bin/python" -c 'import pyspark,os;print(os.path.dirname(pyspark.__file__))')}"
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export DOODLE_HOME="$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export SPARK_LOG_DIR="$ROOT/.run/spark-logs"
export SPARK_CONF_DIR="$ROOT/conf/spark"

# Graceful stop: SIGTERM / Ctrl-C reach this script, which forwards SIGTERM to the Python
# driver only (its PID is written by the job), so the job stops after its current batch
# and shuts Spark down itself. The JVM is started with INT/TERM ignored, so a terminal
# Ctrl-C does not tear it down under the driver. SIGKILL of the process group still
# stops everything at once.
mkdir -p "$ROOT/.run/pids"
pidfile="$(mktemp "$ROOT/.run/pids/driver.XXXXXX")"
trap 'rm -f "$pidfile"' EXIT
export DOODLE_DRIVER_PIDFILE="$pidfile"
( trap '' INT TERM; exec "$SPARK_HOME/bin/spark-submit" "${defaults[@]}" "${spark_flags[@]+"${spark_flags[@]}"}" "$job" "$@" ) &
child=$!
forward() {
  local pid; pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; else kill -KILL "$child" 2>/dev/null || true; fi
}
trap forward INT TERM
set +e  # `wait` returns >128 when a signal interrupts it: keep waiting for the job's own status
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
