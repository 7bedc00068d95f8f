"""Input and output: Kafka, the Delta tables, storage locations and URIs, the job state, the sinks, backfill sources."""
