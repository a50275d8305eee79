"""Workload loaders (real formats + synthetic) and small bundled sample traces."""

from traces.loader import FORMATS, load_trace
from traces.workload import Workload

__all__ = ["FORMATS", "Workload", "load_trace"]
