"""Mean, spread and a bootstrap confidence interval of a handful of cycles.

A campaign has few cycles per experiment (3 to 10), too few to trust a normal approximation;
the percentile bootstrap makes no assumption on the distribution and is reproducible with a
fixed seed, so a report read twice gives the same interval.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 1000
CI_LEVEL = 0.95
SEED = 0
STATS = ("mean", "std", "n", "ci_low", "ci_high")


def bootstrap_ci(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = CI_LEVEL, seed: int = SEED
) -> tuple[float, float] | None:
    """Percentile interval of the mean; None below two values, where there is no spread to
    resample. Each call starts from `seed` and resamples the sorted values, so an interval
    depends only on the values: not on their order, nor on what was computed before it."""
    data = np.sort(np.asarray(values, dtype=float))
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail_pct = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail_pct, 100 - tail_pct])
    return float(low), float(high)


def describe(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """mean, std (sample, ddof=1), n (non-null values) and the CI bounds; nulls are skipped."""
    data = np.array([v for v in values if v is not None], dtype=float)
    ci = bootstrap_ci(data)
    return {
        "mean": float(data.mean()) if data.size else None,
        "std": float(data.std(ddof=1)) if data.size >= 2 else None,
        "n": int(data.size),
        "ci_low": ci[0] if ci else None,
        "ci_high": ci[1] if ci else None,
    }
