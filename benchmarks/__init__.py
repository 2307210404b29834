"""Benchmarks of the converter and the optimization loop; results in BENCHMARKS.md."""
