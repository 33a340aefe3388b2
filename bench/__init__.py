"""Benchmarks. ``python -m bench.http_load`` measures the ticket API under load (see README.md)."""
