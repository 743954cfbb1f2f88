"""cluster/: the KubeRay manifests against KubeRay's CRD schema (the vendored subset), the
`ray up` config against Ray's own schema, and cluster/local.sh for real."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SCHEMAS = Path(__file__).parents[1] / "data" / "kuberay"
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
         "object": dict, "array": list}


def schema_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """What Kubernetes would refuse, or silently drop (unknown fields), in `value`."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is neither an integer nor a string"]
    if "anyOf" in schema:
        branches = [schema_errors(branch, value, path) for branch in schema["anyOf"]]
        return [] if any(not b for b in branches) else branches[0]
    kind = schema.get("type")
    if kind and (not isinstance(value, TYPES[kind]) or (kind in ("integer", "number")
                 and isinstance(value, bool))):
        return [f"{path}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not one of {schema['enum']}"]
    errors: list[str] = []
    if isinstance(value, dict) and not (path.count(".") == 1 and path.endswith(".metadata")):
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                errors += schema_errors(schema["properties"][key], sub, f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += schema_errors(schema["additionalProperties"], sub, f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field (Kubernetes would drop it)")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def _docs() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifests_match_the_crd(kind: str) -> None:
    vendored = json.loads((SCHEMAS / f"{kind.lower()}.json").read_text())
    assert vendored["source"]["repository"] == "https://github.com/ray-project/kuberay"
    doc = _docs()[kind]
    assert doc["apiVersion"] == vendored["source"]["version"]
    assert schema_errors(vendored["schema"], doc, kind) == []


def test_schema_check_catches_typos_and_wrong_types() -> None:
    schema = json.loads((SCHEMAS / "raycluster.json").read_text())["schema"]
    doc = copy.deepcopy(_docs()["RayCluster"])
    doc["spec"]["workerGroupSpec"] = doc["spec"].pop("workerGroupSpecs")
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0
    doc["spec"]["authOptions"]["mode"] = "on"
    errors = schema_errors(schema, doc, "RayCluster")
    assert "RayCluster.spec.workerGroupSpec: unknown field (Kubernetes would drop it)" in errors
    assert "RayCluster.spec.headGroupSpec.rayStartParams.num-gpus: 0 is not string" in errors
    assert any(e.startswith("RayCluster.spec.authOptions.mode: 'on' not one of") for e in errors)


def test_kuberay_cluster_is_set_up_the_way_lem_ray_needs() -> None:
    docs = _docs()
    cluster, job = docs["RayCluster"], docs["RayJob"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__, "the images' Ray is the driver's Ray"
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0", "no GPU for the driver"
    images = set()
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        gpus = group["rayStartParams"]["num-gpus"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus, group["groupName"]
        assert {"name": "results", "mountPath": "/results"} in container["volumeMounts"]
        images.add(container["image"])
    assert images == {"lem-ray:pytorch", "lem-ray:vllm", "lem-ray:tensorrt"}
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["entrypoint"].startswith("lem-ray campaign /campaigns/")
    assert "--results-dir /results/" in job["spec"]["entrypoint"]
    assert "entrypointNumGpus" not in job["spec"]
    pvc = yaml.safe_load((CLUSTER / "kuberay" / "results-pvc.yaml").read_text())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_ray_up_config_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before anything else
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"GPU": 0}
    assert ray.__version__ in config["docker"]["image"]
    assert "~/.ray/auth_token" in config["file_mounts"], "the token reaches every node"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


def test_nothing_turns_token_auth_off() -> None:
    files = [*CLUSTER.rglob("*"), ROOT / "docs" / "cluster.md", ROOT / "README.md"]
    for path in files:
        if path.is_file():
            text = path.read_text()
            assert "RAY_AUTH_MODE=disabled" not in text.replace("`RAY_AUTH_MODE=disabled`", "")
            assert "mode: disabled" not in text, path


def _processes_of(directory: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(directory in a for a in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


FAKE_RAY = """#!/usr/bin/env bash
# counts worker-node starts; the first fails as {first!r} says
if [[ "$1" == start && " $* " == *" --address="* ]]; then
  echo x >> "$STARTS"
  if [[ $(wc -l < "$STARTS") == 1 ]]; then echo "{first}"; exit 1; fi
fi
exit 0
"""


@pytest.mark.parametrize("first, tries, code", [
    ("Exception: The current node timed out during startup. This could happen", 2, 0),
    ("ConnectionError: could not reach the head", 1, 1),
])
def test_local_sh_starts_again_once_only_when_a_node_was_too_slow_to_register(
        tmp_path: Path, first: str, tries: int, code: int) -> None:
    """Ray gives a node 30 s to register; a loaded machine can miss it (seen in CI)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ray").write_text(FAKE_RAY.format(first=first))
    (fake / "ray").chmod(0o755)
    directory, starts = tmp_path / "cluster", tmp_path / "starts"
    env = {**os.environ, "LEMRAY_LOCAL_DIR": str(directory), "PYTHON": sys.executable,
           "STARTS": str(starts), "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    started = subprocess.run([str(CLUSTER / "local.sh"), "start", "--workers", "1"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == code, started.stderr
    assert len(starts.read_text().splitlines()) == tries
    assert ("starting once more" in started.stderr) == (tries == 2)
    assert Path(directory, "env").exists() == (code == 0)


@pytest.mark.slow
def test_local_sh_starts_a_token_authenticated_multi_node_cluster_and_stops_it() -> None:
    directory = tempfile.mkdtemp(prefix="lemray-")
    os.rmdir(directory)  # local.sh makes it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(LEMRAY_LOCAL_DIR=directory, PYTHON=sys.executable,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    script = str(CLUSTER / "local.sh")
    try:
        started = subprocess.run([script, "start", "--workers", "1", "--gpus-per-node", "2",
                                  "--cpus-per-node", "1"], env=env, capture_output=True,
                                 text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        settings = dict(line.removeprefix("export ").split("=", 1)
                        for line in Path(directory, "env").read_text().splitlines())
        assert settings["RAY_AUTH_MODE"] == "token"
        probe = ("import ray, json; ray.init(); print(json.dumps(sorted("
                 "n['Resources'].get('GPU', 0) for n in ray.nodes() if n['Alive'])))")
        seen = subprocess.run([sys.executable, "-c", probe], env={**env, **settings},
                              capture_output=True, text=True, timeout=120)
        assert seen.returncode == 0, seen.stderr[-2000:]
        assert json.loads(seen.stdout.strip().splitlines()[-1]) == [2.0, 2.0]
        no_token = {**env, **settings, "RAY_AUTH_TOKEN_PATH": str(Path(directory, "none"))}
        refused = subprocess.run([sys.executable, "-c", probe], env=no_token,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0, "a client without the token is refused"
    finally:
        stopped = subprocess.run([script, "stop"], env=env, capture_output=True, text=True,
                                 timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not _processes_of(directory + "/"), "stop leaves none of its processes"
    assert not Path(directory).exists()
