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
# flags after it go to the job. The `doodlestats` package is built into a wheel from
# pyproject.toml (again only when its sources changed) and shipped with --py-files: the
# driver and every executor import it from that artifact.
#
#   ./spark-submit.sh --build-wheel     # only build (if needed) and print the wheel's path
#   ./spark-submit.sh --class-archive   # print the path of the driver JVM's class archive
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
DIST="$ROOT/.deps/dist"
die() { echo "spark-submit.sh: $*" >&2; exit 2; }

[ -x "$VENV/bin/python" ] || die "virtualenv missing — run \`make setup\` first"

# The package artifact. Its folder is named after a hash of its sources
# (pyproject.toml + doodlestats/), so it is built once per change, offline (setuptools
# from the virtualenv, no build isolation, no index), and a job that is still running
# keeps the files it started with. Spark puts only .zip/.egg/.jar files of --py-files on
# the executors' sys.path, so the wheel (a zip) is also there as doodlestats.zip, the
# same bytes. Folders unused for 7 days are deleted.
build_wheel() {
  local hash dir tmp whl
  hash="$(cd "$ROOT" && { find doodlestats -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0
                          printf 'pyproject.toml\0'; } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
  dir="$DIST/$hash"
  if [ ! -f "$dir/doodlestats.zip" ]; then
    mkdir -p "$DIST"
    exec 9>"$DIST/.lock"
    flock 9  # two jobs started at once build it once
    if [ ! -f "$dir/doodlestats.zip" ]; then
      "$VENV/bin/python" -c 'import setuptools.command.bdist_wheel' 2>/dev/null ||
        "$VENV/bin/python" -c 'import wheel.bdist_wheel' 2>/dev/null ||
        die "the virtualenv's setuptools cannot build wheels (needs setuptools >= 70.1 from requirements.txt) — run \`make setup\`"
      tmp="$(mktemp -d "$DIST/.build.XXXXXX")"
      mkdir "$tmp/src" "$tmp/out"
      cp "$ROOT/pyproject.toml" "$tmp/src/" && cp -R "$ROOT/doodlestats" "$tmp/src/"
      find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
      if ! "$VENV/bin/python" -m pip wheel --no-deps --no-build-isolation --no-index \
             --disable-pip-version-check -w "$tmp/out" "$tmp/src" >"$DIST/build.log" 2>&1; then
        rm -rf "$tmp"
        die "building the doodlestats wheel failed — see .deps/dist/build.log"
      fi
      whl="$(ls "$tmp"/out/doodlestats-*.whl)"
      cp "$whl" "$tmp/out/doodlestats.zip"
      mv "$tmp/out" "$dir"
      rm -rf "$tmp"
      echo "spark-submit.sh: built $(basename "$whl") in .deps/dist/$hash/" >&2
    fi
    exec 9>&-
  fi
  touch "$dir"
  find "$DIST" -mindepth 1 -maxdepth 1 -type d -name '[0-9a-f]*' -mtime +7 ! -name "$hash" -exec rm -rf {} + 2>/dev/null || true
  WHEEL="$(ls "$dir"/doodlestats-*.whl)"
  PYZIP="$dir/doodlestats.zip"
}

if [ "${1:-}" = "--build-wheel" ]; then
  build_wheel
  echo "$WHEEL"
  exit 0
fi

[ -d "$ROOT/.deps/spark-jars" ] || die "Spark jars not fetched — run \`make setup\` first"
[ -f "$ROOT/java/target/doodle-udf.jar" ] || die "fast parser jar not built — run \`make setup\` first"
command -v java >/dev/null || die "java not found on PATH — install OpenJDK 17"

spark_flags=()
job=""
print_archive=""
if [ "${1:-}" = "--class-archive" ]; then print_archive=1; shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    *.py) job="$1"; shift; break ;;
    *) spark_flags+=("$1"); shift ;;
  esac
done
if [ -z "$print_archive" ]; then
  [ -n "$job" ] || die "usage: ./spark-submit.sh [spark-submit flags] jobs/<job>.py [job flags]"
  [ -f "$job" ] || die "no such job: $job"
fi

