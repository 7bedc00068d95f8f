"""Kafka plumbing of the product: the admin check before a job starts, topic creation
and the ``minuteStats`` publisher.

Example::

    check_kafka(cfg, need_input=True)       # one clear line if the broker or topic is missing,
                                            # or it refuses the credentials or the certificate
    ensure_topic(cfg, "minuteStats", 1)

Security (``[kafka] security_protocol``, SASL, the CA file) comes from ``conf/`` and the
environment through :func:`client_settings` (librdkafka) and :func:`spark_kafka_options`
(Spark's Java client); secrets only from the environment variables the config names.
"""

from __future__ import annotations

import os
import re
import socket
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from doodlestats.runtime.config import REPO_ROOT, Config

__all__ = ["KafkaRejected", "KafkaUnavailable", "admin_client", "ca_file", "check_kafka", "client_settings",
           "ensure_topic", "metadata", "spark_kafka_options"]


class KafkaUnavailable(RuntimeError):
    """The broker does not answer, or a topic the job needs is missing."""


class KafkaRejected(KafkaUnavailable):
    """The broker answers but refuses us: wrong credentials, an untrusted certificate, an
    unreadable CA file. Retrying does not help; the message says what to check."""


def _secret(cfg: Config, key: str) -> str:
    name = getattr(cfg.kafka, key)
    value = os.environ.get(name)
    if not value:
        raise KafkaRejected(f"kafka.security_protocol is {cfg.kafka.security_protocol} but the environment "
                            f"variable {name} (kafka.{key}) is not set")
    return value


def ca_file(cfg: Config) -> str:
    """The absolute path of ``[kafka] ssl_ca_location`` (relative paths are relative to the
    project, like ``[paths]``), checked to be a readable PEM file; "" for the system's CAs."""
    loc = cfg.kafka.ssl_ca_location
    if not loc:
        return ""
    path = os.path.join(REPO_ROOT, os.path.expanduser(loc))
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:
        raise KafkaRejected(f"kafka.ssl_ca_location: cannot read {path} ({e.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise KafkaRejected(f"kafka.ssl_ca_location: {path} is not a PEM file of CA certificates "
                            f"(no -----BEGIN CERTIFICATE----- line)")
    return path


