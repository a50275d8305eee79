"""Engine: one worker's continuous batching, ``step()`` = schedule -> run the model -> sample -> postprocess.

The simulator's worker has the same shape with a CostModel in place of ``Model``. An optional
``pace_s(batch)`` makes each step last at least the duration it predicts (issue 6's paced replay).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from profiler.costmodel import Batch
from runtime.block_manager import BlockManager
from runtime.model import KVCache, Model, StepInput
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.sequence import Sequence


@dataclass
class StepResult:
    tokens: list[tuple[Sequence, int]]  # (sequence, new token) for every sequence that sampled
    batch: Batch  # the step in the simulator's terms
    start_s: float  # time.time() when the step began
    compute_s: float  # the step's own work: prepare, model, sample, postprocess (perf_counter)
    duration_s: float  # whole step, including pacing
    model_s: float = 0.0  # the model forward alone; compute_s - model_s is the engine's own overhead
    cpu_s: float = 0.0  # this thread's CPU time over compute_s: below it when other processes took the core
    # From the end of the previous step to this one's start while work was waiting (None: the engine was idle):
    # the worker's own time between steps (sending tokens, the step log, messages), wall and this thread's CPU.
    gap_s: float | None = None
    gap_cpu_s: float | None = None
    kv: dict[str, torch.Tensor] = field(default_factory=dict)  # rid -> KV of finished prefill-only sequences


class Engine:
    def __init__(self, model: Model, cfg: SchedulerConfig, num_blocks: int, block_tokens: int,
                 pace_s: Callable[[Batch], float] | None = None):
        p = next(model.parameters())
        self.model, self.device = model, p.device
        self.cache = KVCache(model.spec, num_blocks, block_tokens, p.dtype, p.device)
        self.blocks = BlockManager(num_blocks, block_tokens)
        self.scheduler = Scheduler(cfg, self.blocks)
        self.arrived: deque[tuple[Sequence, torch.Tensor]] = deque()  # transferred KV waiting for blocks
        self.pace_s = pace_s
        self.pace_end: float | None = None  # perf_counter() at which the last paced step was due to end (timeline)
        self.last_batch_tokens = 0
        self.busy_end: tuple[float, float] | None = None  # (perf_counter, thread_time) when a step ended with work left

    # ---- requests ------------------------------------------------------------------------------
    def fits(self, tokens: int) -> bool:
        """Whether a sequence of ``tokens`` tokens could ever be cached here."""
        return self.blocks.blocks_for(tokens) <= self.blocks.num_blocks

    def add(self, seq: Sequence) -> None:
        seq.times.setdefault("queued", time.time())
        self.scheduler.waiting.append(seq)

    def add_transferred(self, seq: Sequence, kv: torch.Tensor) -> None:
        """A sequence whose first ``seq.num_cached`` tokens' KV came from a prefill worker."""
        self.arrived.append((seq, kv))

    def abort(self, rid: str) -> bool:
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            if seq.rid == rid:
                seq.finish_reason = "abort"
                self.scheduler.remove(seq)
                return True
        n = len(self.arrived)
        self.arrived = deque(a for a in self.arrived if a[0].rid != rid)
        return len(self.arrived) < n

    def admit(self) -> None:
        """Move transferred sequences into the running batch while blocks and max_seqs allow."""
        while self.arrived and len(self.scheduler.running) < self.scheduler.cfg.max_seqs:
            seq, kv = self.arrived[0]
            cached = seq.num_cached
            seq.num_cached = 0
            if not self.blocks.can_grow(seq, seq.num_tokens):
                seq.num_cached = cached
                break
            self.arrived.popleft()
            self.blocks.grow(seq, seq.num_tokens)
            self.cache.load(self.blocks.slots(seq, 0, cached).to(self.device), kv.to(self.device))
            seq.num_cached = cached
            seq.times["admitted"] = time.time()
            self.scheduler.running.append(seq)

    @property
    def has_work(self) -> bool:
        return len(self.scheduler) > 0 or bool(self.arrived)

    def stats(self) -> dict:
        return {"waiting": len(self.scheduler.waiting) + len(self.arrived), "running": len(self.scheduler.running),
                "kv_blocks_used": self.blocks.used, "kv_blocks_total": self.blocks.num_blocks,
                "block_tokens": self.blocks.block_tokens,
                "batch_tokens": self.last_batch_tokens}

    # ---- one iteration -------------------------------------------------------------------------
    def step(self) -> StepResult | None:
        self.admit()
        chunks = self.scheduler.schedule()
        if not chunks:
            self.busy_end = None
            return None
        start, t0, c0 = time.time(), time.perf_counter(), time.thread_time()
        gap = None if self.busy_end is None else (t0 - self.busy_end[0], c0 - self.busy_end[1])
        step, batch, sampling = self.prepare(chunks)
        t1 = time.perf_counter()
        logits = self.model(step, self.cache)
        model_s = time.perf_counter() - t1
        greedy = logits.argmax(dim=-1).tolist()
        tokens = [(seq, greedy[row] if seq.temperature <= 0 else self.sample(seq, logits[row]))
                  for row, seq in enumerate(sampling)]
        result = StepResult(tokens, batch, start, 0.0, 0.0, model_s)
        if gap is not None:
            result.gap_s, result.gap_cpu_s = gap
        for seq, token in tokens:
            seq.times.setdefault("first_token", time.time())
            seq.append(token)
        for seq, n in chunks:
            seq.times.setdefault("scheduled", start)
            if seq.finish_reason == "prefilled":
                result.kv[seq.rid] = self.cache.read(self.blocks.slots(seq, 0, seq.num_cached + n).to(self.device))
            self.scheduler.postprocess(seq, n)
        result.compute_s = time.perf_counter() - t0
        result.cpu_s = time.thread_time() - c0
        if self.pace_s is not None:  # paced replay: the step lasts as long as the cost model says
            # Back to back with the previous step, it is due where the cost model's timeline says: pace_s after
            # the previous one was due. A step that ended late (a late wake-up, the CPU taken by another process
            # for a while) leaves the timeline behind; the next steps make it up from their slack, each by at
            # most a quarter of its own pace, so that compute slower than the pace shows rather than hiding in
            # one short step. (Dropping the debt instead put every stall of a shared CPU into the live TPOT.)
            pace_s = self.pace_s(batch)
            self.pace_end = (t0 if self.pace_end is None else min(t0, self.pace_end)) + pace_s
            wait_s = max(self.pace_end, t0 + 0.75 * pace_s) - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
            if not self.has_work:  # idle next: the next step starts when its work arrives
                self.pace_end = None
        result.duration_s = time.perf_counter() - t0
        self.last_batch_tokens = batch.tokens
        self.busy_end = (time.perf_counter(), time.thread_time()) if self.has_work else None
        return result

    def prepare(self, chunks: list[tuple[Sequence, int]]) -> tuple[StepInput, Batch, list[Sequence]]:
        """The flat model input of ``chunks`` (decode first), its Batch, and the sequences that sample, in row order."""
        decode = [s for s, _ in chunks if not s.prefilling]
        prefill = [(s, n) for s, n in chunks if s.prefilling]
        bt, dev = self.blocks.block_tokens, self.device
        ids = [s.token_ids[s.num_cached] for s in decode]
        pos, slots, pre, rows, sampling = [], [], [], list(range(len(decode))), list(decode)
        if decode:  # every decode sequence's context slots at once, from a padded block-table matrix
            lens = torch.tensor([s.num_cached + 1 for s in decode])
            width = max(len(s.block_table) for s in decode)
            table = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in decode])
            ctx = torch.arange(int(lens.max()))
            ctx_slots = table[:, ctx // bt] * bt + ctx % bt
            pos.append(lens - 1)
            slots.append(ctx_slots[torch.arange(len(decode)), lens - 1])
        t = len(decode)
        for seq, n in prefill:
            c = seq.num_cached
            s = self.blocks.slots(seq, 0, c + n)
            ids += seq.token_ids[c:c + n]
            pos.append(torch.arange(c, c + n))
            slots.append(s[c:])
            pre.append((t, n, c, s.to(dev)))
            t += n
            if c + n == seq.num_tokens:  # the prompt is done: this chunk samples the next token
                rows.append(t - 1)
                sampling.append(seq)
        step = StepInput(token_ids=torch.tensor(ids, device=dev), positions=torch.cat(pos).to(dev),
                         slots=torch.cat(slots).to(dev), n_decode=len(decode), prefill=pre,
                         logits_rows=torch.tensor(rows, dtype=torch.long, device=dev))
        if decode:
            step.decode_ctx_slots = ctx_slots.to(dev)
            step.decode_mask = (ctx[None, :] < lens[:, None]).to(dev)
        batch = Batch.of(prefill=[(n, s.num_cached) for s, n in prefill],
                         decode_ctx=[s.num_cached + 1 for s in decode])
        batch.prefill_last_chunks = len(sampling) - len(decode)
        return step, batch, sampling

    def sample(self, seq: Sequence, logits: torch.Tensor) -> int:
        if seq.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float().cpu() / seq.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.generator))
