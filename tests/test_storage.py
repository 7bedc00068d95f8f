"""Storage anywhere: URI helpers, [storage] settings, and end to end against a real
S3-compatible server (moto's standalone server on 127.0.0.1, started by tools.s3_local)
with Hadoop's S3A in Spark and delta-rs on the driver pointed at the same endpoint.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, write_conf

from doodlestats.io import storage
from doodlestats.io.fs import HadoopFS
from doodlestats.io.storage import delta_storage_options, spark_conf, spark_hadoop_conf
from doodlestats.io.uris import StorageError, is_uri, join, local_path, to_delta_uri, to_spark_uri
from doodlestats.runtime.config import REPO_ROOT, ConfigError, load_config
from tools import s3_local

# The test configuration reads the S3 credentials from these variables (the configurable
# names, not the AWS defaults: a developer's real AWS credentials are never used here).
# Set at import, i.e. during collection, before any test starts the Spark JVM: Hadoop
# resolves ${env.NAME} from the JVM's own environment, fixed when it starts.
KEY_ENV, SECRET_ENV = "DOODLE_TEST_S3_ACCESS_KEY", "DOODLE_TEST_S3_SECRET_KEY"
os.environ.setdefault(KEY_ENV, s3_local.ACCESS_KEY)
os.environ.setdefault(SECRET_ENV, s3_local.SECRET_KEY)
# everything here talks to 127.0.0.1 only: no SDK may probe an instance metadata service
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

BUCKET = "doodle-test"
STORAGE_JARS = REPO_ROOT / ".deps" / "storage-jars"


# ====================================================================== pure helpers
@pytest.mark.parametrize("p,expected", [
    ("s3a://b/x", True), ("s3://b", True), ("abfss://c@a.dfs.core.windows.net/x", True),
    ("gs://b/x", True), ("file:///tmp/x", True), ("file:/tmp/x", True), ("hdfs://nn:8020/x", True),
    ("data/delta", False), ("/abs/x", False), ("C://x", False), ("my:dir/x", False), (Path("/x"), False),
])
def test_is_uri(p, expected):
    assert is_uri(p) is expected


@pytest.mark.parametrize("base,parts,expected", [
    ("s3a://b/ckpt", ("spark",), "s3a://b/ckpt/spark"),
    ("s3a://b/ckpt/", ("/spark/", "x.json"), "s3a://b/ckpt/spark/x.json"),
    ("s3a://b", ("t",), "s3a://b/t"),
    ("s3a://b/", (), "s3a://b/"),
    ("abfss://c@acct.dfs.core.windows.net/root", ("t",), "abfss://c@acct.dfs.core.windows.net/root/t"),
    ("gs://b/p", ("a", "", "b"), "gs://b/p/a/b"),
    ("file:///tmp/x", ("a",), "file:///tmp/x/a"),
    ("file:/tmp/x/", ("a",), "file:/tmp/x/a"),
    ("data/delta", ("minute_stats",), "data/delta/minute_stats"),
    ("/abs/delta", ("/minute_stats",), "/abs/delta/minute_stats"),
    (Path("/abs/delta"), ("t",), "/abs/delta/t"),
])
def test_join(base, parts, expected):
    assert join(base, *parts) == expected


def test_join_never_goes_through_pathlib():
    # pathlib would collapse the double slash: s3a:/b/x
    assert "//" in join("s3a://bucket", "a", "b")[4:]


@pytest.mark.parametrize("p,delta,spark", [
    ("s3a://b/t", "s3://b/t", "s3a://b/t"),
    ("s3://b/t", "s3://b/t", "s3a://b/t"),
    ("s3n://b/t", "s3://b/t", "s3a://b/t"),
    ("file:/tmp/t", "file:///tmp/t", "file:/tmp/t"),
    ("file:///tmp/t", "file:///tmp/t", "file:///tmp/t"),
    ("gs://b/t", "gs://b/t", "gs://b/t"),
    ("abfss://c@a.dfs.core.windows.net/t", "abfss://c@a.dfs.core.windows.net/t",
     "abfss://c@a.dfs.core.windows.net/t"),
    ("/tmp/t", "/tmp/t", "/tmp/t"),
    ("data/t", "data/t", "data/t"),
])
def test_delta_and_spark_forms(p, delta, spark):
    assert to_delta_uri(p) == delta
    assert to_spark_uri(p) == spark


def test_local_path():
    assert local_path("file:///tmp/a b") == Path("/tmp/a b")
    assert local_path("file:/tmp/x") == Path("/tmp/x")
    assert local_path("file:///tmp/a%20b") == Path("/tmp/a b")
    assert local_path("rel/x") == Path("rel/x")
    with pytest.raises(StorageError):
        local_path("s3a://b/x")


# ====================================================================== configuration
def _cfg(tmp_path, **overrides):
    return load_config(write_conf(tmp_path / "c.toml"), overrides)


def test_config_path_keeps_uris_and_roots_relative_paths(tmp_path):
    cfg = _cfg(tmp_path, **{"paths.delta": "s3a://bucket/doodle/delta",
                            "paths.checkpoint": "file:///srv/ckpt"})
    assert cfg.path("delta") == "s3a://bucket/doodle/delta"
    assert cfg.path("checkpoint") == "file:///srv/ckpt"
    cfg = _cfg(tmp_path, **{"paths.delta": "data/delta", "paths.checkpoint": "/abs/ckpt"})
    assert cfg.path("delta") == REPO_ROOT / "data" / "delta"
    assert cfg.path("checkpoint") == Path("/abs/ckpt")


def test_storage_defaults_are_aws_and_env_names():
    st = load_config(ROOT / "conf" / "doodle.toml").storage
    assert (st.s3_endpoint, st.s3_path_style, st.s3_allow_http) == ("", False, False)
    assert (st.access_key_env, st.secret_key_env, st.session_token_env) == \
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "")


@pytest.mark.parametrize("overrides,match", [
    ({"storage.s3_endpoint": "http://127.0.0.1:9000"}, "s3_allow_http"),
    ({"storage.s3_endpoint": "127.0.0.1:9000"}, "s3_endpoint"),
    ({"storage.s3_endpoint": "https://h/x/y"}, "s3_endpoint"),
    ({"storage.access_key_env": "NOT A NAME"}, "access_key_env"),
    ({"storage.secret_key_env": ""}, "secret_key_env"),
    ({"storage.s3_region": ""}, "s3_region"),
    ({"storage.s3_secret": "x"}, "unknown setting storage.s3_secret"),
])
def test_storage_config_rejects(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, **overrides)


def _s3_cfg(tmp_path, **extra):
    return _cfg(tmp_path, **{"storage.s3_endpoint": "http://127.0.0.1:9", "storage.s3_allow_http": True,
                             "storage.s3_path_style": True, "storage.s3_region": "eu-west-1",
                             "storage.access_key_env": "T_KEY", "storage.secret_key_env": "T_SECRET", **extra})


def test_delta_storage_options_for_s3(tmp_path, monkeypatch):
    monkeypatch.setenv("T_KEY", "key-123")
    monkeypatch.setenv("T_SECRET", "secret-456")
    cfg = _s3_cfg(tmp_path)
    opts = delta_storage_options("s3a://b/delta/t", cfg)
    assert opts == {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                    "AWS_ALLOW_HTTP": "true", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
                    "AWS_ACCESS_KEY_ID": "key-123", "AWS_SECRET_ACCESS_KEY": "secret-456"}
    shown = repr(opts) + str(opts) + f"{opts}"
    assert "secret-456" not in shown and "key-123" not in shown and "eu-west-1" in shown
    assert delta_storage_options("/local/t", cfg) == {}
    assert delta_storage_options("file:///local/t", cfg) == {}


def test_delta_storage_options_session_token_and_aws_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("T_KEY", "k")
    monkeypatch.setenv("T_SECRET", "s")
    monkeypatch.setenv("T_TOKEN", "tok")
    opts = delta_storage_options("s3://b/t", _s3_cfg(tmp_path, **{"storage.session_token_env": "T_TOKEN"}))
    assert opts["AWS_SESSION_TOKEN"] == "tok" and "tok" not in repr(opts)
    aws = _cfg(tmp_path)  # AWS itself: no endpoint, https, virtual-hosted requests
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    opts = delta_storage_options("s3a://b/t", aws)
    assert not {"AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST"} & set(opts)


def test_missing_credentials_name_the_variable_not_a_value(tmp_path, monkeypatch):
    monkeypatch.setenv("T_KEY", "key-123")
    monkeypatch.delenv("T_SECRET", raising=False)
    with pytest.raises(StorageError, match="T_SECRET is not set") as e:
        delta_storage_options("s3a://b/t", _s3_cfg(tmp_path))
    assert "key-123" not in str(e.value)


def test_spark_hadoop_conf_refers_to_env_and_holds_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("T_KEY", "key-123")
    monkeypatch.setenv("T_SECRET", "secret-456")
    conf = spark_hadoop_conf(_s3_cfg(tmp_path))
    assert all(k.startswith("spark.hadoop.fs.") for k in conf)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert conf["spark.hadoop.fs.s3a.access.key"] == "${env.T_KEY}"
    assert conf["spark.hadoop.fs.s3a.secret.key"] == "${env.T_SECRET}"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith("SimpleAWSCredentialsProvider")
    assert not any(s in v for v in conf.values() for s in ("key-123", "secret-456"))
    tok = spark_hadoop_conf(_s3_cfg(tmp_path, **{"storage.session_token_env": "T_TOKEN"}))
    assert tok["spark.hadoop.fs.s3a.session.token"] == "${env.T_TOKEN}"
    assert tok["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith("TemporaryAWSCredentialsProvider")
    aws = spark_hadoop_conf(_cfg(tmp_path))
    assert "spark.hadoop.fs.s3a.endpoint" not in aws
    assert aws["spark.hadoop.fs.s3a.path.style.access"] == "false"


def test_spark_conf_adds_committer_and_checkpoint_manager_only_for_s3(tmp_path):
    cfg = _s3_cfg(tmp_path)
    local = spark_conf(cfg, checkpoint="/tmp/ckpt", outputs=["/tmp/out"])
    assert local == spark_hadoop_conf(cfg)
    out_only = spark_conf(cfg, checkpoint="/tmp/ckpt", outputs=["s3a://b/out"])
    assert out_only["spark.hadoop.fs.s3a.committer.name"] == "magic"
    assert out_only["spark.sql.sources.commitProtocolClass"].endswith("PathOutputCommitProtocol")
    assert "spark.sql.streaming.checkpointFileManagerClass" not in out_only  # a local checkpoint
    ckpt = spark_conf(cfg, checkpoint="s3://b/ckpt")
    assert ckpt["spark.sql.streaming.checkpointFileManagerClass"].endswith(
        "AbortableStreamBasedCheckpointFileManager")


def test_storage_module_exports():
    from doodlestats.io import uris
    for mod in (storage, uris):
        for name in mod.__all__:
            assert getattr(mod, name).__doc__, name


# ====================================================================== the local server
def test_s3_local_up_is_idempotent_and_down_stops_by_pid(tmp_path):
    with s3_local.running_server(bucket="idem-bucket", folder=tmp_path) as s3:
        pid = s3.pid
        assert (tmp_path / "server.pid").read_text().split() == [str(pid), str(s3.port)]
        again = s3_local.up(s3.port, "idem-bucket", folder=tmp_path)  # reuses, starts no second one
        assert again.pid == pid and again.endpoint == s3.endpoint
        with pytest.raises(s3_local.S3Error, match="already runs"):
            s3_local.up(s3.port + 1, folder=tmp_path)
        names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
        assert names == ["idem-bucket"]
    assert not s3_local._pid_alive(pid)
    assert not (tmp_path / "server.pid").exists()


# ====================================================================== end to end on S3
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_local.running_server(bucket=BUCKET, folder=tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def s3cfg(s3, tmp_path_factory):
    conf = write_conf(tmp_path_factory.mktemp("s3conf") / "s3.toml")
    return load_config(conf, {**s3.overrides(), "storage.access_key_env": KEY_ENV,
                              "storage.secret_key_env": SECRET_ENV})


@pytest.fixture(scope="module")
def s3spark(s3cfg):
    """The suite's SparkSession if one runs (it must have the S3A jars), else a new one
    with them. S3 settings are applied at run time and taken back afterwards."""
    from pyspark.sql import SparkSession

    from doodlestats.runtime.session import get_spark, local_jars
    created = SparkSession.getActiveSession() is None
    if created:
        jars = [str(p) for p in local_jars()] + sorted(str(p) for p in STORAGE_JARS.glob("*.jar"))
        spark = get_spark("test_storage", s3cfg, extra={
            "spark.jars": ",".join(jars),
            "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    else:
        spark = SparkSession.getActiveSession()
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName("org.apache.hadoop.fs.s3a.S3AFileSystem", False,
                                    jvm.Thread.currentThread().getContextClassLoader())
    except Exception:  # noqa: BLE001
        pytest.fail(f"the running SparkSession has no S3A connector: session.get_spark must put "
                    f"{STORAGE_JARS}/*.jar on spark.jars (make setup fetches them)")
    for name in (KEY_ENV, SECRET_ENV):
        assert jvm.System.getenv(name), f"the Spark JVM does not see ${name} (it started before it was set)"
    previous = storage.configure_spark(spark, s3cfg, outputs=[f"s3a://{BUCKET}/x"])
    yield spark
    storage.restore_spark(spark, previous)
    if created:
        spark.stop()


def _prefix() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def _keys(s3, prefix: str) -> list[str]:
    out = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def _delta_opts(uri, cfg):
    return dict(storage_options=delta_storage_options(uri, cfg))


@pytest.mark.integration
def test_spark_parquet_and_delta_on_s3a(s3, s3cfg, s3spark):
    from deltalake import DeltaTable
    spark, p = s3spark, _prefix()
    rows = [(i, f"user-{i}") for i in range(100)]
    df = spark.createDataFrame(rows, "id long, name string")

    parquet = f"s3a://{BUCKET}/{p}/parquet"
    df.repartition(3).write.parquet(parquet)
    back = sorted((r.id, r.name) for r in spark.read.parquet(parquet).collect())
    assert back == rows
    keys = _keys(s3, f"{p}/parquet/")
    assert sum(k.endswith(".parquet") for k in keys) == 3, keys  # on the server, not elsewhere
    # S3A's magic committer (spark_conf): a JSON _SUCCESS manifest, no rename-based commit
    success = json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"{p}/parquet/_SUCCESS")["Body"].read())
    assert success["committer"] == "magic" and len(success["filenames"]) == 3
    assert not any("__magic" in k for k in keys)

    table = f"s3a://{BUCKET}/{p}/delta_spark"
    df.write.format("delta").save(table)
    df.limit(10).write.format("delta").mode("append").save(table)
    assert spark.read.format("delta").load(table).count() == 110
    assert f"{p}/delta_spark/_delta_log/00000000000000000001.json" in _keys(s3, f"{p}/delta_spark/")
    # delta-rs reads the table that Spark wrote, through the same endpoint
    dt = DeltaTable(to_delta_uri(table), **_delta_opts(table, s3cfg))
    assert dt.version() == 1 and dt.to_pyarrow_table().num_rows == 110


@pytest.mark.integration
def test_delta_rs_create_append_with_app_transaction_spark_reads(s3, s3cfg, s3spark):
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
    table = f"s3a://{BUCKET}/{_prefix()}/minute_stats"
    uri, opts = to_delta_uri(table), _delta_opts(table, s3cfg)
    write_deltalake(uri, pa.table({"minute": [1, 2], "users": [10, 20]}), **opts)
    write_deltalake(uri, pa.table({"minute": [3], "users": [30]}), mode="append", **opts,
                    commit_properties=CommitProperties(app_transactions=[Transaction("doodle-test", 7)]))
    dt = DeltaTable(uri, **opts)
    assert dt.version() == 1
    assert dt.transaction_version("doodle-test") == 7
    log = s3.client().get_object(Bucket=BUCKET, Key=f"{table.split('/', 3)[3]}/_delta_log/00000000000000000001.json")
    assert any(json.loads(line).get("txn", {}).get("version") == 7 for line in log["Body"].read().splitlines())
    got = sorted(tuple(r) for r in s3spark.read.format("delta").load(table).collect())
    assert got == [(1, 10), (2, 20), (3, 30)]


@pytest.mark.integration
def test_delta_rs_commits_a_parquet_file_that_spark_wrote(s3, s3cfg, s3spark):
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, CommitProperties, Transaction
    spark, root = s3spark, f"s3a://{BUCKET}/{_prefix()}/t"
    rows = [(i, f"u{i}") for i in range(7)]
    spark.createDataFrame(rows, "id long, name string").coalesce(1).write.parquet(join(root, "some"))
    fs = HadoopFS(spark)
    parts = [f for f in fs.list(join(root, "some")) if f.name.endswith(".parquet")]
    assert len(parts) == 1
    part = parts[0]

    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    uri, opts = to_delta_uri(root), _delta_opts(root, s3cfg)
    dt = DeltaTable.create(uri, schema, **opts)
    add = AddAction(path=f"some/{part.name}", size=part.size, partition_values={},
                    modification_time=part.modified_ms, data_change=True,
                    stats=json.dumps({"numRecords": len(rows)}))
    dt.create_write_transaction([add], mode="append", schema=schema,
                                commit_properties=CommitProperties(
                                    app_transactions=[Transaction("doodle-files", 3)]))
    dt = DeltaTable(uri, **opts)
    assert dt.version() == 1 and dt.transaction_version("doodle-files") == 3
    assert dt.file_uris() == [to_delta_uri(join(root, "some", part.name))]
    assert sorted(zip(*dt.to_pyarrow_table().to_pydict().values())) == rows
    got = sorted(tuple(r) for r in spark.read.format("delta").load(root).collect())
    assert got == rows


@pytest.mark.integration
def test_concurrent_delta_rs_commits_are_not_lost(s3, s3cfg, s3spark):
    """Writers that commit at the same moment all land, each in its own version: a log
    entry is written with a conditional PUT, so the loser of a race for a version gets
    412 from the server and retries with the next one instead of overwriting the winner."""
    import threading

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    table = f"s3a://{BUCKET}/{_prefix()}/conc"
    uri, opts = to_delta_uri(table), _delta_opts(table, s3cfg)
    write_deltalake(uri, pa.table({"x": [-1]}), **opts)
    writers, rounds = 4, 3
    handles = [DeltaTable(uri, **opts) for _ in range(writers)]
    log_key = f"{table.split('/', 3)[3]}/_delta_log/"
    refused_before = _refused_puts(s3, log_key)
    errors: list[BaseException] = []
    for r in range(rounds):
        start = threading.Barrier(writers)

        def commit(i, r=r, start=start):
            try:
                start.wait()
                write_deltalake(handles[i], pa.table({"x": [r * writers + i]}), mode="append")
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=commit, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    dt = DeltaTable(uri, **opts)
    assert dt.version() == writers * rounds
    assert sorted(dt.to_pyarrow_table()["x"].to_pylist()) == list(range(-1, writers * rounds))
    assert sorted(r.x for r in s3spark.read.format("delta").load(table).collect()) == \
        list(range(-1, writers * rounds))
    # the race did happen: the server refused log entries that already existed
    assert _refused_puts(s3, log_key) > refused_before


def _refused_puts(s3, key_prefix: str) -> int:
    """PUTs below ``key_prefix`` that the server answered 412 Precondition Failed (its log)."""
    return sum(1 for line in s3.log.read_text(errors="replace").splitlines()
               if f"PUT /{BUCKET}/{key_prefix}" in line and '" 412 ' in line)


@pytest.mark.integration
def test_streaming_checkpoint_on_s3a(s3, s3cfg, s3spark):
    """A query with its checkpoint on S3 resumes from it: the second run reads only the new file."""
    spark, base = s3spark, f"s3a://{BUCKET}/{_prefix()}/stream"
    src, out, ckpt = join(base, "in"), join(base, "out"), join(base, "ckpt")
    previous = storage.configure_spark(spark, s3cfg, checkpoint=ckpt, outputs=[out])
    try:
        def run():
            q = (spark.readStream.schema("id long").parquet(src)
                 .writeStream.format("parquet").option("path", out).option("checkpointLocation", ckpt)
                 .trigger(availableNow=True).start())
            q.awaitTermination(240)
            assert q.exception() is None
        spark.range(0, 5).coalesce(1).write.mode("append").parquet(src)
        run()
        spark.range(5, 8).coalesce(1).write.mode("append").parquet(src)
        run()
        assert sorted(r.id for r in spark.read.parquet(out).collect()) == list(range(8))
    finally:
        storage.restore_spark(spark, previous)
    prefix = ckpt.split("/", 3)[3]
    keys = _keys(s3, prefix + "/")
    assert f"{prefix}/offsets/1" in keys and f"{prefix}/commits/1" in keys
    assert not any(".tmp" in k for k in keys), keys  # written in place, no rename leftovers


@pytest.mark.integration
@pytest.mark.parametrize("where", ["s3a", "file", "plain"])
def test_hadoopfs_write_read_list_delete(where, s3, s3spark, tmp_path):
    fs = HadoopFS(s3spark)
    p = _prefix()
    base = {"s3a": f"s3a://{BUCKET}/{p}", "file": (tmp_path / p).as_uri(), "plain": str(tmp_path / p)}[where]
    state = join(base, "doodle_state")
    f1, f2 = join(state, "1.json"), join(state, "2.json")

    assert not fs.exists(f1) and fs.list(state) == []
    with pytest.raises(FileNotFoundError):
        fs.read_text(f1)
    fs.write_text(f1, '{"batch": 1}')
    fs.write_text(f2, "é" * 3_000_000)  # several chunks
    assert fs.read_text(f1) == '{"batch": 1}' and fs.read_text(f2) == "é" * 3_000_000
    fs.write_text(f1, '{"batch": 1, "v": 2}')  # replaces
    assert fs.read_text(f1) == '{"batch": 1, "v": 2}'
    with pytest.raises(FileExistsError):
        fs.write_text(f1, "x", overwrite=False)
    listed = fs.list(state)
    assert [f.name for f in listed] == ["1.json", "2.json"]
    assert [f.size for f in listed] == [len('{"batch": 1, "v": 2}'), 6_000_000]
    assert not any(f.is_dir for f in listed) and fs.is_dir(state) and not fs.is_dir(f1)
    assert [f.name for f in fs.list(base)] == ["doodle_state"]

    if where == "s3a":  # on the server itself: exactly the two objects, no temporary keys
        assert _keys(s3, f"{p}/") == [f"{p}/doodle_state/1.json", f"{p}/doodle_state/2.json"]
        assert s3.client().get_object(Bucket=BUCKET, Key=f"{p}/doodle_state/1.json")["Body"].read() == \
            b'{"batch": 1, "v": 2}'
    else:  # plain files, no Hadoop .crc or temporary files beside them
        d = local_path(state)
        assert sorted(os.listdir(d)) == ["1.json", "2.json"]
        assert (d / "1.json").read_text() == '{"batch": 1, "v": 2}'

    assert fs.delete(f1) is True and fs.delete(f1) is False
    assert [f.name for f in fs.list(state)] == ["2.json"]
    assert fs.mkdirs(join(base, "empty"))
    assert fs.delete(base, recursive=True) and not fs.exists(f2)
    assert fs.list(state) == []


@pytest.mark.integration
@pytest.mark.parametrize("where", ["s3a", "file"])
def test_hadoopfs_failed_write_leaves_old_content(where, s3, s3spark, tmp_path, monkeypatch):
    """A write that fails midway (after a first chunk went out) leaves the previous content
    and nothing else: on S3 the upload is aborted, locally the temporary file is removed."""
    fs = HadoopFS(s3spark)
    p = _prefix()
    base = f"s3a://{BUCKET}/{p}" if where == "s3a" else (tmp_path / p).as_uri()
    target = join(base, "state.json")
    fs.write_text(target, "old")

    def failing(data):
        yield bytearray(data[:4])
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(fs, "_chunks", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        fs.write_text(target, "new content that never lands")
    assert fs.read_text(target) == "old"
    if where == "s3a":
        assert _keys(s3, f"{p}/") == [f"{p}/state.json"]
    else:
        assert os.listdir(local_path(base)) == ["state.json"]
    assert [f.name for f in fs.list(base, hidden=True)] == ["state.json"]


@pytest.mark.integration
def test_no_secret_reaches_spark_configuration(s3spark):
    secret = os.environ[SECRET_ENV]
    conf = dict(s3spark.sparkContext.getConf().getAll())
    assert not any(secret in v for v in conf.values())
    hconf = s3spark.sparkContext._jsc.hadoopConfiguration()
    assert hconf.getRaw("fs.s3a.secret.key") == f"${{env.{SECRET_ENV}}}"
    assert secret not in {hconf.getRaw(k) for k in ("fs.s3a.access.key", "fs.s3a.secret.key")}
