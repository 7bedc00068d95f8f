"""Where the job's data lives: plain paths or URIs of any Hadoop file system or object store.

``[paths]`` in ``conf/doodle.toml`` takes a plain path (``data/delta``) or a URI
(``s3a://bucket/doodle/delta``, ``file:///srv/doodle``, ``hdfs://nn/doodle``,
``gs://bucket/x``, ``abfss://container@account.dfs.core.windows.net/x``). Three readers of
the same location each want it in their own form, and this module gives each its own:

* Spark (Hadoop file systems): :func:`to_spark_uri` and :func:`spark_hadoop_conf` /
  :func:`spark_conf` (the S3A settings for the ``[storage]`` endpoint),
* delta-rs on the driver: :func:`to_delta_uri` and :func:`delta_storage_options`,
* small driver-side files (state, markers): :class:`HadoopFS`, over Hadoop's FileSystem
  through py4j, with an atomic :meth:`HadoopFS.write_text`.

The locations themselves (strings, pure) are :mod:`doodlestats.io.uris`.

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
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

from doodlestats.io.uris import StorageError, is_s3, is_uri, to_spark_uri

if TYPE_CHECKING:  # no runtime import: config imports this module
    from doodlestats.runtime.config import Config

__all__ = [
    "StorageOptions", "FileInfo", "HadoopFS",
    "delta_storage_options", "spark_hadoop_conf", "spark_conf", "configure_spark", "restore_spark",
]

#: Stores on which one PUT of a whole object is atomic: readers see the old object or the
#: new one, never a part. Elsewhere a write goes to a temporary file and is renamed.
_ATOMIC_PUT_SCHEMES = frozenset({"s3a", "gs"})
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


def delta_storage_options(uri: str | os.PathLike, cfg: "Config") -> dict[str, str]:
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


def spark_hadoop_conf(cfg: "Config") -> dict[str, str]:
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


def spark_conf(cfg: "Config", checkpoint: str | os.PathLike | None = None,
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


def configure_spark(spark: Any, cfg: "Config", checkpoint: str | os.PathLike | None = None,
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


# ---------------------------------------------------------------------- HadoopFS
class FileInfo(NamedTuple):
    """One entry of :meth:`HadoopFS.list`."""
    uri: str
    name: str
    is_dir: bool
    size: int
    modified_ms: int


_JAVA_ERRORS = {
    "java.io.FileNotFoundException": FileNotFoundError,
    "org.apache.hadoop.fs.FileAlreadyExistsException": FileExistsError,
    "org.apache.hadoop.fs.PathExistsException": FileExistsError,
    "java.nio.file.AccessDeniedException": PermissionError,
    "org.apache.hadoop.security.AccessControlException": PermissionError,
}


def _java_exception(e: BaseException):
    """The Java exception behind a py4j error or one that PySpark converted, else None."""
    return getattr(e, "java_exception", None) or getattr(e, "_origin", None)


def _java_error(e: BaseException, uri: str) -> BaseException:
    """A Python OSError for a Java exception raised through py4j (others unchanged)."""
    jexc = _java_exception(e)
    if jexc is None:
        return e
    name = jexc.getClass().getName()
    msg = f"{uri}: {jexc.getMessage() or name}"
    return _JAVA_ERRORS.get(name, OSError)(msg)


def _jvm_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JJavaError
    try:
        from pyspark.errors.exceptions.captured import CapturedException
    except ImportError:  # pragma: no cover - other PySpark layouts
        return (Py4JJavaError,)
    return (Py4JJavaError, CapturedException)


class HadoopFS:
    """Small files on any Hadoop file system, from the driver, through the session's JVM.

    ::

        fs = HadoopFS(spark)
        fs.write_text("s3a://bucket/ckpt/doodle_state/7.json", json.dumps(state))  # atomic
        fs.read_text("s3a://bucket/ckpt/doodle_state/7.json")
        [f.name for f in fs.list("s3a://bucket/ckpt/doodle_state")]   # -> ['7.json']
        fs.exists(uri); fs.delete(uri, recursive=True); fs.mkdirs(uri)

    Accepts everything :func:`to_spark_uri` does (URIs, ``s3://``, plain paths). Local files
    are written without Hadoop's ``.crc`` side files, so Python code may read and write
    them too. Java errors come back as :class:`FileNotFoundError`,
    :class:`FileExistsError`, :class:`PermissionError` or :class:`OSError`.
    """

    _CHUNK = 1 << 20

    def __init__(self, spark: Any):
        self._spark = spark
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    # -- plumbing
    def _resolve(self, uri: str | os.PathLike):
        s = to_spark_uri(uri)
        if not is_uri(s):
            s = Path(s).absolute().as_uri()
        path = self._jvm.org.apache.hadoop.fs.Path(s)
        fs = path.getFileSystem(self._conf)
        if fs.getUri().getScheme() == "file" and \
                self._jvm.org.apache.hadoop.fs.ChecksumFileSystem._java_lang_class.isInstance(fs):
            fs = fs.getRawFileSystem()  # no .crc files beside ours
        return fs, path

    def _call(self, uri, fn):
        try:
            return fn()
        except _jvm_errors() as e:
            raise _java_error(e, os.fspath(uri)) from e

    # -- queries
    def exists(self, uri: str | os.PathLike) -> bool:
        """True if a file or a directory (on object stores: any key below it) is there."""
        fs, path = self._resolve(uri)
        return bool(self._call(uri, lambda: fs.exists(path)))

    def is_dir(self, uri: str | os.PathLike) -> bool:
        """True if ``uri`` is a directory (on object stores: a prefix with keys below it)."""
        fs, path = self._resolve(uri)
        return bool(self._call(uri, lambda: fs.exists(path) and fs.getFileStatus(path).isDirectory()))

    def list(self, uri: str | os.PathLike, hidden: bool = False) -> list[FileInfo]:
        """The entries directly below ``uri``, sorted by name; ``[]`` if there is nothing
        (on object stores an empty "directory" does not exist). Names starting with ``.``
        (such as this class's own temporary files) are left out unless ``hidden``."""
        fs, path = self._resolve(uri)

        def run():
            try:
                statuses = fs.listStatus(path)
            except _jvm_errors() as e:
                jexc = _java_exception(e)
                if jexc is not None and jexc.getClass().getName() == "java.io.FileNotFoundException":
                    return []
                raise
            out = []
            for st in statuses:
                p = st.getPath()
                name = p.getName()
                if hidden or not name.startswith("."):
                    out.append(FileInfo(p.toString(), name, bool(st.isDirectory()), int(st.getLen()),
                                        int(st.getModificationTime())))
            return sorted(out, key=lambda f: f.name)
        return self._call(uri, run)

    # -- reads
    def read_bytes(self, uri: str | os.PathLike) -> bytes:
        """The whole file (:class:`FileNotFoundError` if it is not there)."""
        fs, path = self._resolve(uri)

        def run():
            stream = fs.open(path)
            try:
                return bytes(self._jvm.org.apache.hadoop.io.IOUtils.readFullyToByteArray(stream))
            finally:
                stream.close()
        return self._call(uri, run)

    def read_text(self, uri: str | os.PathLike, encoding: str = "utf-8") -> str:
        return self.read_bytes(uri).decode(encoding)

    # -- writes
    def write_bytes(self, uri: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
        """Write ``data`` to ``uri`` atomically: a reader sees the old content or the new,
        never a part, and a crash leaves the old content.

        On S3 and GCS the object is uploaded in one request, which is atomic; elsewhere
        (local files, HDFS, ...) the data goes to a hidden temporary file beside the
        target, is synced, and is renamed over it. With ``overwrite=False`` an existing
        file raises :class:`FileExistsError` (on object stores a check before the upload:
        enough for one writer, not a lock).
        """
        fs, path = self._resolve(uri)
        jvm = self._jvm

        def write(target, over: bool, sync: bool):
            out = fs.create(target, over)
            try:
                for chunk in self._chunks(data):
                    out.write(chunk)
                if sync:
                    try:
                        out.hsync()
                    except Exception:  # noqa: BLE001 - a stream without Syncable: best effort
                        pass
            except BaseException:
                # an object store uploads on close(): abort instead, so nothing partial appears
                try:
                    if out.hasCapability("fs.capability.outputstream.abortable"):
                        out.abort()
                    else:
                        out.close()
                except Exception:  # noqa: BLE001 - keep the original error
                    pass
                raise
            out.close()

        def run():
            if fs.getUri().getScheme() in _ATOMIC_PUT_SCHEMES:
                write(path, overwrite, sync=False)
                return
            if not overwrite and fs.exists(path):
                raise FileExistsError(f"{os.fspath(uri)}: exists")
            tmp = jvm.org.apache.hadoop.fs.Path(path.getParent(), f".{path.getName()}.{uuid.uuid4().hex}.tmp")
            try:
                write(tmp, False, sync=True)
                self._rename_over(fs, tmp, path)
            except BaseException:
                try:
                    fs.delete(tmp, False)
                except Exception:  # noqa: BLE001 - keep the original error
                    pass
                raise
        self._call(uri, run)

    def _chunks(self, data: bytes) -> Iterator[bytearray]:
        view = memoryview(data)
        for i in range(0, len(view), self._CHUNK):
            yield bytearray(view[i:i + self._CHUNK])

    def _rename_over(self, fs, src, dst) -> None:
        if fs.getUri().getScheme() == "file":
            # RawLocalFileSystem.rename is rename(2): atomic, replaces dst
            if not fs.rename(src, dst):
                raise OSError(f"{dst.toString()}: rename failed")
            return
        jvm = self._jvm
        fc = jvm.org.apache.hadoop.fs.FileContext.getFileContext(dst.toUri(), self._conf)
        opts = self._spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
        opts[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
        fc.rename(src, dst, opts)

    def write_text(self, uri: str | os.PathLike, text: str, overwrite: bool = True,
                   encoding: str = "utf-8") -> None:
        """:meth:`write_bytes` of ``text`` encoded."""
        self.write_bytes(uri, text.encode(encoding), overwrite=overwrite)

    def mkdirs(self, uri: str | os.PathLike) -> bool:
        """Create the directory and its parents (on object stores: a marker; harmless)."""
        fs, path = self._resolve(uri)
        return bool(self._call(uri, lambda: fs.mkdirs(path)))

    def delete(self, uri: str | os.PathLike, recursive: bool = False) -> bool:
        """Delete a file, or a directory with ``recursive``; False if nothing was there."""
        fs, path = self._resolve(uri)
        return bool(self._call(uri, lambda: fs.delete(path, recursive)))
