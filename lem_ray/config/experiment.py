"""One experiment: everything that decides what is run and how, fully resolved."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lem_ray.backends.pytorch.config import PyTorchConfig
from lem_ray.backends.tensorrt.config import TensorRTConfig
from lem_ray.backends.vllm.config import VLLMConfig
from lem_ray.config.base import StrictModel, invalid_combination
from lem_ray.config.prompts import PromptsConfig, SyntheticPrompts

BACKENDS = ("pytorch", "vllm", "tensorrt")
BACKEND_SECTIONS: dict[str, type[StrictModel]] = {
    "pytorch": PyTorchConfig,
    "vllm": VLLMConfig,
    "tensorrt": TensorRTConfig,
}

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
        if isinstance(data, dict) and data.get("preset") in DECODER_PRESETS:
            return {**DECODER_PRESETS[data["preset"]], **data}
        return data


class WarmupConfig(StrictModel):
    """Full steps of the measured shape, run before the measured window, never counted in it."""

    mode: Literal["fixed", "cv"] = Field(
        "cv", description="fixed: about `requests` requests; cv: until step latencies settle"
    )
    requests: int = Field(
        4, ge=0, description="fixed mode: requests to send, rounded up to whole steps"
    )
    window: int = Field(
        3, ge=2, description="cv mode: last steps the CV is taken over (the first step never)"
    )
    cv_threshold: float = Field(0.05, gt=0)
    max_steps: int = Field(30, ge=2, description="cv mode: give up (unsettled) after this many steps")
    max_s: float = Field(120, gt=0, description="cv mode: give up (unsettled) after this long")


class ExperimentConfig(StrictModel):
    model_name: str = Field(..., min_length=1, description="hub id or local path")
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: build from the model's config with random weights"
    )
    tokenizer: str | None = Field(None, description="defaults to model_name")
    backend: Literal["pytorch", "vllm", "tensorrt"]
    fp_precision: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    max_input_tokens: int = Field(512, ge=1)
    max_output_tokens: int = Field(128, ge=1)
    min_output_tokens: int = Field(0, ge=0)
    prompts: PromptsConfig = Field(
        default_factory=lambda: SyntheticPrompts(source="synthetic", count=64)
    )
    random_seed: int = 42
    gpus_per_experiment: int = Field(1, ge=1)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    pytorch: PyTorchConfig | None = None
    vllm: VLLMConfig | None = None
    tensorrt: TensorRTConfig | None = None

    @model_validator(mode="after")
    def _rules(self) -> "ExperimentConfig":
        for other in BACKENDS:
            if other != self.backend and getattr(self, other) is not None:
                raise invalid_combination(
                    f"{other}: section set but backend is {self.backend!r} "
                    "(only the chosen backend's section may be set)"
                )
        if getattr(self, self.backend) is None:
            setattr(self, self.backend, BACKEND_SECTIONS[self.backend]())
        if self.fp_precision == "float32" and self.backend == "tensorrt":
            raise invalid_combination("fp_precision: float32 is not supported by tensorrt")
        if self.min_output_tokens > self.max_output_tokens:
            raise invalid_combination(
                f"min_output_tokens ({self.min_output_tokens}) must be <= "
                f"max_output_tokens ({self.max_output_tokens})"
            )
        section = self.backend_options
        if (isinstance(section, PyTorchConfig) and section.compiled_loop
                and self.decoder.repetition_penalty != 1.0):
            raise invalid_combination(
                "decoder.repetition_penalty: not supported by lem-ray's compiled decode loop "
                "(pytorch.torch_compile with cache_implementation 'static'); leave it at 1.0"
            )
        if isinstance(section, (VLLMConfig, TensorRTConfig)):
            if section.parallel_gpus != self.gpus_per_experiment:
                raise invalid_combination(
                    f"{self.backend}.tensor_parallel_size x pipeline_parallel_size "
                    f"({section.tensor_parallel_size} x {section.pipeline_parallel_size}) must "
                    f"equal gpus_per_experiment ({self.gpus_per_experiment})"
                )
        return self

    @property
    def backend_options(self) -> StrictModel:
        return getattr(self, self.backend)
