"""Workload loaders (real formats + synthetic) and small bundled sample traces."""
