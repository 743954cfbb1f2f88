"""Cut KubeRay's CRD schemas down to the fields cluster/kuberay/*.yaml use, for the test.

The full CRDs are ~1 MB each (they embed the Kubernetes pod template schema). This keeps, for
every field our manifests set, its type, enum, format, required list and int-or-string mark,
and writes tests/data/kuberay/<kind>.json with where it came from. A field that the CRD does
not know is reported and left out, so the test then fails on it.

    python scripts/vendor_kuberay_schema.py KUBERAY_CHECKOUT COMMIT
where KUBERAY_CHECKOUT is a clone of https://github.com/ray-project/kuberay.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = {
    "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
}
LEAF_KEYS = ("type", "enum", "format", "anyOf", "x-kubernetes-int-or-string",
             "x-kubernetes-preserve-unknown-fields")


def prune(
    schema: dict[str, Any], values: list[Any], path: str, unknown: list[str]
) -> dict[str, Any]:
    """The part of `schema` that `values` (all instances at one path) touch."""
    out = {k: schema[k] for k in LEAF_KEYS if k in schema}
    if path.count(".") == 1 and path.endswith(".metadata"):
        return out  # ObjectMeta: the CRD leaves it to the API server, and so do we
    dicts = [v for v in values if isinstance(v, dict)]
    lists = [v for v in values if isinstance(v, list)]
    if dicts:
        if "required" in schema:
            out["required"] = schema["required"]
        properties = schema.get("properties", {})
        keys = sorted({k for d in dicts for k in d})
        kept = {}
        for key in keys:
            sub = [d[key] for d in dicts if key in d]
            if key in properties:
                kept[key] = prune(properties[key], sub, f"{path}.{key}", unknown)
            elif "additionalProperties" not in schema and \
                    not schema.get("x-kubernetes-preserve-unknown-fields"):
                unknown.append(f"{path}.{key}")
        if kept:
            out["properties"] = kept
        if "additionalProperties" in schema:
            out["additionalProperties"] = schema["additionalProperties"]
    if lists and "items" in schema:
        out["items"] = prune(schema["items"], [i for v in lists for i in v], f"{path}[]", unknown)
    return out


def main(checkout: str, commit: str) -> int:
    manifests = [d for p in sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))
                 for d in yaml.safe_load_all(p.read_text()) if d]
    unknown: list[str] = []
    for kind, crd_path in CRDS.items():
        crd = yaml.safe_load((Path(checkout) / crd_path).read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        docs = [d for d in manifests if d.get("kind") == kind]
        schema = prune(version["schema"]["openAPIV3Schema"], docs, kind, unknown)
        target = ROOT / "tests" / "data" / "kuberay" / f"{kind.lower()}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({
            "source": {"repository": "https://github.com/ray-project/kuberay",
                       "path": crd_path, "commit": commit, "version": "ray.io/v1",
                       "note": "subset: only the fields cluster/kuberay/*.yaml use, cut by "
                               "scripts/vendor_kuberay_schema.py"},
            "schema": schema,
        }, indent=1, sort_keys=True) + "\n")
        print(f"wrote {target.relative_to(ROOT)}")
    for path in unknown:
        print(f"not in the CRD: {path}", file=sys.stderr)
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
