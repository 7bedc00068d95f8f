"""The driver JVM's class archive: written once by a real run of the job, mapped by every start.

A JVM start finds, reads and verifies each class it loads in the jars on its class path;
Spark's driver loads ~15,000 of them in ~300 jars before and during its first batch. With
class-data sharing it maps them from one archive instead. ``./spark-submit.sh`` uses the
archive when it exists (``./spark-submit.sh --class-archive`` prints its path, named after
a hash of the JVM and the jars); ``make setup`` writes it with this module::

    python -m tools.class_archive            # write it unless it exists (make setup)
    python -m tools.class_archive --force    # write it again

The run that writes it is the live job's own code path on real components: an embedded
broker of its own (a free port, a folder of its own, stopped by its PID at the end),
generated frames loaded into a topic, and ``jobs/minute_stats.py --available-now`` on
fresh tables through ``./spark-submit.sh`` with ``DOODLE_CLASS_ARCHIVE=write``. The JVM
writes the classes it loaded when it exits; spark-submit.sh keeps the file only if the
job succeeded. A failure prints one line and exits 1: the jobs still run, only their
starts are slower.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from doodlestats.runtime.cli import first_line
from doodlestats.runtime.config import REPO_ROOT, load_config
from tools import kafka_local
from tools._proc import free_port, port_open
from tools.confcopy import conf_copy

FRAMES = 4000            # a few batches' worth: every step of a batch runs, twice
TIMEOUT_S = 600
WORK = REPO_ROOT / ".run" / "class-archive"   # kept after a failure: its run.log says why


def _say(msg: str) -> None:
    print(f"class archive: {msg}", flush=True)


def archive_path() -> Path:
    """Where ./spark-submit.sh looks for the archive of this JVM and these jars."""
    out = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "--class-archive"], capture_output=True,
                         text=True, check=True)
    return Path(out.stdout.strip())


def _broker_port() -> int:
    """A free port whose next one (the controller's) is free too."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not port_open("127.0.0.1", port + 1):
            return port
    raise RuntimeError("no two free neighbouring ports on 127.0.0.1")


def _run(cmd: list, env: dict, log: Path) -> None:
    with open(log, "ab") as fh:
        rc = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env={**os.environ, **env}, stdout=fh,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise RuntimeError(f"{Path(str(cmd[1])).name if len(cmd) > 1 else cmd[0]} exited with {rc}; "
                           f"see {log}\n{tail}")


def train(work: Path) -> None:
    """The job's run that writes the archive, against a broker of its own in ``work``."""
    conf = conf_copy(work / "doodle.toml", _broker_port(), **{"kafka.input_topic": "class-archive",
                                                               "kafka.output_topic": "class-archive-out"})
    cfg = load_config(str(conf))
    log, frames = work / "run.log", work / "frames.jsonl.gz"
    os.environ["DOODLE_KAFKA_DIR"] = str(work / "kafka")
    try:
        kafka_local.up(cfg)
        py = sys.executable
        _run([py, "-m", "tools.generator", "--count", FRAMES, "--rate", 500, "--users", 500, "--seed", 3,
              "--out", frames, "--no-progress"], {}, log)
        _run([py, "-m", "tools.loader", frames, "--conf-file", conf, "--quiet"], {}, log)
        _run([REPO_ROOT / "spark-submit.sh", "jobs/minute_stats.py", "--conf-file", conf, "--available-now",
              "--max-offsets-per-trigger", FRAMES // 2, "--delta-path", work / "delta",
              "--checkpoint", work / "checkpoint"], {"DOODLE_CLASS_ARCHIVE": "write"}, log)
    finally:
        kafka_local.down()
        os.environ.pop("DOODLE_KAFKA_DIR", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.class_archive", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="write it again even if it exists")
    args = ap.parse_args(argv)
    path = archive_path()
    if path.exists() and not args.force:
        return 0
    _say(f"writing {path.relative_to(REPO_ROOT)} (one run of the job on a broker of its own, ~1 min)")
    t0 = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        train(WORK)
    except (RuntimeError, OSError, subprocess.SubprocessError, kafka_local.BrokerError) as e:
        _say(f"not written ({first_line(e)}); the jobs run without it, each start ~3 s slower. "
             f"Try again: python -m tools.class_archive")
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    if not path.exists():
        _say("not written: the job succeeded but its JVM wrote no archive")
        return 1
    _say(f"written in {time.monotonic() - t0:.0f}s ({path.stat().st_size >> 20} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
