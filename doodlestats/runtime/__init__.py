"""The runtime of the jobs: configuration, the Spark session, logging, the command-line helper, the live runner."""
