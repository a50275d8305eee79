"""The runtime engine's per-iteration cost split: model forward vs the engine's own Python work
(scheduling, building the flat batch, sampling, bookkeeping), for pure-decode batches of several sizes.

    .venv/bin/python bench/runtime_overhead.py [--model tiny] [--ctx 256] [--steps 50]

The simulator models this overhead as a fixed per-iteration cost; this prints what it is here.
One torch thread, as the workers run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from runtime.engine import Engine
from runtime.load import load_model
from runtime.scheduler import SchedulerConfig
from runtime.sequence import Sequence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--ctx", type=int, default=256, help="Prompt tokens of every sequence.")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batches", default="1,8,32,128")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    print(f"{args.model}, context {args.ctx}, {args.steps} decode steps per batch size, medians in ms")
    print(f"{'batch':>6} {'step':>8} {'model':>8} {'overhead':>9} {'overhead/seq':>13} {'(p90 overhead)':>15}")
    for b in (int(x) for x in args.batches.split(",")):
        blocks = b * -(-(args.ctx + args.steps + 2) // 16)
        engine = Engine(model, SchedulerConfig(max_batch_tokens=max(8192, b * args.ctx), max_seqs=b), blocks, 16)
        for i in range(b):
            engine.add(Sequence(f"r{i}", [i % 256] * args.ctx, args.ctx, args.steps + 2))
        engine.step()  # the prefill
        step, mod = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            r = engine.step()
            step.append(time.perf_counter() - t0)
            mod.append(r.model_s)
        over = np.array(step) - np.array(mod)
        print(f"{b:>6} {np.median(step) * 1e3:8.3f} {np.median(mod) * 1e3:8.3f} {np.median(over) * 1e3:9.3f} "
              f"{np.median(over) / b * 1e3:13.4f} {np.percentile(over, 90) * 1e3:15.3f}")


if __name__ == "__main__":
    main()
