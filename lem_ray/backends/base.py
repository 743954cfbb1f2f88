"""The one small interface every backend implements, and the records it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lem_ray.backends.traffic import SteadyWindow
from lem_ray.config.experiment import ExperimentConfig


@dataclass
class RequestRecord:
    """Timings of one request, as the backend saw its tokens arrive.

    `itl_ms` are the gaps between consecutive output tokens (len = output_tokens - 1 when the
    backend streams; empty when it can only report the end). Times are from time.perf_counter.
    """

    index: int
    input_tokens: int
    output_tokens: int
    e2e_ms: float
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    start_s: float = 0.0


@dataclass(frozen=True)
class DeviceInfo:
    """Where the backend must run: 'cuda' with N visible GPUs, or 'cpu'."""

    kind: str
    gpu_count: int = 0


class BackendUnavailable(RuntimeError):
    """The backend's library is missing or cannot run on this machine; says how to fix it."""


class Backend(ABC):
    name: ClassVar[str]

    def __init__(self, config: ExperimentConfig, device: DeviceInfo) -> None:
        self.config = config
        self.device = device

    @abstractmethod
    def load(self) -> None:
        """Load the engine and tokenizer; heavy imports happen here, not at module import."""

    @abstractmethod
    def generate(
        self, prompts: list[str], max_output_tokens: int | None = None
    ) -> list[RequestRecord]:
        """Run the prompts with this backend's own batching; one record per prompt, in order.

        max_output_tokens caps the config's value for this call (the prefill window uses 1).
        """

    def measure(self, prompts: list[str]) -> list[RequestRecord]:
        """The measured window's requests. A backend with a traffic option sends them on its
        arrival process there; the others all at once, as generate() does."""
        return self.generate(prompts)

    def steady_window(self) -> SteadyWindow | None:
        """The steady-state part of the last measure() call (perf_counter clock), if any."""
        return None

    def output_bounds(self, max_output_tokens: int | None) -> tuple[int, int]:
        """(max, min) new tokens for one generate() call."""
        cfg = self.config
        if max_output_tokens is None:
            return cfg.max_output_tokens, cfg.min_output_tokens
        return max_output_tokens, min(cfg.min_output_tokens, max_output_tokens)

    @property
    def timing_method(self) -> str | None:
        """How per-token times are taken (the `timing_method` column); None: not stated."""
        return None

    def prepare(self, prompts: list[str]) -> None:
        """Get ready for these prompts' shapes (compile, capture graphs): part of load time."""

    @property
    def warmup_batch_size(self) -> int:
        """How many prompts one warmup step sends, so warmup exercises the measured shape."""
        return 1

    def synchronize(self) -> None:
        """Wait until queued device work is done, so a window edge is a true edge."""

    def peak_memory_mb(self) -> float | None:
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def details(self) -> dict[str, Any]:
        """Facts about the loaded engine worth keeping with the result (params, dtype...)."""
        return {}

    def engine_config(self) -> dict[str, Any] | None:
        """The engine's own resolved settings, read back after load (what ran, not what was
        asked); None where the library does not expose them."""
        return None

    def release(self) -> None:
        """Free the engine and the device memory it holds."""
