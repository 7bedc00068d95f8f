"""Produce JSONL frames into Kafka, one line → one message, and account for every line.

    python -m tools.loader data/stream.jsonl.gz [--topic doodle] [--key uid|none]
    python -m tools.loader data/stream.jsonl.gz --resume      # continue an interrupted load
    zcat x.jsonl.gz | python -m tools.loader - --rate 5000

Every line of the input ends in exactly one of three places, and the final report line
(stderr, on every exit path) counts them:

  delivered   acknowledged by the broker (acks=all, idempotent producer);
  rejected    a frame Kafka will never take: longer than [kafka] max_message_bytes (the
              embedded broker's message.max.bytes is the same setting), or refused by the
              broker on its own (MSG_SIZE_TOO_LARGE, INVALID_RECORD, ...; a frame refused
              inside a batch is first sent once more alone, so a neighbour of a bad frame
              is never rejected). Rejected frames are appended to the rejects file as JSON
              lines {"line", "reason", "bytes", "error", "frame"} with the whole frame
              ("frame_base64" instead if it is not UTF-8): nothing is lost, and
              `jq -r .frame` gives the lines back;
  failed      produced but not acknowledged (the broker went away, a timeout, a fatal
              producer error, the wait at a stop ran out). The first such failure stops
              the load: nothing more is read, what is queued is flushed (bounded wait).

Lines are numbered from 1 as in the (decompressed) input; blank lines are skipped.

Resume. The loader keeps a progress file (JSON, rewritten atomically every second and at
exit): the highest line N such that every line <= N is delivered or rejected, the ranges
of lines above N already handled, and per partition the offset after the last frame it
knows it delivered. ``--resume`` first reads the topic from those offsets to its end:
frames found there were delivered by the interrupted run after its last save (or written
by the broker without an acknowledgement reaching us); their lines are done too. Then it
skips every done line (and the lines already in the rejects file) and sends the rest:

  * Ctrl-C, SIGTERM, a delivery failure, a broker that went away: no loss, no duplicate.
  * SIGKILL, a crash, power loss: the same — the frames the killed run delivered after
    its last save are recognised at the end of the topic, not re-sent.
  * Assumptions: the file is read twice for this (stdin cannot be: after a SIGKILL or
    unacknowledged frames a stdin resume is at-least-once for about the last second);
    nobody else writes frames identical to the missing lines into the topic meanwhile.

``--resume`` refuses (exit 2) a progress file of another topic or of a changed input file
(size, mtime), and one whose offsets the topic no longer reaches (deleted, recreated).
For stdin it cannot check the input: pipe the same data again. Without a progress file
``--resume`` is a fresh load. ``--once`` (``make run``) skips a file already loaded into
the topic and otherwise resumes when it can.

Default file names: ``<input>.rejects.jsonl`` and ``<input>.<topic>.loader-progress.json``
next to the input (for stdin: ``stdin.rejects.jsonl`` and ``stdin.<topic>.loader-progress.json``
in the working directory); ``--rejects`` and ``--progress-file`` choose others. A fresh
(not resumed) load starts both files anew.

Stopping. Ctrl-C or SIGTERM: no more lines are read, queued frames are flushed for at
most ``--stop-timeout`` seconds (a second Ctrl-C stops waiting), the report line is
printed. At the end of the input the loader waits until every frame is acknowledged or
has failed (at most the producer's 2-minute message timeout).

Exit status: 0 every line delivered · 3 complete, but some frames were rejected (see the
rejects file) · 1 some frames failed (not delivered; ``--resume`` re-sends them) or a
fatal producer error · 130 / 143 stopped by SIGINT / SIGTERM with nothing failed
(``--resume`` continues exactly) · 2 usage, configuration, missing input, broker down.

Pacing (chaos and soak runs): ``--rate N`` produces at most N frames per second, evenly
(frame i is due at start + i/N; the lag of a stall is made up for up to 100 ms worth of
frames, so the average holds on a busy machine and no window of T s carries more than
N * (T + 0.1) frames). ``--live`` paces by the frames' own root ``ts``
(the file's time spacing replayed, ``--speed F`` times faster; ``ts`` has one-second
resolution, so one second's frames leave together unless ``--rate`` spreads them; jumps
of more than 10 s are not waited for).

Producer: settings start from the product's ``client_settings`` (bootstrap, security
protocol, SASL/SSL from the environment), so a secured broker works too; batches of
1 MiB with linger 20 ms, idempotent, acks=all, compression off by default (``--compression
lz4`` for a remote broker). Gzip input is inflated by ISA-L in its own thread. Messages
are keyed by the frame's root ``uid`` (simdjson's lazy root lookup; frames that cannot be
parsed get no key): every frame of one user lands in one partition, in file order.
``--key none`` skips that look-up. A progress line goes to stderr every 2 s.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import signal
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import simdjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from isal import igzip_threaded

from doodlestats.io.kafka import KafkaRejected, KafkaUnavailable, client_settings
from doodlestats.runtime.config import REPO_ROOT, Config, ConfigError, load_config
from tools import kafka_local

__all__ = ["Pacer", "Progress", "Rejects", "LoadReport", "Loader", "load", "open_lines",
           "topic_end_offsets", "main"]

MARKERS = REPO_ROOT / ".run" / "loaded"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}

MESSAGE_TIMEOUT_S = 120      # a frame not acknowledged within this fails (librdkafka message.timeout.ms)
PROGRESS_EVERY_S = 1.0       # progress file rewrite interval
REPORT_EVERY_S = 2.0         # progress line interval
# Kafka errors that refuse one frame for what it is (too large, not a valid record, a
# timestamp out of range): the frame goes to the rejects file, the load goes on
REJECT_ERRORS = ("MSG_SIZE_TOO_LARGE", "INVALID_MSG_SIZE", "INVALID_RECORD", "INVALID_MSG", "INVALID_TIMESTAMP")


def open_lines(path: str):
    """Binary line iterator over a JSONL file, a ``.gz`` file or ``-`` (stdin)."""
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    if p.suffix == ".gz":
        # ISA-L inflate in its own thread (GIL released): ~3x the speed of the gzip module
        return igzip_threaded.open(p, "rb", threads=1)
    return open(p, "rb", buffering=1 << 20)


def _end_offsets(consumer, topic: str, partitions, timeout: float = 20.0) -> dict[int, int]:
    """{partition: high watermark}; retried while a new topic's leaders settle (a topic
    created a moment ago can answer NOT_LEADER_FOR_PARTITION for a while)."""
    deadline = time.monotonic() + timeout
    out: dict[int, int] = {}
    for part in partitions:
        while True:
            try:
                out[part] = consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=5)[1]
                break
            except KafkaException:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
    return out


def topic_end_offsets(bootstrap: str, topic: str, cfg: Config | None = None) -> int:
    """Sum of the high watermarks of ``topic`` (0 if it does not exist). With ``cfg``, the
    probe connects with its security settings (``client_settings``)."""
    settings = {"bootstrap.servers": bootstrap}
    if cfg is not None:
        settings = client_settings(cfg, bootstrap)
    c = Consumer({**settings, "group.id": "doodle-loader-probe", "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        return sum(_end_offsets(c, topic, md.partitions).values())
    finally:
        c.close()


# ----------------------------------------------------------------------------- pacing
class Pacer:
    """Holds a producer to at most ``rate`` frames/s (``None``: no cap) and, with ``live``,
    to the spacing of the frames' own ``ts`` divided by ``speed``.

    Call :meth:`wait` before each frame with that frame's ``ts`` (``None`` if unknown).
    A schedule, not a per-frame sleep: frame i is due at ``t0 + i / rate``, and the
    loop sleeps only when it is ahead of the schedule by >= 0.2 ms, so 10,000 frames/s
    hold on a busy 2-core box. A token bucket of ``burst_s`` seconds: the lag of a short
    stall (GC, another process on the core) is made up at once, so the average holds;
    a longer lag is forgiven beyond ``burst_s``. Any window of T seconds carries at most
    ``rate * (T + burst_s)`` frames.

    Example::

        pace = Pacer(rate=5000)
        for frame in frames:
            pace.wait()
            produce(frame)
    """

    LIVE_MAX_JUMP_S = 10.0

    def __init__(self, rate: float | None = None, live: bool = False, speed: float = 1.0,
                 burst_s: float = 0.1, clock=time.monotonic, sleep=time.sleep):
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.step = 1.0 / rate if rate else 0.0
        self.live, self.speed, self.burst_s = live, speed, burst_s
        self.clock, self.sleep = clock, sleep
        self.next: Any = None                 # when the next frame is due by the rate
        self.live_t0: Any = None              # the live clock's origin: wall time, frame time
        self.live_ts0: Any = None
        self.live_ts: Any = None              # frame time the live clock has reached

    @property
    def active(self) -> bool:
        return bool(self.step or self.live)

    def wait(self, ts: float | None = None) -> None:
        now = self.clock()
        due = now
        if self.step:
            if self.next is None:
                self.next = now
            elif now - self.next > self.burst_s:
                self.next = now - self.burst_s   # a long stall earns no long burst
            due = self.next
            self.next += self.step
        if self.live and ts is not None:
            if self.live_t0 is None:
                self.live_t0, self.live_ts0, self.live_ts = now, ts, ts
            elif ts - self.live_ts > self.LIVE_MAX_JUMP_S:
                # a gap in the data or a wild ts: not waited for, the clock restarts here
                self.live_t0, self.live_ts0, self.live_ts = max(now, self._live_due()), ts, ts
            elif ts > self.live_ts:
                self.live_ts = ts        # frames with older ts (delayed ones) go out at once
            due = max(due, self._live_due())
        delay = due - now
        if delay >= 0.0002:
            self.sleep(delay)

    def _live_due(self) -> float:
        return self.live_t0 + (self.live_ts - self.live_ts0) / self.speed


def _seconds(t) -> float | None:
    """A frame's ``ts`` value as seconds (number or numeric string), else None."""
    if isinstance(t, str):
        try:
            t = float(t)
        except ValueError:
            return None
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


