"""`_extends`: a variant merged over its base, chains, cycles refused, shown by --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lem_ray.cli.main import main
from lem_ray.config.extends import merge
from lem_ray.config.loading import load_campaign
from lem_ray.errors import ConfigError
from tests.conftest import TINY_BASE


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BASE = {
    "campaign_name": "base",
    "base": TINY_BASE,
    "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2, 4]}}},
    "execution": {"cycles": 3, "structure": "grouped", "seed": 7},
}


def test_merge_is_key_by_key_and_replaces_lists() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merge(base, {"a": {"y": [3]}, "c": None}) == {"a": {"x": 1, "y": [3]}, "b": 2, "c": None}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}, "the base is not changed"


def test_chain_merges_in_order_relative_to_each_file(tmp_path: Path) -> None:
    _write(tmp_path / "shared" / "base.yaml", BASE)
    _write(tmp_path / "shared" / "mid.yaml", {
        "_extends": "base.yaml",
        "execution": {"cycles": 2},
        "base": {"max_output_tokens": 16, "min_output_tokens": 16},
    })
    child = _write(tmp_path / "variants" / "small.yaml", {
        "_extends": "../shared/mid.yaml",
        "campaign_name": "small",
        "grid": {"backend_overrides": {"pytorch": {"batch_size": [8]}}},
    })
    campaign = load_campaign(child)
    assert campaign.campaign_name == "small"
    assert campaign.execution.cycles == 2 and campaign.execution.seed == 7
    assert campaign.execution.structure == "grouped"
    assert campaign.base["max_output_tokens"] == 16
    assert campaign.base["model_name"] == TINY_BASE["model_name"]
    assert campaign.grid.backend_overrides["pytorch"] == {"batch_size": [8]}, "lists replaced"
    assert campaign.grid.backends == ["pytorch"]


def test_cycle_is_refused_naming_the_chain(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {**BASE, "_extends": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_extends": "sub/c.yaml"})
    _write(tmp_path / "sub" / "c.yaml", {"_extends": "../a.yaml"})
    with pytest.raises(ConfigError) as info:
        load_campaign(tmp_path / "a.yaml")
    assert "_extends cycle: a.yaml -> b.yaml -> sub/c.yaml -> a.yaml" in str(info.value)


def test_missing_or_bad_base_is_one_line_error(tmp_path: Path) -> None:
    child = _write(tmp_path / "c.yaml", {**BASE, "_extends": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_campaign(child)
    _write(tmp_path / "c.yaml", {**BASE, "_extends": ["x.yaml"]})
    with pytest.raises(ConfigError, match="_extends: must be a path to a campaign file"):
        load_campaign(child)
    (tmp_path / "list.yaml").write_text("- 1\n")
    _write(tmp_path / "c.yaml", {**BASE, "_extends": "list.yaml"})
    with pytest.raises(ConfigError, match=r"list\.yaml must be a YAML mapping, got list"):
        load_campaign(child)


def test_typo_after_merge_names_the_extending_file(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    child = _write(tmp_path / "c.yaml", {"_extends": "base.yaml", "execution": {"cylces": 2}})
    with pytest.raises(ConfigError) as info:
        load_campaign(child)
    assert str(info.value).startswith(f"{child}: execution.cylces: unknown key 'cylces'")


def test_dry_run_json_shows_the_merged_campaign(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    child = _write(tmp_path / "c.yaml", {"_extends": "base.yaml", "campaign_name": "variant",
                                         "execution": {"cycles": 1}})
    result = CliRunner().invoke(main, ["campaign", str(child), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["campaign"]["campaign_name"] == "variant"
    assert payload["campaign"]["execution"]["cycles"] == 1
    assert payload["campaign"]["execution"]["seed"] == 7
    assert "_extends" not in payload["campaign"]
    assert payload["counts"] == {"experiments": 3, "rejected": 0, "cycles": 1, "runs": 3}
