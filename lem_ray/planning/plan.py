"""A campaign, planned: what will run, what was dropped and why, in which order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lem_ray.backends.registry import engine_args
from lem_ray.backends.traffic import read_trace
from lem_ray.config.base import no_control_characters
from lem_ray.config.campaign import CampaignConfig
from lem_ray.config.limits import MAX_RUNS
from lem_ray.config.loading import error_from_validation, load_campaign, parse_campaign, read_yaml
from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.errors import ConfigError
from lem_ray.planning.expand import PlannedExperiment, Rejection, expand
from lem_ray.planning.order import order_runs
from lem_ray.planning.positions import check_positions
from lem_ray.planning.prompts import load_prompts
from lem_ray.records import RunKey
from lem_ray.results.labels import experiment_labels


@dataclass
class CampaignPlan:
    """Everything a campaign will run, before Ray starts: what --dry-run prints."""

    campaign: CampaignConfig
    experiments: list[PlannedExperiment]
    rejected: list[Rejection]
    runs: list[RunKey]
    base_dir: Path
    """Relative paths in the campaign (prompt files, results_dir) resolve against this."""
    _texts: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    """Prompts read once per distinct prompts section (and seed), however often asked for."""
    _by_id: dict[str, PlannedExperiment] = field(init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The campaign's name."""
        return self.campaign.campaign_name

    def __post_init__(self) -> None:
        self._by_id = {e.experiment_id: e for e in self.experiments}

    def experiment(self, experiment_id: str) -> PlannedExperiment:
        """By id, in constant time: the dispatcher asks for every run of a 50,000-run plan."""
        return self._by_id[experiment_id]

    def labels(self) -> dict[str, str]:
        """Experiment id -> what sets it apart among the plan's experiments: its one name in
        the dry run, the live run lines and the end-of-campaign table."""
        return experiment_labels((e.experiment_id, e.config) for e in self.experiments)

    def results_dir(self, override: str | Path | None = None) -> Path | str:
        """Relative to the working directory, like any command-line output path; a URI
        (s3://...) is kept as text, which Path would turn into s3:/..."""
        if override is not None:
            try:
                no_control_characters(str(override))
            except ValueError as exc:
                raise ConfigError(f"{exc} (got {str(override)[:200]!r})",
                                  path="--results-dir") from None
        chosen = str(override or self.campaign.output.results_dir or f"results/{self.name}")
        return chosen if "://" in chosen else Path(chosen).expanduser()

    def runtime_env(self, backend: str) -> RuntimeEnvSpec:
        """The backend's runtime_env: the campaign's (inline or from its file), else none."""
        given = self.campaign.runtime_env.get(backend)
        if given is None:
            return RuntimeEnvSpec()
        if isinstance(given, RuntimeEnvSpec):
            return given
        path = Path(given).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError("a runtime_env file must be a YAML mapping", file=str(path))
        try:
            return RuntimeEnvSpec.model_validate(data)
        except ValidationError as exc:
            raise error_from_validation(exc, RuntimeEnvSpec).with_file(str(path)) from None

    def runtime_envs(self) -> dict[str, RuntimeEnvSpec]:
        """Every planned backend's runtime_env, read now so a bad file stops the campaign
        before anything runs."""
        return {b: self.runtime_env(b) for b in sorted({e.backend for e in self.experiments})}

    def load_prompts(self, experiment_ids: set[str] | None = None) -> dict[str, list[str]]:
        """Prompt texts per experiment, read here so that workers on other nodes need no files.

        Experiments sharing a prompts section share one read; an error names the experiment."""
        loaded: dict[str, list[str]] = {}
        for e in self.experiments:
            if experiment_ids is not None and e.experiment_id not in experiment_ids:
                continue
            seed = e.config.random_seed if e.config.prompts.source == "synthetic" else None
            key = f"{e.config.prompts.model_dump_json()}:{seed}"
            if key not in self._texts:
                try:
                    self._texts[key] = load_prompts(e.config.prompts, self.base_dir,
                                                    e.config.random_seed)
                except ConfigError as exc:
                    raise ConfigError(
                        exc.message, file=exc.file,
                        path=f"experiment {e.experiment_id} ({e.config.model_name}, "
                             f"{e.backend}): {exc.path}",
                    ) from None
            loaded[e.experiment_id] = self._texts[key]
            self._check_trace(e, len(loaded[e.experiment_id]))
        return loaded

    def _check_trace(self, e: PlannedExperiment, prompts: int) -> None:
        """A replayed trace is read here too, so a bad file or a count that does not match
        stops the campaign before anything runs (the worker reads the same path again)."""
        traffic = getattr(e.config.backend_options, "traffic", None)
        if traffic is None or traffic.trace is None:
            return
        where = (f"experiment {e.experiment_id} ({e.config.model_name}, {e.backend}): "
                 f"{e.backend}.traffic.trace")
        try:
            requests = len(read_trace(traffic.trace))
        except ValueError as exc:
            raise ConfigError(str(exc).removeprefix("traffic.trace: "), path=where) from None
        if requests != prompts:
            raise ConfigError(f"{requests} requests in the trace for {prompts} prompts; set "
                              f"prompts.count to {requests}", path=where)

    def to_json(self) -> dict[str, Any]:
        """The plan for `--dry-run --json`."""
        labels = self.labels()
        return {
            "campaign_name": self.name,
            "campaign": self.campaign.model_dump(mode="json"),
            "experiments": [
                {
                    "experiment_id": e.experiment_id,
                    "label": labels[e.experiment_id],
                    "backend": e.backend,
                    "config": e.config.model_dump(mode="json"),
                    "engine_args": engine_args(e.config),
                    "runtime_env": json.loads(self.runtime_env(e.backend).to_json()),
                }
                for e in self.experiments
            ],
            "rejected": [
                {"backend": r.backend, "combination": r.combination, "reason": r.reason}
                for r in self.rejected
            ],
            "runs": [{"experiment_id": r.experiment_id, "cycle": r.cycle} for r in self.runs],
            "counts": {
                "experiments": len(self.experiments),
                "rejected": len(self.rejected),
                "cycles": self.campaign.execution.cycles,
                "runs": len(self.runs),
            },
        }


def plan_campaign(
    source: str | Path | CampaignConfig | dict[str, Any] | CampaignPlan,
) -> CampaignPlan:
    """Accepts a path, a parsed mapping or a CampaignConfig, so notebooks need no file."""
    if isinstance(source, CampaignPlan):
        return source
    if isinstance(source, (str, Path)):
        campaign, base_dir = load_campaign(source), Path(source).resolve().parent
    else:
        campaign = source if isinstance(source, CampaignConfig) else parse_campaign(source)
        base_dir = Path.cwd()
    try:
        expansion = expand(campaign)
        check_positions(expansion.experiments)
    except ConfigError as exc:
        raise exc.with_file(str(source)) if isinstance(source, (str, Path)) else exc from None
    execution = campaign.execution
    planned = len(expansion.experiments) * execution.cycles
    if planned > MAX_RUNS:
        raise ConfigError(
            f"{len(expansion.experiments)} experiments x {execution.cycles} cycles = {planned} "
            f"runs; a campaign may have at most {MAX_RUNS}",
            path="execution.cycles", file=str(source) if isinstance(source, (str, Path)) else None,
        )
    runs = order_runs(
        [e.experiment_id for e in expansion.experiments],
        execution.cycles,
        execution.structure,
        execution.seed,
    )
    return CampaignPlan(campaign, expansion.experiments, expansion.rejected, runs, base_dir)
