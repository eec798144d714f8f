"""Benchmarks of the library: run one with `python -m bench.bench_NAME`, all with `python -m bench.run_all`.

Results and how to read them: docs/benchmarks.md.
"""