def client_settings(cfg: Config, bootstrap: str | None = None) -> dict[str, str]:
    """librdkafka (confluent-kafka) settings every Python client of the product starts from:
    bootstrap servers, security protocol, SASL credentials (from the environment only),
    the CA file. Add the client's own settings on top."""
    k = cfg.kafka
    conf = {"bootstrap.servers": bootstrap or k.bootstrap_servers, "security.protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        conf.update({"sasl.mechanism": k.sasl_mechanism, "sasl.username": _secret(cfg, "sasl_username_env"),
                     "sasl.password": _secret(cfg, "sasl_password_env")})
    if k.security_protocol.endswith("SSL"):
        if k.ssl_ca_location:
            conf["ssl.ca.location"] = ca_file(cfg)
        conf["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_endpoint_identification else "none"
    return conf


def spark_kafka_options(cfg: Config, bootstrap: str | None = None) -> dict[str, str]:
    """The same settings for Spark's Kafka source/sink (Java client): ``kafka.``-prefixed
    options. The JAAS line carries the password: Spark redacts option values matching
    ``spark.redaction.regex`` (its default, ``(?i)secret|password|token|access[.]?key``,
    matches it) in plans, UI and event logs, and the Kafka client logs it as ``[hidden]``."""
    k = cfg.kafka
    opts = {"kafka.bootstrap.servers": bootstrap or k.bootstrap_servers, "kafka.security.protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if k.sasl_mechanism == "PLAIN"
                  else "org.apache.kafka.common.security.scram.ScramLoginModule")
        user, password = _secret(cfg, "sasl_username_env"), _secret(cfg, "sasl_password_env")
        esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
        opts.update({"kafka.sasl.mechanism": k.sasl_mechanism,
                     "kafka.sasl.jaas.config": f'{module} required username="{esc(user)}" password="{esc(password)}";'})
    if k.security_protocol.endswith("SSL"):
        if k.ssl_ca_location:
            # a PEM file holding only CA certificates is a valid truststore for the Java client (>= 2.7)
            opts.update({"kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.location": ca_file(cfg)})
        opts["kafka.ssl.endpoint.identification.algorithm"] = "https" if k.ssl_endpoint_identification else ""
    return opts


def admin_client(cfg: Config, **extra):
    """A librdkafka admin client with :func:`client_settings` of ``cfg``, plus ``extra``
    settings (e.g. ``error_cb``)."""
    return AdminClient({**client_settings(cfg), **extra})


def _rejection(cfg: Config, errors: list) -> str | None:
    """One line for an error that retrying will not fix (librdkafka's error_cb reports)."""
    k, where = cfg.kafka, f"Kafka at {cfg.kafka.bootstrap_servers}"
    for err in errors:
        code, text = err.code(), err.str()
        if "Unsupported SASL mechanism" in text or "UNSUPPORTED_SASL_MECHANISM" in text:
            offered = re.search(r"supported mechanisms: ([\w, -]+)", text)
            return (f"{where} does not offer SASL mechanism {k.sasl_mechanism}"
                    + (f" (it offers {offered.group(1).strip()})" if offered else "") + " — check kafka.sasl_mechanism")
        if code == KafkaError._AUTHENTICATION or "SASL authentication" in text or "Authentication failed" in text:
            return (f"{where} rejected the credentials ({k.sasl_mechanism} authentication failed) — check "
                    f"{k.sasl_username_env}/{k.sasl_password_env} and kafka.sasl_mechanism")
        if code == KafkaError._SSL or "SSL handshake failed" in text:
            if "PLAINTEXT broker listener" in text or "wrong version number" in text or \
                    "packet length too long" in text:
                return (f"SSL handshake with {where} failed: that port does not speak SSL (a PLAINTEXT listener?) "
                        f"— check kafka.bootstrap_servers and kafka.security_protocol ({k.security_protocol})")
            if "verify" in text:  # librdkafka does not say whether the CA or the host name did not match
                trust = f"kafka.ssl_ca_location ({ca_file(cfg)})" if k.ssl_ca_location else \
                    "the system's CA certificates (kafka.ssl_ca_location is empty)"
                host = " and name the host connected to (kafka.ssl_endpoint_identification = true)" \
                    if k.ssl_endpoint_identification else ""
                return (f"SSL handshake with {where} failed: the broker's certificate could not be verified — "
                        f"it must be signed by a CA of {trust}{host}")
            return f"SSL handshake with {where} failed ({_brief(text)}) — check the [kafka] ssl settings"
    return None


def _brief(text: str) -> str:
    """librdkafka's error text without its thread/broker prefix and state suffix."""
    text = text.split("]: ", 1)[-1]
    text = re.sub(r"^(?:\w+://)?[^\s/]+/\w+: ", "", text)
    return text.split(" (after ")[0].strip()


def _silent_port(cfg: Config) -> bool:
    """The first bootstrap server accepts TCP connections (but did not answer as Kafka)."""
    try:
        with socket.create_connection((cfg.kafka.host, cfg.kafka.port), timeout=1):
            return True
    except OSError:
        return False


def metadata(cfg: Config, timeout: float = 10.0):
    """The cluster metadata through the product's client settings. Raises
    :class:`KafkaRejected` within a second or two of a refusal (credentials, certificate,
    CA file) and :class:`KafkaUnavailable` if nothing answers within ``timeout`` s — each
    with one line that says what to check; never a secret (librdkafka does not echo
    passwords, and our lines name only the environment variables)."""
    errors: list = []
    # error_cb collects the reasons librdkafka would otherwise only log; log_level 0 keeps
    # its own log lines (one per retry) off stderr: the caller prints one line instead.
    try:
        admin = admin_client(cfg, error_cb=errors.append, log_level=0)
    except KafkaException as e:  # settings librdkafka refuses (e.g. a CA file it cannot parse)
        raise KafkaRejected(f"Kafka client settings rejected: {_brief(e.args[0].str())}") from None
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            return admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as e:
            last = e.args[0]
        admin.poll(0)  # serve error_cb
        rejected = _rejection(cfg, errors)
        if rejected:
            raise KafkaRejected(rejected)
        if time.monotonic() >= deadline:
            k = cfg.kafka
            if not k.security_protocol.endswith("SSL") and _silent_port(cfg):
                raise KafkaUnavailable(f"Kafka at {k.bootstrap_servers} accepts connections but does not answer "
                                       f"with security_protocol = {k.security_protocol} — an SSL listener? "
                                       f"check kafka.security_protocol and kafka.bootstrap_servers")
            told = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
            reason = _brief(told[-1].str()) if told else _brief(last.str()) if last else "no answer"
            raise KafkaUnavailable(f"Kafka at {k.bootstrap_servers} does not answer ({reason})")


def check_kafka(cfg: Config, need_input: bool) -> None:
    """Fail fast, before Spark starts, if the broker does not answer, refuses our
    credentials or certificate check, or the input topic is missing — one line each."""
    try:
        md = metadata(cfg, timeout=10)
    except KafkaRejected:
        raise
    except KafkaUnavailable as e:
        raise KafkaUnavailable(f"{e} — start it with `make kafka-up`") from None
    if need_input and cfg.kafka.input_topic not in md.topics:
        raise KafkaUnavailable(f"input topic {cfg.kafka.input_topic!r} does not exist — "
                               f"`make load INPUT=...` creates and fills it")


def ensure_topic(cfg: Config, name: str, partitions: int) -> bool:
    """Create ``name`` with ``partitions`` partitions if it does not exist. True if created."""
    admin = admin_client(cfg)
    if name in admin.list_topics(timeout=10).topics:
        return False
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name]
    try:
        fut.result(30)
    except Exception as e:  # noqa: BLE001
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise
        return False
    # wait until the metadata shows every partition with a leader
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions and \
                all(p.leader >= 0 for p in t.partitions.values()):
            return True
        time.sleep(0.2)
    raise KafkaUnavailable(f"topic {name} was created but has no leaders after 30s")
