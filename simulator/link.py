"""KV link: transfers in flight share its bandwidth equally (processor sharing); each transfer then
pays the link's latency. Finish times are recomputed whenever a transfer starts or ends."""

from __future__ import annotations

from collections.abc import Callable

import simpy

EPS_S = 1e-9  # transfers within a nanosecond of finishing finish together


class KVLink:
    def __init__(self, env: simpy.Environment, bandwidth_bytes_s: float, latency_s: float):
        self.env = env
        self.bandwidth_bytes_s = bandwidth_bytes_s
        self.latency_s = latency_s
        self.active: dict[int, list] = {}  # transfer id -> [bytes left, on_done]; insertion order is deterministic
        self._next_id = 0
        self._t_last = 0.0
        self._generation = 0  # invalidates the wake-up of a superseded schedule
        self.bytes_moved = 0.0

    def send(self, kv_bytes: float, on_done: Callable[[], None]) -> None:
        """Start moving ``kv_bytes``; ``on_done()`` runs when the last byte has arrived."""
        self._advance()
        self.active[self._next_id] = [float(kv_bytes), on_done]
        self._next_id += 1
        self.bytes_moved += kv_bytes
        self._reschedule()

    def set_bandwidth(self, bandwidth_bytes_s: float) -> None:
        """A degraded (or restored) link: transfers in flight go on at the new share."""
        self._advance()
        self.bandwidth_bytes_s = bandwidth_bytes_s
        self._reschedule()

    def clear(self) -> None:
        """The sender died: every transfer in flight is dropped, none completes."""
        self._advance()
        self.active.clear()
        self._reschedule()

    def _advance(self) -> None:
        now = self.env.now
        if self.active:
            share = (now - self._t_last) * self.bandwidth_bytes_s / len(self.active)
            for t in self.active.values():
                t[0] -= share
        self._t_last = now

    def _reschedule(self) -> None:
        self._generation += 1
        if not self.active:
            return
        left = min(t[0] for t in self.active.values())
        delay = max(left, 0.0) * len(self.active) / self.bandwidth_bytes_s
        gen = self._generation
        self.env.timeout(delay).callbacks.append(lambda _ev: self._finish(gen))

    def _finish(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._advance()
        done = [k for k, t in self.active.items() if t[0] <= EPS_S * self.bandwidth_bytes_s]
        if not done:  # float round-off left a sliver: finish the smallest
            done = [min(self.active, key=lambda k: self.active[k][0])]
        for k in done:
            on_done = self.active.pop(k)[1]
            if self.latency_s > 0:
                self.env.timeout(self.latency_s).callbacks.append(lambda _ev, f=on_done: f())
            else:
                on_done()
        self._reschedule()
