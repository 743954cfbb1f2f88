"""The prompt texts of an experiment: read from a file or generated, deterministically."""

from __future__ import annotations

import random
from pathlib import Path

from lem_ray.assets import word_list
from lem_ray.config.prompts import FilePrompts, LengthDistribution, SyntheticPrompts
from lem_ray.planning.prompt_files import file_prompts


def synthetic_lengths(dist: LengthDistribution, count: int, seed: int) -> list[int]:
    """`count` prompt lengths in words from the distribution, reproducible by seed."""
    rng = random.Random(seed)
    draw = {
        "fixed": lambda: dist.mean,
        "uniform": lambda: rng.uniform(dist.min, dist.max),
        "normal": lambda: rng.gauss(dist.mean, dist.std),
        "lognormal": lambda: rng.lognormvariate(*_lognormal_params(dist.mean, dist.std)),
    }[dist.distribution]
    # Clamped before rounding: a lognormal draw may overflow to inf, which round() refuses.
    return [round(min(dist.max, max(dist.min, draw()))) for _ in range(count)]


def _lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """mu, sigma of the underlying normal, so the lognormal has this mean and std."""
    import math

    sigma2 = math.log(1 + (std / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def synthetic_prompts(cfg: SyntheticPrompts, default_seed: int) -> list[str]:
    """Random-word prompts of synthetic lengths, reproducible by seed."""
    seed = cfg.seed if cfg.seed is not None else default_seed
    words = word_list()
    rng = random.Random(f"{seed}:words")
    return [
        " ".join(rng.choice(words) for _ in range(n))
        for n in synthetic_lengths(cfg.input_len, cfg.count, seed)
    ]


def load_prompts(cfg: SyntheticPrompts | FilePrompts, base_dir: Path, seed: int) -> list[str]:
    """The experiment's prompts, synthetic or read from a file relative to `base_dir`."""
    if isinstance(cfg, SyntheticPrompts):
        return synthetic_prompts(cfg, seed)
    path = Path(cfg.path).expanduser()
    return file_prompts(cfg, path if path.is_absolute() else base_dir / path)
