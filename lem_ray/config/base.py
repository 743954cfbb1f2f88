"""Shared pydantic base: unknown keys are errors, never silently kept."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def invalid_combination(message: str) -> PydanticCustomError:
    """A rule between fields: in a grid the combination is dropped with this reason."""
    return PydanticCustomError("invalid_combination", message)
