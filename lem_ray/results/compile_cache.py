"""The campaign's compile cache: compiled kernels and graphs, published once per key, loaded by
every later engine of that key on any node and in any rerun.

An entry is two objects under `<cache dir>/<key>/`: the artifact, `artifact-<sha256>.bin`,
written whole (locally under a hidden temp name, then renamed), and `manifest.json`, written
last, naming the artifact and its SHA-256. A reader trusts nothing the manifest does not vouch
for: a manifest that is unreadable, names another key, or whose artifact is missing or hashes
differently is a damaged entry, ignored with a warning (the engine compiles and publishes
anew, replacing it). So a reader never loads half an entry nor wrong kernels.

Two publishers of one key: locally the first manifest stands (created exclusively, by a hard
link) and the loser deletes its artifact; its engine still runs the kernels it compiled, and
its rows say so (`miss` and its own hash). On an object store there is no exclusive create:
the last manifest stands; every manifest names its own artifact, so either is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lem_ray.results.store import resolve

log = logging.getLogger(__name__)

FOLDER = "compile_cache"
"""The default location, inside the results directory (so --fresh carries it over)."""
MANIFEST = "manifest.json"
KEY_LENGTH = 24

HIT, MISS, OFF = "hit", "miss", "off"
"""A run's `compile_cache`: its engine loaded the key's entry, compiled and published it, or
the campaign turned the cache off. Null: the engine compiles nothing the cache holds."""


def cache_key(compiled: dict[str, Any], gpu_name: str | None, versions: dict[str, str]) -> str:
    """What decides the compiled code: the config fields that shape it (ExperimentConfig.
    compile_fields), the GPU model, and the compiler stack's versions. Pure."""
    canonical = json.dumps({"config": compiled, "gpu": gpu_name, "versions": versions},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def cache_location(results_dir: str, setting: Any) -> str | None:
    """Where the campaign's cache lives: `execution.compile_cache` (True, False or a
    CompileCacheDir) resolved against the results directory, a local path made absolute;
    None when off."""
    if setting is False:
        return None
    chosen = f"{str(results_dir).rstrip('/')}/{FOLDER}" if setting is True else str(setting.dir)
    # Workers run elsewhere (another working directory, another node): a path, made whole here.
    return chosen if "://" in chosen else str(Path(chosen).expanduser().absolute())


def check_location(setting: Any) -> None:
    """A `{dir: ...}` that cannot be opened (an unknown scheme, a bad URI) is refused before
    Ray starts; the default lives in the results directory, checked as such."""
    if setting is not True and setting is not False:
        resolve(str(setting.dir))


@dataclass(frozen=True)
class Entry:
    """One cached compile artifact with its key and checksum."""

    key: str
    sha256: str
    artifact: bytes


def digest(artifact: bytes) -> str:
    """SHA-256 of an artifact, checked when it is read back."""
    return hashlib.sha256(artifact).hexdigest()


class CompileCache:
    """One cache directory (a path or a URI pyarrow.fs understands)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.fs, self.base = resolve(location)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    def _dir(self, key: str) -> str:
        return f"{self.base}/{key}"

    def get(self, key: str) -> Entry | None:
        """The key's entry, whole and verified; None when there is none or it is damaged."""
        directory = self._dir(key)
        try:
            with self.fs.open_input_stream(f"{directory}/{MANIFEST}") as stream:
                raw = stream.read()
        except OSError:
            return None
        try:
            manifest = json.loads(raw)
            sha256, name = str(manifest["sha256"]), str(manifest["artifact"])
            owner = manifest["key"]
        except (ValueError, KeyError, TypeError):
            self._damaged(key, "unreadable manifest")
            return None
        if owner != key:
            self._damaged(key, f"manifest of another key ({owner!r})")
            return None
        if name != f"artifact-{sha256}.bin":
            self._damaged(key, f"manifest names an artifact not of its hash ({name!r})")
            return None
        try:
            with self.fs.open_input_stream(f"{directory}/{name}") as stream:
                artifact = stream.read()
        except OSError:
            self._damaged(key, f"artifact {name} missing")
            return None
        if digest(artifact) != sha256:
            self._damaged(key, "artifact does not match its manifest's SHA-256")
            return None
        return Entry(key, sha256, artifact)

    def _damaged(self, key: str, why: str) -> None:
        log.warning("lem-ray: compile cache entry %s in %s ignored (%s): compiling anew",
                    key, self.location, why)

    def discard(self, key: str) -> None:
        """Withdraw an entry that verified but that its library could not use (foreign
        content under a sound manifest), so the next engine's artifact replaces it."""
        try:
            self.fs.delete_file(f"{self._dir(key)}/{MANIFEST}")
        except OSError:
            return

    def publish(self, key: str, artifact: bytes, about: dict[str, Any]) -> Entry:
        """Publish this artifact under key unless a sound entry is already there; the entry
        that stands afterwards. `about` (versions, GPU, who compiled) goes in the manifest."""
        sha256 = digest(artifact)
        directory = self._dir(key)
        name = f"artifact-{sha256}.bin"
        self.fs.create_dir(directory, recursive=True)
        manifest = json.dumps({"key": key, "sha256": sha256, "artifact": name,
                               "size_bytes": len(artifact), **about}, sort_keys=True).encode()
        if not self._local:
            existing = self.get(key)
            if existing is not None:
                return existing
            with self.fs.open_output_stream(f"{directory}/{name}") as stream:
                stream.write(artifact)
            with self.fs.open_output_stream(f"{directory}/{MANIFEST}") as stream:
                stream.write(manifest)
            return Entry(key, sha256, artifact)
        self._write_local(f"{directory}/{name}", artifact)
        temp = self._temp(directory, MANIFEST, manifest)
        try:
            os.link(temp, f"{directory}/{MANIFEST}")
        except FileExistsError:
            existing = self.get(key)
            if existing is not None:
                if existing.sha256 != sha256:
                    Path(directory, name).unlink(missing_ok=True)
                return existing
            os.replace(temp, f"{directory}/{MANIFEST}")
        finally:
            Path(temp).unlink(missing_ok=True)
        return Entry(key, sha256, artifact)

    def _temp(self, directory: str, name: str, data: bytes) -> str:
        temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return temp

    def _write_local(self, path: str, data: bytes) -> None:
        directory, name = path.rsplit("/", 1)
        temp = self._temp(directory, name, data)
        try:
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)


