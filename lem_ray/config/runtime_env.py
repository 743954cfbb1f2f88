"""Where a backend's worker runs: the driver's own environment, a container image, a prebuilt
interpreter, or packages Ray installs. One per backend, because vLLM and TensorRT-LLM pin
different torch builds and cannot share an environment."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from lem_ray.config.base import PathText, StrictModel

RuntimeEnvKind = Literal["none", "image_uri", "py_executable", "pip", "uv"]
_FIELD_OF_KIND = {"image_uri": "image_uri", "py_executable": "py_executable",
                  "pip": "packages", "uv": "packages"}


class RuntimeEnvSpec(StrictModel):
    """One backend's Ray runtime_env, in the few shapes lem-ray supports."""

    kind: RuntimeEnvKind = Field(
        "none",
        description="none: the driver's environment; image_uri: a container image (Ray and "
        "Python as on the cluster); py_executable: a prebuilt interpreter on every node; "
        "pip / uv: packages Ray installs into a fresh environment on each node",
    )
    image_uri: PathText | None = Field(None, min_length=1, description="kind image_uri")
    py_executable: PathText | None = Field(None, min_length=1, description="kind py_executable")
    packages: list[str] | None = Field(None, min_length=1, description="kind pip or uv")
    env_vars: dict[str, str] = Field(default_factory=dict, description="set in the worker")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> RuntimeEnvSpec:
        needed = _FIELD_OF_KIND.get(self.kind)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(f"runtime_env kind {self.kind} needs {needed}")
        stray = [name for name in ("image_uri", "py_executable", "packages")
                 if name != needed and getattr(self, name) is not None]
        if stray:
            raise ValueError(f"runtime_env kind {self.kind} takes no {', '.join(stray)}")
        return self

    def ray_runtime_env(self) -> dict[str, Any] | None:
        """The dict for `.options(runtime_env=...)`; None keeps the driver's (job's) environment.

        Ray merges env_vars with the job's (CUDA_DEVICE_ORDER and the like stay set); an
        image_uri may only be combined with env_vars (Ray's rule).
        """
        env: dict[str, Any] = {}
        if self.kind == "image_uri":
            env["image_uri"] = self.image_uri
        elif self.kind == "py_executable":
            env["py_executable"] = self.py_executable
        elif self.kind in ("pip", "uv"):
            env[self.kind] = {"packages": list(self.packages or [])}
        if self.env_vars:
            env["env_vars"] = dict(self.env_vars)
        return env or None

    def to_json(self) -> str:
        """What the rows record: the spec as given, kind first."""
        return json.dumps(self.model_dump(exclude_defaults=True) | {"kind": self.kind},
                          sort_keys=True)
