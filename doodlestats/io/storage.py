"""Where the job's data lives: plain paths or URIs of any Hadoop file system or object store.

``[paths]`` in ``conf/doodle.toml`` takes a plain path (``data/delta``) or a URI
(``s3a://bucket/doodle/delta``, ``file:///srv/doodle``, ``hdfs://nn/doodle``,
``gs://bucket/x``, ``abfss://container@account.dfs.core.windows.net/x``). Spark and
delta-rs each reach the same location with their own settings, and this module gives each
its own:

* Spark (Hadoop file systems): :func:`spark_hadoop_conf` / :func:`spark_conf` (the S3A
  settings for the ``[storage]`` endpoint), applied to a running session by
  :func:`configure_spark`,
* delta-rs on the driver: :func:`delta_storage_options`.

The locations themselves (strings, pure, in each reader's form) are
:mod:`doodlestats.io.uris`; small files on them (state, markers), on a local disk or
through Hadoop's FileSystem, :mod:`doodlestats.io.fs`.

Credentials never appear in the configuration or in the settings given to Spark: Spark's
Hadoop configuration refers to the environment variables named in ``[storage]``
(``${env.AWS_ACCESS_KEY_ID}``, resolved by each JVM that opens the file system), and the
options for delta-rs, which carry the values, print as ``***``.

Commits to Delta tables on S3 are safe without a lock service: delta-rs 1.6 writes each
log entry with a conditional PUT (``If-None-Match: *``), so a second writer of the same
version fails and retries instead of overwriting. AWS S3 supports it, and so do the
S3-compatible servers that matter (MinIO, R2, moto, which the tests use).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from doodlestats.io.uris import StorageError, is_s3
from doodlestats.runtime.config import Config

__all__ = [
    "StorageOptions", "delta_storage_options", "spark_hadoop_conf", "spark_conf", "configure_spark", "restore_spark",
]

_S3A = "org.apache.hadoop.fs.s3a"


# ---------------------------------------------------------------------- settings
class StorageOptions(dict):
    """The storage options for delta-rs: a plain ``dict`` whose ``repr`` hides the
    credentials, so that logging it by mistake leaks nothing.

    >>> StorageOptions({"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "s"})
    {'AWS_REGION': 'eu-west-1', 'AWS_SECRET_ACCESS_KEY': '***'}
    """

    HIDDEN = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})

    def __repr__(self) -> str:
        shown = ((k, "'***'" if k in self.HIDDEN else repr(v)) for k, v in self.items())
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in shown) + "}"

    __str__ = __repr__


def _env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise StorageError(f"storage: environment variable {name} is not set ({what}; "
                           f"see [storage] in conf/doodle.toml)")
    return value


def delta_storage_options(uri: str | os.PathLike, cfg: Config) -> dict[str, str]:
    """Storage options for ``deltalake`` (``DeltaTable(uri, storage_options=...)``,
    ``write_deltalake``) that reach ``uri`` with the ``[storage]`` settings.

    For S3 URIs: endpoint, region, plain http if allowed, path-style requests, and the
    credentials read from the environment variables that ``[storage]`` names (a
    :class:`StorageError` names the variable if it is unset). No lock or rename option is
    needed: delta-rs 1.6 commits on S3 with a conditional PUT (module docstring).
    Other stores: ``{}`` (local files need nothing; delta-rs reads Google and Azure
    credentials from their usual environment variables itself).

    >>> opts = delta_storage_options("s3a://bucket/delta/t", cfg)    # doctest: +SKIP
    >>> DeltaTable(to_delta_uri("s3a://bucket/delta/t"), storage_options=opts)  # doctest: +SKIP

    The result holds secrets: pass it on, never log its items (its ``repr`` hides them).
    """
    if not is_s3(uri):
        return StorageOptions()
    st = cfg.storage
    opts = StorageOptions(AWS_REGION=st.s3_region)
    if st.s3_endpoint:
        opts["AWS_ENDPOINT_URL"] = st.s3_endpoint.rstrip("/")
    if st.s3_allow_http:
        opts["AWS_ALLOW_HTTP"] = "true"
    if st.s3_path_style:
        opts["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    opts["AWS_ACCESS_KEY_ID"] = _env(st.access_key_env, "S3 access key")
    opts["AWS_SECRET_ACCESS_KEY"] = _env(st.secret_key_env, "S3 secret key")
    if st.session_token_env:
        opts["AWS_SESSION_TOKEN"] = _env(st.session_token_env, "S3 session token")
    return opts


def spark_hadoop_conf(cfg: Config) -> dict[str, str]:
    """``spark.hadoop.fs.s3a.*`` settings that point Hadoop's S3A at the ``[storage]``
    endpoint, for ``SparkSession.builder.config(k, v)`` or ``--conf k=v``.

    Credentials are *references* to the environment variables named in ``[storage]``
    (Hadoop resolves ``${env.NAME}`` when S3A starts, in the driver and in each
    executor), so no secret enters Spark's configuration, its UI or its logs. On a
    cluster the variables must be set in the executors' environment too.

    >>> spark_hadoop_conf(cfg)["spark.hadoop.fs.s3a.access.key"]    # doctest: +SKIP
    '${env.AWS_ACCESS_KEY_ID}'
    """
    st = cfg.storage
    c = {
        "fs.s3a.impl": f"{_S3A}.S3AFileSystem",
        "fs.AbstractFileSystem.s3a.impl": f"{_S3A}.S3A",
        "fs.s3a.endpoint.region": st.s3_region,
        "fs.s3a.path.style.access": "true" if st.s3_path_style else "false",
        "fs.s3a.access.key": f"${{env.{st.access_key_env}}}",
        "fs.s3a.secret.key": f"${{env.{st.secret_key_env}}}",
    }
    if st.session_token_env:
        c["fs.s3a.aws.credentials.provider"] = f"{_S3A}.TemporaryAWSCredentialsProvider"
        c["fs.s3a.session.token"] = f"${{env.{st.session_token_env}}}"
    else:
        c["fs.s3a.aws.credentials.provider"] = f"{_S3A}.SimpleAWSCredentialsProvider"
    if st.s3_endpoint:
        c["fs.s3a.endpoint"] = st.s3_endpoint.rstrip("/")
        c["fs.s3a.connection.ssl.enabled"] = "true" if st.s3_endpoint.startswith("https:") else "false"
    return {f"spark.hadoop.{k}": v for k, v in c.items()}


def spark_conf(cfg: Config, checkpoint: str | os.PathLike | None = None,
               outputs: Iterable[str | os.PathLike] = ()) -> dict[str, str]:
    """Every Spark setting a job needs for its storage locations.

    :func:`spark_hadoop_conf`, plus, when ``checkpoint`` or one of ``outputs`` (where
    Spark writes files) is on S3, Spark's cloud committer with S3A's "magic" committer
    (files are uploaded to their final place and made visible at job commit, instead of
    a rename, which on S3 is a copy), plus, when ``checkpoint`` is on S3, the checkpoint
    manager that writes each checkpoint file with one PUT, which is atomic, instead of
    write-then-rename. Both need ``spark-hadoop-cloud`` (fetched with the S3A jars).

    >>> spark_conf(cfg, checkpoint="s3a://b/ckpt")   # doctest: +SKIP
    """
    out = spark_hadoop_conf(cfg)
    if any(is_s3(p) for p in (*outputs, *([checkpoint] if checkpoint is not None else []))):
        out.update({
            "spark.hadoop.fs.s3a.committer.name": "magic",
            "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
            "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3a":
                f"{_S3A}.commit.S3ACommitterFactory",
            "spark.sql.sources.commitProtocolClass":
                "org.apache.spark.internal.io.cloud.PathOutputCommitProtocol",
            "spark.sql.parquet.output.committer.class":
                "org.apache.spark.internal.io.cloud.BindingParquetOutputCommitter",
        })
    if checkpoint is not None and is_s3(checkpoint):
        out["spark.sql.streaming.checkpointFileManagerClass"] = \
            "org.apache.spark.internal.io.cloud.AbortableStreamBasedCheckpointFileManager"
    return out


def configure_spark(spark: Any, cfg: Config, checkpoint: str | os.PathLike | None = None,
                    outputs: Iterable[str | os.PathLike] = ()) -> dict[str, str | None]:
    """Apply :func:`spark_conf` to a running session; returns the previous values (``None``:
    was unset) so that a caller can put them back.

    For a session created before the locations or the endpoint were known (tests,
    notebooks, ``get_spark`` reusing the active session): the ``spark.hadoop.*`` keys go
    into the session's Hadoop configuration, the others are SQL settings that Spark reads
    at each write or query start. S3A file systems already opened keep their settings
    (Hadoop caches one per bucket); the jars must be on the classpath from the start.
    """
    prefix = "spark.hadoop."
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    previous: dict[str, str | None] = {}
    for k, v in spark_conf(cfg, checkpoint, outputs).items():
        if k.startswith(prefix):
            previous[k] = hconf.getRaw(k[len(prefix):])
            hconf.set(k[len(prefix):], v)
        else:
            previous[k] = spark.conf.get(k, None)
            spark.conf.set(k, v)
    return previous


def restore_spark(spark: Any, previous: dict[str, str | None]) -> None:
    """Undo :func:`configure_spark` (``previous`` is what it returned)."""
    prefix = "spark.hadoop."
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    for k, v in previous.items():
        if k.startswith(prefix):
            if v is None:
                hconf.unset(k[len(prefix):])
            else:
                hconf.set(k[len(prefix):], v)
        elif v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)
