"""Operations on a running simulation: the fault injector, the scaler and the autoscaler attached when the
deployment asks for them, and the record of a run with faults (outcomes, retries, extra latency against the same
run without them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from profiler.errors import InputError
from simulator.fault_plan import fault_plan, is_scaling
from simulator.faults import Faults

if TYPE_CHECKING:
    from simulator.sim import Simulation


def attach_ops(sim: Simulation):
    """The simulation's fault and scaling controller, or None when the deployment asks for neither (then the
    simulation is the fault-free one, event for event)."""
    from simulator.autoscale import attach_autoscaler
    from simulator.scaling import Scaler

    plan = fault_plan(sim.dep.extra)
    auto = sim.dep.extra.get("autoscale")
    if plan.empty and not auto:
        return None
    sim.serving = {name: list(ws) for name, ws in sim.pools.items()}
    sim.scaler = Scaler(sim)
    ops = Faults(sim, plan)
    for d in plan.drains:
        w = ops.worker(d.worker, "drains")
        if d.migrate and w.role != "decode":
            raise InputError(f"only decode replicas migrate KV; {d.worker[0]}[{d.worker[1]}] drains by finishing",
                             where="faults")
        sim.env.timeout(d.at_s).callbacks.append(lambda _ev, w=w, m=d.migrate: sim.scaler.drain(w, m))
    for u in plan.scale_ups:
        if u.pool not in sim.pools:
            raise InputError(f"the deployment has no {u.pool} pool (it has {', '.join(sim.pools)})", where="faults")
        for _ in range(u.count):
            sim.env.timeout(u.at_s).callbacks.append(lambda _ev, u=u: sim.scaler.add(u.pool, u.startup_s))
    ops.autoscaler = attach_autoscaler(sim, auto) if auto else None
    return ops


def annotate(sim: Simulation, result, baseline) -> None:
    """Outcomes (``retried_ok``), each request's retries and fault, and the run's fault and scaling record in
    ``result.extra["ops"]``. ``baseline(dep)`` simulates the same workload without the faults: the extra
    latency they caused is measured against it, request by request."""
    ops: Faults = sim.ops
    df = result.requests
    df["retries"] = ops.retries
    df["fault"] = ops.reason
    df.loc[(df["outcome"] == "ok") & (ops.retries > 0), "outcome"] = "retried_ok"
    rec: dict = {"log": ops.log, "incidents": ops.incidents, "wasted_gpu_s": ops.wasted_gpu_s,
                 "retries": int(ops.retries.sum()),
                 "scaling": sim.scaler.actions, "gpu_hours": sim.scaler.gpu_hours(result.end_s),
                 "replicas_at_start": {name: p.replicas for name, p in sim.dep.pools.items()}}
    if ops.autoscaler is not None:
        rec["autoscale"] = ops.autoscaler.record()
    faulted = any(i["fault"] != "restart" for i in ops.incidents)
    if faulted:
        extra = {k: v for k, v in sim.dep.extra.items() if k not in ("faults", "retry")}
        scale = [f for f in sim.dep.extra.get("faults") or [] if is_scaling(f)]
        if scale:
            extra["faults"] = scale
        from dataclasses import replace

        base = baseline(replace(sim.dep, extra=extra)).requests
        df["fault_extra_s"] = df["e2e_s"] - base["e2e_s"].to_numpy()
    result.extra["ops"] = rec
