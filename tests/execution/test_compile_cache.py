"""The compile cache: its key, atomic publishing under a race, damaged entries rebuilt, what
rows say, --fresh keeping it, and a real Inductor Mega-Cache round trip on the CPU."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from lem_ray.backends.base import Backend, DeviceInfo
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.errors import ConfigError
from lem_ray.execution.driver.guard import move_aside
from lem_ray.execution.worker.compiled import CompiledArtifacts
from lem_ray.planning.plan import plan_campaign
from lem_ray.records import RequestRecord
from lem_ray.results.compile_cache import (
    MANIFEST,
    CompileCache,
    cache_key,
    cache_location,
    digest,
    load_savings,
    savings_text,
)
from lem_ray.results.lease import Lease
from lem_ray.results.report import build_report, cycle_cv_text
from tests.conftest import TINY_BASE

ROOT = Path(__file__).resolve().parents[2]
FAST = {"cache_implementation": "static", "torch_compile": "reduce-overhead"}
VERSIONS = {"torch": "2.13.0", "transformers": "5.25.0", "cuda": "13.0", "lem_ray": "0.1.0"}


def _config(**changes: Any) -> ExperimentConfig:
    pytorch = {**FAST, **changes.pop("pytorch", {})}
    return ExperimentConfig.model_validate(
        {**TINY_BASE, "backend": "pytorch", **changes, "pytorch": pytorch})


def _key(cfg: ExperimentConfig, gpu: str = "NVIDIA H200", **versions: str) -> str:
    return cache_key(cfg.compile_fields(), gpu, {**VERSIONS, **versions})


def test_key_changes_with_what_decides_the_compiled_code() -> None:
    base = _key(_config())
    changed = {
        "model": _key(_config(model_name="builtin:llama-1b")),
        "precision": _key(_config(fp_precision="bfloat16")),
        "compile mode": _key(_config(pytorch={"torch_compile": "max-autotune"})),
        "attention": _key(_config(pytorch={"attn_implementation": "eager"})),
        "compiled prefill": _key(_config(pytorch={"compile_prefill": True})),
        "output length (cache length)": _key(_config(max_output_tokens=16)),
        "batch shape": _key(_config(pytorch={"batch_size": 4})),
        "gpu model": _key(_config(), gpu="NVIDIA H100 80GB HBM3"),
        "torch": _key(_config(), torch="2.14.0"),
        "cuda": _key(_config(), cuda="12.8"),
        "triton": _key(_config(), triton="3.5.0"),
    }
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_key_ignores_runtime_fields_and_execution_settings() -> None:
    base = _key(_config())
    assert _key(_config(warmup={"mode": "fixed", "requests": 9})) == base
    campaign = {"campaign_name": "k", "base": {**TINY_BASE, "backend": "pytorch",
                                               "pytorch": FAST}}
    ids = [plan_campaign({**campaign, "execution": execution}).experiments[0].experiment_id
           for execution in ({}, {"compile_cache": False}, {"compile_cache": {"dir": "/x"}})]
    assert len(set(ids)) == 1, "execution settings never change experiment ids"


def test_the_setting_reads_on_off_and_a_directory() -> None:
    def location(setting: Any) -> str | None:
        plan = plan_campaign(
            {
                "campaign_name": "k",
                "base": {"model_name": "m", "backend": "pytorch"},
                "execution": {"compile_cache": setting},
            }
        )
        return cache_location("/r/c", plan.campaign.execution.compile_cache)

    assert location(True) == location("on") == "/r/c/compile_cache"
    assert location(False) is None and location("off") is None
    assert location({"dir": "s3://b/cache"}) == "s3://b/cache"
    assert location({"dir": "cache"}) == str(Path.cwd() / "cache"), "workers run elsewhere"
    with pytest.raises(ConfigError, match=r"on, off or \{dir: PATH\}"):
        location({"dir": "/x", "size": 3})


def test_a_cache_location_that_cannot_be_opened_is_refused_before_ray(tmp_path: Path) -> None:
    from lem_ray.execution.checks.preflight import preflight

    plan = plan_campaign({"campaign_name": "k", "base": {"model_name": "m", "backend": "pytorch"},
                          "execution": {"compile_cache": {"dir": "nosuch://bucket/cache"}}})
    with pytest.raises(ConfigError, match="cannot open this location"):
        preflight(plan, str(tmp_path / "r"), None, False, reach=False)


def _publish_after(start: Any, location: str, key: str, i: int) -> str:
    start.wait()
    return CompileCache(location).publish(key, f"artifact {i}".encode() * 1000, {}).standing


def test_racing_publishers_leave_one_complete_entry(tmp_path: Path) -> None:
    """Eight threads on one key, four processes on another (workers sharing the directory)."""
    standing: dict[str, list[str]] = {"t": []}
    start = threading.Barrier(8)
    threads = [threading.Thread(target=lambda i=i: standing["t"].append(
        _publish_after(start, str(tmp_path), "t", i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    processes = multiprocessing.get_context("fork")
    with processes.Manager() as manager, processes.Pool(4) as pool:
        barrier = manager.Barrier(4)
        standing["p"] = pool.starmap(_publish_after,
                                     [(barrier, str(tmp_path), "p", i) for i in range(4)])
    for key, shas in standing.items():
        entry = CompileCache(str(tmp_path)).get(key)
        assert entry is not None and set(shas) == {entry.sha256}, "every loser sees the winner"
        left = sorted(p.name for p in (tmp_path / key).iterdir())
        assert left == sorted([MANIFEST, f"artifact-{entry.sha256}.bin"]), "losers removed theirs"


def test_a_damaged_or_foreign_entry_is_ignored_with_a_warning_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = CompileCache(str(tmp_path))
    first = cache.publish("k", b"kernels" * 100, {})
    artifact = tmp_path / "k" / f"artifact-{first.sha256}.bin"
    artifact.write_bytes(b"kernels" * 99)
    with caplog.at_level(logging.WARNING):
        assert cache.get("k") is None
    assert "SHA-256" in caplog.text
    assert not (tmp_path / "k" / MANIFEST).exists(), "withdrawn, so a publisher replaces it"
    rebuilt = cache.publish("k", b"rebuilt" * 100, {})
    entry = cache.get("k")
    assert entry is not None and (entry.sha256, entry.artifact) == (rebuilt.sha256,
                                                                     b"rebuilt" * 100)

    manifest = tmp_path / "k" / MANIFEST
    foreign = json.loads(manifest.read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MANIFEST).write_text(json.dumps(foreign))
    (tmp_path / "other" / foreign["artifact"]).write_bytes(entry.artifact)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cache.get("other") is None
        manifest.write_text(json.dumps({**foreign, "artifact": "../../elsewhere"}))
        assert cache.get("k") is None
        manifest.write_text("{not json")
        assert cache.get("k") is None
    assert "another key" in caplog.text and "unreadable manifest" in caplog.text
    assert "not of its hash" in caplog.text


class _Compiling(Backend[Any]):
    """Compiles 'kernels' in prepare(), or takes them from the cache; records what it got."""

    name = "pytorch"

    def load(self) -> None:
        self.compiled = 0

    def generate(self, prompts: list[str], max_output_tokens: int | None = None
                 ) -> list[RequestRecord]:
        return []

    def compiler_versions(self) -> dict[str, str] | None:
        return VERSIONS if self.device.kind == "cuda" else None

    def use_compiled(self, artifact: bytes) -> None:
        if artifact == b"refused":
            raise ValueError("not an archive of mine")
        self.loaded = artifact

    def prepare(self, prompts: list[str]) -> None:
        if not hasattr(self, "loaded"):
            self.compiled += 1

    def compiled_artifact(self) -> bytes | None:
        return f"kernels of batch {self.options.batch_size}".encode()


def _run(artifacts: CompiledArtifacts, backend: Backend, cfg: ExperimentConfig,
         loaded: bool = False) -> tuple[str | None, str | None]:
    """What the worker does around an engine's load and prepare."""
    if loaded:
        backend.configure(cfg)
    use = artifacts.before(backend, cfg)
    if not loaded:
        backend.load()
    backend.prepare([])
    use = artifacts.after(backend, use)
    return use.status, use.sha256


