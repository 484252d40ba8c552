"""Benchmarks on the real path; ``python -m bench --help``."""
