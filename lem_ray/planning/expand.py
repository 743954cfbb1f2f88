"""Grid expansion: base, then shared axes, then each backend's axes; invalid combos dropped."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lem_ray.backend_table import BACKEND_NAMES
from lem_ray.backends.registry import options_class
from lem_ray.config.campaign import CampaignConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.config.limits import MAX_EXPERIMENTS
from lem_ray.config.loading import error_from_validation, format_loc
from lem_ray.errors import ConfigError


@dataclass(frozen=True)
class PlannedExperiment:
    """One experiment of the plan with its id (the hash of its resolved config)."""

    experiment_id: str
    config: ExperimentConfig

    @property
    def backend(self) -> str:
        """The experiment's backend."""
        return self.config.backend


@dataclass(frozen=True)
class Rejection:
    """A combination the grid produced that breaks a rule, with the reason."""

    backend: str | None
    combination: dict[str, Any]
    reason: str


@dataclass
class Expansion:
    """What the grid expands to: distinct valid experiments and rejected combinations."""

    experiments: list[PlannedExperiment] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


# Options added after results were first stored, with their defaults: at the default they stay
# out of the experiment id, so an experiment that does not use one keeps the id it was stored
# under and its campaign still resumes. Every option added from now on belongs here.
ID_OMITTED_AT_DEFAULT: dict[str, Any] = {
    "pytorch.compile_prefill": False, "slo": None,
    "vllm.traffic.burstiness": 1.0, "vllm.traffic.trace": None,
    "tensorrt.traffic.burstiness": 1.0, "tensorrt.traffic.trace": None,
}


def experiment_id(config: ExperimentConfig) -> str:
    """Stable across machines, runs and lem-ray versions: a hash of the resolved config's
    canonical JSON, less the later options left at their default."""
    data = config.model_dump(mode="json")
    for dotted, default in ID_OMITTED_AT_DEFAULT.items():
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            del node[leaf]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = copy.deepcopy(value)


def _override_key(backend: str, key: str) -> str:
    """A backend axis names a key of that backend's section, else a top-level experiment key."""
    head = key.split(".")[0]
    if head in options_class(backend).model_fields or head not in ExperimentConfig.model_fields:
        return f"{backend}.{key}"
    return key


class _Layers:
    """Builds one combination's raw config and remembers which YAML key set each value."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.data: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        for key, value in base.items():
            self.set(key, value, f"base.{key}")

    def set(self, dotted: str, value: Any, origin: str) -> None:
        if isinstance(value, dict) and self._switches_variant(dotted, value):
            self._drop(dotted)
        if isinstance(value, dict) and value:
            self.origins.setdefault(dotted, origin)
            for key, sub in value.items():
                self.set(f"{dotted}.{key}", sub, f"{origin}.{key}")
            return
        _set_dotted(self.data, dotted, value)
        self.origins[dotted] = origin

    def _switches_variant(self, dotted: str, value: dict[str, Any]) -> bool:
        """A tagged section (prompts: source) changing its tag is replaced, not merged: the
        old variant's keys mean nothing to the new one."""
        node: Any = self.data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return (isinstance(node, dict) and "source" in value and "source" in node
                and node["source"] != value["source"])

    def _drop(self, dotted: str) -> None:
        *parents, leaf = dotted.split(".")
        node: Any = self.data
        for part in parents:
            node = node[part]
        del node[leaf]
        for key in [k for k in self.origins if k == dotted or k.startswith(f"{dotted}.")]:
            del self.origins[key]

    def origin_of(self, loc: tuple[Any, ...]) -> str:
        for cut in range(len(loc), 0, -1):
            dotted = format_loc(loc[:cut])
            if dotted in self.origins:
                return format_loc(loc[cut:], self.origins[dotted])
            below = [o for k, o in self.origins.items() if k.startswith(f"{dotted}.")]
            if below:
                return below[0]
        return format_loc(loc, "base")


