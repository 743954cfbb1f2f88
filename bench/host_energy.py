"""The host's share of an LLM run's energy, and per-request energy against the window, on one GPU.

    python bench/host_energy.py --out host_energy.json [--window-s 10] [--vllm] [--smoke]

1. Whether this node's host energy counters (Linux powercap RAPL: CPU package, DRAM) can be
   read by lem-ray's sampler, and why not where they cannot.
2. A lem-ray campaign: builtin:llama-1b (dummy weights, bf16, eager PyTorch, whose step clock
   stamps every token) at batch 1 and batch 32, one cycle, windows of about --window-s, with
   the idle baseline (GPU and host) taken first.
   With --vllm (vLLM installed: ../shared/gpu/vllm/README.md), one vLLM run too, max_num_seqs
   32, per-token engine stats (its per-request energy is attributed step by step as well).
3. Per run: GPU energy, host energy (CPU, DRAM), the host's share of GPU + host, the two
   measurement methods' gap, and the per-request energies summed against the window's energy
   with the attribution method that gave them.
--smoke runs the same on the CPU with the tiny shipped model in seconds (no energy there: the
rows say why), to prove the script. Results are written as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from typing import Any

TOKENS = 128
BASE: dict[str, Any] = {
    "model_name": "builtin:llama-1b", "load_format": "dummy", "backend": "pytorch",
    "fp_precision": "bfloat16", "max_input_tokens": TOKENS, "max_output_tokens": TOKENS,
    "min_output_tokens": TOKENS,
    "warmup": {"mode": "cv", "window": 3, "cv_threshold": 0.05, "max_steps": 20, "max_s": 40},
}
# Expected eager tok/s on one H200 (85 at batch 1 measured there; batch 32 estimated from the
# batch-8 716), to size the windows: a whole number of batches of about window_s.
EAGER_TOK_S = {1: 85.0, 32: 2000.0}
# vLLM at 16 prompts did 7,500 tok/s there (../shared/gpu/vllm/README.md): 32 sequences, more.
VLLM_TOK_S = 10000.0
VLLM_SEQS = 32
BATCHES = (1, 32)
BASELINE_S = 10.0
STARTED = time.perf_counter()
ROW_KEYS = ("backend", "batch_size", "status", "error", "num_requests", "output_tokens",
            "energy_window_s", "energy_j", "energy_unavailable_reason", "energy_integrated_j",
            "energy_methods_gap",
            "cpu_energy_j", "dram_energy_j", "host_energy_j", "host_energy_source",
            "host_energy_unavailable_reason", "host_baseline_power_w", "host_energy_adjusted_j",
            "host_shared_by_runs", "baseline_power_w", "energy_adjusted_j",
            "energy_j_per_output_token", "energy_with_host_j_per_output_token", "validity_flags")


def log(*parts: Any) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s]", *parts, flush=True)


def prompts_for(batch: int, window_s: float, tok_s: float) -> dict[str, Any]:
    count = max(1, math.ceil(window_s * tok_s / TOKENS / batch)) * batch
    return {"source": "synthetic", "count": count,
            "input_len": {"distribution": "fixed", "mean": TOKENS, "min": TOKENS, "max": TOKENS}}


def smoke_settings() -> None:
    """The tiny shipped model on the CPU, a few tokens: every step of the script in seconds."""
    global TOKENS, BASELINE_S
    TOKENS = 8
    BASELINE_S = 0.5
    BASE.update(model_name="builtin:tiny-llama", fp_precision="float32", max_input_tokens=TOKENS,
                max_output_tokens=TOKENS, min_output_tokens=TOKENS,
                warmup={"mode": "fixed", "requests": 1})
    EAGER_TOK_S.update({1: 40.0, 32: 400.0})


def host_share(row: dict[str, Any]) -> float | None:
    """Host energy over GPU + host energy of the measured window."""
    gpu, host = row.get("energy_j"), row.get("host_energy_j")
    if gpu is None or host is None or gpu + host <= 0:
        return None
    return host / (gpu + host)


def request_check(row: dict[str, Any], requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's per-request energies summed against its window's GPU energy."""
    mine = [r for r in requests if r["run_id"] == row["run_id"] and r["attempt"] == row["attempt"]]
    energies = [r["energy_j"] for r in mine if r["energy_j"] is not None]
    total = sum(energies) if energies else None
    window = row.get("energy_j")
    return {
        "requests": len(mine),
        "attribution": sorted({r["energy_attribution"] or "none" for r in mine}),
        "sum_request_energy_j": total,
        "window_energy_j": window,
        "relative_difference": (total - window) / window if total is not None and window else None,
        "request_energy_j_min_max": [min(energies), max(energies)] if energies else None,
    }


