"""The campaign's compile cache: compiled kernels and graphs (or a whole built engine),
published once per key, loaded by every later engine of that key on any node and in any rerun.

An entry is two objects under `<cache dir>/<key>/`: the artifact, `artifact-<sha256>.bin`,
written whole, and `manifest.json`, written last, naming the artifact, its SHA-256 and size.
An artifact is copied a chunk at a time (CHUNK_BYTES), hashed as it goes, in both directions:
a file (a TensorRT engine is most of a model's size) is never held in memory whole; only the
bytes API (`get`, `publish`, for small artifacts) holds one. Locally the artifact is written
under a hidden temp name while it is hashed, then renamed; an object store has no rename, so
a local file is hashed first and then uploaded under its final name (an object appears whole
when its upload completes).

A reader trusts nothing the manifest does not vouch for: a manifest that is unreadable, names
another key, or whose artifact is missing or hashes differently is a damaged entry, ignored
with a warning (the engine compiles and publishes anew, replacing it). A fetch into a file
writes a temp name beside it and renames it only once the hash matched. So a reader never
loads half an entry nor wrong kernels. A reader that finds an artifact not matching its
manifest withdraws that manifest, since publishers, which check a standing entry's manifest
and artifact size but do not read a large artifact back, would otherwise keep it.

Two publishers of one key: locally the first manifest stands (created exclusively, by a hard
link) and the loser deletes its artifact; its engine still runs the kernels it compiled, and
its rows say so (`miss` and its own hash). On an object store there is no exclusive create:
the last manifest stands; every manifest names its own artifact, so either is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from lem_ray.results.store import resolve

log = logging.getLogger(__name__)

FOLDER = "compile_cache"
"""The default location, inside the results directory (so --fresh carries it over)."""
MANIFEST = "manifest.json"
KEY_LENGTH = 24
CHUNK_BYTES = 8 << 20
"""The most of an artifact in memory at once while it is copied and hashed."""

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


@dataclass(frozen=True)
class Published:
    """What a publish did: the SHA-256 of the artifact given, and that of the entry standing
    afterwards (another publisher's, when it won the race)."""

    sha256: str
    standing: str


@dataclass(frozen=True)
class _Manifest:
    sha256: str
    artifact: str
    size_bytes: int


def digest(artifact: bytes) -> str:
    """SHA-256 of an artifact, checked when it is read back."""
    return hashlib.sha256(artifact).hexdigest()


def file_digest(path: str) -> str:
    """SHA-256 of an artifact file, read a chunk at a time."""
    with open(path, "rb") as source:
        return _copy(source, None)[0]


def _copy(source: BinaryIO, sink: BinaryIO | None) -> tuple[str, int]:
    """Source into sink (None: only read), a chunk at a time: its SHA-256 and size."""
    hasher, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK_BYTES):
        hasher.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return hasher.hexdigest(), size


def _artifact_name(sha256: str) -> str:
    return f"artifact-{sha256}.bin"


