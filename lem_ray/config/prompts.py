"""Where an experiment's prompts come from: a file in the repo, or a seeded generator."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lem_ray.config.base import PathText, Seed, StrictModel, invalid_combination
from lem_ray.config.limits import MAX_INPUT_WORDS, MAX_PROMPTS


class LengthDistribution(StrictModel):
    """Input length in words; each word is roughly one token in most tokenizers."""

    distribution: Literal["fixed", "uniform", "normal", "lognormal"] = "normal"
    mean: float = Field(128, ge=1, le=MAX_INPUT_WORDS)
    std: float = Field(32, ge=0, le=MAX_INPUT_WORDS)
    min: int = Field(8, ge=1, le=MAX_INPUT_WORDS)
    max: int = Field(512, ge=1, le=MAX_INPUT_WORDS)

    @model_validator(mode="after")
    def _bounds(self) -> LengthDistribution:
        if self.min > self.max:
            raise invalid_combination("prompts.input_len.min must be <= input_len.max")
        return self


class SyntheticPrompts(StrictModel):
    """Prompts of random words with lengths from a distribution: reproducible by seed."""

    source: Literal["synthetic"]
    count: int = Field(..., ge=1, le=MAX_PROMPTS)
    input_len: LengthDistribution = Field(default_factory=LengthDistribution)
    seed: Seed | None = Field(None, description="defaults to the experiment's random_seed")


class FilePrompts(StrictModel):
    """Prompts read from a column of a JSONL, CSV or Parquet file."""

    source: Literal["file"]
    path: PathText = Field(..., description="JSONL, CSV or Parquet; relative to the campaign file")
    column: str = "prompt"
    count: int | None = Field(
        None, ge=1, le=MAX_PROMPTS, description="first N prompts (default: all, at most the limit)"
    )


PromptsConfig = Annotated[SyntheticPrompts | FilePrompts, Field(discriminator="source")]
