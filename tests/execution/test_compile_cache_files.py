"""The compile cache's file artifacts (a built TensorRT engine is most of a model's size):
published and fetched a chunk at a time, never held whole, with the same guarantees as the
bytes API (one complete entry under a race, damage ignored with a warning and withdrawn), and
the worker handing them to a backend through local temp files."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from lem_ray.backends.base import Backend, DeviceInfo
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.worker.compiled import LOCAL_PREFIX, CompiledArtifacts
from lem_ray.records import RequestRecord
from lem_ray.results import compile_cache
from lem_ray.results.compile_cache import MANIFEST, CompileCache, file_digest
from tests.conftest import TINY_BASE

CHUNK = 64 << 10
VERSIONS = {"torch": "2.13.0", "cuda": "13.0"}


def _file(path: Path, size: int, seed: int = 0) -> str:
    """A file of `size` pseudo-random bytes, written a chunk at a time; its SHA-256."""
    rng, hasher = random.Random(seed), hashlib.sha256()
    with open(path, "wb") as out:
        for offset in range(0, size, CHUNK):
            chunk = rng.randbytes(min(CHUNK, size - offset))
            hasher.update(chunk)
            out.write(chunk)
    return hasher.hexdigest()


def test_a_file_round_trips_a_chunk_at_a_time_never_whole_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 24 << 20
    source = tmp_path / "engine.tar"
    sha256 = _file(source, size)
    monkeypatch.setattr(compile_cache, "CHUNK_BYTES", CHUNK)
    cache = CompileCache(str(tmp_path / "cache"))
    tracemalloc.start()
    try:
        published = cache.publish_file("k", str(source), {"by": "test"})
        fetched = cache.fetch("k", str(tmp_path / "fetched.tar"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (published.sha256, published.standing, fetched) == (sha256, sha256, sha256)
    assert peak < size // 32, f"peak {peak} bytes for a {size}-byte artifact"
    assert file_digest(str(tmp_path / "fetched.tar")) == sha256
    manifest = json.loads((tmp_path / "cache" / "k" / MANIFEST).read_text())
    assert (manifest["size_bytes"], manifest["by"]) == (size, "test")
    assert sorted(p.name for p in (tmp_path / "cache" / "k").iterdir()) == [
        f"artifact-{sha256}.bin", MANIFEST], "no temp file left"


def _publish_file_after(start: Any, location: str, source: str) -> tuple[str, str]:
    start.wait()
    published = CompileCache(location).publish_file("k", source, {})
    return published.sha256, published.standing


def test_racing_file_publishers_leave_one_complete_entry(tmp_path: Path) -> None:
    sources = [tmp_path / f"engine-{i}.tar" for i in range(4)]
    shas = [_file(source, 3 << 20, seed=i) for i, source in enumerate(sources)]
    processes = multiprocessing.get_context("fork")
    with processes.Manager() as manager, processes.Pool(4) as pool:
        barrier = manager.Barrier(4)
        results = pool.starmap(_publish_file_after,
                               [(barrier, str(tmp_path / "cache"), str(s)) for s in sources])
    assert sorted(own for own, _ in results) == sorted(shas), "each says its own artifact"
    standing = {stands for _, stands in results}
    assert len(standing) == 1, "every loser sees the winner"
    winner = standing.pop()
    assert CompileCache(str(tmp_path / "cache")).fetch("k", str(tmp_path / "got")) == winner
    left = sorted(p.name for p in (tmp_path / "cache" / "k").iterdir())
    assert left == sorted([MANIFEST, f"artifact-{winner}.bin"]), "losers removed theirs"


def test_a_damaged_file_artifact_is_not_fetched_and_is_withdrawn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "engine.tar"
    sha256 = _file(source, 1 << 20)
    cache = CompileCache(str(tmp_path / "cache"))
    cache.publish_file("k", str(source), {})
    artifact = tmp_path / "cache" / "k" / f"artifact-{sha256}.bin"
    with open(artifact, "r+b") as damaged:  # same size, one byte changed
        damaged.seek(1000)
        damaged.write(b"\0" if damaged.read(1) != b"\0" else b"\1")
    with caplog.at_level(logging.WARNING):
        assert cache.fetch("k", str(tmp_path / "got")) is None
    assert "SHA-256" in caplog.text
    assert not any(p.name.startswith("got") for p in tmp_path.iterdir()), "nothing half there"
    assert not (tmp_path / "cache" / "k" / MANIFEST).exists(), "withdrawn"
    again = cache.publish_file("k", str(source), {})
    assert again.standing == sha256 and cache.fetch("k", str(tmp_path / "got")) == sha256


def test_an_object_store_hashes_first_then_uploads_and_keeps_a_standing_entry(
    tmp_path: Path,
) -> None:
    """No rename there: the artifact is uploaded under its hash's name, the manifest last."""
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    sha_a, sha_b = _file(first, 1 << 20, seed=1), _file(second, 1 << 20, seed=2)
    cache = CompileCache("mock:///cache")
    assert cache.publish_file("k", str(first), {}).standing == sha_a
    late = cache.publish_file("k", str(second), {})
    assert (late.sha256, late.standing) == (sha_b, sha_a), "a sound entry is not replaced"
    assert cache.fetch("k", str(tmp_path / "got")) == sha_a
    assert file_digest(str(tmp_path / "got")) == sha_a