# ----------------------------------------------------------------------- bookkeeping
class ResumeError(ValueError):
    """A progress file that does not belong to this load; the message says why."""


class Progress:
    """Which input lines are done (delivered or rejected): the contiguous prefix
    ``1..line`` plus a set of done lines above it, fed by delivery reports in any order.

    Saved as JSON (atomic replace) with the input's identity and the topic, so that a
    resume can refuse a file that belongs to another load.

    Example::

        p = Progress(Path("x.progress.json"), {"input": "x.jsonl", "topic": "t"})
        p.done(2); p.done(1)          # p.line == 2
        p.save()
    """

    def __init__(self, path: Path | None, identity: dict, line: int = 0, above: set[int] | None = None):
        self.path, self.identity = path, identity
        self.line = line
        self.above = above if above is not None else set()
        self.delivered = self.rejected = 0   # totals over every run of this load
        self.complete = False                # the last run reached the end of the input, nothing failed
        self.loaded = False                  # read from a file (a resume), not new
        # per partition: the offset after the last frame this load knows it delivered there
        # (or the end of the partition when the run started); a resume reads the topic from
        # here to find frames a killed run delivered after its last save
        self.offsets: dict[int, int] = {}

    def done(self, n: int) -> None:
        if n == self.line + 1:
            n += 1
            above = self.above
            while n in above:
                above.remove(n)
                n += 1
            self.line = n - 1
        else:
            self.above.add(n)

    def is_done(self, n: int) -> bool:
        return n <= self.line or n in self.above

    @staticmethod
    def _ranges(numbers) -> list[list[int]]:
        out: list[list[int]] = []
        for n in sorted(numbers):
            if out and out[-1][1] == n - 1:
                out[-1][1] = n
            else:
                out.append([n, n])
        return out

    def save(self, complete: bool = False) -> None:
        if self.path is None:
            return
        doc = {**self.identity, "line": self.line, "done_above": self._ranges(self.above),
               "delivered": self.delivered, "rejected": self.rejected, "complete": complete,
               "offsets": {str(k): v for k, v in sorted(self.offsets.items())},
               "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def resume(cls, path: Path, identity: dict) -> "Progress":
        """The progress saved in ``path`` if it belongs to ``identity`` (else ResumeError);
        a fresh one if ``path`` does not exist."""
        if not path.exists():
            return cls(path, identity)
        try:
            doc = json.loads(path.read_text())
            line, ranges = int(doc["line"]), doc.get("done_above", [])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ResumeError(f"{path}: not a loader progress file ({e})") from None
        for key, value in identity.items():
            if doc.get(key) != value:
                raise ResumeError(f"{path} belongs to another load ({key} {doc.get(key)!r}, "
                                  f"this load {value!r}); delete it or pass another --progress-file")
        above = {n for a, b in ranges for n in range(int(a), int(b) + 1)}
        p = cls(path, identity, line, above)
        p.delivered, p.rejected = int(doc.get("delivered", 0)), int(doc.get("rejected", 0))
        p.complete, p.loaded = bool(doc.get("complete")), True
        try:
            p.offsets = {int(k): int(v) for k, v in (doc.get("offsets") or {}).items()}
        except (ValueError, AttributeError) as e:
            raise ResumeError(f"{path}: bad offsets ({e})") from None
        return p


class Rejects:
    """The rejects file: one JSON line per frame Kafka will not take, flushed per record
    (a rejected line is marked done only once its record is in the file). Created on the
    first record.

    Example::

        r = Rejects(Path("x.rejects.jsonl"))
        r.add(17, "too_large", frame_bytes, "11,534,336 bytes > max_message_bytes 10,485,760")
    """

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._f: TextIO | None = None

    def add(self, line: int, reason: str, frame: bytes, error: str) -> None:
        rec = {"line": line, "reason": reason, "bytes": len(frame), "error": error}
        try:
            rec["frame"] = frame.decode("utf-8")
        except UnicodeDecodeError:
            rec["frame_base64"] = base64.b64encode(frame).decode("ascii")
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        self.count += 1

    def lines(self) -> set[int]:
        """Line numbers already in the file (a resume does not send or record them again).
        A torn last record (a run killed while writing it) is cut off: that line is not
        done, the resume rejects it again."""
        out: set[int] = set()
        if not self.path.exists():
            return out
        good = 0
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    out.add(int(json.loads(raw)["line"]))
                except (ValueError, KeyError, TypeError):
                    break
                good += len(raw)
        if good != self.path.stat().st_size:
            os.truncate(self.path, good)
        return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# --------------------------------------------------------------------------- the load
@dataclasses.dataclass
class LoadReport:
    """What a load did; :attr:`exit_code` and :meth:`line` are what the CLI prints/returns."""
    topic: str
    read: int = 0             # frames (non-blank lines) read in this run, skipped ones excluded
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0          # lines skipped because a previous run handled them (--resume)
    rejected_before: int = 0  # rejected by earlier runs of a resumed load (in the rejects file)
    blank: int = 0
    resent_alone: int = 0     # frames of a batch the broker refused, sent once more on their own
    found: int = 0            # frames a killed earlier run delivered after its last save (not re-sent)
    seconds: float = 0.0
    end_of_input: bool = False
    stopped: str | None = None    # "SIGINT" / "SIGTERM" / "error: ..." when it stopped early
    first_failure: str | None = None
    resume_line: int = 0
    rejects_path: Path | None = None
    progress_path: Path | None = None

    @property
    def exit_code(self) -> int:
        if self.failed or (self.stopped or "").startswith("error"):
            return EXIT_FAILED
        if self.stopped in EXIT_SIGNAL:
            return EXIT_SIGNAL[self.stopped]
        return EXIT_REJECTED if self.rejected or self.rejected_before else EXIT_OK

    def line(self) -> str:
        rate = self.delivered / self.seconds if self.seconds > 0 else 0.0
        s = (f"load: {'done' if self.exit_code in (EXIT_OK, EXIT_REJECTED) else 'STOPPED'}: "
             f"delivered {self.delivered:,} · rejected {self.rejected:,} · failed {self.failed:,}"
             f" (of {self.read:,} frames read) into {self.topic} in {self.seconds:.1f}s ({rate:,.0f} frames/s)")
        if self.found:
            s += f"; {self.found:,} found in the topic already (sent by the interrupted run, not re-sent)"
        if self.skipped:
            s += f"; {self.skipped:,} lines skipped (done before"
            s += f", {self.rejected_before:,} of them rejected)" if self.rejected_before else ")"
        if self.resent_alone:
            s += f"; {self.resent_alone:,} frames of refused batches re-sent alone"
        if self.stopped:
            s += f"; stopped by {self.stopped}"
        if (self.rejected or self.rejected_before) and self.rejects_path is not None:
            s += f"; rejects in {self.rejects_path}"
        if self.failed and self.first_failure:
            s += f"; first failure: {self.first_failure}"
        if self.progress_path is not None and (self.stopped or self.failed):
            s += f"; resume with --resume (every line <= {self.resume_line:,} is done)"
        return s + f"; exit {self.exit_code}"


class _Stop(Exception):
    """Raised by the signal handler while the loop waits for input, to unblock the read."""


class Loader:
    """One load of one input into one topic, with its progress and rejects files.

    Example::

        rep = Loader(cfg, "data/x.jsonl.gz", "doodle", rate=5000).run()
        print(rep.line()); sys.exit(rep.exit_code)
    """

    _alone: Any = None  # the producer for frames re-sent one at a time, made when first needed

    def __init__(self, cfg: Config, path: str, topic: str, *, key: str = "uid", compression: str = "none",
                 rate: float | None = None, live: bool = False, speed: float = 1.0,
                 rejects: str | Path | None = None, progress_file: str | Path | None = None,
                 track_progress: bool = True, resume: bool = False, stop_timeout: float = 10.0,
                 verbose: bool = True, print_report: bool = True):
        if key not in ("uid", "none"):
            raise ValueError(f"key must be 'uid' or 'none', got {key!r}")
        self.cfg, self.path, self.topic = cfg, path, topic
        self.key, self.compression = key, compression
        self.verbose, self.print_report = verbose, print_report   # progress lines / the final report line
        self.pacer = Pacer(rate, live, speed)
        self.stop_timeout = stop_timeout
        self.limit = cfg.kafka.max_message_bytes
        if path == "-":
            base, stem = Path.cwd(), "stdin"
            identity: dict[str, object] = {"input": "-", "topic": topic}
        else:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"input not found: {path}")
            base, stem = p.resolve().parent, p.name
            st = p.stat()
            identity = {"input": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "topic": topic}
        self.rejects = Rejects(Path(rejects) if rejects else base / f"{stem}.rejects.jsonl")
        ppath = Path(progress_file) if progress_file else base / f"{stem}.{topic}.loader-progress.json"
        if not track_progress:
            self.progress = Progress(None, identity)
        elif resume:
            self.progress = Progress.resume(ppath, identity)   # ResumeError: the caller says why
        else:
            self.progress = Progress(ppath, identity)
        self.resuming = resume and self.progress.loaded   # a progress file of this load exists
        self.report = LoadReport(topic, rejects_path=self.rejects.path, progress_path=self.progress.path,
                                 rejected_before=self.progress.rejected if self.resuming else 0)
        self._stop: str | None = None
        self._prepared = False
        self._hard_stop = False
        self._reading = False
        self._last_warning = -1e9
        self._save_warned = False

    # ---- signals
    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self._stop is not None and self._stop in EXIT_SIGNAL:
            self._hard_stop = True   # a second signal: stop waiting for acknowledgements
        if self._stop is None:
            self._stop = name
        if self._reading:
            raise _Stop()

    # ---- delivery reports (served by poll/flush on this thread)
    def _on_delivery(self, line: int, alone: bool, err, msg) -> None:
        rep = self.report
        if err is None:
            self._inflight -= 1
            rep.delivered += 1
            prog = self.progress
            prog.delivered += 1
            prog.done(line)
            o = msg.offset() + 1
            if o > prog.offsets.get(msg.partition(), 0):
                prog.offsets[msg.partition()] = o
            return
        if err.code() in self._reject_codes:
            if not alone:   # maybe a neighbour of the bad frame: once more in a batch of its own
                self._produce_alone(line, msg.value(), msg.key())
                return
            self._inflight -= 1
            self._reject(line, err.name(), msg.value(), f"broker: {err.str()}")
            return
        self._inflight -= 1
        rep.failed += 1
        if rep.first_failure is None:
            rep.first_failure = f"line {line}: {err.name()} ({err.str()})"
        if self._stop is None:
            self._stop = f"error: {err.name()}"

    def _on_error(self, err) -> None:
        if not err.fatal():   # transport trouble: librdkafka retries; say so, at most every 10 s
            now = time.monotonic()
            if self.verbose and now - self._last_warning >= 10:
                self._last_warning = now
                print(f"load: warning: {err.name()}: {err.str()} (retrying; frames fail after "
                      f"{MESSAGE_TIMEOUT_S} s without an acknowledgement)", file=sys.stderr, flush=True)
            return
        if err.fatal():
            self.report.first_failure = self.report.first_failure or f"fatal producer error: {err.str()}"
            if self._stop is None or self._stop in EXIT_SIGNAL:
                self._stop = f"error: fatal {err.name()}"
            self._hard_stop = True

    def _reject(self, line: int, reason: str, frame: bytes, error: str) -> None:
        try:
            self.rejects.add(line, reason, frame, error)
        except OSError as e:   # disk full, no permission: the frame is not accounted for, stop
            self.report.failed += 1
            self.report.first_failure = self.report.first_failure or \
                f"line {line}: cannot write the rejects file {self.rejects.path} ({e})"
            if self._stop is None or self._stop in EXIT_SIGNAL:
                self._stop = "error: rejects file"
            return
        self.report.rejected += 1
        self.progress.rejected += 1
        self.progress.done(line)

    def _produce_alone(self, line: int, value: bytes, key: bytes | None) -> None:
        self.report.resent_alone += 1
        if self._alone is None:
            self._alone = Producer({**self._settings, "batch.num.messages": 1, "linger.ms": 0})
        while True:
            try:
                self._alone.produce(self.topic, value, key, on_delivery=partial(self._on_delivery, line, True))
                return
            except BufferError:
                self._alone.poll(0.05)

    # ---- the run
    def run(self, handle_signals: bool = False) -> LoadReport:
        # per-frame refusals (the frame's fault, not the transport's): rejects, never failures
        self._reject_codes = {getattr(KafkaError, n) for n in REJECT_ERRORS if hasattr(KafkaError, n)}
        self._settings = {
            **client_settings(self.cfg),
            "message.max.bytes": self.limit,
            "linger.ms": 20,
            "batch.size": min(1 << 20, self.limit),
            "compression.type": self.compression,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1 << 20,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": MESSAGE_TIMEOUT_S * 1000,
            "error_cb": self._on_error,
        }
        self._alone = None
        self._inflight = 0
        if not self._prepared:
            self.prepare()
        skip_rejected = self._skip_rejected
        lines = open_lines(self.path)
        producer = self._producer = Producer(self._settings)
        self.pacer.sleep = self._pace_sleep
        old = {}
        if handle_signals:
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._on_signal)
        t0 = time.monotonic()
        try:
            self._produce_all(lines, producer, skip_rejected, KafkaException, t0)
        except _Stop:   # the signal came just as a read returned
            pass
        finally:
            self._reading = False
            self._finish(producer, t0)
            for s, h in old.items():
                signal.signal(s, h)
            if lines is not sys.stdin.buffer:
                lines.close()
        return self.report

    def prepare(self) -> None:
        """Before the first frame: the rejects file (kept on a resume, else started anew),
        the topic tail a killed run may have left (resume), this run's base offsets, a
        first save of the progress file. Raises ResumeError if the topic does not hold
        what the progress file says (deleted, recreated)."""
        self._prepared = True
        rep, prog = self.report, self.progress
        self._skip_rejected = set()
        if self.resuming:
            # the file is the truth (a killed run may not have saved its last rejects)
            self._skip_rejected = self.rejects.lines()
            rep.rejected_before = prog.rejected = max(prog.rejected, len(self._skip_rejected))
        elif self.rejects.path.exists():
            self.rejects.path.unlink()   # a fresh load starts its rejects file anew
        if prog.path is None:
            return
        tail, ends = self._topic_tail(prog.offsets if self.resuming else None)
        if tail:
            self._match_tail(tail)
        for part, end in ends.items():
            prog.offsets[part] = max(prog.offsets.get(part, 0), end)
        prog.save()

    def _topic_tail(self, since: dict[int, int] | None):
        """(Counter of hash(value) of the messages at offsets >= ``since`` per partition,
        {partition: end offset now})."""
        c = Consumer({**client_settings(self.cfg), "group.id": "doodle-loader-resume",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 50})
        tail: Counter = Counter()
        try:
            md = c.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if md is None or md.error is not None:
                raise ResumeError(f"topic {self.topic} is not readable ({md.error if md else 'missing'})")
            ends = _end_offsets(c, self.topic, md.partitions)
            if not since:
                return tail, ends
            todo = {}
            for part, start in since.items():
                if part not in ends or start > ends[part]:
                    raise ResumeError(f"{self.progress.path} says partition {part} of {self.topic} held "
                                      f"{start:,} messages, it holds {ends.get(part, 0):,} now "
                                      f"(topic deleted or recreated?)")
                if start < ends[part]:
                    todo[part] = (start, ends[part])
            if not todo:
                return tail, ends
            c.assign([TopicPartition(self.topic, part, start) for part, (start, _) in todo.items()])
            deadline = time.monotonic() + 120
            while todo and time.monotonic() < deadline:
                for m in c.consume(10_000, timeout=0.5):
                    if m.error() is not None:
                        continue
                    part = m.partition()
                    if part in todo and m.offset() < todo[part][1]:
                        tail[hash(m.value())] += 1
                        if m.offset() + 1 >= todo[part][1]:
                            del todo[part]
            if todo:
                raise ResumeError(f"could not read the end of {self.topic} within 120 s")
            return tail, ends
        finally:
            c.close()

    def _match_tail(self, tail) -> None:
        """Mark done the input lines whose frames a killed run delivered after its last
        save (they are in ``tail``); the rest is sent as usual. A file read once more, up to
        the last of them (stdin cannot be read twice: there it stays at-least-once)."""
        if self.path == "-":
            return
        prog, skip_rejected = self.progress, self._skip_rejected
        left = sum(tail.values())
        with open_lines(self.path) as lines:
            for lineno, raw in enumerate(lines, 1):
                if lineno <= prog.line or lineno in prog.above or lineno in skip_rejected:
                    continue
                h = hash(raw.rstrip(b"\r\n"))
                if tail.get(h):
                    tail[h] -= 1
                    prog.done(lineno)
                    prog.delivered += 1
                    self.report.found += 1
                    left -= 1
                    if not left:
                        break

    def _pace_sleep(self, delay: float) -> None:
        """The pacer's sleep: serves delivery reports meanwhile and ends early on a stop."""
        end = time.monotonic() + delay
        while self._stop is None:
            left = end - time.monotonic()
            if left <= 0:
                return
            if left >= 0.002:
                self._producer.poll(min(left, 0.1) - 0.001)
            else:
                time.sleep(left)

    def _produce_all(self, lines, producer, skip_rejected: set[int], KafkaException, t0: float) -> None:
        rep, prog, topic, limit = self.report, self.progress, self.topic, self.limit
        # a line this run has not read yet is done only if an earlier run did it
        resuming = self.resuming
        on_delivery = self._on_delivery
        produce, poll = producer.produce, producer.poll
        pace = self.pacer.wait if self.pacer.active else None
        live = self.pacer.live
        parser: Any = None
        if self.key == "uid" or live:
            parser = simdjson.Parser()
            Obj = simdjson.Object
        keyed = self.key == "uid"
        last_save = last_report = t0
        lineno = n = 0
        it = iter(lines)
        while True:
            self._reading = True
            try:
                if self._stop is not None:
                    break
                raw = next(it, None)
            except _Stop:
                break
            finally:
                self._reading = False
            if raw is None:
                rep.end_of_input = True
                break
            lineno += 1
            if resuming and (lineno <= prog.line or lineno in prog.above):
                rep.skipped += 1
                continue
            if skip_rejected and lineno in skip_rejected:
                rep.skipped += 1
                prog.done(lineno)
                continue
            line = raw.rstrip(b"\r\n")
            if not line:
                rep.blank += 1
                prog.done(lineno)
                continue
            rep.read += 1
            k = ts = None
            if parser is not None:
                try:
                    doc = parser.parse(line)
                    if isinstance(doc, Obj):
                        if keyed:
                            u = doc.get("uid")
                            k = u.encode() if isinstance(u, str) else None
                        if live:
                            ts = _seconds(doc.get("ts"))
                    del doc
                except (ValueError, RuntimeError):
                    k = ts = None
            size = len(line) + (len(k) if k else 0)
            if size > limit:
                self._reject(lineno, "too_large", line,
                             f"{size:,} bytes > [kafka] max_message_bytes {limit:,}")
                continue
            if pace is not None:
                pace(ts)
            while True:
                try:
                    produce(topic, line, k, on_delivery=partial(on_delivery, lineno, False))
                    self._inflight += 1
                    break
                except BufferError:
                    poll(0.05)
                    if self._stop is not None:
                        break
                except KafkaException as e:
                    err = e.args[0]
                    if err.code() in self._reject_codes:
                        self._reject(lineno, err.name(), line, f"producer: {err.str()}")
                    else:   # not about this frame: the producer cannot go on
                        rep.failed += 1
                        rep.first_failure = rep.first_failure or f"line {lineno}: {err.name()} ({err.str()})"
                        self._stop = self._stop or f"error: {err.name()}"
                    break
            n += 1
            if pace is not None or n % 500 == 0:
                poll(0)
                if self._alone is not None:
                    self._alone.poll(0)
                now = time.monotonic()
                if now - last_save >= PROGRESS_EVERY_S:
                    last_save = now
                    try:
                        prog.save()
                    except OSError as e:   # the final save tries again; say it once
                        if not self._save_warned:
                            self._save_warned = True
                            print(f"load: warning: cannot write the progress file {prog.path}: {e}",
                                  file=sys.stderr, flush=True)
                    if self.verbose and now - last_report >= REPORT_EVERY_S:
                        last_report = now
                        print(f"load: {rep.read:,} frames read, {rep.delivered:,} delivered, "
                              f"{rep.rejected:,} rejected, {rep.read / (now - t0):,.0f} frames/s",
                              file=sys.stderr, flush=True)

    def _finish(self, producer, t0: float) -> None:
        """Flush (bounded), count what never got an acknowledgement as failed, save the
        progress, print the report line."""
        rep = self.report
        t_flush = time.monotonic()
        producers = [producer]
        i = 0
        while i < len(producers):
            pr = producers[i]
            while not self._hard_stop:
                left = pr.flush(0.1)
                if self._alone is not None and self._alone not in producers:
                    producers.append(self._alone)   # a retry-alone producer born during the flush
                bound = self.stop_timeout if self._stop is not None else MESSAGE_TIMEOUT_S + 10
                if not left or time.monotonic() - t_flush >= bound:
                    break
            i += 1
        if self._alone is not None and self._alone not in producers:
            producers.append(self._alone)
        unacked = sum(len(pr) for pr in producers)
        if unacked:
            # purge what is left: its delivery reports (purged) count it as failed, and
            # librdkafka does not warn about "messages still in queue" at exit
            if rep.first_failure is None:
                rep.first_failure = f"{unacked:,} frames not acknowledged in time (stop wait {self.stop_timeout:g}s)"
            self._stop = self._stop or "error: acknowledgements timed out"
            for pr in producers:
                pr.purge()
                pr.flush(2)
        if self._inflight > 0:   # no delivery report at all (should not happen): still not delivered
            rep.failed += self._inflight
            self._inflight = 0
        if self._stop is not None and not (rep.end_of_input and not rep.failed and self._stop in EXIT_SIGNAL):
            rep.stopped = self._stop   # (a signal during the final flush of a complete load changes nothing)
        self.rejects.close()
        rep.seconds = time.monotonic() - t0
        rep.resume_line = self.progress.line
        complete = rep.end_of_input and not rep.failed and not self.progress.above
        try:
            self.progress.save(complete=complete)
        except OSError as e:
            print(f"load: warning: cannot write the progress file {self.progress.path}: {e}", file=sys.stderr)
        if self.print_report:
            print(rep.line(), file=sys.stderr, flush=True)


