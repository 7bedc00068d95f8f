"""Where minute results go: one small interface, three sinks.

A sink receives the results of a micro-batch with :meth:`Sink.write` and must have made
them durable (or visible) when it returns; an exception aborts the batch before its
state is saved, so the batch is replayed — every sink therefore writes *absolute*
values keyed by minute, and a replay rewrites the same values::

    sinks = [KafkaSink(cfg), StdoutSink(), DeltaMinuteSink(tables)]
    for s in sinks:
        s.write(results, batch_id)

=================== ================================================================
``KafkaSink``       ``minuteStats``: key = window_start, value = the JSON of results.py
``StdoutSink``      ``--print``: final and corrected results, one JSON per line
``DeltaMinuteSink`` ``minute_stats``: MERGE by minute, app transaction = batch id
=================== ================================================================
"""

from __future__ import annotations

import sys
from typing import Protocol

from doodlestats.batch.results import PROVISIONAL, MinuteResult, rows_table
from doodlestats.io.publish import KafkaPublisher, PublishError
from doodlestats.io.tables import Tables

__all__ = ["Sink", "KafkaSink", "StdoutSink", "DeltaMinuteSink"]


class Sink(Protocol):
    name: str  # what it writes to (a crash point of the batch, see doodlestats.runtime.faults)

    def write(self, results: list[MinuteResult], batch_id: int) -> None:
        """Publish ``results``; raise if they could not be published."""


class PublishTimeout(RuntimeError):
    """Results could not be delivered within the sink's patience."""


class KafkaSink:
    """Publishes minute results to the output topic: key = window_start, value = JSON
    (through :class:`doodlestats.io.publish.KafkaPublisher`).

    ``patience_s``: how long a write waits for a broker that went away before it raises
    :class:`PublishTimeout`. ``on_delivered`` is called after every fully delivered write."""

    def __init__(self, bootstrap: str, topic: str, client_conf: dict | None = None, patience_s: float = 30,
                 on_delivered=None):
        self.name = "kafka"
        self.topic, self.patience_s, self.on_delivered = topic, patience_s, on_delivered
        self.publisher = KafkaPublisher(bootstrap, topic, client_conf, patience_s)

    def write(self, results, batch_id):
        try:
            self.publisher.publish((r.key.encode(), r.to_bytes()) for r in results)
        except PublishError as e:
            raise PublishTimeout(f"results of batch {batch_id} not delivered to {self.topic} within "
                                 f"{self.patience_s:g}s ({str(e).split(' failed: ', 1)[-1]})") from None
        if self.on_delivered is not None:
            self.on_delivered()


class StdoutSink:
    """``--print``: final and corrected results as JSON lines on stdout."""

    name = "stdout"

    def __init__(self, stream=None):
        self.stream = stream

    def write(self, results, batch_id):
        out = self.stream or sys.stdout
        for r in results:
            if r.status != PROVISIONAL:
                out.write(r.to_bytes().decode() + "\n")
        out.flush()


class DeltaMinuteSink:
    """``minute_stats``: one row per minute, merged (absolute values: replays are harmless)."""

    name = "minute_stats"

    def __init__(self, tables: Tables):
        self.tables = tables

    def write(self, results, batch_id):
        if results:
            self.tables.upsert_minutes(rows_table(results, batch_id), batch_id)
