"""The live job's Prometheus endpoint (doodlestats/runtime/metrics.py): scraped while the
job runs, its counters equal the generator's truth; the lag figures come from Spark's
progress. Expectations: the generator's truth, never the job's own output."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from conftest import new_topic, produce, write_conf
from test_minute_stats import job_args
from test_outage import Job

from tools._proc import free_port

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` → value of every sample on the endpoint (None if it does not answer)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_scraped_counters_equal_the_generators_truth(kafka, tmp_path):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=12_000, rate=100, users=900, seed=21, malformed_frac=0.01,
                                      string_ts_frac=0.1))
    topic, out_topic = new_topic(kafka, "metrics", 3), new_topic(kafka, "metrics-out", 1)
    produce(kafka, topic, lines)
    port = free_port()
    conf = write_conf(tmp_path / "conf.toml", **{"metrics.port": port})
    job = Job(conf, job_args(topic, out_topic, tmp_path, "--max-offsets-per-trigger", "4000", "--trigger", "0.5"),
              tmp_path / "job.err")
    bad = {k: v for k, v in truth["defects"].items() if k not in ("string_ts", "delayed") and v}
    try:
        job.wait_for(lambda: scrape(port).get("doodle_frames_read_total") == len(lines), 300,
                     "for every frame in the scraped counters")
        m = scrape(port)
        assert m["doodle_frames_counted_total"] == truth["valid_frames"]
        got = {k.split('"')[1]: int(v) for k, v in m.items() if k.startswith("doodle_frames_quarantined_total{")}
        assert {k: v for k, v in got.items() if v} == bad
        assert m["doodle_batches_total"] >= 3 and m["doodle_open_minutes"] >= 0
        assert m["doodle_batch_spark_jobs"] >= 1 and m['doodle_batch_seconds_count'] == m["doodle_batches_total"]
        # the slowest partition sets the watermark, 5 s behind its newest frame; now is years later
        assert m["doodle_watermark_seconds"] <= truth["ts_max"] - 5 and m["doodle_watermark_delay_seconds"] > 0
        def lag() -> dict:
            return {k: v for k, v in scrape(port).items() if k.startswith("doodle_consumer_lag_frames{")}
        # Spark posts a batch's progress after the batch: the lag of the last one comes a moment later
        job.wait_for(lambda: len(lag()) == 3 and not any(lag().values()), 60, "for zero lag on the 3 partitions")
    finally:
        code = job.stop()
    assert code == 0, job.text()[-3000:]
    deadline = time.monotonic() + 10
    while scrape(port) and time.monotonic() < deadline:  # the endpoint goes with the job
        time.sleep(0.5)
    assert scrape(port) == {}
