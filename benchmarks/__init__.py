"""osirix-py benchmarks: ``python -m benchmarks`` from the repository root (see README.md)."""