def test_the_first_engine_of_a_key_publishes_and_later_ones_load(tmp_path: Path) -> None:
    cfg, gpu = _config(), DeviceInfo("cuda", 1)
    first = _Compiling(cfg, gpu)
    status, sha = _run(CompiledArtifacts(str(tmp_path), "NVIDIA H200"), first, cfg)
    assert (status, sha) == ("miss", digest(b"kernels of batch 1")) and first.compiled == 1
    other_worker = CompiledArtifacts(str(tmp_path), "NVIDIA H200")
    second = _Compiling(cfg, gpu)
    assert _run(other_worker, second, cfg) == ("hit", sha)
    assert second.compiled == 0 and second.loaded == b"kernels of batch 1"
    assert _run(other_worker, second, cfg, loaded=True) == ("hit", sha), \
        "a reused engine's later runs still say which artifact they run"
    wider = _config(pytorch={"batch_size": 2})
    assert _run(other_worker, second, wider, loaded=True) == (
        "miss", digest(b"kernels of batch 2")), "a new batch shape is a key of its own"
    another_gpu = CompiledArtifacts(str(tmp_path), "NVIDIA H100 80GB HBM3")
    assert _run(another_gpu, _Compiling(cfg, gpu), cfg)[0] == "miss"


def test_off_and_engines_that_compile_nothing(tmp_path: Path) -> None:
    cfg = _config()
    assert _run(CompiledArtifacts(None, "NVIDIA H200"), _Compiling(cfg, DeviceInfo("cuda", 1)),
                cfg) == ("off", None)
    eager = CompiledArtifacts(str(tmp_path), "cpu")
    assert _run(eager, _Compiling(cfg, DeviceInfo("cpu")), cfg) == (None, None)
    assert not list(tmp_path.iterdir()), "nothing written for an engine that compiles nothing"


