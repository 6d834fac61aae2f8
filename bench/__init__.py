"""Benchmarks and the demo: virtual-time simulator, namespace lab, core speed, status queue,
``mcast demo``. Each benchmark prints JSON. The engine never imports this package."""