has_flag() { local f; for f in "${spark_flags[@]+"${spark_flags[@]}"}"; do [ "$f" = "$1" ] && return 0; done; return 1; }
flag_value() {  # the value of a spark-submit flag given as `--flag value` or `--flag=value`
  local i f=("${spark_flags[@]+"${spark_flags[@]}"}")
  for ((i = 0; i < ${#f[@]}; i++)); do
    [ "${f[i]}" = "$1" ] && [ $((i + 1)) -lt ${#f[@]} ] && { echo "${f[i+1]}"; return 0; }
    case "${f[i]}" in "$1="*) echo "${f[i]#*=}"; return 0 ;; esac
  done
  return 1
}

# conf/doodle.toml knobs used as defaults (overridable by flags before the job file), the
# jars (the same list in-process sessions and the plain form's conf/spark use) and the
# virtualenv's Spark
read -r master driver_mem jars spark_home < <("$VENV/bin/python" - "$ROOT" <<'PY'
import os, sys; sys.path.insert(0, sys.argv[1])
from doodlestats.runtime.config import load_config
from doodlestats.runtime.session import local_jars
import pyspark
c = load_config()
print(c.spark.master, c.spark.driver_memory, ",".join(map(str, local_jars())), os.path.dirname(pyspark.__file__))
PY
)
export SPARK_HOME="${SPARK_HOME_OVERRIDE:-$spark_home}"

# Class-data sharing. A JVM start finds, reads and verifies ~15,000 classes in ~300 jars;
# the driver JVM maps the ones a job needs from an archive instead, written by `make setup`
# (tools/class_archive.py: one real run of the job, DOODLE_CLASS_ARCHIVE=write): ~3 s less
# per start, before and in the first batch (docs/deploy.md, "Set-up, exactly"). The archive is
# named after a hash of the JVM and the jars, so after either changes it is not found and
# the job starts without it; DOODLE_CLASS_ARCHIVE=off never uses one. The JVM refuses a
# class path with a non-empty folder in it, so SPARK_CONF_DIR (always on that path) is an
# empty folder and log4j2.properties is named by its own option.
class_archive() {
  local java_bin
  java_bin="$(readlink -f "$(command -v java)")"
  CLASS_ARCHIVE="$ROOT/.deps/class-archive/driver-$({
    echo "jars on the class path"   # the layout of the class path: a change renames the archive
    ls -lL --time-style=+%s "$java_bin" "$(dirname "$java_bin")/../lib/server/libjvm.so" 2>/dev/null
    ls -l --time-style=+%s "$SPARK_HOME/jars"
    tr ',' '\n' <<<"$jars" | xargs -r ls -lL --time-style=+%s
  } | sha256sum | cut -c1-16).jsa"
}
class_archive
if [ -n "$print_archive" ]; then
  echo "$CLASS_ARCHIVE"
  exit 0
fi
jvm_opts="-Dlog4j2.configurationFile=$ROOT/conf/spark/log4j2.properties"
case "${DOODLE_CLASS_ARCHIVE:-on}" in
  on) [ -f "$CLASS_ARCHIVE" ] && jvm_opts+=" -XX:SharedArchiveFile=$CLASS_ARCHIVE" ;;
  write) mkdir -p "$(dirname "$CLASS_ARCHIVE")"
         archive_tmp="$CLASS_ARCHIVE.$$.tmp"
         jvm_opts+=" -XX:ArchiveClassesAtExit=$archive_tmp -Xlog:cds=off -Xlog:cds+dynamic=off" ;;
  off) ;;
  *) die "DOODLE_CLASS_ARCHIVE: on, off or write, not '$DOODLE_CLASS_ARCHIVE'" ;;
esac
export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }$jvm_opts"
mkdir -p "$ROOT/.deps/class-archive/conf"
export SPARK_CONF_DIR="$ROOT/.deps/class-archive/conf"

build_wheel

defaults=(--properties-file "$ROOT/conf/spark-defaults.conf" --py-files "$PYZIP")
has_flag --master || defaults+=(--master "$master")
the_master="$(flag_value --master || echo "$master")"
# A standalone master on this machine (make cluster-up): the driver binds and advertises
# 127.0.0.1 like the master and workers do.
case "$the_master" in
  spark://127.0.0.1:*|spark://localhost:*) export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" ;;
esac
# The jars go on the driver JVM's class path, where the class archive holds their classes
# too; executors of a cluster get them with --jars. In local mode (executors in the driver's
# JVM) there is no --jars: the executor would copy each jar into a folder of its own and
# fork a chmod for each at every start (~0.6 s), to load what the class path has already.
if has_flag --driver-class-path; then
  defaults+=(--jars "$jars")
else
  defaults+=(--driver-class-path "${jars//,/:}")
  case "$the_master" in local|local\[*) ;; *) defaults+=(--jars "$jars") ;; esac
fi
has_flag --driver-memory || defaults+=(--driver-memory "$driver_mem")

export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export DOODLE_HOME="$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export SPARK_LOG_DIR="$ROOT/.run/spark-logs"

# Graceful stop: SIGTERM / Ctrl-C reach this script, which forwards SIGTERM to the Python
# driver only (its PID is written by the job), so the job stops after its current batch
# and shuts Spark down itself. The JVM is started with INT/TERM ignored, so a terminal
# Ctrl-C does not tear it down under the driver. SIGKILL of the process group still
# stops everything at once.
mkdir -p "$ROOT/.run/pids"
pidfile="$(mktemp "$ROOT/.run/pids/driver.XXXXXX")"
trap 'rm -f "$pidfile"' EXIT
export DOODLE_DRIVER_PIDFILE="$pidfile"
# Standard input (`... | ./spark-submit.sh jobs/backfill.py --input -`): spark-submit's JVM
# gives the Python driver a pipe of its own, never this script's stdin, so the driver
# opens this script's stdin through /proc instead (kept open on fd 3).
if [ ! -t 0 ]; then exec 3<&0; export DOODLE_STDIN="/proc/$$/fd/3"; fi
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
if [ -n "${archive_tmp:-}" ]; then  # written when the JVM exited normally: keep it only if the job succeeded
  if [ "$rc" = 0 ] && [ -s "$archive_tmp" ]; then mv -f "$archive_tmp" "$CLASS_ARCHIVE"; else rm -f "$archive_tmp"; fi
fi
exit "$rc"
