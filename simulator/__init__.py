"""SimPy model of a serving deployment: workers, router, KV link, metrics."""
