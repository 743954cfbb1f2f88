"""lem-ray: LLM inference energy campaigns on Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lem_ray.execution.driver.campaign import CampaignResult
    from lem_ray.planning.plan import CampaignPlan


def plan_campaign(source: Any) -> CampaignPlan:
    """Expand a campaign (path, mapping or CampaignConfig) without starting Ray."""
    from lem_ray.planning.plan import plan_campaign as _plan

    return _plan(source)


def run_campaign(source: Any, **kwargs: Any) -> CampaignResult:
    """Run a campaign on Ray; see lem_ray.execution.driver.campaign.run_campaign for the options."""
    from lem_ray.execution.driver.campaign import run_campaign as _run

    return _run(source, **kwargs)


__all__ = ["__version__", "plan_campaign", "run_campaign"]
