"""Benchmarks run by ``python -m cdhpc.bench NAME``: one module per name with ``run(argv) -> dict``."""
