"""jobs/quarantine_purge.py on a real quarantine table written by the pipeline: rows of days
older than the retention are deleted and their files removed from storage; newer days stay;
the table's history shows the DELETE and the VACUUM. A dry run changes nothing, 0 days keeps
everything, bad arguments are one line."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ROOT, write_conf

pytestmark = pytest.mark.integration

SOURCE = "value BINARY, topic STRING, partition INT, offset BIGINT, file STRING, line BIGINT"
AGES = (40, 31, 30, 0)  # days before today at which the four batches are quarantined


class Shifted:
    """The clock of the pipeline module, ``days`` in the past."""

    def __init__(self, days: int):
        self.offset = days * 86400

    def time(self) -> float:
        return time.time() - self.offset


def purge(conf, *args, submit: bool = False) -> subprocess.CompletedProcess:
    """The purge as `make quarantine-purge` runs it (./spark-submit.sh), or with plain Python."""
    head = [str(ROOT / "spark-submit.sh")] if submit else [sys.executable]
    return subprocess.run([*head, str(ROOT / "jobs" / "quarantine_purge.py"), "--conf-file", str(conf), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def files_by_date(table) -> dict[dt.date, list[str]]:
    import pyarrow as pa
    from deltalake import DeltaTable
    acts = DeltaTable(str(table)).get_add_actions(flatten=True)
    acts = acts if isinstance(acts, pa.Table) else pa.table(acts)
    out: dict[dt.date, list[str]] = {}
    for p, d in zip(acts.column("path").to_pylist(), acts.column("partition.date").to_pylist()):
        out.setdefault(d, []).append(p)
    return out


def rows_by_date(table) -> Counter:
    from deltalake import DeltaTable
    return Counter(DeltaTable(str(table)).to_pyarrow_table(columns=["date"]).column("date").to_pylist())


@pytest.fixture(scope="module")
def written(spark, tmp_path_factory):
    """A quarantine table with bad frames quarantined 40, 31, 30 and 0 days ago, written by
    the pipeline (its clock shifted for each batch)."""
    from doodlestats.batch import stages as stages_mod  # its clock stamps quarantined_at
    from doodlestats.batch.pipeline import MinuteStatsPipeline
    from doodlestats.runtime.config import load_config
    from tools.generator import GenConfig, generate
    tmp = tmp_path_factory.mktemp("purge")
    conf = write_conf(tmp / "purge.toml", **{"paths.delta": str(tmp / "delta")})
    cfg = load_config(conf)
    lines, truth = generate(GenConfig(count=4000, rate=40, users=300, seed=61, malformed_frac=0.05))
    df = spark.createDataFrame([(v, "t", 0, i, None, None) for i, v in enumerate(lines)], SOURCE)
    p = MinuteStatsPipeline(spark, cfg, str(tmp / "ckpt"), str(tmp / "delta"))
    real = stages_mod.time
    try:
        for i, age in enumerate(AGES):
            stages_mod.time = Shifted(age)
            p.process_batch(df.where(f"offset >= {i * 1000} AND offset < {(i + 1) * 1000}"), i)
    finally:
        stages_mod.time = real
    table = tmp / "delta" / "quarantine"
    today = dt.datetime.now(dt.timezone.utc).date()
    assert set(rows_by_date(table)) == {today - dt.timedelta(days=a) for a in AGES}
    assert sum(rows_by_date(table).values()) == sum(v for k, v in truth["defects"].items()
                                                    if k not in ("string_ts", "delayed"))
    return conf, table, today


def test_purge_deletes_the_old_days_and_their_files_and_keeps_the_rest(written):
    from deltalake import DeltaTable
    conf, table, today = written
    before_rows, before_files = rows_by_date(table), files_by_date(table)
    version = DeltaTable(str(table)).version()
    old = {today - dt.timedelta(days=40), today - dt.timedelta(days=31)}   # more than 30 days ago
    kept = {today - dt.timedelta(days=30), today}

    dry = purge(conf, "--days", "30", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = [ln.split() for ln in dry.stdout.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", ln)]
    assert {dt.date.fromisoformat(ln[0]): int(ln[1].replace(",", "")) for ln in listed} == \
        {d: before_rows[d] for d in old}
    assert DeltaTable(str(table)).version() == version and rows_by_date(table) == before_rows

    res = purge(conf, "--days", "30", submit=True)  # the way `make quarantine-purge` runs it
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"deleted {sum(before_rows[d] for d in old):,} row(s) of 2 day(s)" in res.stderr
    assert rows_by_date(table) == Counter({d: before_rows[d] for d in kept})
    for d in old:   # the files of deleted rows are gone from storage, not only from the table
        assert before_files[d] and not any((table / f).exists() for f in before_files[d])
    for d in kept:
        assert all((table / f).exists() for f in before_files[d])
    ops = [h["operation"] for h in DeltaTable(str(table)).history()]
    assert ops[:3] == ["VACUUM END", "VACUUM START", "DELETE"], ops
    with pytest.raises(Exception):  # noqa: B017 - time travel cannot bring the purged rows back (any error)
        DeltaTable(str(table), version=version).to_pyarrow_table()

    again = purge(conf, "--days", "30")  # nothing older left: no new version
    assert again.returncode == 0 and "deleted 0 row(s)" in again.stderr
    assert [h["operation"] for h in DeltaTable(str(table)).history()] == ops


def test_purge_keeps_forever_with_0_days_and_explains_bad_input(written, tmp_path):
    from deltalake import DeltaTable
    conf, table, _ = written
    version = DeltaTable(str(table)).version()
    r = purge(conf, "--days", "0")
    assert r.returncode == 0 and "kept forever" in r.stderr
    assert DeltaTable(str(table)).version() == version
    r = purge(conf, "--days", "-1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--days" in r.stderr
    r = purge(conf, "--delta-path", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no quarantine table" in r.stderr and "Traceback" not in r.stderr
    h = subprocess.run([sys.executable, str(ROOT / "jobs" / "quarantine_purge.py"), "--help"],
                       capture_output=True, text=True, cwd=ROOT)
    assert h.returncode == 0 and "--days" in h.stdout and "--dry-run" in h.stdout and "quarantined" in h.stdout


def test_staged_files_of_failed_batches_go_once_older_than_the_retention(written):
    """Files a batch staged before it died are never part of the table; the purge removes
    them once they are older than the retention — and never a fresh one (a running job's)."""
    conf, table, _ = written
    stale = table / "stage" / "000000000099-deadbeef" / "date=2020-01-01" / "part-0.parquet"
    fresh = table / "stage" / "000000000100-cafecafe" / "date=2020-01-01" / "part-0.parquet"
    for f, age_days in ((stale, 31), (fresh, 0)):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"raw frames")
        t = time.time() - age_days * 86400
        os.utime(f, (t, t))
    res = purge(conf, "--days", "30")
    assert res.returncode == 0, res.stderr
    assert "1 staged file(s) of failed batches removed" in res.stderr
    assert not stale.exists() and fresh.exists()
    fresh.unlink()


