"""Figures derived from a run's request records. One definition each.

docs/metrics.md says in words what each divides by; keep the two in step. The energy figures
are lem_ray/measure/energy.py's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lem_ray.records import RequestRecord

PERCENTILES = (50, 90, 99)


def _stats(prefix: str, values: Iterable[float | None]) -> dict[str, float | None]:
    data = np.array([v for v in values if v is not None], dtype=float)
    out: dict[str, float | None] = {f"{prefix}_mean": float(data.mean()) if data.size else None}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(data, p)) if data.size else None
    return out


def request_metrics(records: list[RequestRecord], duration_s: float) -> dict[str, Any]:
    """Token counts, throughput over the measured window, and latency percentiles.

    ITL percentiles pool every inter-token gap of every request, as LLMPerf and vLLM's
    benchmarks do; TTFT and e2e are one value per request. A request known only by its mean
    gap (`itl_mean_ms`) counts in `itl_ms_mean` as that many gaps of that size, which keeps
    the mean equal to the pooled one; it gives no percentiles, so where no request has
    per-gap times they are null (percentiles of per-request means would be far narrower).
    """
    output_tokens = sum(r.output_tokens for r in records)
    return {
        "num_requests": len(records),
        "input_tokens": sum(r.input_tokens for r in records),
        "output_tokens": output_tokens,
        "duration_s": duration_s,
        "throughput_tok_s": output_tokens / duration_s if duration_s > 0 else None,
        "requests_per_s": len(records) / duration_s if duration_s > 0 else None,
        **_stats("ttft_ms", (r.ttft_ms for r in records)),
        **_itl_stats(records),
        **_stats("e2e_ms", (r.e2e_ms for r in records)),
    }


def _itl_stats(records: list[RequestRecord]) -> dict[str, float | None]:
    out = _stats("itl_ms", (gap for r in records for gap in r.itl_ms))
    if any(not r.itl_ms and r.itl_mean_ms is not None and r.output_tokens > 1
           for r in records):
        total_ms, gaps = 0.0, 0
        for r in records:
            if r.itl_ms:
                total_ms, gaps = total_ms + sum(r.itl_ms), gaps + len(r.itl_ms)
            elif r.itl_mean_ms is not None and r.output_tokens > 1:
                total_ms += r.itl_mean_ms * (r.output_tokens - 1)
                gaps += r.output_tokens - 1
        out["itl_ms_mean"] = total_ms / gaps
    return out


def request_rows(
    records: list[RequestRecord], window_start_s: float, energies_j: Sequence[float | None]
) -> list[dict[str, Any]]:
    """One row per request; start_s is relative to the measured window's start."""
    rows = []
    for r, energy_j in zip(records, energies_j):
        gaps = np.array(r.itl_ms, dtype=float)
        rows.append(
            {
                "request_index": r.index,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "ttft_ms": r.ttft_ms,
                "itl_ms_mean": float(gaps.mean()) if gaps.size else r.itl_mean_ms,
                "itl_ms_p50": float(np.percentile(gaps, 50)) if gaps.size else None,
                "itl_ms_max": float(gaps.max()) if gaps.size else None,
                "e2e_ms": r.e2e_ms,
                "start_s": r.start_s - window_start_s,
                "energy_j": energy_j,
            }
        )
    return rows
