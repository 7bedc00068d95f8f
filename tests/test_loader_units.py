"""The loader's bookkeeping without Kafka: pacing schedule, the done-lines prefix and its
progress file, the rejects file, exit codes."""

from __future__ import annotations

import json

import pytest

from tools.loader import EXIT_SIGNAL, LoadReport, Pacer, Progress, Rejects, ResumeError


class FakeClock:
    def __init__(self):
        self.t = 100.0
        self.slept = 0.0

    def __call__(self):
        return self.t

    def sleep(self, d):
        self.slept += d
        self.t += d


def test_rate_schedule_is_even_and_a_stall_earns_a_bounded_burst():
    clock = FakeClock()
    pace = Pacer(rate=1000, clock=clock, sleep=clock.sleep)
    for _ in range(3000):
        pace.wait()
    assert clock.t - 100.0 == pytest.approx(2.999, abs=1e-6)   # frame i at i/rate
    clock.t += 0.05                     # a 50 ms stall: made up at once, the average holds
    t = clock.t
    for _ in range(1000):
        pace.wait()
    assert clock.t - t == pytest.approx(1.0 - 0.05, abs=2e-3)
    clock.t += 5.0                      # a 5 s stall (a slow broker): not made up
    t = clock.t
    for _ in range(300):
        pace.wait()
    # at most 100 ms worth of frames go out at once, then the rate holds again
    assert clock.t - t == pytest.approx(0.3 - 0.1, abs=2e-3)


def test_live_follows_frame_time_and_skips_big_gaps():
    clock = FakeClock()
    pace = Pacer(live=True, speed=10, clock=clock, sleep=clock.sleep)
    for ts in [1000, 1000, 1001, 999, 1005, 5000, 5002]:   # 999: a delayed frame; 5000: a gap of 4000 s
        pace.wait(ts)
    assert clock.t - 100.0 == pytest.approx((5 + 2) / 10)
    with pytest.raises(ValueError):
        Pacer(rate=0)


def test_progress_prefix_ranges_and_identity(tmp_path):
    ident = {"input": "x", "topic": "t"}
    p = Progress(tmp_path / "p.json", ident)
    for n in [2, 3, 5, 1, 7]:
        p.done(n)
    assert p.line == 3 and p.above == {5, 7}
    p.offsets = {0: 10, 1: 4}
    p.save()
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["line"] == 3 and doc["done_above"] == [[5, 5], [7, 7]] and doc["offsets"] == {"0": 10, "1": 4}
    q = Progress.resume(tmp_path / "p.json", ident)
    assert q.loaded and q.line == 3 and q.above == {5, 7} and q.offsets == {0: 10, 1: 4}
    q.done(4)
    assert q.line == 5 and q.above == {7}
    with pytest.raises(ResumeError, match="another load"):
        Progress.resume(tmp_path / "p.json", {"input": "x", "topic": "other"})
    assert not Progress.resume(tmp_path / "none.json", ident).loaded


def test_rejects_file_keeps_the_frame_and_survives_a_torn_record(tmp_path):
    r = Rejects(tmp_path / "r.jsonl")
    r.add(3, "too_large", b'{"uid":"\xc3\xa9"}', "big")
    r.add(9, "MSG_SIZE_TOO_LARGE", b"\xff\xfe", "broker")
    r.close()
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert recs[0] == {"line": 3, "reason": "too_large", "bytes": 12, "error": "big", "frame": '{"uid":"é"}'}
    assert recs[1]["frame_base64"] == "//4=" and recs[1]["bytes"] == 2
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write('{"line": 12, "reason": "too_la')   # killed mid-write
    assert Rejects(tmp_path / "r.jsonl").lines() == {3, 9}
    assert (tmp_path / "r.jsonl").read_text().endswith("\n")   # the torn record is cut off


@pytest.mark.parametrize("fields,code", [
    ({}, 0),
    ({"rejected": 1}, 3),
    ({"rejected_before": 2}, 3),
    ({"failed": 1, "rejected": 1}, 1),
    ({"stopped": "SIGTERM"}, EXIT_SIGNAL["SIGTERM"]),
    ({"stopped": "SIGINT", "rejected": 1}, 130),
    ({"stopped": "SIGTERM", "failed": 2}, 1),
    ({"stopped": "error: fatal X"}, 1),
])
def test_exit_codes(fields, code):
    rep = LoadReport("t", **fields)
    assert rep.exit_code == code
    assert rep.line().endswith(f"exit {code}")
