"""Benchmarks of the gateway against same-run baselines: ``python -m bench``, see
docs/performance.md."""