def test_an_unwritable_cache_never_fails_the_run(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = _config()
    with caplog.at_level(logging.WARNING):
        status, sha = _run(CompiledArtifacts(str(blocker / "cache"), "NVIDIA H200"),
                           _Compiling(cfg, DeviceInfo("cuda", 1)), cfg)
    assert (status, sha) == ("miss", digest(b"kernels of batch 1"))
    assert "not writable" in caplog.text


def test_an_entry_the_library_refuses_is_compiled_anew(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config()
    artifacts = CompiledArtifacts(str(tmp_path), "NVIDIA H200")
    artifacts.cache.publish(_key(cfg), b"refused", {})  # type: ignore[union-attr]
    engine = _Compiling(cfg, DeviceInfo("cuda", 1))
    with caplog.at_level(logging.WARNING):
        status, _ = _run(artifacts, engine, cfg)
    assert status == "miss" and engine.compiled == 1 and "not usable" in caplog.text
    assert artifacts.cache.get(_key(cfg)).artifact == b"kernels of batch 1", "replaced"  # type: ignore[union-attr]


def test_fresh_carries_the_compile_cache_into_the_new_directory(tmp_path: Path) -> None:
    results = tmp_path / "c"
    (results / "experiments").mkdir(parents=True)
    (results / "experiments" / "x.parquet").write_text("")
    entry = CompileCache(str(results / "compile_cache")).publish("k", b"kernels", {})
    lease = Lease(str(results))
    lease.take()
    old = move_aside(str(results), lease)
    assert old is not None and (Path(old) / "experiments" / "x.parquet").exists()
    moved = CompileCache(str(results / "compile_cache")).get("k")
    assert moved is not None and moved.sha256 == entry.sha256
    assert not (results / "experiments").exists()


def _row(cycle: int, status: str | None, sha: str | None, engine: str, load_s: float,
         reused: bool = False, key: str = "k1") -> dict[str, Any]:
    return {"campaign_name": "c", "experiment_id": "e1", "run_id": f"e1-c{cycle}", "cycle": cycle,
            "attempt": 1, "status": "ok", "engine_id": engine, "engine_reused": reused,
            "engine_load_s": load_s, "compile_cache": status, "compile_cache_hash": sha,
            "compile_cache_key": key, "throughput_tok_s": 100.0 + cycle,
            "energy_j_per_output_token": 0.1}


def test_load_savings_compare_hits_with_the_same_keys_compiling_loads() -> None:
    rows = [_row(0, "miss", "a", "e0", 100.0), _row(1, "hit", "a", "e1", 10.0),
            _row(2, "hit", "a", "e2", 20.0), _row(3, "hit", "a", "e2", 0.1, reused=True),
            _row(4, "hit", "b", "e3", 5.0, key="k2"), _row(5, None, None, "e4", 3.0)]
    savings = load_savings(rows)
    assert savings == {"hits": 3, "misses": 1, "hits_compared": 2, "saved_s": 170.0}
    text = savings_text(savings)
    assert text is not None and "saved 170 s over 2 loads" in text and "1 loads had no" in text
    assert load_savings([_row(0, None, None, "e0", 3.0)]) is None


def test_report_says_when_cycles_ran_different_or_one_artifact() -> None:
    def text(rows: list[dict[str, Any]]) -> str:
        return cycle_cv_text(build_report(rows, group_by=("experiment_id",)).groups[0])

    apart = [_row(c, "miss", f"h{c}", f"e{c}", 50.0) for c in range(3)]
    assert text(apart).endswith("· 3 engines · 3 artifacts")
    cached = [_row(0, "miss", "h", "e0", 50.0)] + [_row(c, "hit", "h", f"e{c}", 5.0)
                                                   for c in (1, 2)]
    assert text(cached).endswith("· 3 engines, 1 artifact")
    eager = [_row(c, None, None, f"e{c}", 5.0) for c in range(2)]
    assert text(eager).endswith("· 2 engines")


_ROUND_TRIP = r"""
import json, sys, torch
from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.pytorch.backend import PyTorchBackend, fx_graph_cache_counts
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.results.compile_cache import CompileCache

cfg = ExperimentConfig.model_validate(json.loads(sys.argv[2]))
backend = PyTorchBackend(cfg, DeviceInfo("cpu"))
cache = CompileCache(sys.argv[3])
if sys.argv[1] == "load":
    backend.use_compiled(cache.get("k").artifact)
step = torch.compile(lambda x, w: torch.relu(x @ w).sum(-1), dynamic=False)
torch.manual_seed(0)
out = step(torch.randn(4, 8), torch.randn(8, 8)).tolist()
if sys.argv[1] == "save":
    cache.publish("k", backend.compiled_artifact(), {})
print(json.dumps({"out": out, **fx_graph_cache_counts(torch)}))
"""


@pytest.mark.slow
def test_inductor_mega_cache_round_trip_on_cpu(tmp_path: Path) -> None:
    """A process with an empty Inductor cache compiles from what another published: an FX
    graph cache hit, no miss, the same result. (The backend's own methods, a tiny graph.)"""
    pytest.importorskip("torch")
    cfg = _config().model_dump_json()

    def process(mode: str) -> dict[str, Any]:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{mode}")}
        done = subprocess.run([sys.executable, "-c", _ROUND_TRIP, mode, cfg, str(tmp_path / "cc")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    compiled = process("save")
    assert (compiled["hit"], compiled["miss"], compiled["bypass"]) == (0, 1, 0)
    loaded = process("load")
    assert (loaded["hit"], loaded["miss"], loaded["bypass"]) == (1, 0, 0)
    assert loaded["out"] == compiled["out"]


def test_a_library_cache_directory_round_trips_and_stays_inside(tmp_path: Path) -> None:
    import io
    import tarfile

    from lem_ray.backends.compile_dir import CompileDir

    first = CompileDir("lem-ray-test-")
    assert first.pack() is None, "nothing compiled, nothing to keep"
    Path(first.path, "rank_0_0", "backbone").mkdir(parents=True)
    Path(first.path, "rank_0_0", "backbone", "graph.py").write_text("kernels")
    second = CompileDir("lem-ray-test-")
    second.unpack(first.pack() or b"")
    assert Path(second.path, "rank_0_0", "backbone", "graph.py").read_text() == "kernels"
    first.remove()
    second.remove()

    escaping = io.BytesIO()
    with tarfile.open(fileobj=escaping, mode="w:gz") as archive:
        info = tarfile.TarInfo("../outside")
        archive.addfile(info, io.BytesIO(b""))
    third = CompileDir("lem-ray-test-")
    with pytest.raises(tarfile.TarError):
        third.unpack(escaping.getvalue())
    assert not Path(third.path).parent.joinpath("outside").exists()
    third.remove()


def test_vllm_takes_the_cache_unless_eager_or_its_own_cache_dir() -> None:
    from lem_ray.backends.vllm.backend import VLLMBackend

    def versions(**vllm: Any) -> dict[str, str] | None:
        cfg = ExperimentConfig.model_validate({**TINY_BASE, "fp_precision": "float16",
                                               "backend": "vllm", "vllm": vllm})
        return VLLMBackend(cfg, DeviceInfo("cuda", 1)).compiler_versions()

    assert versions() is not None
    assert versions(enforce_eager=True) is None
    assert versions(extra_engine_args={"compilation_config": {"cache_dir": "/mine"}}) is None
