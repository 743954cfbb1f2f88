"""Runtime environments: the spec, its Ray form, where the campaign takes it from, and for
real on Ray: a pytorch run inside a second virtual environment, and one refused up front."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import ray
from pydantic import ValidationError

from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.errors import ConfigError
from lem_ray.execution.checks.runtime_env import mismatch
from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.planning.plan import plan_campaign
from tests.conftest import TINY_BASE


@pytest.mark.parametrize(
    ("spec", "ray_env"),
    [
        ({}, None),
        ({"env_vars": {"A": "1"}}, {"env_vars": {"A": "1"}}),
        ({"kind": "image_uri", "image_uri": "reg/lem-ray:vllm"}, {"image_uri": "reg/lem-ray:vllm"}),
        ({"kind": "py_executable", "py_executable": "/opt/envs/trt/bin/python"},
         {"py_executable": "/opt/envs/trt/bin/python"}),
        ({"kind": "pip", "packages": ["vllm==0.26.0"]}, {"pip": {"packages": ["vllm==0.26.0"]}}),
        ({"kind": "uv", "packages": ["vllm==0.26.0"], "env_vars": {"B": "2"}},
         {"uv": {"packages": ["vllm==0.26.0"]}, "env_vars": {"B": "2"}}),
    ],
)
def test_ray_runtime_env_per_kind(spec: dict, ray_env: dict | None) -> None:
    assert RuntimeEnvSpec.model_validate(spec).ray_runtime_env() == ray_env


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "image_uri"}, "needs image_uri"),
        ({"kind": "pip"}, "needs packages"),
        ({"kind": "none", "py_executable": "/x"}, "takes no py_executable"),
        ({"kind": "image_uri", "image_uri": "i", "packages": ["p"]}, "takes no packages"),
        ({"kind": "conda"}, "kind"),
        ({"kind": "none", "working_dir": "."}, "working_dir"),
    ],
)
def test_invalid_specs_are_refused(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RuntimeEnvSpec.model_validate(spec)


def test_rows_record_the_spec_as_given() -> None:
    assert json.loads(RuntimeEnvSpec().to_json()) == {"kind": "none"}
    spec = RuntimeEnvSpec(kind="image_uri", image_uri="reg/lem-ray:tensorrt")
    assert json.loads(spec.to_json()) == {"kind": "image_uri", "image_uri": "reg/lem-ray:tensorrt"}


def test_a_version_mismatch_is_named() -> None:
    here = {"python": sys.version.split()[0], "ray": ray.__version__}
    assert mismatch(here) is None
    assert "Ray 1.0.0" in mismatch({**here, "ray": "1.0.0"})
    assert "Python 2.7.18" in mismatch({**here, "python": "2.7.18"})


def campaign(runtime_env: dict) -> dict:
    return {"campaign_name": "envs", "base": {**TINY_BASE, "backend": "pytorch"},
            "execution": {"cycles": 1}, "runtime_env": runtime_env}


def test_campaign_takes_a_file_relative_to_itself_or_inline(tmp_path: Path, write_campaign) -> None:
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "pytorch.yaml").write_text(
        "kind: py_executable\npy_executable: /p/python\n"
    )
    plan = plan_campaign(write_campaign(campaign({"pytorch": "envs/pytorch.yaml"})))
    assert plan.runtime_env("pytorch").py_executable == "/p/python"
    assert plan.runtime_env("vllm").kind == "none"
    inline = plan_campaign(campaign({"pytorch": {"kind": "uv", "packages": ["x"]}}))
    assert inline.runtime_envs()["pytorch"].packages == ["x"]
    (tmp_path / "envs" / "pytorch.yaml").write_text("kind: py_executable\n")
    with pytest.raises(ConfigError, match="needs py_executable"):
        plan_campaign(write_campaign(campaign({"pytorch": "envs/pytorch.yaml"}))).runtime_envs()


def test_shipped_runtime_env_files_are_valid() -> None:
    folder = Path(__file__).resolve().parents[2] / "runtime_envs"
    import yaml

    kinds = {p.stem: RuntimeEnvSpec.model_validate(yaml.safe_load(p.read_text())).kind
             for p in folder.glob("*.yaml")}
    assert kinds == {"pytorch": "none", "vllm": "image_uri", "tensorrt": "image_uri"}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """A Ray of its own: a temp dir of its own keeps it from joining a `ray start` cluster
    that another process left registered in /tmp/ray."""
    ray.init(num_cpus=2, include_dashboard=False, namespace="lem-ray-test-envs",
             runtime_env={"env_vars": WORKER_ENV},
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def second_environment(root: Path) -> Path:
    """A virtual environment of its own (its own interpreter and prefix) that sees this one's
    packages through a .pth file: seconds to build, no download."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    ours = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "lem_ray_parent.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n")
    return python


@pytest.mark.slow
def test_the_worker_runs_in_the_backends_environment(local_ray, tmp_path: Path) -> None:
    python = second_environment(tmp_path / "venv-pytorch")
    assert str(python) != sys.executable  # venvs link the same binary; the path tells them apart
    spec = {"kind": "py_executable", "py_executable": str(python)}
    result = run_campaign(campaign({"pytorch": spec}), results_dir=tmp_path / "out")
    assert result.counts["ok"] == 1, result.failures
    (row,) = ds.dataset(tmp_path / "out" / "experiments").to_table().to_pylist()
    assert row["status"] == "ok"
    assert row["python_executable"] == str(python)
    assert json.loads(row["runtime_env_json"]) == spec

    missing = {"kind": "py_executable", "py_executable": str(tmp_path / "nowhere" / "python")}
    refused = run_campaign(campaign({"pytorch": missing}), results_dir=tmp_path / "refused")
    assert refused.counts["failed"] == 1
    (row,) = ds.dataset(tmp_path / "refused" / "experiments").to_table().to_pylist()
    assert row["status"] == "failed" and row["python_executable"] is None
    assert f"no executable {missing['py_executable']} on node" in row["error"]
    assert json.loads(row["runtime_env_json"]) == missing
