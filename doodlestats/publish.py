"""A small, generic Kafka publisher: (key, value) messages to one topic, all delivered or an error.

The same producer settings as :class:`doodlestats.sinks.KafkaSink` (idempotent producer,
``acks=all``), for outputs that are not minute results — e.g. the rollups' period
results (``jobs/rollups.py --output-topic dayStats``)::

    pub = KafkaPublisher("127.0.0.1:9092", "dayStats")
    pub.publish([(b"2016-07-11T00:00:00Z", b'{"unique_users": 812, ...}')])   # raises if undelivered

Values must be absolute (not increments): delivery is at-least-once, so a consumer that
keeps the last value per key is always right.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["KafkaPublisher", "PublishError"]


class PublishError(RuntimeError):
    """Some messages could not be delivered; the message says to which topic and why."""


class KafkaPublisher:
    """Publishes (key, value) byte pairs to ``topic``; :meth:`publish` returns once all are
    acknowledged, or raises :class:`PublishError`."""

    def __init__(self, bootstrap: str, topic: str, client_conf: dict | None = None, timeout_s: float = 30.0):
        from confluent_kafka import Producer
        self.topic, self.timeout_s = topic, timeout_s
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                                  "enable.idempotence": True, **(client_conf or {})})

    def publish(self, messages: Iterable[tuple[bytes, bytes]]) -> int:
        """Produce every message, wait for delivery; returns how many were delivered."""
        errors: list[str] = []
        n = 0
        for key, value in messages:
            while True:
                try:
                    self.producer.produce(self.topic, value, key,
                                          on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self.producer.poll(0.5)
            n += 1
            self.producer.poll(0)
        left = self.producer.flush(self.timeout_s)
        if left or errors:
            raise PublishError(f"publishing to {self.topic} failed: "
                               f"{errors[0] if errors else f'{left} message(s) undelivered after {self.timeout_s:g}s'}")
        return n
