"""Storage locations as strings: plain paths or URIs of any Hadoop file system or object
store, and the form each reader wants (pure: no Spark, no configuration).

Paths are handled as strings: a URI never goes through :mod:`pathlib` (which would turn
``s3a://b/x`` into ``s3a:/b/x``)::

    >>> join("s3a://bucket/ckpt", "doodle_state", "7.json")
    's3a://bucket/ckpt/doodle_state/7.json'
    >>> to_delta_uri("s3a://bucket/delta/minute_stats")
    's3://bucket/delta/minute_stats'
    >>> to_spark_uri("s3://bucket/delta")
    's3a://bucket/delta'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["StorageError", "S3_SCHEMES", "is_uri", "scheme", "is_s3", "is_local", "join", "local_path",
           "to_spark_uri", "to_delta_uri"]

#: Schemes of S3 and S3-compatible stores; Spark reads them all through S3A (``s3a://``).
S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


class StorageError(RuntimeError):
    """A storage location cannot be used as configured; the message says why (never a secret)."""


def _str(p: str | os.PathLike) -> str:
    return os.fspath(p)


def is_uri(p: str | os.PathLike) -> bool:
    """True for ``scheme://...`` and Hadoop's ``file:/path``; False for a plain path.

    >>> is_uri("s3a://b/x"), is_uri("file:///tmp/x"), is_uri("file:/tmp/x")
    (True, True, True)
    >>> is_uri("data/delta"), is_uri("/abs/path"), is_uri(Path("/x"))
    (False, False, False)

    A one-letter scheme is taken for a Windows drive (``C://x`` is a path).
    """
    if isinstance(p, Path):
        return False
    s = _str(p)
    return bool(_URI.match(s)) or s.startswith("file:/")


def scheme(p: str | os.PathLike) -> str:
    """The URI scheme in lower case (``"s3a"``, ``"file"``, ...), ``""`` for a plain path."""
    if not is_uri(p):
        return ""
    return _str(p).split(":", 1)[0].lower()


def is_s3(p: str | os.PathLike) -> bool:
    """True for ``s3a://``, ``s3://`` and ``s3n://`` URIs."""
    return scheme(p) in S3_SCHEMES


def is_local(p: str | os.PathLike) -> bool:
    """True for a plain path or a ``file:`` URI."""
    return scheme(p) in ("", "file")


def _split(uri: str) -> tuple[str, str]:
    """``("s3a://bucket", "/a/b")`` for ``s3a://bucket/a/b``; ``("file:", "/x")`` for ``file:/x``."""
    m = _URI.match(uri)
    if m:
        end = uri.find("/", m.end())
        return (uri, "") if end < 0 else (uri[:end], uri[end:])
    head, _, path = uri.partition(":")
    return head + ":", path


def join(base: str | os.PathLike, *parts: str | os.PathLike) -> str:
    """``base`` and ``parts`` joined with single slashes; plain paths stay plain paths.

    >>> join("s3a://bucket/ckpt/", "spark")
    's3a://bucket/ckpt/spark'
    >>> join("s3a://bucket", "t", "/part-0.parquet")
    's3a://bucket/t/part-0.parquet'
    >>> join("file:///tmp/x", "a")
    'file:///tmp/x/a'
    >>> join("data/delta", "minute_stats")
    'data/delta/minute_stats'

    Leading and trailing slashes of ``parts`` are dropped (a part never restarts the path
    from the root, unlike :func:`os.path.join`).
    """
    b = _str(base)
    tail = [s for s in (_str(p).strip("/") for p in parts) if s]
    if not is_uri(b):
        return os.path.join(b, *tail) if tail else b
    head, path = _split(b)
    path = path.rstrip("/")
    return head + path + "".join("/" + s for s in tail) if tail else head + (path or "/")


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def local_path(p: str | os.PathLike) -> Path:
    """The :class:`~pathlib.Path` of a plain path or a ``file:`` URI.

    >>> local_path("file:///tmp/x"), local_path("file:/tmp/x"), local_path("data")
    (PosixPath('/tmp/x'), PosixPath('/tmp/x'), PosixPath('data'))
    """
    s = _str(p)
    if not is_uri(s):
        return Path(s)
    if scheme(s) != "file":
        raise StorageError(f"not a local path: {s}")
    u = urlsplit(s)
    if u.netloc not in ("", "localhost"):
        raise StorageError(f"file URI with a host is not a local path: {s}")
    return Path(unquote(u.path))


def to_spark_uri(p: str | os.PathLike) -> str:
    """The location as Spark/Hadoop reads it: ``s3://`` and ``s3n://`` become ``s3a://``
    (Hadoop's S3 connector); other URIs and plain paths are unchanged.

    >>> to_spark_uri("s3://bucket/x"), to_spark_uri("data/delta")
    ('s3a://bucket/x', 'data/delta')
    """
    s = _str(p)
    sch = scheme(s)
    if sch in ("s3", "s3n"):
        return "s3a" + s[len(sch):]
    return s


def to_delta_uri(p: str | os.PathLike) -> str:
    """The location as delta-rs reads it: ``s3a://`` and ``s3n://`` become ``s3://``,
    Hadoop's ``file:/x`` becomes ``file:///x``; other URIs and plain paths are unchanged.

    (delta-rs 1.6 also accepts ``s3a://`` itself; ``s3://`` is object_store's own form.)

    >>> to_delta_uri("s3a://bucket/t"), to_delta_uri("file:/tmp/t"), to_delta_uri("/tmp/t")
    ('s3://bucket/t', 'file:///tmp/t', '/tmp/t')
    """
    s = _str(p)
    sch = scheme(s)
    if sch in ("s3a", "s3n"):
        return "s3" + s[len(sch):]
    if sch == "file" and not s.startswith("file://"):
        return "file://" + s[len("file:"):]
    return s