def run(window_s: float, results_dir: str, vllm: bool) -> dict[str, Any]:
    from lem_ray.execution.driver.campaign import run_campaign
    from lem_ray.results.store import read_table

    experiments = [{"pytorch": {"batch_size": b},
                    "prompts": prompts_for(b, window_s, EAGER_TOK_S[b])}
                   for b in BATCHES]
    if vllm:
        experiments.append({"backend": "vllm", "vllm": {"max_num_seqs": VLLM_SEQS},
                            "prompts": prompts_for(VLLM_SEQS, window_s, VLLM_TOK_S)})
    spec = {
        "campaign_name": "bench-host-energy",
        "base": BASE,
        "experiments": experiments,
        "execution": {"cycles": 1, "structure": "grouped",
                      "baseline": {"enabled": True, "duration_s": BASELINE_S},
                      "prefill": {"enabled": False}},
    }
    run_campaign(spec, results_dir=results_dir)
    rows = read_table(results_dir, "experiments").to_pylist()
    requests = read_table(results_dir, "requests").to_pylist()
    runs = []
    for row in sorted(rows, key=lambda r: (r["backend"], r["batch_size"])):
        found = {k: row.get(k) for k in ROW_KEYS}
        found["host_share_of_total"] = host_share(row)
        found["per_request"] = request_check(row, requests)
        log(json.dumps(found, default=str))
        runs.append(found)
    return {"runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="write the results as JSON here")
    parser.add_argument("--window-s", type=float, help="measured window of each run (default 10 s, "
                                                       "1 s with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="CPU check of the script: tiny model")
    parser.add_argument("--keep-results", metavar="DIR", help="keep the campaign's results here")
    parser.add_argument("--vllm", action="store_true", help="add one vLLM run (vLLM installed)")
    args = parser.parse_args()
    if args.smoke:
        smoke_settings()
    if args.window_s is None:
        args.window_s = 1.0 if args.smoke else 10.0

    from lem_ray.execution.driver.cluster import connect
    from lem_ray.telemetry.rapl import host_status

    results: dict[str, Any] = {"settings": {"model": BASE["model_name"], "tokens_in_out": TOKENS,
                                            "batches": list(BATCHES), "window_s": args.window_s,
                                            "vllm": args.vllm, "smoke": args.smoke}}
    results["host_counters"] = host_status()
    log("host counters:", json.dumps(results["host_counters"]))
    connect(None)
    if args.keep_results:
        results.update(run(args.window_s, args.keep_results, args.vllm))
    else:
        with tempfile.TemporaryDirectory() as out:
            results.update(run(args.window_s, out, args.vllm))
    import ray

    ray.shutdown()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print_summary(results)
    return 0


def print_summary(results: dict[str, Any]) -> None:
    host = results["host_counters"]
    print("host counters:", ", ".join(host["zones"]) if host["zones"] else
          f"not readable: {host['reason']}")
    for r in results["runs"]:
        share = r["host_share_of_total"]
        check = r["per_request"]
        print(f"{r['backend']} batch {r['batch_size']}: GPU {r['energy_j']} J, "
              f"host {r['host_energy_j']} J "
              f"(cpu {r['cpu_energy_j']}, dram {r['dram_energy_j']}), host share "
              f"{'-' if share is None else f'{share:.1%}'}"
              + (f" [{r['host_energy_unavailable_reason']}]"
                 if r["host_energy_unavailable_reason"] else "")
              + f"; gap {r['energy_methods_gap']}; requests ({', '.join(check['attribution'])}) "
              f"sum {check['sum_request_energy_j']} J vs window {check['window_energy_j']} J")


if __name__ == "__main__":
    sys.exit(main())