def test_purge_on_an_object_store(tmp_path):
    """The same on S3 (a real S3-compatible server on 127.0.0.1): a URI Delta root, the
    deleted rows' objects gone from the bucket, the others kept."""
    import pyarrow as pa
    from deltalake import DeltaTable

    from doodlestats.io.storage import delta_storage_options
    from doodlestats.io.tables import QUARANTINE, SCHEMAS, Tables
    from doodlestats.runtime.config import load_config
    from tools import s3_local
    today = dt.datetime.now(dt.timezone.utc).date()
    keys = ("DOODLE_TEST_S3_ACCESS_KEY", "DOODLE_TEST_S3_SECRET_KEY")
    with s3_local.running_server(bucket="purge", folder=tmp_path / "s3") as s3:
        conf = write_conf(tmp_path / "s3.toml", **s3.overrides(), **{"storage.access_key_env": keys[0],
                                                                       "storage.secret_key_env": keys[1]})
        env = s3.env(*keys)
        old_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            delta = "s3a://purge/delta"
            t = Tables(delta, "test", storage_options=delta_storage_options(delta, load_config(conf)))
            t.ensure()
            for batch, age in enumerate((45, 2)):
                day = today - dt.timedelta(days=age)
                n = 10 + batch
                rows = pa.table({"reason": ["malformed_json"] * n, "raw": [b"{bad"] * n, "topic": ["t"] * n,
                                 "partition": [0] * n, "offset": list(range(n)), "file": [None] * n,
                                 "line": [None] * n, "byte_offset": [None] * n, "ts": [None] * n, "uid": [None] * n,
                                 "minute": [None] * n,
                                 "batch_id": [batch] * n,
                                 "quarantined_at": [dt.datetime.combine(day, dt.time(12), dt.timezone.utc)] * n,
                                 "date": [day] * n}, schema=SCHEMAS[QUARANTINE])
                t.append(QUARANTINE, rows, batch)

            def objects(prefix):
                return {o["Key"] for o in s3.client().list_objects_v2(Bucket="purge", Prefix=prefix)
                        .get("Contents", [])}
            old_day = f"delta/quarantine/date={today - dt.timedelta(days=45)}/"
            assert objects(old_day)
            res = subprocess.run([sys.executable, str(ROOT / "jobs" / "quarantine_purge.py"), "--conf-file", str(conf),
                                  "--delta-path", delta, "--days", "30"], capture_output=True, text=True,
                                 timeout=300, cwd=ROOT, env={**os.environ, **env})
            assert res.returncode == 0, res.stderr
            assert "deleted 10 row(s) of 1 day(s)" in res.stderr
            assert not objects(old_day) and objects(f"delta/quarantine/date={today - dt.timedelta(days=2)}/")
            dtab = DeltaTable("s3://purge/delta/quarantine", storage_options=t.storage_options)
            assert dtab.to_pyarrow_table(columns=["date"]).num_rows == 11
            assert [h["operation"] for h in dtab.history()][:3] == ["VACUUM END", "VACUUM START", "DELETE"]
        finally:
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
