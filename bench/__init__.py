"""Benchmark harness of doodle minute stats: ``python -m bench.run --help`` (see bench/README.md)."""
