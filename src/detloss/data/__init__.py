"""Data: synthetic batches for demos, tests and benchmarks."""
