"""One experiment: everything that decides what is run and how, fully resolved."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from lem_ray.assets import BUILTIN_PREFIX, builtin_models
from lem_ray.backend_table import BACKEND_NAMES
from lem_ray.backends.registry import options_class
from lem_ray.config.base import BackendOptions, PathText, Seed, StrictModel, invalid_combination
from lem_ray.config.limits import MAX_GPUS, MAX_PROMPTS, MAX_TOKENS, MAX_WAIT_S
from lem_ray.config.prompts import PromptsConfig, SyntheticPrompts

BackendName = Literal[BACKEND_NAMES]  # type: ignore[valid-type]
"""The backends of lem_ray/backend_table.py, checked like any other literal."""

DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "deterministic": {"do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "standard": {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95},
    "creative": {"do_sample": True, "temperature": 1.2, "top_k": 0, "top_p": 0.95},
    "factual": {"do_sample": True, "temperature": 0.3, "top_k": 40, "top_p": 0.9},
}


class DecoderConfig(StrictModel):
    """Sampling settings. A preset fills the fields the user did not set."""

    preset: Literal["deterministic", "standard", "creative", "factual"] | None = None
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, description="used only when do_sample")
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        preset = data.get("preset") if isinstance(data, dict) else None
        if isinstance(preset, str) and preset in DECODER_PRESETS:
            return {**DECODER_PRESETS[data["preset"]], **data}
        return data


class WarmupConfig(StrictModel):
    """Full steps of the measured shape, run before the measured window, never counted in it."""

    mode: Literal["fixed", "cv"] = Field(
        "cv", description="fixed: about `requests` requests; cv: until step latencies settle"
    )
    requests: int = Field(
        4, ge=0, le=MAX_PROMPTS,
        description="fixed mode: requests to send, rounded up to whole steps"
    )
    window: int = Field(
        3, ge=2, le=10_000,
        description="cv mode: last steps the CV is taken over (the first step never)",
    )
    cv_threshold: float = Field(0.05, gt=0)
    max_steps: int = Field(
        30, ge=2, le=10_000, description="cv mode: give up (unsettled) after this many steps"
    )
    max_s: float = Field(
        60, gt=0, le=MAX_WAIT_S, description="cv mode: give up (unsettled) after this long"
    )


class SLOConfig(StrictModel):
    """Latency a request must meet to count as served (goodput); judges results, never changes
    what runs. E.g. MLPerf's conversational Llama-3.1-8B limits: 2,000 ms TTFT, 100 ms TPOT."""

    ttft_ms: float | None = Field(None, gt=0, description="time to first token, at most")
    tpot_ms: float | None = Field(
        None, gt=0, description="time per output token after the first, at most: "
        "(e2e - TTFT) / (output tokens - 1)")
    min_attainment: float = Field(
        0.9, gt=0, le=1, description="lem-ray report: a configuration meets the SLO when "
        "this share of its requests meets it, in every counted cycle")

    @model_validator(mode="after")
    def _some_limit(self) -> SLOConfig:
        if self.ttft_ms is None and self.tpot_ms is None:
            raise ValueError("slo: set ttft_ms, tpot_ms or both")
        return self


# Fields that judge a run's results and never change what runs: no engine reload for them.
EVALUATION_FIELDS = frozenset({"slo"})


class _ExperimentFields(StrictModel):
    """Everything but the backend sections, which ExperimentConfig adds from the registry."""

    model_name: PathText = Field(..., min_length=1, description="hub id or local path")
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: build from the model's config with random weights"
    )
    tokenizer: PathText | None = Field(None, description="defaults to model_name")
    backend: BackendName
    fp_precision: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    max_input_tokens: int = Field(512, ge=1, le=MAX_TOKENS)
    max_output_tokens: int = Field(128, ge=1, le=MAX_TOKENS)
    min_output_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    prompts: PromptsConfig = Field(
        default_factory=lambda: SyntheticPrompts(source="synthetic", count=64)
    )
    random_seed: Seed = 42
    gpus_per_experiment: int = Field(1, ge=1, le=MAX_GPUS)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    slo: SLOConfig | None = Field(None, description="latency limits for goodput (docs/metrics.md)")

    if TYPE_CHECKING:
        # The backend sections (`pytorch: PyTorchConfig | None`, ...) are made by create_model
        # below from the registry's table; to a type checker they are this.
        def __getattr__(self, name: str) -> Any: ...

    @field_validator("model_name", "tokenizer")
    @classmethod
    def _known_builtin(cls, name: str | None) -> str | None:
        """A shipped model is known now; finding a typo at run time wastes a Ray start."""
        if name and name.startswith(BUILTIN_PREFIX) and name[len(BUILTIN_PREFIX):] not in (
            builtin_models()
        ):
            raise ValueError(f"unknown builtin model {name!r}; builtin models: "
                             + ", ".join(BUILTIN_PREFIX + m for m in builtin_models()))
        return name

    @model_validator(mode="after")
    def _rules(self) -> _ExperimentFields:
        for other in BACKEND_NAMES:
            if other != self.backend and getattr(self, other) is not None:
                raise invalid_combination(
                    f"{other}: section set but backend is {self.backend!r} "
                    "(only the chosen backend's section may be set)"
                )
        if getattr(self, self.backend) is None:
            setattr(self, self.backend, options_class(self.backend)())
        if self.fp_precision == "float32" and self.backend == "tensorrt":
            raise invalid_combination("fp_precision: float32 is not supported by tensorrt")
        if self.min_output_tokens > self.max_output_tokens:
            raise invalid_combination(
                f"min_output_tokens ({self.min_output_tokens}) must be <= "
                f"max_output_tokens ({self.max_output_tokens})"
            )
        conflict = self.backend_options.conflict_with(self)
        if conflict:
            raise invalid_combination(conflict)
        return self

    @property
    def backend_options(self) -> BackendOptions:
        """The chosen backend's section (always set once validated)."""
        options: BackendOptions = getattr(self, self.backend)
        return options

    def engine_fields(self) -> dict[str, Any]:
        """What a loaded engine is made of: everything but the fields the backend declares
        runtime (applied per run to a loaded engine). Unknown fields count as engine fields,
        so a new option forces a reload rather than a wrong reuse."""
        own, experiment = self.backend_options.runtime_fields()
        data = self.model_dump(mode="json")
        others = (b for b in BACKEND_NAMES if b != self.backend)
        skipped = {*experiment, *others, *EVALUATION_FIELDS}
        fields = {k: v for k, v in data.items() if k not in skipped}
        fields[self.backend] = {k: v for k, v in data[self.backend].items() if k not in own}
        return fields

    @property
    def engine_key(self) -> str:
        """Equal for two experiments exactly when one's loaded engine can run the other."""
        canonical = json.dumps(self.engine_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def compile_fields(self) -> dict[str, Any]:
        """What decides the code an engine compiles for this run (the compile cache's key,
        with the GPU and versions): its engine fields and the runtime fields its backend
        compiles shapes for."""
        options = self.backend_options
        shaping = {k: getattr(options, k) for k in sorted(options.COMPILED_RUNTIME_FIELDS)}
        return {"engine": self.engine_fields(), "shapes": shaping}


# One optional section per backend, typed by its options model: `pytorch: PyTorchConfig | None`.
ExperimentConfig = create_model(
    "ExperimentConfig",
    __base__=_ExperimentFields,
    __module__=__name__,
    __doc__="One experiment: everything that decides what is run and how, fully resolved.",
    **{name: (options_class(name) | None, None) for name in BACKEND_NAMES},  # type: ignore[call-overload]
)