def load_savings(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What loading from the compile cache saved, from experiments rows; None when no run
    used the cache.

    It compares fresh engine loads of one compile key: each hit's engine_load_s against the
    mean engine_load_s of that key's misses (loads that compiled) in the same rows, summed
    over hits. A hit whose key has no miss here (the entry came from another campaign or an
    earlier one moved aside by --fresh) is counted, not compared. Runs on a reused engine are
    left out: their engine_load_s is at most preparing new shapes.
    """
    loads = [r for r in rows if r.get("compile_cache") in (HIT, MISS)
             and not r.get("engine_reused") and r.get("engine_load_s") is not None]
    if not loads:
        return None
    cold: dict[str, list[float]] = {}
    for row in loads:
        if row["compile_cache"] == MISS:
            cold.setdefault(row["compile_cache_key"], []).append(row["engine_load_s"])
    hits = [r for r in loads if r["compile_cache"] == HIT]
    compared = [r for r in hits if r["compile_cache_key"] in cold]
    saved_s = sum(
        sum(cold[r["compile_cache_key"]]) / len(cold[r["compile_cache_key"]]) - r["engine_load_s"]
        for r in compared
    )
    return {"hits": len(hits), "misses": len(loads) - len(hits),
            "hits_compared": len(compared), "saved_s": saved_s}


def savings_text(savings: dict[str, Any] | None) -> str | None:
    """One line for status and the campaign summary."""
    if savings is None:
        return None
    text = (f"compile cache: {savings['hits']} engine loads from the cache, "
            f"{savings['misses']} compiled")
    if savings["hits_compared"]:
        text += (f"; loading from it saved {savings['saved_s']:,.0f} s over "
                 f"{savings['hits_compared']} loads (against the same key's compiling loads)")
    uncompared = savings["hits"] - savings["hits_compared"]
    if uncompared:
        text += f"; {uncompared} loads had no compiling load here to compare with"
    return text


SAVINGS_COLUMNS = ["compile_cache", "engine_reused", "engine_load_s", "compile_cache_key"]
"""The experiments columns load_savings reads."""


def campaign_savings(results_dir: str) -> dict[str, Any] | None:
    """load_savings over a results directory's experiments rows (None before any row)."""
    from lem_ray.results.store import exists, read_table

    if not exists(results_dir, "experiments"):
        return None
    return load_savings(
        read_table(results_dir, "experiments", columns=SAVINGS_COLUMNS).to_pylist())
