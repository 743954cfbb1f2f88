"""The compile cache on the fast path: one process compiles and publishes, fresh ones load.

    python bench/compile_cache.py [--out compile_cache.json] [--budget-s 420] [--processes 3]
                                  [--batch 1] [--tiny] [--smoke]

builtin:llama-1b with dummy weights, bf16, 128-token prompts and answers, the fast path
(static cache, torch_compile reduce-overhead) at --batch. Each process is a fresh Python with
its own empty Inductor and Triton caches (as on a new node), and goes through the worker's
own code (execution/worker/compiled.py) around the engine's load and prepare: first one that finds
the campaign cache empty, compiles and publishes (the cold process), then --processes that
load the published entry. Per process: engine load seconds (load and prepare, cache lookup
and publish included), the process's wall seconds, tok/s over a fixed measurement (2 warm
calls, then REPS calls of the batch, the median), hit or miss, the artifact's SHA-256,
Inductor's FX-graph cache hits and misses during prepare, and the greedy tokens of prompt 0.
Prints load_cached / load_cold per process and each one's tok/s against the cold process's,
and writes it all as JSON to --out. A process that would overrun --budget-s is not started.
--tiny: the tiny shipped model, a few tokens (the GPU test's size). --smoke: that on the CPU,
where the engine compiles nothing: it proves the script, not the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = 128
REPS = 10
BASE: dict[str, Any] = {
    "model_name": "builtin:llama-1b", "load_format": "dummy", "backend": "pytorch",
    "fp_precision": "bfloat16", "max_input_tokens": TOKENS, "max_output_tokens": TOKENS,
    "min_output_tokens": TOKENS,
}
FAST = {"cache_implementation": "static", "torch_compile": "reduce-overhead"}
# Seconds a process takes before anything is known about it (imports, CUDA context).
START_S = 20.0


def tiny_settings() -> None:
    global TOKENS, REPS
    TOKENS, REPS = 8, 2
    BASE.update(model_name="builtin:tiny-llama", fp_precision="float32", max_input_tokens=TOKENS,
                max_output_tokens=TOKENS, min_output_tokens=TOKENS)


def child(cache_dir: str, batch: int, device: str) -> dict[str, Any]:
    """One engine, as a worker loads it: cache lookup, load, prepare, publish; then measure."""
    started = time.perf_counter()
    import torch

    from lem_ray.backends.base import DeviceInfo
    from lem_ray.backends.pytorch.backend import PyTorchBackend
    from lem_ray.backends.pytorch.timing import StepClock
    from lem_ray.config.experiment import ExperimentConfig
    from lem_ray.config.prompts import SyntheticPrompts
    from lem_ray.execution.worker.compiled import CompiledArtifacts
    from lem_ray.planning.prompts import synthetic_prompts

    spec = SyntheticPrompts.model_validate({
        "source": "synthetic", "count": batch,
        "input_len": {"distribution": "fixed", "mean": TOKENS, "min": TOKENS, "max": TOKENS}})
    prompts = synthetic_prompts(spec, 0)
    cfg = ExperimentConfig.model_validate(
        {**BASE, "prompts": spec.model_dump(), "pytorch": {"batch_size": batch, **FAST}})
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    artifacts = CompiledArtifacts(cache_dir, gpu)
    backend = PyTorchBackend(cfg, DeviceInfo(device, 1 if device == "cuda" else 0))
    t0 = time.perf_counter()
    use = artifacts.before(backend, cfg)
    backend.load()
    backend.prepare(prompts)
    backend.synchronize()
    use = artifacts.after(backend, use)
    load_s = time.perf_counter() - t0
    rates = []
    for i in range(2 + REPS):
        t1 = time.perf_counter()
        backend.generate(prompts)
        backend.synchronize()
        if i >= 2:
            rates.append(batch * TOKENS / (time.perf_counter() - t1))
    ids = backend._tokenizer.pad({"input_ids": backend._encode(prompts[:1])}, return_tensors="pt")
    assert backend._loop is not None
    tokens = backend._loop.run(ids["input_ids"].to(device), ids["attention_mask"].to(device),
                               TOKENS, TOKENS, StepClock(torch, torch.device(device)))
    details = backend.details()
    backend.release()
    return {
        "gpu": gpu, "compile_cache": use.status, "sha256": use.sha256, "key": use.key,
        "load_s": load_s, "tok_s": statistics.median(rates), "tok_s_all": rates,
        "fx_graph_cache": details.get("fx_graph_cache"), "cuda_graphs": details.get("cuda_graphs"),
        "tokens": tokens[0].tolist(), "process_s": time.perf_counter() - started,
    }


def run_process(cache_dir: str, work: str, index: int, args: argparse.Namespace,
                timeout_s: float) -> dict[str, Any]:
    """A fresh interpreter with empty local compiler caches: only the campaign cache helps."""
    env = {**os.environ,
           "TORCHINDUCTOR_CACHE_DIR": os.path.join(work, f"inductor-{index}"),
           "TRITON_CACHE_DIR": os.path.join(work, f"triton-{index}")}
    command = [sys.executable, os.path.abspath(__file__), "--child", cache_dir,
               "--batch", str(args.batch)] + [f"--{flag}" for flag in ("tiny", "smoke")
                                              if getattr(args, flag)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "wall_s": time.perf_counter() - t0}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}


def compare(cold: dict[str, Any], cached: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [c for c in cached if "error" not in c]
    return {
        "load_ratio": [c["load_s"] / cold["load_s"] for c in ok],
        "tok_s_vs_cold": [c["tok_s"] / cold["tok_s"] - 1 for c in ok],
        "all_hits": bool(ok) and all(c["compile_cache"] == "hit" for c in ok),
        "same_artifact": all(c["sha256"] == cold["sha256"] for c in ok),
        "same_tokens": all(c["tokens"] == cold["tokens"] for c in ok),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="compile_cache.json")
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes that load")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the tiny model, a few tokens")
    parser.add_argument("--smoke", action="store_true", help="--tiny on the CPU")
    parser.add_argument("--child", metavar="CACHE_DIR", help="internal: one process's engine")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.tiny or args.smoke:
        tiny_settings()
    device = "cpu" if args.smoke else "cuda"
    if args.child:
        print(json.dumps(child(args.child, args.batch, device)))
        return
    result: dict[str, Any] = {"settings": {"model": BASE["model_name"], "batch": args.batch,
                                           "tokens_in_out": TOKENS, "reps": REPS}}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    with tempfile.TemporaryDirectory() as work:
        cache_dir = os.path.join(work, "compile_cache")
        cold = run_process(cache_dir, work, 0, args, left())
        result["cold"] = cold
        save()
        print(f"cold: {_line(cold)}", flush=True)
        if "error" in cold:
            sys.exit(1)
        result["cached"] = []
        for index in range(1, args.processes + 1):
            longest = max([START_S] + [c.get("wall_s", 0) for c in result["cached"]])
            if left() < longest * 1.3:
                result["cached"].append({"error": f"not run: {left():.0f} s of the budget left"})
                print(f"cached {index}: not run, {left():.0f} s left", flush=True)
                continue
            found = run_process(cache_dir, work, index, args, left())
            result["cached"].append(found)
            save()
            print(f"cached {index}: {_line(found)}", flush=True)
    result["compare"] = compare(cold, result["cached"])
    save()
    c = result["compare"]
    print("load_cached / load_cold: " + ", ".join(f"{r:.1%}" for r in c["load_ratio"])
          + "; tok/s vs the compiling process: "
          + ", ".join(f"{r:+.1%}" for r in c["tok_s_vs_cold"])
          + f"; all hits {c['all_hits']}, same artifact {c['same_artifact']}, "
            f"same tokens {c['same_tokens']}")


def _line(found: dict[str, Any]) -> str:
    if "error" in found:
        return found["error"].strip().splitlines()[-1] if found["error"].strip() else "error"
    return (f"{found['compile_cache']} load {found['load_s']:.1f} s (process "
            f"{found['process_s']:.1f} s), {found['tok_s']:.0f} tok/s, FX graph cache "
            f"{found['fx_graph_cache']}, artifact {str(found['sha256'])[:12]}")


if __name__ == "__main__":
    main()