class _FileCompiling(Backend[Any]):
    """Compiles an 'engine' file; takes one from the cache instead when handed one."""

    name = "pytorch"
    artifact_is_file = True

    def load(self) -> None:
        self.built = not hasattr(self, "loaded")

    def generate(self, prompts: list[str], max_output_tokens: int | None = None
                 ) -> list[RequestRecord]:
        return []

    def compiler_versions(self) -> dict[str, str] | None:
        return VERSIONS

    def use_compiled_file(self, path: str) -> None:
        self.handed = path
        content = Path(path).read_bytes()
        if content == b"refused":
            raise ValueError("not an engine")
        self.loaded = content

    def compiled_file(self, directory: str) -> str | None:
        path = Path(directory, "engine.tar")
        path.write_bytes(b"engine of batch 1")
        return str(path)


class _DiskFull(_FileCompiling):
    def compiled_file(self, directory: str) -> str | None:
        raise OSError(28, "No space left on device")


def _cycle(worker: CompiledArtifacts, kind: type[_FileCompiling] = _FileCompiling
           ) -> tuple[_FileCompiling, str | None, str | None]:
    cfg = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch"})
    backend = kind(cfg, DeviceInfo("cuda", 1))
    use = worker.before(backend, cfg)
    backend.load()
    use = worker.after(backend, use)
    return backend, use.status, use.sha256


def _temp_folders() -> set[str]:
    return {p.name for p in Path(os.environ.get("TMPDIR", "/tmp")).glob(f"{LOCAL_PREFIX}*")}


def test_the_worker_hands_file_artifacts_over_through_temp_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    with caplog.at_level(logging.WARNING):
        _, status, none = _cycle(CompiledArtifacts(str(tmp_path / "cache"), "NVIDIA H200"),
                                 _DiskFull)
    assert (status, none) == ("miss", None), "a local disk that is full never fails the run"
    assert "not written locally" in caplog.text
    caplog.clear()
    first, status, sha256 = _cycle(CompiledArtifacts(str(tmp_path / "cache"), "NVIDIA H200"))
    assert (status, sha256, first.built) == (
        "miss", hashlib.sha256(b"engine of batch 1").hexdigest(), True)
    second, status, again = _cycle(CompiledArtifacts(str(tmp_path / "cache"), "NVIDIA H200"))
    assert (status, again, second.built, second.loaded) == ("hit", sha256, False,
                                                            b"engine of batch 1")
    assert not Path(second.handed).exists() and not _temp_folders(), "temp files removed"

    key_folder = next(p for p in (tmp_path / "cache").iterdir())
    manifest = json.loads((key_folder / MANIFEST).read_text())
    (key_folder / manifest["artifact"]).unlink()
    refused = tmp_path / "refused"
    refused.write_bytes(b"refused")
    CompileCache(str(tmp_path / "cache")).publish_file(key_folder.name, str(refused), {})
    with caplog.at_level(logging.WARNING):
        third, status, own = _cycle(CompiledArtifacts(str(tmp_path / "cache"), "NVIDIA H200"))
    assert (status, own, third.built) == ("miss", sha256, True) and "not usable" in caplog.text
    got = CompileCache(str(tmp_path / "cache")).fetch(key_folder.name, str(tmp_path / "got"))
    assert got == sha256, "the refused entry was withdrawn and replaced"
