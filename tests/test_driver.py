"""The driver step on its own (pure: no Spark, no Kafka): the watermark, late and emit
rules as properties over random batch sequences (hypothesis), against a plain model."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doodlestats.batch.counting import ExactCounter  # noqa: E402
from doodlestats.batch.driver import BatchSummary, DriverState, flush, step, to_restore  # noqa: E402
from doodlestats.batch.results import CORRECTED, FINAL, PROVISIONAL  # noqa: E402
from doodlestats.batch.window import Watermark, is_final, minute_of  # noqa: E402

T0 = 1_451_606_400
CLOCK = Watermark(delay_s=5, idle_s=30)
COUNTER = ExactCounter(tables=None)

# a batch: frames (partition, ts offset from T0, uid)
frame = st.tuples(st.integers(0, 2), st.integers(0, 600), st.integers(0, 20))
batches = st.lists(st.lists(frame, min_size=1, max_size=30), min_size=1, max_size=12)


def run(batch_list, late_corrections=True):
    """Drive the step like the pipeline does, with a plain-Python stand-in for the
    executors (new pairs per minute) and for Delta (the last result per minute)."""
    state, known, stored, emitted = DriverState(), set(), {}, []
    for i, frames in enumerate(batch_list):
        rows = {}
        for p, dt, _uid in frames:
            ts = T0 + dt
            m = minute_of(ts)
            late = is_final(m, state.watermark)
            reason = "late" if late else None
            key = (m if (reason is None or late_corrections) else None, "t", p, reason)
            r = rows.setdefault(key, {"minute": key[0], "src": "t", "partition": p, "reason": reason, "n": 0,
                                      "max_ts": None, "unkept": 0})
            r["n"] += 1
            r["max_ts"] = ts if r["max_ts"] is None else max(r["max_ts"], ts)
        summary = BatchSummary.of(list(rows.values()), late_corrections)
        counted = {(minute_of(T0 + dt), uid) for p, dt, uid in frames
                   if minute_of(T0 + dt) in summary.counted_per_minute}
        new = counted - known
        known |= new
        partials = {}
        for m, _ in new:
            partials[m] = partials.get(m, 0) + 1
        need = {m: stored.get(m) for m in to_restore(state, summary)}
        results, after = step(state, summary, partials, need, COUNTER, CLOCK, now=1000.0 + i)
        for r in results:
            stored[r.minute] = {"unique_users": r.unique_users, "frames": r.frames}
        emitted.append((state, summary, results, after))
        state = after
    return state, emitted, stored


@settings(max_examples=200, deadline=None)
@given(batches)
def test_the_watermark_never_goes_back_and_no_open_minute_is_final(batch_list):
    _, emitted, _ = run(batch_list)
    for before, _, _, after in emitted:
        assert before.watermark is None or after.watermark >= before.watermark
        assert not any(is_final(m, after.watermark) for m in after.frames)


@settings(max_examples=200, deadline=None)
@given(batches)
def test_each_touched_minute_is_emitted_once_with_the_status_the_rules_say(batch_list):
    _, emitted, _ = run(batch_list)
    for before, summary, results, after in emitted:
        minutes = [r.minute for r in results]
        assert len(minutes) == len(set(minutes))
        by = {r.minute: r.status for r in results}
        for m in summary.counted_per_minute:
            want = CORRECTED if is_final(m, before.watermark) else FINAL if is_final(m, after.watermark) \
                else PROVISIONAL
            assert by[m] == want
        for m, status in by.items():  # untouched minutes: only when the watermark passes them, once
            if m not in summary.counted_per_minute:
                assert status == FINAL and m in before.frames and is_final(m, after.watermark)


@settings(max_examples=200, deadline=None)
@given(batches)
def test_the_last_result_of_each_minute_is_the_plain_recount(batch_list):
    state, _, stored = run(batch_list)
    results, end = flush(state, COUNTER, now=10_000.0)
    for r in results:
        stored[r.minute] = {"unique_users": r.unique_users, "frames": r.frames}
    users, frames = {}, {}
    for b in batch_list:
        for _, dt, uid in b:
            m = minute_of(T0 + dt)
            users.setdefault(m, set()).add(uid)
            frames[m] = frames.get(m, 0) + 1
    assert {m: (v["unique_users"], v["frames"]) for m, v in stored.items()} == \
        {m: (len(u), frames[m]) for m, u in users.items()}
    assert not end.frames and all(is_final(m, end.watermark) for m in stored)


@settings(max_examples=100, deadline=None)
@given(batches)
def test_without_corrections_late_frames_change_nothing(batch_list):
    _, emitted, _ = run(batch_list, late_corrections=False)
    for before, summary, results, _ in emitted:
        assert not any(r.status == CORRECTED for r in results)
        assert all(not is_final(m, before.watermark) for m in summary.counted_per_minute)
