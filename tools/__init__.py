"""Development tooling, never shipped to executors: the frame generator (with ground
truth), the Kafka loader, and the managers of the embedded Kafka broker and the local
Spark cluster. The product package is :mod:`doodlestats`."""
