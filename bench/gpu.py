"""What lem-ray measures on a GPU against the same work done bare, in one run.

    python bench/gpu.py [--out gpu.json] [--budget-s 330] [--cv-window-s 10.5] [--cycles 3]
                        [--path both|fast|eager] [--no-cv] [--keep-results DIR]

builtin:llama-1b with dummy weights, bf16, 128-token prompts, 128 output tokens. Prints (and
writes as JSON), in this order:
  1. a lem-ray campaign: eager and fast path at batch 1 and 16, one cycle each: recorded
     throughput, load, warmup steps and seconds;
  2. the CV table: 3 cycles each of batch 1, 8 and 32 on the fast path, windows of about
     --cv-window-s, with the cycle-to-cycle CV of J/output token and tok/s;
  3. bare loops in this process, nothing of lem-ray around them: the fast path's engine
     called directly at batch 1 and 16, eager generate at batch 1 and 16, then eager with
     lem-ray's step clock; the ratio of step 1's throughput to the bare median;
  4. dummy-weight load seconds on 2 GPUs when there are 2;
  5. the eager batch-1 loop inside a Ray actor (num_gpus=1, num_cpus=1): as is, in a child
     process of the actor, and with GC off, to locate an observer effect of the actor itself.
A section that would overrun --budget-s is skipped and says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any

TOKENS = 128
BASE: dict[str, Any] = {
    "model_name": "builtin:llama-1b", "load_format": "dummy", "backend": "pytorch",
    "fp_precision": "bfloat16",
    "max_input_tokens": TOKENS, "max_output_tokens": TOKENS, "min_output_tokens": TOKENS,
}
FAST = {"cache_implementation": "static", "torch_compile": "reduce-overhead"}
# max_s bounds an unsettled warmup (the eager batch-1 loop is noisy on the H200 host) to fit
# the bench's time; such a run is flagged warmup_unsettled, and the table says so.
WARMUP = {"mode": "cv", "window": 3, "cv_threshold": 0.05, "max_steps": 20, "max_s": 10}
# Expected fast-path tok/s on one H200 (measured there), to size the CV table's windows.
FAST_TOK_S = {1: 700, 8: 3500, 16: 6500, 32: 10000}
CV_BATCHES = (1, 8, 32)
STARTED = time.perf_counter()
BENCH = os.path.abspath(__file__)
DEVICE = "cuda"
RESULTS: dict[str, Any] = {}


def log(*parts: Any) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s]", *parts, flush=True)


def prompts_of(count: int) -> list[str]:
    from lem_ray.config.prompts import SyntheticPrompts
    from lem_ray.planning.prompts import synthetic_prompts

    spec = SyntheticPrompts.model_validate({
        "source": "synthetic", "count": count,
        "input_len": {"distribution": "fixed", "mean": TOKENS, "min": TOKENS, "max": TOKENS}})
    return synthetic_prompts(spec, 0)


def bare_eager(batch: int, reps: int, timer: bool) -> list[float]:
    """model.generate over `batch` prompts, 2 warm calls then `reps` timed: tok/s each."""
    import torch
    import transformers

    from lem_ray.assets import resolve_model
    from lem_ray.backends.pytorch.timing import StepClock

    path = resolve_model(BASE["model_name"])
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    with torch.device(DEVICE):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(path),
            dtype=getattr(torch, BASE["fp_precision"])).eval()
    inputs = tok(prompts_of(batch), return_tensors="pt", padding=True, truncation=True,
                 max_length=TOKENS).to(DEVICE)
    kwargs = dict(max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                  pad_token_id=tok.pad_token_id, temperature=None, top_k=None, top_p=None)
    rates = []
    for i in range(2 + reps):
        extra = {}
        if timer:
            clock = StepClock(torch, torch.device(DEVICE))
            extra["logits_processor"] = transformers.LogitsProcessorList([clock])
            clock.start()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, **kwargs, **extra)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            rates.append(batch * TOKENS / (time.perf_counter() - t0))
    del model
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return rates


def bare_fast(batch: int, reps: int) -> dict[str, Any]:
    """lem-ray's PyTorch backend with the compiled loop, called directly (no Ray, no worker)."""
    from lem_ray.backends.base import DeviceInfo
    from lem_ray.backends.pytorch.backend import PyTorchBackend
    from lem_ray.config.experiment import ExperimentConfig

    cfg = ExperimentConfig.model_validate({**BASE, "pytorch": {"batch_size": batch, **FAST}})
    prompts = prompts_of(batch)
    backend = PyTorchBackend(cfg, DeviceInfo(DEVICE, 1 if DEVICE == "cuda" else 0))
    t0 = time.perf_counter()
    backend.load()
    backend.prepare(prompts)
    backend.synchronize()
    load_s = time.perf_counter() - t0
    rates = []
    for i in range(2 + reps):
        t0 = time.perf_counter()
        backend.generate(prompts)
        backend.synchronize()
        if i >= 2:
            rates.append(batch * TOKENS / (time.perf_counter() - t0))
    details = backend.details()
    backend.release()
    return {"tok_s": rates, "load_s": load_s, "cuda_graphs": details.get("cuda_graphs")}


