"""Small driver-side files (the job state, markers, spooled input) on a local disk or on any
Hadoop file system or object store, through one interface, :class:`FileSystem`:

* :class:`LocalFS`: plain paths and ``file:`` URIs, with Python's own file functions,
* :class:`HadoopFS`: any URI Spark's Hadoop file systems know (``s3a://``, ``abfss://``,
  ``gs://``, ``hdfs://``), through the session's JVM (py4j),
* :func:`fs_for`: the one of the two a location needs.

Both write a file in one piece: a reader sees the old content or the new, never a part
(write + rename on a file system, one PUT on S3 and GCS)::

    fs = fs_for("s3a://bucket/ckpt", spark)        # HadoopFS; fs_for("data/ckpt") -> LocalFS
    fs.write_text("s3a://bucket/ckpt/doodle_state/7.json", json.dumps(state))
    [f.name for f in fs.list("s3a://bucket/ckpt/doodle_state")]   # -> ['7.json']
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

from py4j.protocol import Py4JJavaError

from doodlestats.io.uris import is_local, is_uri, local_path, to_spark_uri

try:
    from pyspark.errors.exceptions.captured import CapturedException
    #: What a failed call into the JVM raises: py4j's error, or one PySpark converted.
    _JVM_ERRORS: tuple[type[BaseException], ...] = (Py4JJavaError, CapturedException)
except ImportError:  # pragma: no cover - other PySpark layouts
    _JVM_ERRORS = (Py4JJavaError,)

__all__ = ["FileInfo", "FileSystem", "LocalFS", "HadoopFS", "fs_for"]

#: Stores on which one PUT of a whole object is atomic: readers see the old object or the
#: new one, never a part. Elsewhere a write goes to a temporary file and is renamed.
_ATOMIC_PUT_SCHEMES = frozenset({"s3a", "gs"})


class FileInfo(NamedTuple):
    """One entry of :meth:`FileSystem.list`."""
    uri: str
    name: str
    is_dir: bool
    size: int
    modified_ms: int


class FileSystem(Protocol):
    """The file operations of :class:`LocalFS` and :class:`HadoopFS`. Paths are strings
    (or path-like); a missing file raises :class:`FileNotFoundError`."""

    def exists(self, uri: str | os.PathLike) -> bool: ...

    def is_dir(self, uri: str | os.PathLike) -> bool: ...

    def list(self, uri: str | os.PathLike, hidden: bool = False) -> list[FileInfo]: ...

    def read_bytes(self, uri: str | os.PathLike) -> bytes: ...

    def read_text(self, uri: str | os.PathLike, encoding: str = "utf-8") -> str: ...

    def write_bytes(self, uri: str | os.PathLike, data: bytes, overwrite: bool = True) -> None: ...

    def write_text(self, uri: str | os.PathLike, text: str, overwrite: bool = True,
                   encoding: str = "utf-8") -> None: ...

    def mkdirs(self, uri: str | os.PathLike) -> bool: ...

    def delete(self, uri: str | os.PathLike, recursive: bool = False) -> bool: ...


def fs_for(location: str | os.PathLike, spark: Any = None) -> FileSystem:
    """:class:`LocalFS` for a plain path or a ``file:`` URI, :class:`HadoopFS` (which needs
    the Spark session ``spark``) for any other URI."""
    if is_local(location):
        return LocalFS()
    if spark is None:
        raise ValueError(f"{os.fspath(location)}: a URI location needs a Spark session for its file system")
    return HadoopFS(spark)


# ---------------------------------------------------------------------- LocalFS
class LocalFS:
    """:class:`FileSystem` on the local disk: plain paths and ``file:`` URIs. A write goes
    to ``<path>.tmp`` and is renamed over the target (atomic on POSIX)."""

    def exists(self, uri: str | os.PathLike) -> bool:
        return local_path(uri).exists()

    def is_dir(self, uri: str | os.PathLike) -> bool:
        return local_path(uri).is_dir()

    def list(self, uri: str | os.PathLike, hidden: bool = False) -> list[FileInfo]:
        """The entries directly below ``uri``, sorted by name; ``[]`` if it is not a
        directory. Names starting with ``.`` are left out unless ``hidden``."""
        folder = local_path(uri)
        if not folder.is_dir():
            return []
        base = os.fspath(uri).rstrip("/")
        out = []
        for name in sorted(os.listdir(folder)):
            if hidden or not name.startswith("."):
                st = (folder / name).stat()
                out.append(FileInfo(f"{base}/{name}", name, (folder / name).is_dir(), st.st_size,
                                    st.st_mtime_ns // 1_000_000))
        return out

    def read_bytes(self, uri: str | os.PathLike) -> bytes:
        return local_path(uri).read_bytes()

    def read_text(self, uri: str | os.PathLike, encoding: str = "utf-8") -> str:
        return local_path(uri).read_text(encoding=encoding)

    def write_bytes(self, uri: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
        """Write ``data`` in one piece (:class:`FileExistsError` if the file is there and
        not ``overwrite``); missing parent directories are created."""
        path = local_path(uri)
        if not overwrite and path.exists():
            raise FileExistsError(f"{os.fspath(uri)}: exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def write_text(self, uri: str | os.PathLike, text: str, overwrite: bool = True,
                   encoding: str = "utf-8") -> None:
        self.write_bytes(uri, text.encode(encoding), overwrite=overwrite)

    def mkdirs(self, uri: str | os.PathLike) -> bool:
        local_path(uri).mkdir(parents=True, exist_ok=True)
        return True

    def delete(self, uri: str | os.PathLike, recursive: bool = False) -> bool:
        """Delete a file, or a directory with ``recursive``; False if nothing was there."""
        path = local_path(uri)
        if recursive and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
        else:
            return False
        return True


# ---------------------------------------------------------------------- HadoopFS
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
        except _JVM_ERRORS as e:
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
            except _JVM_ERRORS as e:
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
