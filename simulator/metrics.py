"""SimResult, SLO and the summary: TTFT/TPOT/ITL/E2E percentiles, SLO attainment, tokens/s (/GPU, /user)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simulator.kv import kv_summary
from simulator.ops_summary import ops_summary
from simulator.stats import finite, stats_ms


@dataclass(frozen=True)
class SLO:
    """Latency targets: ``percentile`` of TTFT and TPOT within target, and ``attainment`` share of requests
    meeting both; or, ``percentile="mean"``, the mean TTFT and TPOT within target (AIConfigurator's question)."""

    ttft_ms: float
    tpot_ms: float
    percentile: float | str = 90
    attainment: float = 0.9

    @property
    def stat(self) -> str:
        """The summary statistic the targets bind: "p90", or "mean"."""
        return stat_of(self.percentile)


def stat_of(percentile: float | str) -> str:
    return "mean" if percentile == "mean" else f"p{percentile:g}"


class ITLSamples:
    """Inter-token gaps as (time, gap, weight): a k-step decode run of batch B adds k gaps of weight B. Kept in
    growing numpy buffers, so that an hour of decoding is a few array copies, not a Python object per token."""

    def __init__(self, capacity: int = 1 << 16):
        self._buf = np.empty((3, capacity))  # rows: time_s, gap_s, weight
        self._n = 0

    def add(self, t, gap_s, weight: float) -> None:
        """``t``: one time or one per gap; ``gap_s``: an array of gaps; ``weight``: tokens each gap stands for."""
        m = len(gap_s)
        if self._n + m > self._buf.shape[1]:
            grown = np.empty((3, max(2 * self._buf.shape[1], self._n + m)))
            grown[:, :self._n] = self._buf[:, :self._n]
            self._buf = grown
        i, self._n = self._n, self._n + m
        self._buf[0, i:self._n] = t
        self._buf[1, i:self._n] = gap_s
        self._buf[2, i:self._n] = weight

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t, gap, w = self._buf[:, :self._n].copy()
        return t, gap, w


@dataclass
class SimResult:
    requests: pd.DataFrame  # one row per request
    # per-worker time series, a row where a batch forms: time_s, worker, pool, batch_size, queue_len,
    # kv_blocks_used, iterations (how many iterations that batch ran: weight batch_size by it for a mean)
    workers: pd.DataFrame
    itl: tuple[np.ndarray, np.ndarray, np.ndarray]  # (time_s, gap_s, weight)
    gpus: int
    utilization: dict[str, float]  # pool -> busy share of its replicas over the run
    iterations: int
    end_s: float
    deployment: str = ""
    slo: SLO | None = None
    extra: dict = field(default_factory=dict)
    peak_seqs: dict[str, int] = field(default_factory=dict)  # pool -> most sequences running at once on a replica
    stopped: dict | None = None  # stopped early as too many had missed: {at_s, ttft_missed, tpot_missed, failed}

    def summary(self, slo: SLO | None = None) -> dict:
        """JSON-ready metrics over the measured requests (closed-loop warm-up left out)."""
        slo = slo or self.slo
        df = self.requests
        m = df[df["measured"]]
        ok = m[~m["outcome"].isin(("failed", "pending"))]
        start = float(m["arrival_s"].min()) if len(m) else 0.0
        end = float(ok["last_token_s"].max()) if len(ok) else start
        duration = max(end - start, 0.0)
        t, gap, w = self.itl
        in_window = (t >= start) & (t <= end)
        out_tokens = float(ok["osl"].sum())
        throughput = out_tokens / duration if duration > 0 else float("nan")
        tpot = ok["tpot_s"].to_numpy()
        s: dict = {
            "deployment": self.deployment,
            "requests": int(len(df)),
            "measured": int(len(m)),
            "completed": int((~df["outcome"].isin(("failed", "pending"))).sum()),
            "failed": int((df["outcome"] == "failed").sum()),
            "preemptions": int(df["preemptions"].sum()),
            "gpus": int(self.gpus),
            "duration_s": finite(duration),
            "ttft_ms": stats_ms(ok["ttft_s"].to_numpy()),
            "tpot_ms": stats_ms(tpot),
            "itl_ms": stats_ms(gap[in_window], w[in_window]),
            "e2e_ms": stats_ms(ok["e2e_s"].to_numpy()),
            "throughput_tok_s": finite(throughput),
            "tok_s_per_gpu": finite(throughput / self.gpus),
            "tok_s_per_user": finite(1.0 / np.nanmean(tpot)) if np.isfinite(tpot).any() else None,
            "utilization": {k: finite(v) for k, v in self.utilization.items()},
            "peak_seqs": dict(self.peak_seqs),
            **kv_summary(self.extra.get("kv"), df["measured"].to_numpy()),
            **ops_summary(self),
            "slo": None,
            "slo_attainment": None,
            "slo_met": None,
        }
        if self.stopped is not None:
            s["stopped_early"] = {**self.stopped, "at_s": finite(self.stopped["at_s"]),
                                  "unfinished": int((df["outcome"] == "pending").sum())}
        if slo is not None and len(m):
            ttft_ok = (m["ttft_s"] * 1e3 <= slo.ttft_ms).to_numpy()
            tpot_ok = (m["tpot_s"].isna() | (m["tpot_s"] * 1e3 <= slo.tpot_ms)).to_numpy()
            good = ttft_ok & tpot_ok & (m["outcome"] != "failed").to_numpy()
            attainment = float(good.mean())
            ttft_s, finite_tpot = m["ttft_s"].fillna(np.inf), m["tpot_s"].dropna()  # failed: an infinite TTFT
            mean = slo.stat == "mean"
            with np.errstate(invalid="ignore"):  # inf - inf is nan
                p_ttft = float(ttft_s.mean() if mean else np.percentile(ttft_s, slo.percentile)) * 1e3
            p_ttft = np.inf if np.isnan(p_ttft) else p_ttft
            p_tpot = 0.0 if not len(finite_tpot) else float(
                finite_tpot.mean() if mean else np.percentile(finite_tpot, slo.percentile)) * 1e3
            s["slo"] = {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "percentile": slo.percentile,
                        "attainment": slo.attainment}
            s["slo_attainment"] = attainment
            s["slo_met"] = bool(p_ttft <= slo.ttft_ms and p_tpot <= slo.tpot_ms  # means: no share is asked
                                and (mean or attainment >= slo.attainment))
        return s


def summary_table(summary: dict) -> str:
    """The summary as a few aligned lines for the terminal."""

    def f(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    lines = []
    if summary.get("deployment"):
        lines.append(summary["deployment"])
    lines.append(f"requests {summary['requests']}  completed {summary['completed']}  failed {summary['failed']}  "
                 f"preemptions {summary['preemptions']}  gpus {summary['gpus']}  "
                 f"duration {f(summary['duration_s'], '.2f')} s")
    lines.append(f"{'ms':<6}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}")
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        st = summary[key]
        lines.append(f"{key[:-3].upper():<6}" + "".join(f"{f(st[k]):>10}" for k in ("mean", "p50", "p90", "p99")))
    lines.append(f"throughput {f(summary['throughput_tok_s'])} tok/s  per GPU {f(summary['tok_s_per_gpu'])}  "
                 f"per user {f(summary['tok_s_per_user'])} tok/s")
    if summary.get("utilization"):
        lines.append("utilization " + "  ".join(f"{k} {f(v * 100 if v is not None else None, '.0f')}%"
                                                for k, v in summary["utilization"].items()))
    if summary.get("kv"):
        kv = summary["kv"]
        tiers = "".join(f"  {name} {t['hits']} hits, {t['recalled_bytes'] / 1e9:.1f} GB recalled"
                        for name, t in kv["tiers"].items())
        lines.append(f"prefix cache hit {summary['prefix_hit_rate'] * 100:.1f}% of prompt tokens  "
                     f"saved {kv['prefill_tokens_saved']:,} prefill tokens  stale routes {kv['stale_routes']}{tiers}")
    if summary.get("slo"):
        slo = summary["slo"]
        lines.append(f"SLO {stat_of(slo['percentile'])} TTFT <= {slo['ttft_ms']:g} ms, TPOT <= {slo['tpot_ms']:g} ms: "
                     f"attainment {summary['slo_attainment'] * 100:.1f}% (need {slo['attainment'] * 100:.0f}%) -> "
                     f"{'met' if summary['slo_met'] else 'NOT met'}")
    return "\n".join(lines)
