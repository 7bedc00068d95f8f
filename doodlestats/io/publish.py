"""The one Kafka producer of the jobs: (key, value) messages to one topic, all delivered or an error.

An idempotent producer with ``acks=all``: the stream's ``minuteStats`` sink
(:class:`doodlestats.io.sinks.KafkaSink`) and the rollups' period results
(``jobs/rollups.py --output-topic dayStats``) both publish through it::

    pub = KafkaPublisher("127.0.0.1:9092", "dayStats")
    pub.publish([(b"2016-07-11T00:00:00Z", b'{"unique_users": 812, ...}')])   # raises if undelivered

Values must be absolute (not increments): delivery is at-least-once, so a consumer that
keeps the last value per key is always right.
"""

from __future__ import annotations

from typing import Iterable

from confluent_kafka import Producer

__all__ = ["KafkaPublisher", "PublishError"]


class PublishError(RuntimeError):
    """Some messages could not be delivered; the message says to which topic and why."""


class KafkaPublisher:
    """Publishes (key, value) byte pairs to ``topic``; :meth:`publish` returns once all are
    acknowledged, or raises :class:`PublishError`.

    ``patience_s``: how long a message may wait for a broker that went away — librdkafka
    keeps retrying the idempotent producer's messages that long (nothing duplicated or
    reordered) before :meth:`publish` gives up."""

    def __init__(self, bootstrap: str, topic: str, client_conf: dict | None = None, patience_s: float = 30.0):
        self.topic, self.patience_s = topic, patience_s
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                                  "enable.idempotence": True, "message.timeout.ms": int(patience_s * 1000),
                                  **(client_conf or {})})

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
                except BufferError:  # local queue full (or the broker away): let deliveries drain, retry
                    self.producer.poll(0.5)
            n += 1
            self.producer.poll(0)
        left = self.producer.flush(self.patience_s + 10)
        if left or errors:
            why = errors[0] if errors else f"{left} message(s) undelivered after {self.patience_s:g}s"
            raise PublishError(f"publishing to {self.topic} failed: {why}")
        return n
