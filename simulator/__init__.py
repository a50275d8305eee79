"""SimPy model of a serving deployment: workers, router, KV link, metrics."""

from simulator.metrics import SLO, SimResult, summary_table
from simulator.sim import simulate

__all__ = ["SLO", "SimResult", "simulate", "summary_table"]