def _validate(layers: _Layers) -> ExperimentConfig | str:
    """The config, or the reason the combination is invalid; bad keys or values raise."""
    try:
        return ExperimentConfig.model_validate(layers.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if all(e["type"] == "invalid_combination" for e in errors):
            return "; ".join(e["msg"] for e in errors)
        raise error_from_validation(exc, ExperimentConfig, origin=layers.origin_of) from None


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def _check_axes(grid: Any) -> None:
    """An axis without values would empty the whole product: name it, not the grid."""
    for key, values in grid.shared.items():
        if not values:
            raise ConfigError("axis has no values", path=f"grid.shared.{key}")
    for backend, axes in grid.backend_overrides.items():
        for key, values in axes.items():
            if not values:
                raise ConfigError(
                    "axis has no values", path=f"grid.backend_overrides.{backend}.{key}"
                )


def _count_combinations(campaign: CampaignConfig, backends: list[str]) -> int:
    grid = campaign.grid
    shared = math.prod(len(v) for v in grid.shared.values())
    own = sum(math.prod(len(v) for v in grid.backend_overrides.get(b, {}).values())
              for b in backends)
    return (shared * own if backends else 1) + len(campaign.experiments)


def expand(campaign: CampaignConfig) -> Expansion:
    """Base, then the product of shared axes, then each backend's own axes, deduplicated."""
    grid = campaign.grid
    _check_axes(grid)
    backends = list(grid.backends)
    if not backends and (grid.shared or grid.backend_overrides) and "backend" in campaign.base:
        backend = campaign.base["backend"]
        if not (isinstance(backend, str) and backend in BACKEND_NAMES):
            raise ConfigError(f"must be one of {', '.join(BACKEND_NAMES)} (got "
                              f"{str(backend)[:60]!r})", path="base.backend")
        backends = [backend]
    for name in grid.backend_overrides:
        if name not in backends:
            raise ConfigError(
                f"overrides for {name!r}, which is not in grid.backends {backends}",
                path=f"grid.backend_overrides.{name}",
            )
    if (grid.shared or grid.backend_overrides) and not backends:
        raise ConfigError("grid axes are given but no backend: set grid.backends", path="grid")

    combinations = _count_combinations(campaign, backends)
    if combinations > MAX_EXPERIMENTS:
        raise ConfigError(
            f"{combinations} combinations; a campaign may have at most {MAX_EXPERIMENTS} "
            "(split it into several campaigns)",
            path="grid",
        )
    candidates: list[tuple[str | None, dict[str, Any], Callable[[], _Layers]]] = []
    for backend in backends:
        for shared in _product(grid.shared):
            for own in _product(grid.backend_overrides.get(backend, {})):
                candidates.append(
                    (backend, {**shared, **own}, _combo(campaign, backend, shared, own))
                )
    if not backends and not campaign.experiments and campaign.base:
        candidates.append((campaign.base.get("backend"), {}, lambda: _Layers(campaign.base)))
    for index, extra in enumerate(campaign.experiments):
        candidates.append((extra.get("backend"), dict(extra), _explicit(campaign, index, extra)))

    result = Expansion()
    seen: set[str] = set()
    for backend, combination, build in candidates:
        outcome = _validate(build())
        if isinstance(outcome, str):
            result.rejected.append(Rejection(backend, combination, outcome))
            continue
        eid = experiment_id(outcome)
        if eid not in seen:
            seen.add(eid)
            result.experiments.append(PlannedExperiment(eid, outcome))
    if not result.experiments:
        why = f" ({len(result.rejected)} rejected; first: {result.rejected[0].reason})" if (
            result.rejected
        ) else ""
        raise ConfigError(f"the campaign has no experiments to run{why}", path="grid")
    return result


def _combo(
    campaign: CampaignConfig, backend: str, shared: dict[str, Any], own: dict[str, Any]
) -> Callable[[], _Layers]:
    def build() -> _Layers:
        layers = _Layers(campaign.base)
        layers.set("backend", backend, "grid.backends")
        for key, value in shared.items():
            layers.set(key, value, f"grid.shared.{key}")
        for key, value in own.items():
            layers.set(
                _override_key(backend, key), value, f"grid.backend_overrides.{backend}.{key}"
            )
        return layers

    return build


def _explicit(campaign: CampaignConfig, index: int, extra: dict[str, Any]) -> Callable[[], _Layers]:
    def build() -> _Layers:
        layers = _Layers(campaign.base)
        for key, value in extra.items():
            layers.set(key, value, f"experiments[{index}].{key}")
        return layers

    return build
