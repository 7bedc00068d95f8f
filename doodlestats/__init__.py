"""doodlestats — unique users per event-time minute from a Kafka firehose.

The code shared by the jobs in ``jobs/``: configuration, parsing, the timestamp
guard, counting, sinks, the frame generator and the local Kafka broker.
"""

__version__ = "0.1.0"
