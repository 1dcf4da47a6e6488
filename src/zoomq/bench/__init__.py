"""Benchmarks that print measured figures and write them to docs/benchmarks.md."""
