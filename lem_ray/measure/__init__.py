"""lem-ray's measurement protocol as plain code (no Ray): the campaign's worker runs it, and so
can a script or notebook on local GPUs (`Meter`). See docs/measure.md."""

from lem_ray.measure.energy import EnergyFigures
from lem_ray.measure.local import MeasureUnavailable, Meter, local_sampler
from lem_ray.measure.protocol import (
    Clock,
    GpuConditions,
    GpuSampler,
    Measurement,
    MeasurementProtocol,
    MeasureSettings,
    PrefillResult,
)
from lem_ray.measure.sampler import RunSampler, SamplerReport

__all__ = [
    "Clock",
    "EnergyFigures",
    "GpuConditions",
    "GpuSampler",
    "MeasureSettings",
    "MeasureUnavailable",
    "Measurement",
    "MeasurementProtocol",
    "Meter",
    "PrefillResult",
    "RunSampler",
    "SamplerReport",
    "local_sampler",
]
