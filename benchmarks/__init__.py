"""Benchmarks of the platform against plain baselines; ``make bench`` runs them all."""