def actor_variants(reps: int) -> dict[str, list[float]]:
    """The bare eager batch-1 loop inside a Ray actor holding one GPU and one CPU."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=1)
    class Probe:
        def run(self, setting: str) -> list[float]:
            import sys as _sys

            if setting == "child_process":
                import subprocess

                done = subprocess.run([_sys.executable, BENCH, "--bare-eager-child", str(reps)],
                                      capture_output=True, text=True, check=True)
                return json.loads(done.stdout.strip().splitlines()[-1])
            if setting == "gc_off":
                gc.collect()
                gc.freeze()
                gc.disable()
            try:
                return bare_eager(1, reps, timer=False)
            finally:
                gc.enable()

        def env(self) -> dict[str, Any]:
            import os

            import torch

            return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "torch_threads": torch.get_num_threads(),
                    "affinity": len(os.sched_getaffinity(0))}

    probe = Probe.remote()
    try:
        found: dict[str, Any] = {"env": ray.get(probe.env.remote())}
        for setting in ("default", "child_process", "gc_off"):
            found[setting] = ray.get(probe.run.remote(setting))
            log("actor", setting, [round(r, 1) for r in found[setting]])
        return found
    finally:
        ray.kill(probe)


SLIM = ("cycle", "batch_size", "gpus_per_experiment", "status", "error", "engine_load_s",
        "engine_reused", "warmup_s", "warmup_steps", "warmup_converged", "warmup_final_cv",
        "duration_s", "throughput_tok_s", "energy_j_per_output_token", "itl_ms_p50", "ttft_ms_p50",
        "timing_method", "sm_clock_mhz_mean", "sm_clock_mhz_min", "valid", "validity_flags")


def slim(row: dict[str, Any]) -> dict[str, Any]:
    found = {k: row.get(k) for k in SLIM}
    found["pytorch"] = json.loads(row["config_json"])["pytorch"]
    return found


KEEP_DIR: str | None = None


def campaign(name: str, experiments: list[dict[str, Any]], cycles: int) -> list[dict[str, Any]]:
    """Runs through lem-ray's driver on the Ray instance already connected; prints each run as
    it ends. No idle baseline and no prefill window: neither changes J/output token or tok/s."""
    from lem_ray.execution.driver.campaign import run_campaign
    from lem_ray.results.store import read_table

    spec = {
        "campaign_name": name,
        "base": {**BASE, "warmup": WARMUP},
        "experiments": experiments,
        "execution": {"cycles": cycles, "structure": "interleaved",
                      "baseline": {"enabled": False}, "prefill": {"enabled": False}},
    }

    def report(progress: Any, rows: Any) -> None:
        if rows is not None:
            row = slim(rows.experiment) if rows.ok else {
                k: rows.experiment.get(k) for k in ("cycle", "batch_size", "status", "error")}
            log(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})

    if KEEP_DIR:
        out = os.path.join(KEEP_DIR, name)
        run_campaign(spec, results_dir=out, reporter=report)
        rows = read_table(out, "experiments").to_pylist()
    else:
        with tempfile.TemporaryDirectory() as out:
            run_campaign(spec, results_dir=out, reporter=report)
            rows = read_table(out, "experiments").to_pylist()
    return [slim(r) for r in rows if r["status"] == "ok"]


def count_for(tok_s: float, batch: int, window_s: float) -> int:
    """Prompts for a window of about window_s at tok_s, a whole number of batches."""
    return max(1, math.ceil(window_s * tok_s / TOKENS / batch)) * batch


def cv(values: list[float]) -> float | None:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--budget-s", type=float, default=330)
    parser.add_argument("--cv-window-s", type=float, default=10.5,
                        help="target measured window of each run of the CV table")
    parser.add_argument("--cycles", type=int, default=3, help="cycles of the CV table")
    parser.add_argument("--keep-results", metavar="DIR",
                        help="keep each campaign's results under DIR/<campaign> "
                             "(for lem-ray status/report)")
    parser.add_argument("--path", choices=("both", "fast", "eager", "none"), default="both",
                        help="which decode path the lem-ray runs and the bare loops cover (the "
                             "actor probe is eager): a 600 s call fits one path with --no-cv; "
                             "none: only the 2-GPU load (with --no-cv)")
    parser.add_argument("--no-cv", action="store_true", help="skip the CV table")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check of the whole script: the tiny model, a few tokens; no "
                             "energy, 2-GPU load or actor probe there (they need GPUs), and "
                             "the CPU's ratios say nothing of the GPU's")
    parser.add_argument("--bare-eager-child", type=int, metavar="REPS",
                        help="internal: print the bare eager batch-1 loop's tok/s as JSON")
    args = parser.parse_args()
    if args.keep_results:
        global KEEP_DIR
        KEEP_DIR = args.keep_results
    if args.smoke:
        smoke_settings()
    if args.bare_eager_child:
        print(json.dumps(bare_eager(1, args.bare_eager_child, timer=False)))
        return
    RESULTS["settings"] = {"model": BASE["model_name"], "tokens_in_out": TOKENS,
                           "cv_window_s": args.cv_window_s, "cycles": args.cycles}

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - STARTED)

    from lem_ray.execution.driver.cluster import connect

    # Campaigns first: the driver holds no CUDA context yet, so no run sees it on its GPU.
    connect(None)
    # Eager steps take 2-3 s on the H200 host: their warmup gets room to settle (4+ steps).
    eager_warmup = {**WARMUP, "max_s": 40}
    compare: list[dict[str, Any]] = [
        {"pytorch": {"batch_size": 1}, "prompts": _prompts(3), "warmup": eager_warmup},
        {"pytorch": {"batch_size": 16}, "prompts": _prompts(48), "warmup": eager_warmup},
        {"pytorch": {"batch_size": 1, **FAST}, "prompts": _prompts(count_for(FAST_TOK_S[1], 1, 6))},
        {"pytorch": {"batch_size": 16, **FAST},
         "prompts": _prompts(count_for(FAST_TOK_S[16], 16, 6))},
    ]
    if args.path != "both":
        compare = [c for c in compare
                   if bool(c["pytorch"].get("torch_compile")) == (args.path == "fast")
                   and args.path != "none"]
    RESULTS["lem_ray_compare"] = campaign("bench-compare", compare, 1) if compare else []
    save()

    # Per run: warmup, window and the worker's calls; per batch shape once: Dynamo's
    # compilation and the graph capture (one engine serves every shape); the worker's start.
    runs = len(CV_BATCHES) * args.cycles
    cv_cost_s = runs * (args.cv_window_s + 8) + len(CV_BATCHES) * 20 + 20
    if args.no_cv:
        RESULTS["cv"] = "not run: --no-cv"
    elif left() > cv_cost_s:
        RESULTS["cv"] = cycle_table(args.cv_window_s, args.cycles)
    else:
        RESULTS["cv"] = f"skipped: {left():.0f} s left, the CV table needs ~{cv_cost_s:.0f} s"
    save()

    bare: dict[str, Any] = {}
    # The references of the ratios first, then the step clock's cost.
    for name, batch, timer in (("fast_b1", 1, False), ("fast_b16", 16, False),
                               ("eager_b1", 1, False), ("eager_b16", 16, False),
                               ("eager_b1_timer", 1, True), ("eager_b16_timer", 16, True)):
        if args.path != "both" and not name.startswith(args.path):
            continue
        if left() < (40 if name.startswith("fast") else 20):
            bare[name] = "skipped: over the time budget"
            continue
        bare[name] = bare_fast(batch, 5) if name.startswith("fast") else bare_eager(batch, 5, timer)
        log("bare", name, bare[name])
        RESULTS["bare"] = bare
        save()
    RESULTS["bare"] = bare
    RESULTS["ratio_to_bare"] = ratios(RESULTS["lem_ray_compare"], bare)
    log("ratio to bare", RESULTS["ratio_to_bare"])
    save()

    import torch

    gpus = torch.cuda.device_count()
    if gpus >= 2 and left() > 30:
        from lem_ray.backends.base import DeviceInfo
        from lem_ray.backends.pytorch.backend import PyTorchBackend
        from lem_ray.config.experiment import ExperimentConfig

        cfg = ExperimentConfig.model_validate({**BASE, "gpus_per_experiment": 2})
        backend = PyTorchBackend(cfg, DeviceInfo("cuda", 2))
        for i in range(2):  # CUDA contexts first: the figure is the model build alone
            torch.zeros(1, device=f"cuda:{i}")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        backend.load()
        torch.cuda.synchronize()
        RESULTS["load_2gpu_s"] = time.perf_counter() - t0
        backend.release()
    else:
        RESULTS["load_2gpu_s"] = f"not run: {gpus} GPU(s) here" if gpus < 2 else "skipped: time"
    save()

    if gpus and left() > 60 and args.path in ("both", "eager"):
        RESULTS["actor"] = actor_variants(3)
    else:
        RESULTS["actor"] = "skipped: no GPU or over the time budget"
    RESULTS["machine"] = {"gpu": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus,
                          "torch": torch.__version__}
    save()
    import ray

    ray.shutdown()
    log("done")
    print_summary()


def smoke_settings() -> None:
    """The tiny shipped model on the CPU: every section runs, in seconds, to prove the script."""
    global TOKENS, DEVICE
    TOKENS = 8
    DEVICE = "cpu"
    BASE.update(model_name="builtin:tiny-llama", fp_precision="float32", max_input_tokens=TOKENS,
                max_output_tokens=TOKENS, min_output_tokens=TOKENS)
    FAST_TOK_S.update({1: 200, 8: 800, 16: 1200, 32: 2000})


def ratios(rows: list[dict[str, Any]], bare: dict[str, Any]) -> dict[str, Any]:
    """lem-ray's recorded throughput over the bare loop's median, per comparable case."""
    found = {}
    for row in rows:
        fast = bool(row["pytorch"].get("torch_compile"))
        name = f"{'fast' if fast else 'eager'}_b{row['batch_size']}"
        reference = _rates(bare.get(name))
        if reference:
            found[name] = row["throughput_tok_s"] / statistics.median(reference)
    return found


def cycle_table(window_s: float, cycles: int) -> dict[int, Any]:
    runs = [{"pytorch": {"batch_size": b, **FAST},
             "prompts": _prompts(count_for(FAST_TOK_S[b], b, window_s))}
            for b in CV_BATCHES]
    rows = campaign("bench-cv", runs, cycles)
    table = {}
    for batch in CV_BATCHES:
        mine = [r for r in rows if r["batch_size"] == batch]
        table[batch] = {
            "cycles": len(mine),
            "window_s": [r["duration_s"] for r in mine],
            "tok_s": [r["throughput_tok_s"] for r in mine],
            "j_per_tok": [r["energy_j_per_output_token"] for r in mine],
            "cv_tok_s": cv([r["throughput_tok_s"] for r in mine]),
            "cv_j_per_tok": cv([r["energy_j_per_output_token"] for r in mine
                                if r["energy_j_per_output_token"] is not None]),
            "warmup_steps": [r["warmup_steps"] for r in mine],
            "warmup_s": [r["warmup_s"] for r in mine],
            "valid": [r["valid"] for r in mine],
            "flags": [r["validity_flags"] for r in mine],
        }
        log("cv", batch, table[batch])
    return table


def print_summary() -> None:
    """The tables docs/benchmarks.md carries."""
    bare = {k: _rates(v) for k, v in RESULTS.get("bare", {}).items() if _rates(v)}
    med = {k: statistics.median(v) for k, v in bare.items()}
    print("\n| bare loop (this process) | tok/s per repetition | median |\n|---|---|---|")
    for k, reps in bare.items():
        print(f"| {k} | {', '.join(f'{r:.0f}' for r in reps)} | {med[k]:.0f} |")
    for batch in (1, 16):
        timed, plain = med.get(f"eager_b{batch}_timer"), med.get(f"eager_b{batch}")
        if timed and plain:
            print(f"step clock vs none, batch {batch}: {timed / plain:.3f}")
    rows = RESULTS.get("lem_ray_compare")
    if isinstance(rows, list):
        print("\n| lem-ray run | tok/s | ratio to bare | load s | warmup steps | warmup s | "
              "settled | final CV | timing | valid |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            fast = "fast" if r["pytorch"].get("torch_compile") else "eager"
            name = f"{fast}_b{r['batch_size']}"
            ratio = RESULTS.get("ratio_to_bare", {}).get(name)
            print(f"| {name} | {_n(r['throughput_tok_s'])} | {_n(ratio, 3)} "
                  f"| {_n(r['engine_load_s'], 1)} | "
                  f"{r['warmup_steps']} | {_n(r['warmup_s'], 1)} | {r['warmup_converged']} | "
                  f"{_n(r['warmup_final_cv'], 3)} | {r['timing_method']} | {r['valid']} |")
    table = RESULTS.get("cv")
    if isinstance(table, dict):
        print("\n| batch | cycles | window s | tok/s | J/out tok | CV tok/s | CV J/out tok |\n"
              "|---|---|---|---|---|---|---|")
        for batch, t in table.items():
            print(f"| {batch} | {t['cycles']} | {', '.join(_n(w, 1) for w in t['window_s'])} | "
                  f"{', '.join(_n(x) for x in t['tok_s'])} | "
                  f"{', '.join(_n(x, 4) for x in t['j_per_tok'])} | "
                  f"{_pct(t['cv_tok_s'])} | {_pct(t['cv_j_per_tok'])} |")
    print(f"\nload on 2 GPUs: {RESULTS.get('load_2gpu_s')}")
    if isinstance(RESULTS.get("actor"), dict):
        print(f"eager batch 1 inside a Ray actor: {RESULTS['actor']}")


def _rates(entry: Any) -> list[float]:
    """A bare section's tok/s repetitions; none when it was skipped."""
    if isinstance(entry, dict):
        return entry["tok_s"]
    return entry if isinstance(entry, list) else []


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _prompts(count: int) -> dict[str, Any]:
    return {"source": "synthetic", "count": count,
            "input_len": {"distribution": "fixed", "mean": TOKENS, "min": TOKENS, "max": TOKENS}}


if __name__ == "__main__":
    sys.exit(main())
