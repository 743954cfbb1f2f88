"""Mean, spread and a bootstrap confidence interval of a handful of cycles.

A campaign has few cycles per experiment (3 to 10), too few to trust a normal approximation;
the percentile bootstrap makes no assumption on the distribution and is reproducible with a
fixed seed, so a report read twice gives the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

RESAMPLES = 1000
CI_LEVEL = 0.95
SEED = 0
STATS = ("mean", "std", "n", "ci_low", "ci_high")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """Percentile interval of the mean; None below two values, where there is no spread to
    resample. Each call starts from `seed` and resamples the sorted values, so an interval
    depends only on the values: not on their order, nor on what was computed before it."""
    data = np.sort(np.asarray(values, dtype=float))
    if data.size < 2:
        return None
    means = np.sort(data[_resample_index(data.size, resamples, seed)].mean(axis=1))
    tail_pct = 100 * (1 - level) / 2
    return _percentile(means, tail_pct), _percentile(means, 100 - tail_pct)


@lru_cache(maxsize=64)
def _resample_index(size: int, resamples: int, seed: int) -> np.ndarray:
    """The resampling depends only on the number of values: drawn once per size, so a report
    of 50,000 runs (150,000 intervals) does not draw it each time."""
    index = np.random.default_rng(seed).integers(0, size, size=(resamples, size))
    index.setflags(write=False)
    return index


def _percentile(ordered: np.ndarray, pct: float) -> float:
    """np.percentile's default (linear) method on sorted values, the same figure bit for bit
    without its per-call overhead, which dominated a large report."""
    position = (ordered.size - 1) * (pct / 100)
    below = int(np.floor(position))
    above = min(below + 1, ordered.size - 1)
    gamma = position - below
    a, b = ordered[below], ordered[above]
    diff = b - a
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


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
