"""The prompt texts of an experiment: read from a file or generated, deterministically."""

from __future__ import annotations

import random
from pathlib import Path

from lem_ray.assets import word_list
from lem_ray.config.prompts import FilePrompts, LengthDistribution, SyntheticPrompts
from lem_ray.errors import ConfigError


def synthetic_lengths(dist: LengthDistribution, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    draw = {
        "fixed": lambda: dist.mean,
        "uniform": lambda: rng.uniform(dist.min, dist.max),
        "normal": lambda: rng.gauss(dist.mean, dist.std),
        "lognormal": lambda: rng.lognormvariate(*_lognormal_params(dist.mean, dist.std)),
    }[dist.distribution]
    return [min(dist.max, max(dist.min, round(draw()))) for _ in range(count)]


def _lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """mu, sigma of the underlying normal, so the lognormal has this mean and std."""
    import math

    sigma2 = math.log(1 + (std / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def synthetic_prompts(cfg: SyntheticPrompts, default_seed: int) -> list[str]:
    seed = cfg.seed if cfg.seed is not None else default_seed
    words = word_list()
    rng = random.Random(f"{seed}:words")
    return [
        " ".join(rng.choice(words) for _ in range(n))
        for n in synthetic_lengths(cfg.input_len, cfg.count, seed)
    ]


def file_prompts(cfg: FilePrompts, path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    readers = {
        ".jsonl": pyarrow.json.read_json,
        ".json": pyarrow.json.read_json,
        ".csv": pyarrow.csv.read_csv,
        ".parquet": pyarrow.parquet.read_table,
    }
    where = "prompts.path"
    if path.suffix.lower() not in readers:
        raise ConfigError(f"unsupported prompt file type {path.suffix!r}; use {sorted(readers)}",
                          path=where)
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}", path=where)
    try:
        table = readers[path.suffix.lower()](str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", path=where) from None
    if cfg.column not in table.column_names:
        raise ConfigError(
            f"column {cfg.column!r} not in {path.name}; columns: {table.column_names}",
            path="prompts.column",
        )
    texts = [str(t) for t in table.column(cfg.column).to_pylist() if t]
    if not texts:
        raise ConfigError(f"no prompts in {path}", path=where)
    return texts[: cfg.count] if cfg.count else texts


def load_prompts(cfg: SyntheticPrompts | FilePrompts, base_dir: Path, seed: int) -> list[str]:
    if isinstance(cfg, SyntheticPrompts):
        return synthetic_prompts(cfg, seed)
    path = Path(cfg.path).expanduser()
    return file_prompts(cfg, path if path.is_absolute() else base_dir / path)
