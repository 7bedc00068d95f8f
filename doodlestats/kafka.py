"""Kafka plumbing of the product: the admin check before a job starts, topic creation
and the ``minuteStats`` publisher.

Example::

    check_kafka(cfg, need_input=True)       # one clear line if the broker or topic is missing
    ensure_topic(cfg, "minuteStats", 1)
"""

from __future__ import annotations

import os
import time

from doodlestats.config import Config

__all__ = ["KafkaUnavailable", "admin_client", "check_kafka", "client_settings", "ensure_topic",
           "spark_kafka_options"]


class KafkaUnavailable(RuntimeError):
    """The broker does not answer, or a topic the job needs is missing."""


def _secret(cfg: Config, key: str) -> str:
    name = getattr(cfg.kafka, key)
    value = os.environ.get(name)
    if not value:
        raise KafkaUnavailable(f"kafka.security_protocol is {cfg.kafka.security_protocol} but the environment "
                               f"variable {name} (kafka.{key}) is not set")
    return value


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
            conf["ssl.ca.location"] = k.ssl_ca_location
        conf["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_endpoint_identification else "none"
    return conf


def spark_kafka_options(cfg: Config, bootstrap: str | None = None) -> dict[str, str]:
    """The same settings for Spark's Kafka source/sink (Java client): ``kafka.``-prefixed options."""
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
            opts.update({"kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.location": k.ssl_ca_location})
        opts["kafka.ssl.endpoint.identification.algorithm"] = "https" if k.ssl_endpoint_identification else ""
    return opts


def admin_client(cfg: Config):
    from confluent_kafka.admin import AdminClient
    return AdminClient(client_settings(cfg))


def check_kafka(cfg: Config, need_input: bool) -> None:
    """Fail fast, before Spark starts, if the broker or the input topic is missing."""
    try:
        md = admin_client(cfg).list_topics(timeout=10)
    except Exception as e:  # noqa: BLE001
        raise KafkaUnavailable(f"Kafka at {cfg.kafka.bootstrap_servers} does not answer ({e}) — "
                               f"start it with `make kafka-up`") from None
    if need_input and cfg.kafka.input_topic not in md.topics:
        raise KafkaUnavailable(f"input topic {cfg.kafka.input_topic!r} does not exist — "
                               f"`make load INPUT=...` creates and fills it")


def ensure_topic(cfg: Config, name: str, partitions: int) -> bool:
    """Create ``name`` with ``partitions`` partitions if it does not exist. True if created."""
    from confluent_kafka.admin import NewTopic
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
