"""The one small interface every backend implements, and the records it returns."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from lem_ray.backends.traffic import EngineLoad, SteadyWindow
from lem_ray.config.base import BackendOptions
from lem_ray.records import RequestRecord

if TYPE_CHECKING:
    from lem_ray.config.experiment import ExperimentConfig

OptionsT = TypeVar("OptionsT", bound=BackendOptions)


@dataclass(frozen=True)
class DeviceInfo:
    """Where the backend must run: 'cuda' with N visible GPUs, or 'cpu'."""

    kind: str
    gpu_count: int = 0


class BackendUnavailable(RuntimeError):
    """The backend's library is missing or cannot run on this machine; says how to fix it."""


class Backend(ABC, Generic[OptionsT]):
    """`options` is the experiment's section of this backend, typed by the subclass."""

    name: ClassVar[str]
    exclusive: ClassVar[bool] = False
    """The engine reserves most of the GPUs' memory when it loads (a KV-cache pool sized
    from free memory): a worker never keeps it beside another engine."""
    artifact_is_file: ClassVar[bool] = False
    """Its compiled artifact is too large to hold in memory (a built TensorRT engine): the
    worker hands it over and takes it as a local file, streamed to and from the compile
    cache (use_compiled_file, compiled_file), instead of as bytes (use_compiled,
    compiled_artifact)."""

    def __init__(self, config: ExperimentConfig, device: DeviceInfo) -> None:
        if config.backend != self.name:
            raise ValueError(f"not a {self.name} experiment (backend {config.backend!r})")
        self.config = config
        self.device = device
        self.options: OptionsT = config.backend_options  # type: ignore[assignment]
        self.engine_id = uuid.uuid4().hex[:12]
        """This engine instance, for the rows of every run it serves: engines compiled apart
        may run different kernels (tuned per compile), runs of one engine run the same."""

    @abstractmethod
    def load(self) -> None:
        """Load the engine and tokenizer; heavy imports happen here, not at module import."""

    def configure(self, config: ExperimentConfig) -> None:
        """Take the next run's config on the loaded engine. Only called with a config whose
        engine_key equals the loaded one's, so only runtime fields differ."""
        self.config = config
        self.options = config.backend_options  # type: ignore[assignment]

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

    def engine_load(self) -> EngineLoad | None:
        """How full the engine ran in the last measure() call (its steady window under
        traffic), from the engine's own scheduler stats; None where it keeps none."""
        return None

    def stream_sha256(self) -> str | None:
        """Identifies the request stream the last measure() sent (traffic.stream_sha256), so
        runs paired for comparison can be shown to have sent the same; None where not known."""
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

    def peak_memory_mib(self) -> float | None:
        """Peak device memory the engine itself counted, MiB; None when it cannot say."""
        return None

    def memory_gpu_ids(self) -> list[str] | None:
        """NVML ids of the GPUs whose used memory, read after the run, is the engine's peak.

        For engines whose memory lives outside this process (so peak_memory_mib cannot count
        it); the worker reads NVML for them. None: not applicable, or the ids are unknowable.
        """
        return None

    def versions(self) -> dict[str, str]:
        """Library versions that decide the figures, stored in the run's row."""
        return {}

    def compiler_versions(self) -> dict[str, str] | None:
        """Versions of what compiles this engine's code (part of its compile cache key), known
        before load(); None: the engine compiles nothing the compile cache can hold."""
        return None

    def use_compiled(self, artifact: bytes) -> None:
        """What an earlier engine of the same compile key compiled (compiled_artifact's bytes),
        handed over before load(), or before prepare() on a loaded engine, so that this engine
        loads those kernels instead of compiling (and tuning) its own."""

    def compiled_artifact(self) -> bytes | None:
        """After prepare(): what this engine compiled, for later engines of its compile key;
        None where there is nothing to keep."""
        return None

    def use_compiled_file(self, path: str) -> None:
        """As use_compiled, for an artifact_is_file backend: the artifact as a local file,
        deleted by the worker once this returns (keep what is needed elsewhere)."""

    def compiled_file(self, directory: str) -> str | None:
        """As compiled_artifact, for an artifact_is_file backend: the artifact written as a
        file into `directory` (local, the worker's, deleted once published); its path, or
        None where there is nothing to keep."""
        return None

    def details(self) -> dict[str, Any]:
        """Facts about the loaded engine worth keeping with the result (params, dtype...)."""
        return {}

    def engine_config(self) -> dict[str, Any] | None:
        """The engine's own resolved settings, read back after load (what ran, not what was
        asked); None where the library does not expose them."""
        return None

    def release(self) -> None:
        """Free the engine and the device memory it holds."""
