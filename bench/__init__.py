"""Benchmarks behind ``make bench``: the performance targets of DESIGN §5, measured on a real ``deploybot serve``.

Each scenario starts its own server with real local agents in a temporary directory, drives it through the JSON
API, and returns Figures; ``python -m bench`` prints them in one table and writes ``bench/results.json``.
Nothing here imports from tests/: the benchmark must keep working whatever the test helpers become.
"""
