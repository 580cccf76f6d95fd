"""Benchmarks. They print tables and save JSON; tests never assert timings."""
