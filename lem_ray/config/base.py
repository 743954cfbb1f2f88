"""Shared pydantic base: unknown keys are errors, never silently kept; nothing is coerced."""

from __future__ import annotations

import re
from abc import abstractmethod
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from lem_ray.config.limits import MAX_SEED

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def no_control_characters(text: str) -> str:
    """A NUL, a newline or another control character in a path or a name is a mistake (or a
    trick): the system refuses a NUL deep inside a reader, and the others hide in error lines."""
    found = _CONTROL.search(text)
    if found:
        raise ValueError(f"contains the control character {found.group()!r} at position "
                         f"{found.start()}")
    return text


PathText = Annotated[str, AfterValidator(no_control_characters)]
"""A path, URI or name the system will be handed: no control characters."""


def _seed_in_range(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"a seed must be from 0 to {MAX_SEED} (2**32 - 1: numpy's range, "
                         "which the backends seed)")
    return seed


Seed = Annotated[int, AfterValidator(_seed_in_range)]
"""Refused when the campaign is read, not when a backend seeds numpy with it mid-campaign."""


class StrictModel(BaseModel):
    """Strict types (no `true` for 1, no "3" for 3) and finite numbers only: a NaN or an
    infinity in a bound or an interval would silently disable it."""

    model_config = ConfigDict(
        extra="forbid", validate_default=True, strict=True, allow_inf_nan=False
    )


class BackendOptions(StrictModel):
    """A backend's own section of an experiment; each backend states what the rest must know."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset()
    """Own fields a loaded engine takes per run (Backend.configure); the others need a new
    engine. Unlisted fields count as engine fields: a reload, never a wrong reuse."""
    EXPERIMENT_RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"prompts", "warmup"})
    """The experiment's fields (outside this section) a loaded engine takes per run."""
    COMPILED_RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset()
    """Own runtime fields that still shape what a loaded engine compiles for a run (the
    batch shapes it captures): part of the compile cache's key, not of the engine key."""

    def runtime_fields(self) -> tuple[frozenset[str], frozenset[str]]:
        """(own runtime fields, the experiment's runtime fields) for these very options."""
        return self.RUNTIME_FIELDS, self.EXPERIMENT_RUNTIME_FIELDS

    @property
    @abstractmethod
    def concurrency(self) -> int:
        """The most requests the backend runs at once (the `batch_size` column)."""

    @property
    def parallel_gpus(self) -> int | None:
        """GPUs one engine is spread over, when the options fix it; None when they do not."""
        return None

    def conflict_with(self, experiment: Any) -> str | None:
        """Why these options cannot run with the rest of `experiment` (an ExperimentConfig),
        or None; the experiment then drops the combination with this reason."""
        return None


def invalid_combination(message: str) -> PydanticCustomError:
    """A rule between fields: in a grid the combination is dropped with this reason."""
    return PydanticCustomError("invalid_combination", message)
