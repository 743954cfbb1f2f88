"""Where a fast-path decode step's time goes on a GPU, against the floors the hardware sets.

    python bench/profile_decode.py [--out profile.json] [--batch 1] [--variants ...] [--smoke]

builtin:llama-1b, dummy weights, bf16, 128-token prompts, 128 output tokens. Prints and writes:
  - copy_gbps: a device-to-device copy of the model's weight bytes (the bandwidth ceiling);
  - gemv_floor_ms: every Linear of the model applied once to a batch of hidden vectors, in
    forward order, captured as one CUDA graph (what cuBLAS alone costs a step);
  - per variant of lem-ray's decode loop (--variants; Dynamo is reset between them, so each
    compiles its own step): step_ms, the captured step replayed 110 times between two CUDA
    events; a kernel trace of 20 replays (torch.profiler): kernels a step, the sum of their
    durations against the step (the rest is gaps between kernels), the costliest kernels; and
    generate_tok_s and ttft_ms, the median of 5 generate() calls, prefill included.

--smoke runs the same per variant on the CPU with the tiny shipped model and 8-token prompts
and answers, in seconds, for CI: it proves the variants' configs, the loop's states and
generate(). There the step is neither compiled nor captured, so step_ms times the eager step
(perf_counter, not CUDA events) and there is no kernel trace and no floors: they need a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOKENS = 128
MODEL = "builtin:llama-1b"
PRECISION = "bfloat16"
DEVICE = "cuda"
# name -> (torch_compile mode, attention, fused projections); the step is compiled with
# lem-ray's Inductor settings (decode_loop.INDUCTOR_TUNING) unless STEP_TUNING says otherwise.
VARIANTS = {"default": ("default", "sdpa", False), "eager-attn": ("default", "eager", False),
            "max-autotune": ("max-autotune", "sdpa", False), "fused": ("default", "sdpa", True),
            "cdt-wide": ("default", "sdpa", False), "pdl": ("default", "sdpa", False),
            "prefill": ("default", "sdpa", False), "nocombo": ("default", "sdpa", False),
            "nocdt": ("default", "sdpa", False), "nocdt-prefill": ("default", "sdpa", False),
            "default-again": ("default", "sdpa", False)}
# The step's Inductor settings where a variant replaces lem-ray's: without combo kernels, or
# without any tuning (cuBLAS GEMVs).
STEP_TUNING: dict[str, dict[str, bool]] = {
    "nocombo": {"coordinate_descent_tuning": True}, "nocdt": {}, "nocdt-prefill": {}}
# Inductor settings a variant adds while it compiles: a wider coordinate-descent search;
# programmatic dependent launch (on Hopper a kernel starts while the one before finishes); no
# caches (default-again compiles and tunes the default anew: how much the tuning varies).
VARIANT_INDUCTOR = {"cdt-wide": {"coordinate_descent_check_all_directions": True,
                                 "coordinate_descent_search_radius": 2},
                    "pdl": {"triton.enable_pdl": True},
                    "default-again": {"force_disable_caches": True}}
# Variants that compile the prompt's forward too (pytorch.compile_prefill).
PREFILL_COMPILED = {"prefill", "nocdt-prefill"}


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def backend_for(batch: int, compile_mode: str, attn: str, compile_prefill: bool) -> Any:
    from lem_ray.backends.base import DeviceInfo
    from lem_ray.backends.pytorch.backend import PyTorchBackend
    from lem_ray.config.experiment import ExperimentConfig

    cfg = ExperimentConfig.model_validate({
        "model_name": MODEL, "load_format": "dummy", "backend": "pytorch",
        "fp_precision": PRECISION, "max_input_tokens": TOKENS, "max_output_tokens": TOKENS,
        "min_output_tokens": TOKENS,
        "pytorch": {"batch_size": batch, "cache_implementation": "static",
                    "torch_compile": compile_mode, "attn_implementation": attn,
                    "compile_prefill": compile_prefill}})
    backend = PyTorchBackend(cfg, DeviceInfo(DEVICE, 1 if DEVICE == "cuda" else 0))
    backend.load()
    return backend


def prompts_of(count: int) -> list[str]:
    from lem_ray.config.prompts import SyntheticPrompts
    from lem_ray.planning.prompts import synthetic_prompts

    spec = SyntheticPrompts.model_validate({
        "source": "synthetic", "count": count,
        "input_len": {"distribution": "fixed", "mean": TOKENS, "min": TOKENS, "max": TOKENS}})
    return synthetic_prompts(spec, 0)


def rewind(state: Any) -> None:
    """Back to the first decode step: each replay advances the step and the cache position, and
    past the answer's length the captured step would index outside its buffers."""
    import torch

    with torch.inference_mode():
        state.step.fill_(1)
        state.cache_position.fill_(TOKENS - 1)
        state.pos.fill_(TOKENS - 1)


