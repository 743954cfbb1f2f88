"""A damaged manifest rebuilt from the dataset, which is the truth it only indexes.

The experiments rows say which runs ended ok or failed and after how many attempts; the plan
says which runs exist. What is lost with the manifest is only what no row records: a run
interrupted or in progress becomes pending, which is what resuming does with it anyway. The
damaged files are moved to `manifest/damaged-<UTC time>/`, never deleted.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs

from lem_ray.records import RunKey
from lem_ray.results.journal import FORMAT, MANIFEST_DIR, JournalWriter
from lem_ray.results.manifest import ManifestDamaged, load_manifest, new_entry
from lem_ray.results.store import read_table, resolve

DAMAGED_PREFIX = "damaged-"


def rebuilt_runs(runs: list[RunKey], rows: list[dict[str, Any]]
                 ) -> dict[str, dict[str, Any]]:
    """Entries for the plan's runs and every run with a row: ok if an attempt ended ok, else
    failed (with the last attempt's error) if one ended failed, else pending."""
    entries = {r.run_id: new_entry(r.experiment_id, r.cycle) for r in runs}
    for row in sorted(rows, key=lambda r: r["attempt"]):
        key = RunKey.of_row(row).run_id
        entry = entries.setdefault(key, new_entry(row["experiment_id"], row["cycle"]))
        entry["attempt"] = max(entry["attempt"], row["attempt"])
        if entry["state"] == "ok":
            continue
        ok = row["status"] == "ok"
        entry.update(state="ok" if ok else "failed", error=None if ok else row["error"],
                     node_id=row["node_id"], gpu_ids=list(row["gpu_ids"] or []))
    return entries


def _move_damaged(results_dir: str) -> str:
    """Every manifest file into manifest/damaged-<time>/ (a `manifest` that is a file: the
    whole of it); returns where they went."""
    fs, base = resolve(results_dir)
    directory = f"{base}/{MANIFEST_DIR}"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if fs.get_file_info(directory).type == pafs.FileType.File:
        aside = f"{base}/{MANIFEST_DIR}.{DAMAGED_PREFIX}{stamp}"
        fs.move(directory, aside)
        return aside
    aside = f"{directory}/{DAMAGED_PREFIX}{stamp}"
    fs.create_dir(aside)
    for info in fs.get_file_info(pafs.FileSelector(directory)):
        if not info.base_name.startswith(DAMAGED_PREFIX):
            fs.move(info.path, f"{aside}/{info.base_name}")
    return aside


def rebuild_if_damaged(results_dir: str, campaign_name: str,
                       runs: list[RunKey]) -> str | None:
    """Rebuild a damaged manifest from the dataset (only the directory's own driver may);
    returns the warning that says what was rebuilt, None when the manifest was readable."""
    try:
        load_manifest(results_dir)
        return None
    except ManifestDamaged as exc:
        damage = str(exc)
    columns = ["experiment_id", "cycle", "attempt", "status", "error", "node_id", "gpu_ids"]
    rows = read_table(results_dir, "experiments").select(columns).to_pylist()
    entries = rebuilt_runs(runs, rows)
    aside = _move_damaged(results_dir)
    payload = json.dumps({"format": FORMAT, "seq": 0, "campaign_name": campaign_name,
                          "runs": entries}, separators=(",", ":")).encode()
    writer = JournalWriter(results_dir)
    writer.snapshot(payload, 0)
    counts = Counter(entry["state"] for entry in entries.values())
    return (f"{damage}; the manifest was rebuilt from the dataset: {counts['ok']} ok, "
            f"{counts['failed']} failed, {counts['pending']} to run; the damaged files were "
            f"moved to {aside}/")
