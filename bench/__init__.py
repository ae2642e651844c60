"""Benchmarks: `python -m bench` (or `make bench`) prints one table. Targets live beside each row."""
