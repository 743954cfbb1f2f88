"""The campaign driver: plan, resume from the manifest, dispatch on Ray, summarise."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.checks.preflight import preflight
from lem_ray.execution.checks.runtime_env import probe_runtime_envs
from lem_ray.execution.checks.shared_storage import require_shared_results_dir
from lem_ray.execution.driver.automation import Clock, automated
from lem_ray.execution.driver.cluster import capacity, connect
from lem_ray.execution.driver.completion import Progress, Reporter
from lem_ray.execution.driver.dispatch import Dispatcher
from lem_ray.execution.driver.guard import sole_driver
from lem_ray.execution.driver.manifest_actor import close_manifest, open_manifest
from lem_ray.execution.metrics import publishing
from lem_ray.planning.plan import CampaignPlan, plan_campaign
from lem_ray.results.compact import CompactionBusy, compact
from lem_ray.results.compile_cache import campaign_savings
from lem_ray.results.gpu_time import gpu_seconds
from lem_ray.results.manifest import UNFINISHED
from lem_ray.results.ownership import Owner, claim, grid_fingerprint
from lem_ray.results.repair import rebuild_if_damaged
from lem_ray.results.store import remove_stale_temp_files
from lem_ray.results.summary import summarize

log = logging.getLogger("lem_ray")


@dataclass
class CampaignResult:
    """What a campaign run returns: counts by state, the summary, failures."""

    campaign_name: str
    results_dir: str
    counts: dict[str, int]
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    moved_aside: str | None = None
    gpu_time: dict[str, Any] | None = None
    """GPU-seconds by phase over the cluster's GPUs, all sessions of the campaign."""
    compile_cache: dict[str, Any] | None = None
    """What loading from the compile cache saved (results/compile_cache.load_savings)."""


def _compact_quietly(results_dir: str) -> None:
    """Fold the campaign's small files; a compaction someone started meanwhile does it. The
    runs' rows are committed before this, so a compaction that fails is a warning, never the
    campaign's failure."""
    try:
        compact(results_dir)
    except CompactionBusy:
        pass
    except Exception as exc:  # housekeeping after the runs, whatever broke it
        log.warning("lem-ray: warning: the closing compaction failed (%s); the results are "
                    "complete, `lem-ray compact %s` tries again", " ".join(str(exc).split())
                    or type(exc).__name__, results_dir)


def run_campaign(
    source: Any,
    results_dir: str | Path | None = None,
    address: str | None = None,
    reporter: Reporter | None = None,
    retry_failed: bool = False,
    fresh: bool = False,
    clock: Clock | None = None,
) -> CampaignResult:
    """Run what is not yet done; return where results are and a summary.

    Done means `ok` in the manifest; `failed` runs count as done unless retry_failed.
    fresh moves earlier results aside first (and drops a live manifest of them).
    Raises CampaignInterrupted on Ctrl-C, after marking the runs in progress interrupted.
    With `schedule`, the campaign's cycles are repeated on its timetable (clock: for tests);
    with `notify`, the webhook hears how it ended.
    """
    plan = plan_campaign(source)
    driver = Driver(str(plan.results_dir(results_dir)), address, reporter, retry_failed, fresh)
    return automated(plan, driver, clock)


@dataclass
class Driver:
    """A campaign's runs on Ray, a block of cycles at a time; automation.py wraps it."""

    results_dir: str
    address: str | None
    reporter: Reporter | None
    retry_failed: bool
    fresh: bool
    """Earlier results moved aside first: before the first block only."""

    def run(self, plan: CampaignPlan, block: int) -> CampaignResult:
        """Run what is not yet done of the plan, the campaign's block number `block`."""
        return run_block(plan, self.results_dir, self.address, self.reporter, self.retry_failed,
                         self.fresh and block == 0)

    def total(self, plan: CampaignPlan, blocks: list[CampaignResult]) -> CampaignResult:
        """The counts summed over the blocks, and the summary of the whole dataset."""
        out = self.results_dir
        keys = blocks[0].counts if blocks else ("planned", "skipped_done", "ran", "failed",
                                                 "ok", "retried")
        counts = {k: sum(b.counts[k] for b in blocks) for k in keys}
        summary, failures = summarize(out, plan.labels()) if blocks else ([], [])
        moved = blocks[0].moved_aside if blocks else None
        return CampaignResult(plan.name, out, counts, summary, failures, moved)