class CompileCache:
    """One cache directory (a path or a URI pyarrow.fs understands)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.fs, self.base = resolve(location)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    def _dir(self, key: str) -> str:
        return f"{self.base}/{key}"

    def get(self, key: str) -> Entry | None:
        """The key's entry in memory, whole and verified; None when there is none or it is
        damaged. For small artifacts: a large one is `fetch`ed into a file."""
        sink = io.BytesIO()
        sha256 = self._read(key, sink)
        return None if sha256 is None else Entry(key, sha256, sink.getvalue())

    def fetch(self, key: str, path: str) -> str | None:
        """The key's artifact into the local file `path`, streamed and verified; its SHA-256,
        or None (no file written) when there is no entry or it is damaged."""
        temp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "wb") as sink:
                sha256 = self._read(key, sink)
            if sha256 is not None:
                os.replace(temp, path)
            return sha256
        finally:
            Path(temp).unlink(missing_ok=True)

    def _read(self, key: str, sink: BinaryIO) -> str | None:
        """The key's artifact copied into sink while it is hashed; its SHA-256, or None when
        there is no entry or it is damaged (what the sink got is then not to be used)."""
        manifest, damage = self._manifest(key)
        if manifest is None:
            if damage is not None:
                self._damaged(key, damage)
            return None
        try:
            with self.fs.open_input_stream(f"{self._dir(key)}/{manifest.artifact}") as stream:
                found = _copy(stream, sink)
        except OSError as exc:
            self._damaged(key, f"artifact {manifest.artifact} unreadable: {exc}")
            return None
        if found != (manifest.sha256, manifest.size_bytes):
            self._damaged(key, "artifact does not match its manifest's SHA-256 and size")
            self.discard(key, manifest.sha256)
            return None
        return manifest.sha256

    def _manifest(self, key: str) -> tuple[_Manifest | None, str | None]:
        """(the key's manifest, None) when it is sound; (None, why) when it is damaged;
        (None, None) when there is none."""
        try:
            with self.fs.open_input_stream(f"{self._dir(key)}/{MANIFEST}") as stream:
                raw = stream.read()
        except OSError:
            return None, None
        try:
            content = json.loads(raw)
            found = _Manifest(str(content["sha256"]), str(content["artifact"]),
                              int(content["size_bytes"]))
            owner = content["key"]
        except (ValueError, KeyError, TypeError):
            return None, "unreadable manifest"
        if owner != key:
            return None, f"manifest of another key ({owner!r})"
        if found.artifact != _artifact_name(found.sha256):
            return None, f"manifest names an artifact not of its hash ({found.artifact!r})"
        return found, None

    def _standing(self, key: str) -> str | None:
        """The SHA-256 of the key's entry when its manifest is sound and names an artifact
        there of its size; not read back (readers verify, and withdraw what fails)."""
        manifest, _ = self._manifest(key)
        if manifest is None:
            return None
        info = self.fs.get_file_info(f"{self._dir(key)}/{manifest.artifact}")
        if info.type != pafs.FileType.File or info.size != manifest.size_bytes:
            return None
        return manifest.sha256

    def _damaged(self, key: str, why: str) -> None:
        log.warning("lem-ray: compile cache entry %s in %s ignored (%s): compiling anew",
                    key, self.location, why)

    def discard(self, key: str, sha256: str | None = None) -> None:
        """Withdraw an entry (its manifest) so the next engine's artifact replaces it: one
        that did not verify, or that verified but its library could not use (foreign content
        under a sound manifest). With sha256, only while the manifest still names that
        artifact: another publisher may have replaced the entry since it was read."""
        if sha256 is not None:
            manifest, _ = self._manifest(key)
            if manifest is not None and manifest.sha256 != sha256:
                return
        try:
            self.fs.delete_file(f"{self._dir(key)}/{MANIFEST}")
        except OSError:
            return

    def publish(self, key: str, artifact: bytes, about: dict[str, Any]) -> Published:
        """Publish an artifact held in memory (see publish_file)."""
        return self._publish(key, io.BytesIO(artifact), about)

    def publish_file(self, key: str, path: str, about: dict[str, Any]) -> Published:
        """Publish the local file `path` under key, streamed, unless a sound entry is already
        there. `about` (versions, GPU, who compiled) goes in the manifest."""
        with open(path, "rb") as source:
            return self._publish(key, source, about)

    def _publish(self, key: str, source: BinaryIO, about: dict[str, Any]) -> Published:
        directory = self._dir(key)
        self.fs.create_dir(directory, recursive=True)
        if not self._local:
            sha256, size = _copy(source, None)
            standing = self._standing(key)
            if standing is None:
                source.seek(0)
                with self.fs.open_output_stream(f"{directory}/{_artifact_name(sha256)}") as out:
                    _copy(source, out)
                with self.fs.open_output_stream(f"{directory}/{MANIFEST}") as out:
                    out.write(_manifest_bytes(key, sha256, size, about))
            return Published(sha256, standing or sha256)
        sha256, size = self._write_artifact(directory, source)
        temp = self._temp(directory, MANIFEST, _manifest_bytes(key, sha256, size, about))
        try:
            os.link(temp, f"{directory}/{MANIFEST}")
        except FileExistsError:
            standing = self._standing(key)
            if standing is not None:
                if standing != sha256:
                    Path(directory, _artifact_name(sha256)).unlink(missing_ok=True)
                return Published(sha256, standing)
            os.replace(temp, f"{directory}/{MANIFEST}")
        finally:
            Path(temp).unlink(missing_ok=True)
        return Published(sha256, sha256)

    def _write_artifact(self, directory: str, source: BinaryIO) -> tuple[str, int]:
        """Copied under a temp name while hashed, synced, then renamed to its hash's name."""
        temp = f"{directory}/.artifact.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "wb") as out:
                sha256, size = _copy(source, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, f"{directory}/{_artifact_name(sha256)}")
        finally:
            Path(temp).unlink(missing_ok=True)
        return sha256, size

    def _temp(self, directory: str, name: str, data: bytes) -> str:
        temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return temp


def _manifest_bytes(key: str, sha256: str, size: int, about: dict[str, Any]) -> bytes:
    return json.dumps({"key": key, "sha256": sha256, "artifact": _artifact_name(sha256),
                       "size_bytes": size, **about}, sort_keys=True).encode()


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
