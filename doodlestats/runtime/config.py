"""Typed configuration: ``conf/doodle.toml`` loaded into one frozen object.

Example::

    cfg = load_config()                      # conf/doodle.toml
    cfg = load_config("my.toml", {"job.mode": "approx"})
    cfg.job.watermark_s                      # -> 5

Unknown keys and bad values raise :class:`ConfigError` with a message naming the key,
before any Spark or Kafka work starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from doodlestats.io.uris import is_uri

__all__ = ["REPO_ROOT", "DEFAULT_CONF", "ConfigError", "KafkaConf", "JobConf", "GuardConf", "PathsConf", "SparkConf",
           "StorageConf", "QuarantineConf", "MetricsConf", "MaintenanceConf", "Config", "load_config"]

def _repo_root() -> Path:
    """The project folder: $DOODLE_HOME, else the folder holding this package (when it is
    not inside a zip shipped with --py-files), else the working directory."""
    if os.environ.get("DOODLE_HOME"):
        return Path(os.environ["DOODLE_HOME"]).resolve()
    here = Path(__file__).resolve().parents[2]  # doodlestats/runtime/config.py
    return here if (here / "conf").is_dir() else Path.cwd()


REPO_ROOT = _repo_root()
DEFAULT_CONF = REPO_ROOT / "conf" / "doodle.toml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class KafkaConf:
    bootstrap_servers: str = "127.0.0.1:9092"
    controller_port: int = 9093
    input_topic: str = "doodle"
    input_partitions: int = 3
    output_topic: str = "minuteStats"
    output_partitions: int = 1
    broker_heap: str = "768m"
    # largest message (bytes): the embedded broker's message.max.bytes and every producer's
    # message.max.bytes / the consumers' fetch sizes (one setting for both sides)
    max_message_bytes: int = 10_485_760
    # security of every client (Spark's source, publisher, admin check, loader, backfill)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username_env: str = "DOODLE_KAFKA_USERNAME"
    sasl_password_env: str = "DOODLE_KAFKA_PASSWORD"
    ssl_ca_location: str = ""
    ssl_endpoint_identification: bool = True

    @property
    def host(self) -> str:
        return self.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])


@dataclass(frozen=True)
class JobConf:
    mode: str = "exact"
    rsd: float = 0.01
    watermark_s: int = 5
    trigger_s: float = 1.0
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int = 1_000_000
    late_corrections: bool = True
    parser: str = "jvm"
    idle_partition_s: float = 30.0
    min_partitions: int = 1
    frames_per_task: int = 50_000
    warm_up_frames: int = 20_000
    # offsets the checkpoint expects but the broker no longer has (retention deleted them):
    # fail (stop with one clear line) | skip (go on from the earliest offset, record the gap)
    on_data_loss: str = "fail"


@dataclass(frozen=True)
class GuardConf:
    max_skew_s: int = 3600
    neighbourhood: int = 1000
    min_neighbours: int = 5


@dataclass(frozen=True)
class PathsConf:
    delta: str = "data/delta"
    checkpoint: str = "data/checkpoint"


@dataclass(frozen=True)
class SparkConf:
    master: str = "local[2]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 2


@dataclass(frozen=True)
class StorageConf:
    """Object-store settings for URIs in ``[paths]`` (see :mod:`doodlestats.io.storage`).

    Credentials are never part of the configuration: only the *names* of the environment
    variables that hold them are.
    """
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_path_style: bool = False
    s3_allow_http: bool = False
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = ""


@dataclass(frozen=True)
class QuarantineConf:
    # quarantine rows (raw frames: user ids) older than this many days are deleted by
    # `jobs/quarantine_purge.py` (0: keep forever)
    retention_days: int = 30


@dataclass(frozen=True)
class MetricsConf:
    # the live job's Prometheus endpoint: http://host:port/metrics (port 0: none)
    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class MaintenanceConf:
    # the live job compacts, checkpoints and vacuums its tables in the background (see
    # doodlestats.io.maintenance) every so many batches or minutes, whichever comes first
    # (0 turns that trigger off; both 0, the default: only `jobs/maintain.py`). The compaction
    # rewrites a settled day's files in the driver's process: at volume, run jobs/maintain.py apart
    every_batches: int = 0
    every_minutes: int = 0
    target_mb: int = 128     # size of a compacted file
    vacuum_hours: int = 168  # unreferenced files older than this are deleted (at least 1)


@dataclass(frozen=True)
class Config:
    kafka: KafkaConf = field(default_factory=KafkaConf)
    job: JobConf = field(default_factory=JobConf)
    guard: GuardConf = field(default_factory=GuardConf)
    paths: PathsConf = field(default_factory=PathsConf)
    spark: SparkConf = field(default_factory=SparkConf)
    storage: StorageConf = field(default_factory=StorageConf)
    quarantine: QuarantineConf = field(default_factory=QuarantineConf)
    metrics: MetricsConf = field(default_factory=MetricsConf)
    maintenance: MaintenanceConf = field(default_factory=MaintenanceConf)

    def path(self, which: str) -> Path | str:
        """Where ``paths.<which>`` is: a URI (``s3a://bucket/x``, ``file:///x``, ...)
        unchanged, as a string; a plain path as an absolute :class:`~pathlib.Path`
        (relative paths are relative to the repo)::

            cfg.path("delta")       # -> Path('/repo/data/delta')  for "data/delta"
            cfg.path("checkpoint")  # -> 's3a://bucket/ckpt'        for "s3a://bucket/ckpt"
        """
        raw = getattr(self.paths, which)
        if is_uri(raw):
            return raw
        p = Path(raw)
        return p if p.is_absolute() else REPO_ROOT / p


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_CLASSES = {"kafka": KafkaConf, "job": JobConf, "guard": GuardConf, "paths": PathsConf, "spark": SparkConf,
            "storage": StorageConf, "quarantine": QuarantineConf, "metrics": MetricsConf,
            "maintenance": MaintenanceConf}


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _check(cfg: Config) -> None:
    j, g, k = cfg.job, cfg.guard, cfg.kafka
    if j.mode not in ("exact", "approx"):
        raise ConfigError(f"job.mode: expected 'exact' or 'approx', got {j.mode!r}")
    if not 0.001 <= j.rsd <= 0.3:
        raise ConfigError(f"job.rsd: expected 0.001..0.3, got {j.rsd}")
    if j.watermark_s < 0:
        raise ConfigError(f"job.watermark_s: must be >= 0, got {j.watermark_s}")
    if j.trigger_s <= 0:
        raise ConfigError(f"job.trigger_s: must be > 0, got {j.trigger_s}")
    if j.starting_offsets not in ("earliest", "latest") and not j.starting_offsets.startswith("{"):
        raise ConfigError(
            f"job.starting_offsets: expected earliest, latest or a JSON offsets object, got {j.starting_offsets!r}")
    if j.max_offsets_per_trigger < 1:
        raise ConfigError(f"job.max_offsets_per_trigger: must be >= 1, got {j.max_offsets_per_trigger}")
    if j.min_partitions < 1:
        raise ConfigError(f"job.min_partitions: must be >= 1, got {j.min_partitions}")
    if j.frames_per_task < 1000:
        raise ConfigError(f"job.frames_per_task: must be >= 1000, got {j.frames_per_task}")
    if j.warm_up_frames < 0:
        raise ConfigError(f"job.warm_up_frames: must be >= 0, got {j.warm_up_frames}")
    if j.idle_partition_s <= 0:
        raise ConfigError(f"job.idle_partition_s: must be > 0, got {j.idle_partition_s}")
    if j.on_data_loss not in ("fail", "skip"):
        raise ConfigError(f"job.on_data_loss: expected fail or skip, got {j.on_data_loss!r}")
    if k.max_message_bytes < 1024:
        raise ConfigError(f"kafka.max_message_bytes: must be >= 1024, got {k.max_message_bytes}")
    if k.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError("kafka.security_protocol: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, "
                          f"got {k.security_protocol!r}")
    if k.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(f"kafka.sasl_mechanism: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, "
                          f"got {k.sasl_mechanism!r}")
    for key in ("sasl_username_env", "sasl_password_env"):
        if not _ENV_NAME.fullmatch(getattr(k, key)):
            raise ConfigError(f"kafka.{key}: expected the name of an environment variable, got {getattr(k, key)!r}")
    if j.parser not in ("jvm", "python", "spark"):
        raise ConfigError(f"job.parser: expected jvm, python or spark, got {j.parser!r}")
    if g.max_skew_s < 60:
        raise ConfigError(f"guard.max_skew_s: must be >= 60, got {g.max_skew_s}")
    if g.neighbourhood < 2 or g.min_neighbours < 1:
        raise ConfigError("guard.neighbourhood must be >= 2 and guard.min_neighbours >= 1")
    if k.input_partitions < 1 or k.output_partitions < 1:
        raise ConfigError("kafka.*_partitions must be >= 1")
    try:
        _ = k.port
    except (IndexError, ValueError):
        raise ConfigError(f"kafka.bootstrap_servers: expected host:port, got {k.bootstrap_servers!r}") from None
    if cfg.spark.shuffle_partitions < 1:
        raise ConfigError("spark.shuffle_partitions must be >= 1")
    _check_storage(cfg.storage)
    _check_operations(cfg)


def _check_operations(cfg: Config) -> None:
    """The settings of running it: metrics, maintenance, quarantine retention."""
    if not 0 <= cfg.metrics.port <= 65535:
        raise ConfigError(f"metrics.port: must be 0 (no endpoint) or a TCP port, got {cfg.metrics.port}")
    mt = cfg.maintenance
    if mt.every_batches < 0 or mt.every_minutes < 0:
        raise ConfigError(f"maintenance.every_batches and every_minutes: must be >= 0 (0: off), got "
                          f"{mt.every_batches} and {mt.every_minutes}")
    if mt.target_mb < 1 or mt.vacuum_hours < 1:
        raise ConfigError(f"maintenance.target_mb and vacuum_hours: must be >= 1 (a running batch's staged files "
                          f"must stay), got {mt.target_mb} and {mt.vacuum_hours}")
    if cfg.quarantine.retention_days < 0:
        raise ConfigError(f"quarantine.retention_days: must be >= 0, got {cfg.quarantine.retention_days}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_storage(st: StorageConf) -> None:
    ep = st.s3_endpoint
    if ep:
        if not re.fullmatch(r"https?://[^/\s]+/?", ep):
            raise ConfigError(f"storage.s3_endpoint: expected http(s)://host[:port], got {ep!r}")
        if ep.startswith("http://") and not st.s3_allow_http:
            raise ConfigError("storage.s3_endpoint is http:// but storage.s3_allow_http is false")
    if not st.s3_region:
        raise ConfigError("storage.s3_region must not be empty")
    for key in ("access_key_env", "secret_key_env", "session_token_env"):
        name = getattr(st, key)
        if (name or key != "session_token_env") and not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"storage.{key}: expected the name of an environment variable, got {name!r}")


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load ``conf/doodle.toml`` (or ``path``), apply ``{"section.key": value}`` overrides.

    Environment variable ``DOODLE_CONF`` names another file when ``path`` is None.
    """
    path = Path(path or os.environ.get("DOODLE_CONF") or DEFAULT_CONF)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    merged: dict[str, dict[str, Any]] = {s: dict(raw.get(s, {})) for s in _SECTIONS}
    for s in raw:
        if s not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section [{s}] (known: {', '.join(_SECTIONS)})")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if section not in _SECTIONS:
            raise ConfigError(f"unknown setting {key!r}")
        merged[section][name] = value
    sections = {}
    for s, cls in _CLASSES.items():
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for name, value in merged[s].items():
            if name not in known:
                raise ConfigError(f"unknown setting {s}.{name} (known: {', '.join(sorted(known))})")
            values[name] = _coerce(f"{s}.{name}", value, getattr(defaults, name))
        sections[s] = cls(**values)
    cfg = Config(**sections)
    _check(cfg)
    return cfg
