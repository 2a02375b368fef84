"""Benchmarks: flo-server against redis-server and a bare uvloop ceiling, in one run.

``python -m bench --quick`` for a look, ``make bench`` for the full grid; see
``bench/README.md``. Nothing here is pass/fail: the report states which
targets are met.
"""
