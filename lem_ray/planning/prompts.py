"""The prompt texts of an experiment: read from a file or generated, deterministically."""

from __future__ import annotations

import random
from pathlib import Path

from lem_ray.assets import word_list
from lem_ray.config.limits import MAX_PROMPTS
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
    # Clamped before rounding: a lognormal draw may overflow to inf, which round() refuses.
    return [round(min(dist.max, max(dist.min, draw()))) for _ in range(count)]


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
    try:
        found = path.is_file()
    except OSError as exc:
        raise ConfigError(f"cannot use {str(path)[:200]}: {exc.strerror}", path=where) from None
    if not found:
        raise ConfigError(f"prompt file not found: {path}", path=where)
    if path.suffix.lower() != ".parquet":
        _check_utf8(path, where)
    try:
        table = readers[path.suffix.lower()](str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read {path}: {first}", path=where) from None
    if cfg.column not in table.column_names:
        raise ConfigError(
            f"column {cfg.column!r} not in {path.name}; columns: {table.column_names}",
            path="prompts.column",
        )
    column = table.column(cfg.column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ConfigError(f"column {cfg.column!r} of {path.name} holds {column.type}, not text",
                          path="prompts.column")
    texts = [t for t in column.to_pylist() if t]
    if not texts:
        raise ConfigError(f"no prompts in {path}", path=where)
    if cfg.count and len(texts) < cfg.count:
        raise ConfigError(f"{path.name} has {len(texts)} non-empty prompts, fewer than "
                          f"prompts.count ({cfg.count})", path="prompts.count")
    if len(texts) > MAX_PROMPTS and not cfg.count:
        raise ConfigError(f"{path.name} has {len(texts)} prompts; an experiment may have at most "
                          f"{MAX_PROMPTS}: set prompts.count", path="prompts.count")
    return texts[: cfg.count] if cfg.count else texts


def _check_utf8(path: Path, where: str) -> None:
    """Arrow reads other encodings as bytes (b'caf\xe9'): refuse them with the offending byte."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path.name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8", path=where,
        ) from None


def load_prompts(cfg: SyntheticPrompts | FilePrompts, base_dir: Path, seed: int) -> list[str]:
    if isinstance(cfg, SyntheticPrompts):
        return synthetic_prompts(cfg, seed)
    path = Path(cfg.path).expanduser()
    return file_prompts(cfg, path if path.is_absolute() else base_dir / path)
