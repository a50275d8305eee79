"""Worker: one replica's continuous-batching engine, nano-vllm's scheduler with a CostModel in place of
the model runner.

Each iteration: running decode sequences first (one token each), then prefill chunks of running and
waiting sequences under the token budget (``max_batch_tokens``) and ``max_seqs``. KV blocks are taken
per chunk and per step; when a decode step cannot get its block the most recently admitted sequence
is preempted (recompute). A pure-decode batch that will not change before the next event runs many
iterations in one SimPy event (``decode_run``). Roles: ``agg`` prefills and decodes; ``prefill``
hands each prompt's KV to a decode worker; ``decode`` receives KV (``ready``) and decodes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from profiler.costmodel import Batch
from simulator.block_manager import BlockManager, blocks_for

if TYPE_CHECKING:
    from simulator.deployment import PoolSpec
    from simulator.sim import Simulation


@dataclass
class DecodeRun:
    """A fast-forwarded pure-decode batch: when its steps end, and the KV blocks it holds for them."""

    t0: float
    comp: np.ndarray  # KV tokens of each sequence at the start
    held: np.ndarray  # blocks each sequence holds at the start (step 1 included)
    block_tokens: int
    k: int  # steps it runs
    hold: int = 0  # blocks held beyond ``held`` for steps 2..k
    cum: np.ndarray | None = None  # end of each step, seconds after t0
    steps: np.ndarray | None = None  # each step's seconds
    dec: np.ndarray | None = None  # the sequences it decodes

    def growth(self, steps: int) -> int:
        """Blocks beyond ``held`` that ``steps`` steps use."""
        return int((blocks_for(self.comp + steps, self.block_tokens) - self.held).sum())

    def steps_by(self, now: float) -> int:
        """Steps done once the one in flight at ``now`` has ended."""
        return min(int(np.searchsorted(self.cum, now - self.t0, side="right")) + 1, self.k)


class Worker:
    def __init__(self, sim: Simulation, wid: int, pool_name: str, role: str, pool: PoolSpec, cost,
                 kv_blocks: int, block_tokens: int, fast_forward: bool = True):
        self.sim, self.env, self.S = sim, sim.env, sim.seqs
        self.wid, self.pool_name, self.role = wid, pool_name, role
        self.max_batch_tokens, self.max_seqs = pool.max_batch_tokens, pool.max_seqs
        self.chunk_tokens = pool.prefill_chunk_tokens if pool.chunked_prefill else None
        self.prefill_first = pool.prefill_first and role == "agg"
        # batch waiting (PoolSpec.batch_wait_*): iterations in a row that have held new prompts back, the tokens
        # that end the wait, and whether the iteration being formed holds them back
        self.batch_wait_iters = pool.batch_wait_iters if pool.attention_dp == 1 else 0  # TRT-LLM: not under DP
        self.batch_wait_tokens = pool.batch_wait_tokens_ratio * pool.max_batch_tokens
        self.held_iters = 0
        self.holding = False
        self.cost = cost
        # a new prompt's wait before admission, in multiples of its own prefill run alone (a replayed benchmark's
        # clients partly in step: simulate(admission_wait_prefills=...); agg workers)
        self.admit_wait = sim.admission_wait_prefills if role == "agg" else 0.0
        self.not_before: dict[int, float] = {}  # waiting request -> time from which it may be admitted
        self.B = block_tokens
        self.kv = BlockManager(kv_blocks, block_tokens)
        self.cache = None  # PrefixCache (simulator/kv.py), set when requests carry hash chains
        self.fast_forward = fast_forward
        self.waiting: deque[int] = deque()  # to prefill (new, or preempted: recompute)
        self.ready: deque[int] = deque()  # decode role: KV arrived, blocks held, to join the batch
        self.reserving: deque[int] = deque()  # decode role: routed here, waiting for blocks to receive KV
        self.running = np.empty(0, np.int64)  # admission order
        self.load = 0  # outstanding requests routed here
        self.wake = None  # the event the worker waits on while idle or fast-forwarding
        self.run: DecodeRun | None = None  # the fast-forwarded decode run in flight
        self.busy_s = 0.0
        self.step_start_s = 0.0  # when the iteration in flight (or the last one) began
        self.iterations = 0
        self.peak_running = 0  # most sequences running at once (max_seqs binds when it reaches it)
        self.series: list[tuple] = []  # (time_s, batch_size, queue_len, kv_blocks_used, iterations)
        self.proc = self.env.process(self.loop())

    # ---- inputs ------------------------------------------------------------------------------
    def add(self, r: int) -> None:
        """A routed request to prefill here."""
        if self.admit_wait and len(self.running):  # an idle engine takes it at once
            wait_s = self.admit_wait * self.cost.iteration_s(Batch.of(prefill=[(int(self.S.isl[r]), 0)]))
            self.not_before[r] = self.env.now + wait_s
            self.env.timeout(wait_s).callbacks.append(lambda _ev: self.notify())  # cut a decode run short then
            self.waiting.append(r)
            return  # nothing to do before then
        self.waiting.append(r)
        self.notify()

    def add_ready(self, r: int) -> None:
        """Decode role: request ``r``'s KV has arrived."""
        self.ready.append(r)
        self.notify()

    def reserve(self, r: int) -> None:
        """Decode role: hold blocks for ``r``'s prompt KV, then the transfer may start."""
        self.reserving.append(r)
        self.try_reserve()

    def try_reserve(self) -> None:
        S, kv, run = self.S, self.kv, self.run
        settled = False
        while self.reserving:
            r = self.reserving[0]
            need = int(blocks_for(S.target[r], self.B))  # the prompt (and tokens streamed before a fault)
            if need > kv.free and run is not None and not settled:
                # a decode run holds blocks for steps still to come: stepping would not have taken them yet
                used = run.growth(run.steps_by(self.env.now))
                kv.deallocate(run.hold - used)
                run.hold, settled = used, True
            if need > kv.free:
                break
            self.reserving.popleft()
            if self.cache is not None:  # prompt KV this worker holds need not move
                self.cache.match(r, tiers=False)
                self.cache.acquire(r, transfer=True)
            kv.allocate(need)
            S.blocks[r] = need
            self.sim.start_transfer(r)
        if settled:  # hold the rest of the run again, or end it after the step in flight
            rest = run.growth(run.k) - run.hold
            if rest <= kv.free:
                kv.allocate(rest, evict=False)
                run.hold += rest
            else:
                self.notify()

    def notify(self) -> None:
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    # ---- the engine loop ---------------------------------------------------------------------
    def loop(self):
        env = self.env
        while True:
            dec, pf, chunks = self.schedule()
            if len(self.running) > self.peak_running:
                self.peak_running = len(self.running)
            if not len(dec) and not pf:
                # every running sequence is stuck on blocks that others hold (running ones, or ready ones waiting
                # for a seat): free the latest one's, or nothing would ever move
                if len(self.running) > 1 or (len(self.running) and self.ready):
                    self.preempt(int(self.running[-1]))
                    continue
                if self.ready and len(self.running) < self.max_seqs:  # a preemption left room for a ready one
                    continue
                if self.reserving:  # blocks a preemption freed may let a transfer in
                    self.try_reserve()
                if self.not_before and self.waiting:  # idle: an idle engine takes it at once
                    self.not_before.clear()
                    continue
                self.wake = env.event()
                yield self.wake
                self.wake = None
                continue
            row = (env.now, len(dec) + len(pf), len(self.waiting) + len(self.ready), self.kv.used, self.iterations)
            self.step_start_s = env.now  # a death mid-iteration throws the work since then away (faults.py)
            # a batch that the next schedule() would change (a preemption left room for a ready sequence) steps once
            if not pf and self.fast_forward and not (self.ready and len(self.running) < self.max_seqs):
                cap = self.batch_wait_iters - self.held_iters if self.holding else None
                if (yield from self.decode_run(dec, cap)):
                    self.retire()
            else:
                yield from self.step(dec, pf, chunks)
                self.retire()
            self.held_iters = self.held_iters + self.iterations - row[4] if self.holding else 0
            self.series.append((*row[:4], self.iterations - row[4]))

    def schedule(self) -> tuple[np.ndarray, list[int], list[int]]:
        """This iteration's batch: decode sequences, prefill sequences and their chunk sizes."""
        S, kv, B = self.S, self.kv, self.B
        self.holding = False
        room = min(len(self.ready), self.max_seqs - len(self.running))
        if room > 0:
            joining = [self.ready.popleft() for _ in range(room)]
            self.running = np.concatenate([self.running, np.asarray(joining, np.int64)])
        if self.prefill_first:  # prompts waiting or part-done run alone; the decodes wait for them
            run = self.running
            pf, chunks = self._prefills(run[S.computed[run] < S.target[run]].tolist(), self.max_batch_tokens, 0)
            if pf:
                return np.empty(0, np.int64), pf, chunks
        if not len(self.running):  # nothing running: only prompts to admit
            return self.running, *self._prefills((), self.max_batch_tokens, 0)
        while True:  # decode sequences first; a running sequence holds exactly blocks_for(computed) blocks
            run = self.running
            comp = S.computed[run]
            is_dec = comp >= S.target[run]
            n_dec = int(np.count_nonzero(is_dec))
            if n_dec == len(run):
                dec, pf_run = run, ()
            else:
                dec, comp = run[is_dec], comp[is_dec]
                pf_run = run[~is_dec].tolist()
            need = comp % B == 0  # the step's token starts a new block
            total = int(np.count_nonzero(need))
            if total <= kv.free:
                break
            self.preempt(int(run[-1]))
        kv.allocate(total)
        if total:
            S.blocks[dec] += need
        self.holding = bool(n_dec and self.waiting and self._batch_waits(n_dec, self.max_batch_tokens - n_dec))
        pf, chunks = self._prefills(pf_run, self.max_batch_tokens - n_dec, n_dec, admit=not self.holding)
        return dec, pf, chunks

    def _batch_waits(self, n_dec: int, budget: int) -> bool:
        """Batch waiting holds the waiting prompts back this iteration: it has held them fewer than
        ``batch_wait_iters`` iterations in a row, and the prompts that would join (whole, in order, within the
        budget and the seats) and the decodes make fewer tokens than ``batch_wait_tokens``."""
        if self.held_iters >= self.batch_wait_iters:
            return False
        S = self.S
        tokens, seats = 0, self.max_seqs - len(self.running)
        for r in self.waiting:
            rest = int(S.target[r] - S.computed[r])
            if seats <= 0 or tokens + rest > budget:
                break
            tokens += rest
            seats -= 1
        return tokens + n_dec < self.batch_wait_tokens

    def _prefills(self, pf_run, budget: int, n_dec: int, admit: bool = True) -> tuple[list[int], list[int]]:
        """Prefill chunks under ``budget``: running prompts' next chunks, then (``admit``) waiting prompts in
        order."""
        S = self.S
        pf: list[int] = []
        chunks: list[int] = []
        for r in pf_run:
            c = self._chunk(r, budget, empty=not n_dec and not pf)
            if c > 0:
                budget -= c
                pf.append(r)
                chunks.append(c)
        n_running = len(self.running)
        while admit and self.waiting and n_running < self.max_seqs and budget > 0:
            r = self.waiting[0]
            if self.not_before and self.not_before.get(r, 0.0) > self.env.now:
                break
            c = self._chunk(r, budget, empty=not n_dec and not pf, shrink=False)
            if c <= 0:
                break
            self.waiting.popleft()
            self.not_before.pop(r, None)
            self.running = np.append(self.running, r)
            n_running += 1
            if np.isnan(S.prefill_start_s[r]):
                S.prefill_start_s[r] = self.env.now
            budget -= c
            pf.append(r)
            chunks.append(c)
        return pf, chunks

    def _chunk(self, r: int, budget: int, empty: bool, shrink: bool = True) -> int:
        """Prompt tokens of ``r`` to compute now, with their blocks allocated; 0 if it must wait."""
        S, kv, B = self.S, self.kv, self.B
        comp, held = int(S.computed[r]), int(S.blocks[r])
        hit = self.cache.match(r) if self.cache is not None and not held else 0  # prompt tokens cached here
        comp += hit
        rest = int(S.target[r]) - comp
        if self.chunk_tokens is None:  # whole prompts only; an oversized one runs alone
            c = rest if rest <= budget or empty else 0
        else:
            c = min(rest, self.chunk_tokens, budget)
        if c <= 0:
            return 0
        need = int(blocks_for(comp + c, B)) - held
        if need > kv.free:
            if not shrink or self.chunk_tokens is None:
                return 0
            c = (held + kv.free) * B - comp
            if c <= 0:
                return 0
            need = kv.free
        if hit:
            self.cache.acquire(r)
            S.computed[r] = comp
        kv.allocate(need)
        S.blocks[r] = held + need
        return c

    def preempt(self, r: int) -> None:
        """Recompute preemption: free ``r``'s KV, send it to the front of the queue."""
        S = self.S
        self.kv.deallocate(S.blocks[r])
        if self.cache is not None:
            self.cache.release(r, int(S.computed[r]))
        S.blocks[r] = 0
        S.computed[r] = 0
        S.target[r] = S.isl[r] + S.generated[r]
        S.preemptions[r] += 1
        self.running = self.running[self.running != r]
        self.waiting.appendleft(r)

    # ---- running iterations ------------------------------------------------------------------
    def step(self, dec: np.ndarray, pf: list[int], chunks: list[int]):
        """One iteration of a batch with prefill chunks (or with fast-forward off)."""
        S = self.S
        pf_idx = np.asarray(pf, np.int64)
        c = np.asarray(chunks, np.int64)
        cached = S.computed[pf_idx]
        last = cached + c >= S.target[pf_idx]
        batch = Batch(c, cached, S.computed[dec] + 1, int(last.sum()))
        dt = self.cost.iteration_s(batch)
        if self.cache is not None:  # prefix KV recalled from a lower tier for this batch
            dt += self.cache.take_recall_s()
        yield self.env.timeout(dt)
        self.busy_s += dt
        self.iterations += 1
        now = self.env.now
        if len(dec):
            S.computed[dec] += 1
        S.computed[pf_idx] += c
        done_pf = pf_idx[last]
        unset = done_pf[np.isnan(S.prefill_end_s[done_pf])]
        S.prefill_end_s[unset] = now
        if self.cache is not None and len(done_pf):  # their prompt blocks may be shared from now on
            self.cache.computed(done_pf)
        self.emit(np.concatenate([dec, done_pf]), now)

    def emit(self, idx: np.ndarray, now: float) -> None:
        """Sequences ``idx`` each put out one token at ``now``."""
        S = self.S
        S.generated[idx] += 1
        g = S.generated[idx]
        later = idx[g > 1]
        if len(later):  # one sample per distinct gap: most sequences were in the previous iteration
            gaps = now - S.last_token_s[later]
            same = gaps == gaps[0]
            n_same = int(np.count_nonzero(same))
            self.sim.itl.add(now, gaps[:1], n_same)
            if n_same < len(gaps):
                self.sim.itl.add(now, gaps[~same], 1.0)
        first = idx[g == 1]
        if self.role == "prefill":  # the user sees the first token when the KV reaches a decode worker
            first = first[S.osl[first] == 1]
        S.first_token_s[first] = now
        S.last_token_s[idx] = now

    def decode_run(self, dec: np.ndarray, cap: int | None = None):
        """Fast-forward: k pure-decode steps in one event, k = steps to the first completion, capped by the
        free KV blocks and by ``cap`` (the iterations batch waiting may still hold prompts back); an arrival
        (``notify``) cuts it short after the step in flight. Returns whether a sequence finished."""
        S, kv, env, B = self.S, self.kv, self.env, self.B
        n = len(dec)
        comp = S.computed[dec]
        gen = S.generated[dec]
        k_done = int((S.osl[dec] - gen).min())
        k = min(k_done, cap) if cap else k_done
        run = DecodeRun(env.now, comp, S.blocks[dec], B, k)
        # Hold an upper bound on the blocks steps 2..k need (each sequence at most ceil((k-1)/B) more) and settle
        # the exact count when the run ends; where the bound does not fit, find the most steps that do.
        hold = n * -(-(k - 1) // B)
        if hold > kv.free:
            if run.growth(k) > kv.free:
                lo, hi = 1, k
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if run.growth(mid) <= kv.free:
                        lo = mid
                    else:
                        hi = mid - 1
                run.k = k = lo
            hold = run.growth(k)
        kv.allocate(hold, evict=False)  # cached blocks in the way go step by step (PrefixCache.trim)
        run.hold = hold
        steps = self.cost.decode_steps_s(n, int(comp.sum()) + n, k, int(comp.max()) + 1)
        run.cum = cum = np.cumsum(steps)
        run.steps, run.dec = steps, dec
        t0 = run.t0
        if k == 1:
            yield env.timeout(cum[0])
        else:
            self.run = run
            wake = self.wake = env.event()
            timer = env.timeout(cum[-1])
            timer.callbacks.append(lambda _ev: wake.triggered or wake.succeed())
            yield wake
            self.wake = None
            if not timer.processed:  # woken: finish the step in flight, then re-form the batch
                run.k = run.steps_by(env.now)
                wait = t0 + cum[run.k - 1] - env.now
                if wait > 0:
                    yield env.timeout(wait)
            self.run = None
        self.settle_run(run, run.k)
        return run.k == k_done  # a sequence has finished

    def settle_run(self, run: DecodeRun, j: int) -> None:
        """``run`` ends after ``j`` steps (all of them, or fewer when cut short by an arrival or, faults.py and
        scaling.py, a death or a migration): the blocks it held for later steps go back, then its tokens count."""
        blocks = blocks_for(run.comp + j, self.B)
        self.kv.deallocate(run.hold - int((blocks - run.held).sum()))
        if self.cache is not None:  # the cached blocks its last step needed go now, before anything is freed
            self.cache.trim()
        self.S.blocks[run.dec] = blocks
        if j:
            self.advance_run(run, j)

    def advance_run(self, run: DecodeRun, j: int) -> None:
        """The first ``j`` steps of ``run`` are done: tokens, counters, ITL samples (a worker death cuts a run
        here too, faults.py)."""
        S, dec, cum, steps, t0 = self.S, run.dec, run.cum, run.steps, run.t0
        n = len(dec)
        S.computed[dec] = run.comp + j
        S.generated[dec] += j
        self.busy_s += float(cum[j - 1])
        self.iterations += j
        last = S.last_token_s[dec]
        joined = last != t0  # sequences that were not in the previous step: their first gap is their own
        n_joined = int(np.count_nonzero(joined))
        if not n_joined:
            self.sim.itl.add(t0 + cum[:j], steps[:j], n)
        else:
            self.sim.itl.add(t0 + cum[0], t0 + cum[0] - last[joined], 1.0)
            if n_joined < n:
                self.sim.itl.add(t0 + cum[0], steps[:1], n - n_joined)
            if j > 1:
                self.sim.itl.add(t0 + cum[1:j], steps[1:j], n)
        S.last_token_s[dec] = t0 + cum[j - 1]

    def retire(self) -> None:
        """Finished sequences leave (and free their KV); a prefill worker hands finished prompts on."""
        S = self.S
        run = self.running
        g = S.generated[run]
        done = g >= S.osl[run]
        leave = done | (g >= 1) if self.role == "prefill" else done
        if not leave.any():
            return
        self.running = run[~leave]
        fin = run[done]
        if len(fin):
            self.kv.deallocate(S.blocks[fin].sum())
            if self.cache is not None:
                for r in fin.tolist():
                    self.cache.release(r, int(S.computed[r]))
            S.blocks[fin] = 0
            self.load -= len(fin)
            self.sim.finish(fin)
        if self.role == "prefill":
            for r in run[leave & ~done].tolist():
                S.xfer_blocks[r] = S.blocks[r]
                S.blocks[r] = 0
                self.load -= 1
                self.sim.handoff(r, self)
        if self.reserving:
            self.try_reserve()

    def release_xfer(self, r: int) -> None:
        """Prefill role: ``r``'s KV has left; its blocks are free again."""
        self.kv.deallocate(self.S.xfer_blocks[r])
        if self.cache is not None:
            self.cache.release(r, int(self.S.isl[r]))
        self.S.xfer_blocks[r] = 0
        self.notify()
