"""`lem-ray report --html` in a real browser: headless Chromium (the distribution's package)
opens the page of a real small campaign, and of the synthetic results whose plots all have
data; every plot image decodes, nothing is fetched but the file itself and its data: images,
and the page logs no error. Skipped where Chromium is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lem_ray.cli.main import main
from tests.browser import CHROMIUM, visit
from tests.conftest import TINY_BASE, isolated_ray
from tests.fakes.synthetic_results import write_synthetic

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
pytest.importorskip("websocket", reason="websocket-client (the test extra) is not installed")


@pytest.fixture(scope="module")
def campaign_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batch 1 and 2 of the tiny model, 2 cycles, on a local Ray on CPU."""
    from lem_ray.execution.driver.campaign import run_campaign

    out = tmp_path_factory.mktemp("browser") / "results"
    with isolated_ray():
        result = run_campaign(
            {
                "campaign_name": "browser",
                "base": TINY_BASE,
                "grid": {
                    "backends": ["pytorch"],
                    "backend_overrides": {"pytorch": {"batch_size": [1, 2]}},
                },
                "execution": {"cycles": 2},
            },
            results_dir=out,
        )
    assert result.counts["ok"] == 4
    return out


def rendered(results_dir: Path, page: Path) -> Path:
    result = CliRunner().invoke(main, ["report", str(results_dir), "--html", str(page)])
    assert result.exit_code == 0, result.output
    return page


def check_page(page: Path, profile: Path) -> None:
    seen = visit(page, profile)
    assert len(seen.images) >= 5, "the report's plots are on the page"
    for image in seen.images:
        assert image["src"].startswith("data:image/png;base64,"), image
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert seen.requests, "the browser reported the page's own load"
    assert all(url.startswith(("file:", "data:")) for url in seen.requests), seen.requests
    assert all(link.startswith("data:") for link in seen.links), seen.links
    assert seen.errors == []


@pytest.mark.slow
def test_campaign_report_in_chromium(campaign_results: Path, tmp_path: Path) -> None:
    check_page(rendered(campaign_results, tmp_path / "report.html"), tmp_path / "profile")


def test_report_with_every_plot_drawn_in_chromium(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "results")
    check_page(rendered(tmp_path / "results", tmp_path / "report.html"), tmp_path / "profile")
