"""Kafka plumbing of the product: the admin check before a job starts, topic creation
and the ``minuteStats`` publisher.

Example::

    check_kafka(cfg, need_input=True)       # one clear line if the broker or topic is missing
    ensure_topic(cfg, "minuteStats", 1)
"""

from __future__ import annotations

import time

from doodlestats.config import Config

__all__ = ["KafkaUnavailable", "admin_client", "check_kafka", "ensure_topic"]


class KafkaUnavailable(RuntimeError):
    """The broker does not answer, or a topic the job needs is missing."""


def admin_client(cfg: Config):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers})


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