def replay_ms(torch: Any, graph: Any, steps: int = 110) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def eager_step_ms(torch: Any, loop: Any, state: Any) -> float:
    """The uncaptured step (the CPU's, under --smoke), timed by the host: one warm step, then
    as many as the answer's buffers hold."""
    steps = TOKENS - 2
    with torch.inference_mode():
        loop._advance(state)
        t0 = time.perf_counter()
        for _ in range(steps):
            loop._advance(state)
    return (time.perf_counter() - t0) * 1000 / steps


def smoke_settings() -> None:
    """The tiny shipped model on the CPU, a few tokens: every variant's path in seconds."""
    global TOKENS, MODEL, PRECISION, DEVICE
    TOKENS, MODEL, PRECISION, DEVICE = 8, "builtin:tiny-llama", "float32", "cpu"


def kernel_trace(torch: Any, graph: Any, step_ms: float, replays: int = 20) -> dict[str, Any]:
    """Kernels of one replayed step, from CUPTI through torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time_total > 0:
            kernels.setdefault(event.name, []).append(event.device_time_total)
    per_step = {name: (len(t) / replays, sum(t) / replays) for name, t in kernels.items()}
    busy_us = sum(us for _, us in per_step.values())
    top = sorted(per_step.items(), key=lambda kv: -kv[1][1])[:30]
    return {"kernels_per_step": round(sum(n for n, _ in per_step.values()), 1),
            "kernel_ms": round(busy_us / 1000, 3),
            "gap_ms": round(step_ms - busy_us / 1000, 3),
            "top": [{"name": name[:90], "per_step": round(n, 1), "us_per_step": round(us, 1),
                     "us_each": round(us / n, 2)} for name, (n, us) in top]}


def floors(torch: Any, model: Any, batch: int) -> dict[str, Any]:
    weights = [p for p in model.parameters()]
    total_bytes = sum(p.numel() * p.element_size() for p in weights)
    src = torch.empty(total_bytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    torch.cuda.synchronize()
    copy_s = (time.perf_counter() - t0) / 20
    del src, dst
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, m.in_features, dtype=model.dtype, device="cuda") for m in linears]
    outs: list[Any] = []

    def chain() -> None:
        outs.clear()
        for m, x in zip(linears, inputs):
            outs.append(torch.nn.functional.linear(x, m.weight))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()

    linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    return {"weight_bytes": total_bytes, "linear_weight_bytes": linear_bytes,
            "copy_gbps": round(2 * total_bytes / copy_s / 1e9, 1),
            "read_floor_ms": round(total_bytes / (2 * total_bytes / copy_s) * 1000, 3),
            "linears": len(linears), "gemv_floor_ms": round(replay_ms(torch, graph), 3)}


def fuse_projections(torch: Any, model: Any) -> None:
    """q/k/v and gate/up of each layer as one matmul each, as vLLM builds them: fewer, larger
    GEMVs a step. The first projection called computes all of them; the others return their
    share (the layer calls them in order, on the same input)."""
    nn, functional = torch.nn, torch.nn.functional

    class Fused(nn.Module):
        def __init__(self, linears: list[Any]) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.cat([m.weight.data for m in linears]),
                                       requires_grad=False)
            self.sizes = [m.out_features for m in linears]

    class Part(nn.Module):
        def __init__(self, fused: Any, index: int) -> None:
            super().__init__()
            self.index = index
            self.__dict__["fused"] = fused

        def forward(self, x: Any) -> Any:
            if self.index == 0:
                self.fused.parts = functional.linear(x, self.fused.weight).split(
                    self.fused.sizes, dim=-1)
            return self.fused.parts[self.index]

    for layer in model.model.layers:
        for owner, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")),
                             (layer.mlp, ("gate_proj", "up_proj"))):
            linears = [getattr(owner, n) for n in names]
            fused = Fused(linears)
            owner.fused_proj = fused
            for i, n in enumerate(names):
                setattr(owner, n, Part(fused, i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="profile.json")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny model on the CPU: a CI check of the script (no CUDA "
                             "graph, kernel trace or floors there)")
    parser.add_argument("--variants", default="default,default-again,eager-attn,nocombo,pdl",
                        help="comma-separated: default (lem-ray's step: sdpa, tuned), eager-attn, "
                             "max-autotune (torch_compile max-autotune: Inductor also benchmarks "
                             "Triton matmul templates), fused (q/k/v and gate/up as one matmul "
                             "each), cdt-wide (a wider coordinate-descent search), pdl "
                             "(programmatic dependent launch), prefill (the prompt's forward "
                             "compiled too), nocombo (tuning without combo kernels), nocdt (no "
                             "tuning: cuBLAS GEMVs), nocdt-prefill, default-again (the default "
                             "compiled anew, no caches: the tuning's spread)")
    args = parser.parse_args()
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if args.smoke:
        smoke_settings()
    import torch

    from lem_ray.backends.pytorch import decode_loop

    tuning = dict(decode_loop.INDUCTOR_TUNING)
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    out: dict[str, Any] = {"batch": args.batch, "gpu": gpu, "torch": torch.__version__}
    prompts = prompts_of(args.batch)
    for name in args.variants.split(","):
        mode, attn, fused = VARIANTS[name]
        t0 = time.perf_counter()
        try:
            torch._dynamo.reset()
            decode_loop.INDUCTOR_TUNING = dict(STEP_TUNING.get(name, tuning))
            backend = backend_for(args.batch, mode, attn, name in PREFILL_COMPILED)
            loop = backend._loop
            if fused:
                fuse_projections(torch, backend._model)
            with torch._inductor.config.patch(VARIANT_INDUCTOR.get(name, {})):
                backend.prepare(prompts)
            backend.synchronize()
            state = next(iter(loop._states.values()))
            rewind(state)
            step = (replay_ms(torch, state.graph) if state.graph is not None
                    else eager_step_ms(torch, loop, state))
            entry: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 1),
                                     "step_ms": round(step, 3)}
            rewind(state)
            if state.graph is None:
                entry["trace"] = "not measured: no CUDA graph on the CPU"
            else:
                try:
                    entry["trace"] = kernel_trace(torch, state.graph, entry["step_ms"])
                except Exception as exc:
                    entry["trace"] = {"error": repr(exc)[:300]}
            runs = []
            for _ in range(5):
                t1 = time.perf_counter()
                records = backend.generate(prompts)
                backend.synchronize()
                runs.append((time.perf_counter() - t1, records[0].ttft_ms))
            seconds, ttft_ms = sorted(runs)[len(runs) // 2]
            entry["generate_tok_s"] = round(args.batch * TOKENS / seconds, 1)
            entry["ttft_ms"] = round(ttft_ms, 2)
            if name == "default" and DEVICE != "cuda":
                out["floors"] = "not measured: needs a GPU"
            elif name == "default" and "floors" not in out:
                out["floors"] = floors(torch, backend._model, args.batch)
                log("floors", json.dumps(out["floors"]))
            backend.release()
            del backend, loop, state
        except Exception as exc:
            entry = {"error": repr(exc)[:800]}
        out[name] = entry
        log(name, json.dumps(entry))
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