def run_block(
    plan: CampaignPlan,
    out: str,
    address: str | None,
    reporter: Reporter | None,
    retry_failed: bool,
    fresh: bool,
) -> CampaignResult:
    """The plan's runs that are not done yet, on Ray, with this driver alone on `out` (the
    lease, a damaged manifest rebuilt, --fresh's move: all before Ray starts)."""
    preflight(plan, out, address, fresh, reach=True)
    prompts = plan.load_prompts()
    runtime_envs = plan.runtime_envs()
    with sole_driver(out, fresh) as moved:
        rebuilt = rebuild_if_damaged(out, plan.name, plan.runs)
        if rebuilt:
            log.warning("lem-ray: warning: %s", rebuilt)
        return _run_on_ray(plan, out, address, reporter, retry_failed, prompts, runtime_envs,
                           moved, drop_live_manifest=fresh or rebuilt is not None)


def _run_on_ray(plan: CampaignPlan, out: str, address: str | None, reporter: Reporter | None,
                retry_failed: bool, prompts: dict[str, list[str]],
                runtime_envs: dict[str, RuntimeEnvSpec],
                moved: str | None, drop_live_manifest: bool) -> CampaignResult:
    """drop_live_manifest: a manifest actor left by an earlier driver holds the state of
    results moved aside or rebuilt: it goes, and a new one reads the files."""
    started_ray = connect(address)
    try:
        require_shared_results_dir(out)
        if drop_live_manifest:
            close_manifest(plan.name, out, fold=False)
        fingerprint = grid_fingerprint([e.experiment_id for e in plan.experiments],
                                       plan.campaign.execution.cycles)
        claim(out, Owner(plan.name, fingerprint))
        manifest = open_manifest(plan.name, out)
        runs = ray.get(manifest.register.remote(plan.runs))
        owed = UNFINISHED + (("failed",) if retry_failed else ())
        pending = [r for r in plan.runs if runs[r.run_id]["state"] in owed]
        progress = Progress(total=len(pending))
        unstored: list[dict[str, Any]] = []
        if pending:
            remove_stale_temp_files(out)
            attempts = {r.run_id: runs[r.run_id]["attempt"] for r in pending}
            needed = {plan.experiment(r.experiment_id).backend for r in pending}
            refusals = probe_runtime_envs(
                {b: runtime_envs[b] for b in needed}, plan.campaign.execution.runtime_env_timeout_s
            )
            dispatcher = Dispatcher(plan, out, manifest, prompts, capacity(), progress, reporter,
                                    runtime_envs=runtime_envs, env_refusals=refusals)
            with publishing(dispatcher):
                dispatcher.run(pending, attempts)
            unstored = dispatcher.completion.writer.failures()
        final = ray.get(manifest.snapshot.remote())["runs"]
        if not any(final[r.run_id]["state"] in UNFINISHED for r in plan.runs):
            close_manifest(plan.name, out)
            if pending:
                _compact_quietly(out)
    finally:
        if started_ray:
            ray.shutdown()
    labels = plan.labels()
    summary, failures = summarize(out, labels)
    named = {f["run_id"] for f in unstored}
    failures = [f for f in failures if f["run_id"] not in named] + [
        {**f, "label": labels[f["experiment_id"]]} for f in unstored]
    counts = {
        "planned": len(plan.runs),
        "skipped_done": len(plan.runs) - len(pending),
        "ran": progress.done,
        "failed": progress.failed,
        "ok": progress.done - progress.failed,
        "retried": progress.retried,
    }
    return CampaignResult(plan.name, out, counts, summary, failures, moved, gpu_seconds(out),
                          campaign_savings(out))
