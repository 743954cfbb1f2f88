"""Options of engines spread over GPUs by tensor and pipeline parallelism (vLLM, TensorRT-LLM)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from typing_extensions import override

from lem_ray.config.base import BackendOptions
from lem_ray.config.limits import MAX_GPUS


class ModelParallelOptions(BackendOptions):
    """tensor_parallel_size x pipeline_parallel_size GPUs per engine, which must be the
    experiment's gpus_per_experiment: the engine spreads itself over exactly the GPUs its
    worker holds."""

    tensor_parallel_size: int = Field(1, ge=1, le=MAX_GPUS)
    pipeline_parallel_size: int = Field(1, ge=1, le=MAX_GPUS)

    @property
    @override
    def parallel_gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @override
    def conflict_with(self, experiment: Any) -> str | None:
        gpus = experiment.gpus_per_experiment
        if self.parallel_gpus == gpus:
            return None
        return (f"{experiment.backend}.tensor_parallel_size x pipeline_parallel_size "
                f"({self.tensor_parallel_size} x {self.pipeline_parallel_size}) must "
                f"equal gpus_per_experiment ({gpus})")
