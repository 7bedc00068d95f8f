"""A local S3-compatible server for development and tests: moto's standalone server.

It listens on 127.0.0.1 only, keeps every object in memory (gone when it stops), and
accepts the fixed test credentials below. Its log and PID file live in ``.run/s3``
(git-ignored; ``$DOODLE_S3_DIR`` names another folder)::

    python -m tools.s3_local up --port 9400 --bucket doodle   # start, wait, create the bucket
    python -m tools.s3_local status
    python -m tools.s3_local down                             # stops exactly our PID

From Python (pytest fixtures) the context manager starts a server on a free port and
stops it by its PID::

    with s3_local.running(bucket="doodle") as s3:
        cfg = load_config(overrides=s3.overrides())        # [storage] -> this server
        os.environ.update(s3.env())                          # the test credentials
        ...  paths.delta = "s3a://doodle/delta"

``up`` is idempotent: a server started from the same folder and still alive is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from doodlestats.runtime.config import REPO_ROOT
from tools._proc import free_port, pid_alive, port_open, terminate  # noqa: F401

HOST = "127.0.0.1"
DEFAULT_PORT = 9400
REGION = "us-east-1"
#: Fixed credentials of the local test server (it accepts any; these are not secrets).
ACCESS_KEY = "doodle-test-access-key"
SECRET_KEY = "doodle-test-secret-key"


class S3Error(RuntimeError):
    """Something the user must fix; the message says what."""


@dataclass(frozen=True)
class S3Local:
    """A running local server."""
    pid: int
    port: int
    bucket: str | None = None
    host: str = HOST
    folder: str = ""  # log (server.log) and PID file

    @property
    def log(self) -> Path:
        return run_dir(self.folder or None) / "server.log"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, access_key_env: str = "AWS_ACCESS_KEY_ID",
            secret_key_env: str = "AWS_SECRET_ACCESS_KEY") -> dict[str, str]:
        """The environment variables that carry the test credentials."""
        return {access_key_env: ACCESS_KEY, secret_key_env: SECRET_KEY}

    def overrides(self) -> dict[str, object]:
        """``load_config`` overrides that point ``[storage]`` at this server."""
        return {"storage.s3_endpoint": self.endpoint, "storage.s3_region": REGION,
                "storage.s3_path_style": True, "storage.s3_allow_http": True}

    def client(self):
        """A boto3 S3 client for this server (tests: look at what was written)."""
        import boto3  # moto's dependency (optional, for the tests): `up`, `down`, `status` run without it
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def run_dir(folder: str | os.PathLike | None = None) -> Path:
    """Log and PID file folder: ``folder``, else $DOODLE_S3_DIR, else .run/s3."""
    return Path(folder or os.environ.get("DOODLE_S3_DIR") or REPO_ROOT / ".run" / "s3")


def _say(msg: str) -> None:
    print(f"s3: {msg}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    return pid_alive(pid)


def _is_ours(pid: int) -> bool:
    """The PID still runs moto's server (not a recycled PID of something else)."""
    try:
        return b"moto.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _pid_alive(pid)


def _read_pidfile(folder=None) -> tuple[int, int] | None:
    try:
        pid, port = (int(x) for x in (run_dir(folder) / "server.pid").read_text().split())
    except (OSError, ValueError):
        return None
    return pid, port


def running(folder: str | os.PathLike | None = None) -> S3Local | None:
    """The server started from this folder, if it is still alive."""
    got = _read_pidfile(folder)
    if got is None:
        return None
    pid, port = got
    return S3Local(pid, port, folder=str(run_dir(folder))) if _pid_alive(pid) and _is_ours(pid) else None


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/moto-api/", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _port_open(port: int) -> bool:
    return port_open(HOST, port)


def up(port: int = DEFAULT_PORT, bucket: str | None = None, timeout: float = 60.0,
       folder: str | os.PathLike | None = None) -> S3Local:
    """Start the server (or reuse ours), wait until it answers, create ``bucket``."""
    cur = running(folder)
    if cur is not None:
        if cur.port != port:
            raise S3Error(f"a server from {run_dir(folder)} already runs on port {cur.port} (pid {cur.pid}); "
                          f"`python -m tools.s3_local down` first")
        server = cur
    else:
        if _port_open(port):
            raise S3Error(f"port {HOST}:{port} is in use by another process; choose another with --port")
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise S3Error("moto is not installed — run `make setup`") from None
        rd = run_dir(folder)
        rd.mkdir(parents=True, exist_ok=True)
        log = open(rd / "server.log", "ab")
        env = {**os.environ, "MOTO_PORT": str(port)}
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        log.close()
        (rd / "server.pid").write_text(f"{proc.pid} {port}\n")
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if proc.poll() is not None:
                tail = (rd / "server.log").read_text(errors="replace")[-2000:]
                raise S3Error(f"server exited during start-up; see {rd / 'server.log'}\n{tail}")
            if time.monotonic() > deadline:
                _stop(proc.pid)
                raise S3Error(f"server did not answer on {HOST}:{port} within {timeout:.0f}s")
            time.sleep(0.2)
        server = S3Local(proc.pid, port, folder=str(rd))
    if bucket:
        ensure_bucket(server, bucket)
        server = dataclasses.replace(server, bucket=bucket)
    return server


def ensure_bucket(server: S3Local, bucket: str) -> None:
    """Create ``bucket`` unless it exists."""
    s3 = server.client()
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass


def _stop(pid: int, timeout: float = 15.0) -> None:
    terminate(pid, timeout)


def down(folder: str | os.PathLike | None = None) -> bool:
    """Stop the server of our PID file; False if none was running."""
    cur = running(folder)
    pidfile = run_dir(folder) / "server.pid"
    if cur is None:
        pidfile.unlink(missing_ok=True)
        return False
    _stop(cur.pid)
    pidfile.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def running_server(port: int | None = None, bucket: str | None = None,
                   folder: str | os.PathLike | None = None) -> Iterator[S3Local]:
    """Start a server (a free port unless ``port``), yield it, stop it by its PID.

    ``folder`` holds its log and PID file (default :func:`run_dir`), so that several test
    sessions can each run their own.
    """
    folder = run_dir(folder)
    server = up(port or free_port(), bucket, folder=folder)
    try:
        yield server
    finally:
        down(folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.s3_local", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})")
    ap.add_argument("--bucket", help="create this bucket (up)")
    args = ap.parse_args(argv)
    try:
        if args.command == "up":
            s = up(args.port, args.bucket)
            _say(f"running on {s.endpoint} (pid {s.pid}); use [storage] s3_endpoint = \"{s.endpoint}\", "
                 f"s3_path_style = true, s3_allow_http = true and the test credentials of tools/s3_local.py")
        elif args.command == "down":
            _say("stopped" if down() else "not running")
        else:
            srv = running()
            _say(f"running on {srv.endpoint} (pid {srv.pid})" if srv else "not running")
            return 0 if srv else 1
    except S3Error as e:
        _say(str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
