"""Which campaign a results directory belongs to, and whether it can take results at all.

`<results_dir>/campaign.json` records the campaign's name and a fingerprint of its grid. A
campaign never writes into another campaign's directory (its ok runs would be counted as ours
and both campaigns' rows mixed); the same campaign with a changed grid is welcome and adds its
new experiments. Everything here runs before Ray starts, so a bad directory costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lem_ray.errors import ConfigError
from lem_ray.results.manifest import ManifestDamaged, load_manifest
from lem_ray.results.store import atomic_write, resolve

OWNER_FILE = "campaign.json"


@dataclass(frozen=True)
class Owner:
    """The campaign a results directory belongs to, and its grid's fingerprint."""

    campaign_name: str
    grid_fingerprint: str


def grid_fingerprint(experiment_ids: list[str], cycles: int) -> str:
    """Equal for equal plans, whatever their order; tells a changed grid from the same one."""
    text = json.dumps({"experiments": sorted(experiment_ids), "cycles": cycles})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_owner(results_dir: str | Path) -> Owner | None:
    """The recorded owner; for directories written before campaign.json, the manifest's name."""
    fs, base = resolve(results_dir)
    path = f"{base}/{OWNER_FILE}"
    if fs.get_file_info(path).type == pafs.FileType.File:
        try:
            with fs.open_input_stream(path) as stream:
                data = json.loads(stream.read().decode())
            return Owner(str(data["campaign_name"]), str(data.get("grid_fingerprint", "")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"cannot read {OWNER_FILE} ({type(exc).__name__}); it records which campaign "
                "owns the directory: restore it, or --fresh to move the directory aside",
                file=str(results_dir),
            ) from None
    try:
        name = load_manifest(results_dir).get("campaign_name")
    except ManifestDamaged as exc:
        raise ConfigError(f"{exc}; with no {OWNER_FILE} to say which campaign owns the "
                          "directory it cannot be rebuilt: restore it, or --fresh to move the "
                          "directory aside") from None
    return Owner(name, "") if name else None


def _check_local(base: str, results_dir: str) -> None:
    """A directory (or nothing yet) under a directory we may write to."""
    path = Path(base)
    if path.exists() and not path.is_dir():
        raise ConfigError("the results directory is a file, not a directory", file=results_dir)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{probe} is a file, so the results directory cannot be created there",
                          file=results_dir)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"no permission to write in {probe}", file=results_dir)


def check_results_dir(results_dir: str | Path, campaign_name: str, fresh: bool = False) -> None:
    """Refuse, with the reason, a results directory this campaign cannot use. A damaged
    manifest of this campaign's directory is ManifestDamaged: the campaign can rebuild it."""
    text = str(results_dir)
    fs, base = resolve(text)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            _check_local(base, text)
        except OSError as exc:
            raise ConfigError(f"cannot use this path: {exc.strerror or exc}", file=text) from None
    else:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            raise ConfigError("the results location is a file, not a directory", file=text)
    if fresh:
        return
    owner = read_owner(text)
    if owner is not None and owner.campaign_name != campaign_name:
        raise ConfigError(
            f"belongs to campaign {owner.campaign_name!r}, not {campaign_name!r}: choose another "
            "results directory, or --fresh to move the old one aside",
            file=text,
        )
    load_manifest(text)


def claim(results_dir: str | Path, owner: Owner) -> None:
    """Record (or update, when the grid changed) the owner; the driver calls this once."""
    record: dict[str, Any] = {**asdict(owner), "updated_at": time.time()}
    payload = json.dumps(record, indent=1, sort_keys=True).encode()

    def write(path: str, fs: pafs.FileSystem) -> None:
        with fs.open_output_stream(path) as stream:
            stream.write(payload)

    atomic_write(results_dir, "", OWNER_FILE, write)
