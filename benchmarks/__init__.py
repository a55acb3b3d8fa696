"""Benchmarks, installed as ``fastmine_benchmarks`` (``fastmine bench`` runs bench_step)."""