def load(path: str, bootstrap: str, topic: str, key: str = "uid", progress: bool = True,
         compression: str = "none", rate: float | None = None, live: bool = False,
         speed: float = 1.0, cfg: Config | None = None) -> int:
    """Produce every line of ``path`` to ``topic`` (API for tests and benchmarks): returns
    the number of messages delivered; raises RuntimeError if any frame was rejected or
    failed. No progress file; rejects go to ``<input>.rejects.jsonl``."""
    cfg = cfg or load_config()
    cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, bootstrap_servers=bootstrap))
    rep = Loader(cfg, path, topic, key=key, compression=compression, rate=rate, live=live, speed=speed,
                 track_progress=False, verbose=progress, print_report=progress).run()
    if rep.exit_code != EXIT_OK:
        raise RuntimeError(f"{rep.rejected + rep.failed} of {rep.read} messages were not delivered "
                           f"({rep.rejected} rejected into {rep.rejects_path}, {rep.failed} failed"
                           + (f"; first failure: {rep.first_failure})" if rep.first_failure else ")"))
    return rep.delivered


# ------------------------------------------------------------------------------- CLI
EPILOG = """exit status: 0 all delivered · 3 complete but some frames rejected (rejects file) ·
1 some frames failed (not delivered; --resume re-sends them) · 130/143 stopped by
SIGINT/SIGTERM, nothing failed (--resume continues exactly) · 2 usage/config/input/broker"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.loader", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="JSONL file, .gz file, or - for stdin")
    ap.add_argument("--topic", help="target topic (default: [kafka] input_topic); created if missing")
    ap.add_argument("--bootstrap-servers", help="default: [kafka] bootstrap_servers")
    ap.add_argument("--key", choices=["uid", "none"], default="uid", help="message key (default uid)")
    ap.add_argument("--compression", choices=["none", "lz4", "zstd", "gzip", "snappy"], default="none",
                    help="producer compression (default none: on loopback it only costs CPU; "
                         "use lz4 for a remote broker)")
    ap.add_argument("--rate", type=float, metavar="N",
                    help="produce at most N frames/s, evenly paced (default: as fast as possible)")
    ap.add_argument("--live", action="store_true",
                    help="pace by the frames' own root ts spacing (with --rate: also capped at N/s)")
    ap.add_argument("--speed", type=float, default=1.0, metavar="F",
                    help="with --live: replay F times faster than the frames' time (default 1)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted load of this input into this topic: skip the lines "
                         "the progress file marks done (a fresh load if there is none)")
    ap.add_argument("--once", action="store_true",
                    help="skip if this file was already loaded into the topic, else resume when possible "
                         "(used by `make run`)")
    ap.add_argument("--rejects", metavar="PATH",
                    help="rejects file (default <input>.rejects.jsonl; stdin: ./stdin.rejects.jsonl)")
    ap.add_argument("--progress-file", metavar="PATH",
                    help="progress file (default <input>.<topic>.loader-progress.json; "
                         "stdin: ./stdin.<topic>.loader-progress.json)")
    ap.add_argument("--stop-timeout", type=float, default=10.0, metavar="S",
                    help="after Ctrl-C, SIGTERM or a failure: wait at most S seconds for queued frames "
                         "to be acknowledged (default 10)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines (the final report line stays)")
    ap.add_argument("--conf-file")
    args = ap.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        ap.error("--rate must be > 0")
    if args.speed <= 0:
        ap.error("--speed must be > 0")
    try:
        cfg = load_config(args.conf_file)
    except ConfigError as e:
        print(f"load: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    topic = args.topic or cfg.kafka.input_topic
    bootstrap = args.bootstrap_servers or cfg.kafka.bootstrap_servers
    cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, bootstrap_servers=bootstrap))
    if args.input != "-" and not Path(args.input).is_file():
        print(f"load: error: input not found: {args.input}", file=sys.stderr)
        return EXIT_USAGE
    try:
        kafka_local.wait_ready(cfg, timeout=15)
    except KafkaRejected as e:  # credentials, certificate, CA file: the line says what to check
        print(f"load: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (kafka_local.BrokerError, KafkaUnavailable) as e:
        print(f"load: error: Kafka at {bootstrap} does not answer ({e}) — run `make kafka-up`", file=sys.stderr)
        return EXIT_USAGE
    marker = None
    if args.once and args.input != "-":
        p = Path(args.input).resolve()
        marker = MARKERS / f"{topic}--{p.name}--{p.stat().st_size}--{int(p.stat().st_mtime)}"
        if marker.exists():
            before = int(marker.read_text().split()[0])
            if topic_end_offsets(bootstrap, topic, cfg) >= before:
                print(f"load: {args.input} already loaded into {topic}; skipping (--once)", file=sys.stderr)
                return EXIT_OK
    try:
        kafka_local.ensure_topic(cfg, topic, cfg.kafka.input_partitions)
        if not (args.resume or args.once):
            _note_unfinished(cfg, args, topic)
        try:
            loader = _make_loader(cfg, args, topic, resume=args.resume or args.once)
        except ResumeError as e:
            if args.resume:
                raise
            print(f"load: note: {e}; loading from the first line", file=sys.stderr)
            loader = _make_loader(cfg, args, topic, resume=False)
    except ResumeError as e:
        print(f"load: error: cannot resume: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (kafka_local.BrokerError, KafkaUnavailable, KafkaException, OSError) as e:
        hint = " (choose writable places with --progress-file / --rejects)" if isinstance(e, PermissionError) else ""
        print(f"load: error: {e}{hint}", file=sys.stderr)
        return EXIT_USAGE
    prog = loader.progress
    if loader.resuming:
        if prog.complete and not prog.above:
            print(f"load: {args.input}: every line is already done in {topic} ({prog.delivered:,} delivered, "
                  f"{prog.rejected:,} rejected; progress file {prog.path}); nothing to send", file=sys.stderr)
            return EXIT_REJECTED if prog.rejected else EXIT_OK
        print(f"load: resuming: every line <= {prog.line:,} is done ({prog.delivered:,} delivered, "
              f"{prog.rejected:,} rejected so far; progress file {prog.path})", file=sys.stderr)
    rep = loader.run(handle_signals=True)
    if marker is not None and rep.exit_code in (EXIT_OK, EXIT_REJECTED):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{topic_end_offsets(bootstrap, topic, cfg)} {prog.delivered}\n")
    return rep.exit_code


def _note_unfinished(cfg: Config, args, topic: str) -> None:
    """A fresh load over the progress file of an unfinished one: say that --resume exists."""
    try:
        prog = Loader(cfg, args.input, topic, rejects=args.rejects, progress_file=args.progress_file,
                      resume=True, verbose=False, print_report=False).progress
    except ResumeError:
        return   # another load's file: this fresh load replaces it
    if prog.loaded and not prog.complete:
        print(f"load: note: an earlier load of {args.input} into {topic} stopped after line {prog.line:,}; "
              f"this one starts from line 1 (--resume would continue it instead)", file=sys.stderr)


def _make_loader(cfg: Config, args, topic: str, resume: bool) -> Loader:
    loader = Loader(cfg, args.input, topic, key=args.key, compression=args.compression, rate=args.rate,
                    live=args.live, speed=args.speed, rejects=args.rejects, progress_file=args.progress_file,
                    resume=resume, stop_timeout=args.stop_timeout, verbose=not args.quiet)
    loader.prepare()
    return loader


def _cli(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:   # Ctrl-C before the load started (nothing produced)
        print("load: interrupted before loading started; nothing was sent", file=sys.stderr)
        return EXIT_SIGNAL["SIGINT"]


if __name__ == "__main__":
    raise SystemExit(_cli())
