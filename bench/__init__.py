"""Benchmarks: scripts that print and save figures (see README, Performance)."""
