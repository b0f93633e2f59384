"""Benchmarks: `make bench` runs every bench/bench_*.py module (`python -m bench.bench_x`).

Timing lives here, never in tests. Each module starts what it measures (see tests/support.py's
ServerThread) on loopback, runs bounded loops and prints a small table.
"""
