"""Throughput benchmark of Logloom's filter and sink stages against hand-written loops.

Run it with ``python -m benchmarks`` (see ``benchmarks/README.md``).
"""
