"""Sequences: every request's state and timestamps as a struct of numpy arrays, indexed by request index.

A sequence's life: it waits, is prefilled (in chunks) up to ``target`` tokens of KV, which emits a
token, then decodes one token per step until ``generated == osl``. Preemption (recompute) frees its KV
and sets ``target = isl + generated``: the prompt plus what it already said is prefilled again.
Invariant of a decoding sequence: ``computed == isl + generated - 1`` (the last token is fed next step).
"""

from __future__ import annotations

import numpy as np

PENDING, OK, FAILED = 0, 1, 2
OUTCOMES = {PENDING: "pending", OK: "ok", FAILED: "failed"}


class Sequences:
    def __init__(self, isl: np.ndarray, osl: np.ndarray, arrival_s: np.ndarray):
        n = len(isl)
        self.n = n
        self.isl = np.asarray(isl, dtype=np.int64).copy()
        self.osl = np.asarray(osl, dtype=np.int64).copy()
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64).copy()
        # engine state (on the worker that holds the sequence now)
        self.target = self.isl.copy()  # tokens of KV to compute before the next token comes out
        self.computed = np.zeros(n, np.int64)  # tokens of KV held
        self.generated = np.zeros(n, np.int64)  # output tokens emitted
        self.blocks = np.zeros(n, np.int64)  # KV blocks held
        self.xfer_blocks = np.zeros(n, np.int64)  # disagg: blocks the prefill worker keeps until the KV has moved
        # records
        nan = np.full(n, np.nan)
        self.prefill_start_s, self.prefill_end_s = nan.copy(), nan.copy()
        self.transfer_start_s, self.transfer_end_s = nan.copy(), nan.copy()
        self.first_token_s, self.last_token_s = nan.copy(), nan.copy()
        self.preemptions = np.zeros(n, np.int64)
        self.prefill_worker = np.full(n, -1, np.int64)
        self.decode_worker = np.full(n, -1, np.int64)
        self.outcome = np.zeros(n, np.int8)
        self.fail_reason = np.full(n, "", dtype=object)
        self.measured = np.ones(n, bool)
