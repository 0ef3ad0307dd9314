"""Benchmarks: ``make bench`` (``python -m bench.run``) measures and writes docs/PERFORMANCE.md."""
