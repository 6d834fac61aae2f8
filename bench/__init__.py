"""Benchmarks: virtual-time simulator, namespace lab, peer comparisons. Each prints JSON."""
