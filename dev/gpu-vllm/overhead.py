"""What lem-ray's vLLM measured window costs against a bare `LLM.generate`, in one process.

On the H200, from the project root, after `source .gpu/setup.sh && source /tmp/vparts/install.sh`:

    python3 dev/gpu-vllm/overhead.py [--seqs 256,64] [--budget-s 540]   (or run.sh overhead)

Rehearsed on a CPU against tests/fakes/vllm_standin, installed as `vllm` in a temp dir by
rehearse.sh (no model runs there; the plumbing):

    dev/gpu-vllm/rehearse.sh python3 dev/gpu-vllm/overhead.py --window-s 1 --budget-s 60

For each max_num_seqs, one engine (lem-ray's VLLMBackend with the campaign's engine arguments,
so vLLM's stats are on), one set of prompts (128 tokens in, exactly 128 out), and three arms,
each `--reps` times, interleaved with the order rotated every rep so drift falls on all three:

  bare         LLM.generate on the prompts' token ids with lem-ray's SamplingParams (min_tokens
               = max_tokens holds EOS back, as in the campaign): what a user runs
  per_token    VLLMBackend.measure, vllm.token_timing per_token (engine stepped, DELTA outputs)
  per_request  VLLMBackend.measure, vllm.token_timing per_request (one LLM.generate call)

The prompt count is sized from a calibration call (which also warms the engine) so that the
bare arm, the fastest, lasts `--window-s` or more. Printed and written to $OUT: each call's
output tok/s, TTFT p50, ITL mean and p50, and per max_num_seqs the medians and the ratios
per_token/bare and per_request/bare (also per rep, within a rep). With budget left, one more
engine at `--stats-off-seqs` with disable_log_stats=True runs the bare arm: its ratio to the
stats-on bare arm is what vLLM's stats cost (two engines: engine-to-engine spread included).

The JSON is rewritten after every call, so a run stopped by its budget (SIGINT) keeps what
finished. Before each engine and each call, the time it would take (an engine start:
`--load-estimate-s`; a call: the longest seen so far of its kind) is checked against the
budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.vllm.backend import VLLMBackend
from lem_ray.backends.vllm.translate import records_from_outputs, truncated_token_ids
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.config.prompts import SyntheticPrompts
from lem_ray.measure.protocol import timed_measure
from lem_ray.planning.prompts import synthetic_prompts
from lem_ray.records import RequestRecord
from lem_ray.results.metrics import request_metrics

TOKENS = 128
ARMS = ("bare", "per_token", "per_request")
RELEASE_S = 10.0  # stopping an engine and freeing its memory


def experiment(model: str, seqs: int, token_timing: str = "per_token",
               stats: bool = True) -> ExperimentConfig:
    """The campaign's experiment (configs/h200-vllm-llama1b.yaml) at this max_num_seqs."""
    vllm: dict[str, Any] = {"max_num_seqs": seqs, "gpu_memory_utilization": 0.9,
                            "token_timing": token_timing}
    if not stats:
        vllm["extra_engine_args"] = {"disable_log_stats": True}
    return ExperimentConfig.model_validate({
        "model_name": model, "load_format": "dummy", "backend": "vllm",
        "fp_precision": "bfloat16", "max_input_tokens": TOKENS, "max_output_tokens": TOKENS,
        "min_output_tokens": TOKENS, "vllm": vllm,
    })


def prompts(count: int) -> list[str]:
    """Synthetic prompts of 128 words (128 tokens or more; the backend keeps the first 128)."""
    fixed = {"distribution": "fixed", "mean": TOKENS, "min": TOKENS, "max": TOKENS}
    return synthetic_prompts(SyntheticPrompts(source="synthetic", count=count,
                                              input_len=fixed), 0)


def figures(arm: str, records: list[RequestRecord], seconds: float,
            timing: str | None) -> dict[str, Any]:
    m = request_metrics(records, seconds)
    return {"arm": arm, "s": round(seconds, 3), "requests": m["num_requests"],
            "output_tokens": m["output_tokens"], "tok_s": m["throughput_tok_s"],
            "ttft_ms_p50": m["ttft_ms_p50"], "itl_ms_mean": m["itl_ms_mean"],
            "itl_ms_p50": m["itl_ms_p50"], "e2e_ms_p50": m["e2e_ms_p50"],
            "timing_method": timing}


def bare(backend: VLLMBackend, token_ids: list[list[int]]) -> dict[str, Any]:
    """The engine's own LLM.generate, token ids in, as a user with token ids would call it.
    TTFT and ITL mean from the outputs' stats (read after the clock stops)."""
    import vllm

    params = vllm.SamplingParams(**backend._sampling_kwargs)
    requests = [{"prompt_token_ids": ids} for ids in token_ids]
    start = time.perf_counter()
    outputs = backend._llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    records = records_from_outputs(outputs, [len(ids) for ids in token_ids], start,
                                   start + seconds)
    timing = "vllm_request_stats" if all(r.ttft_ms is not None for r in records) else None
    return figures("bare", records, seconds, timing)


def measured(backend: VLLMBackend, config: ExperimentConfig, texts: list[str],
             arm: str) -> dict[str, Any]:
    """lem-ray's measured window's work, timed by the campaign's own code
    (lem_ray.measure.protocol.timed_measure: measure() then synchronize())."""
    backend.configure(config)
    work = timed_measure(backend, texts)
    return figures(arm, work.records, work.duration_s, backend.timing_method)


def ratios(calls: list[dict[str, Any]], arms: tuple[str, ...]) -> dict[str, Any]:
    """Median tok/s per arm, each arm's median over bare's, and per rep (paired in time)."""
    by_arm = {a: [c["tok_s"] for c in calls if c["arm"] == a and c["tok_s"]] for a in arms}
    median = {a: statistics.median(v) for a, v in by_arm.items() if v}
    out: dict[str, Any] = {"median_tok_s": median}
    if "bare" in median:
        out["ratio_to_bare"] = {a: median[a] / median["bare"] for a in median if a != "bare"}
    per_rep: dict[str, list[float]] = {}
    for rep in sorted({c["rep"] for c in calls}):
        done = {c["arm"]: c["tok_s"] for c in calls if c["rep"] == rep and c["tok_s"]}
        for a in arms:
            if a != "bare" and a in done and "bare" in done:
                per_rep.setdefault(a, []).append(done[a] / done["bare"])
    out["ratio_to_bare_per_rep"] = per_rep
    return out


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def allows(self, seconds: float) -> bool:
        return time.monotonic() + seconds + RELEASE_S <= self.deadline


class Run:
    """The JSON being built, written after every call."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "what": "output tok/s of bare LLM.generate vs lem-ray's measured window "
                    "(per_token, per_request) on one vLLM engine per max_num_seqs",
            "args": vars(args), "host": socket.gethostname(), "engines": [],
            "skipped": [], "stopped": None,
        }

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


def load(config: ExperimentConfig) -> tuple[VLLMBackend, float]:
    start = time.perf_counter()
    backend = VLLMBackend(config, DeviceInfo("cuda", 1))
    backend.load()
    return backend, time.perf_counter() - start


def sized_prompts(backend: VLLMBackend, seqs: int, window_s: float,
                  entry: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
    """Two bare calls on 2 x max_num_seqs prompts (the first warms), then enough prompts,
    in whole waves of max_num_seqs, for the bare arm to last window_s at that rate."""
    tokenizer = backend._tokenizer
    calibration = truncated_token_ids(tokenizer, prompts(2 * seqs), TOKENS)
    entry["calibration"] = [bare(backend, calibration) for _ in range(2)]
    rate = entry["calibration"][-1]["tok_s"]
    waves = max(2, math.ceil(window_s * 1.1 * rate / TOKENS / seqs))
    texts = prompts(waves * seqs)
    start = time.perf_counter()
    token_ids = truncated_token_ids(tokenizer, texts, TOKENS)
    entry["prompts"] = len(texts)
    entry["tokenize_s"] = round(time.perf_counter() - start, 3)
    return texts, token_ids


def compare(args: argparse.Namespace, seqs: int, budget: Budget, run: Run) -> int | None:
    """The three arms on one engine; returns the prompt count used (None if not run)."""
    if not budget.allows(args.load_estimate_s + 4 * args.window_s):
        run.data["skipped"].append(f"max_num_seqs {seqs}: no budget for an engine start "
                                   "and one rep")
        return None
    backend, load_s = load(experiment(args.model, seqs))
    entry: dict[str, Any] = {"max_num_seqs": seqs, "stats": True, "load_s": round(load_s, 1),
                             "versions": backend.versions(),
                             "engine_config": backend.engine_config(), "calls": []}
    run.data["engines"].append(entry)
    try:
        texts, token_ids = sized_prompts(backend, seqs, args.window_s, entry)
        run.write()
        configs = {a: experiment(args.model, seqs, a) for a in ("per_token", "per_request")}
        longest: dict[str, float] = {}
        for rep in range(args.reps):
            for arm in ARMS[rep % 3:] + ARMS[:rep % 3]:
                unseen = 1.5 * max(args.window_s, *longest.values(), 0.0)
                if not budget.allows(longest.get(arm, unseen)):
                    entry["stopped"] = f"budget: rep {rep}, {arm}"
                    return len(texts)
                call = bare(backend, token_ids) if arm == "bare" else measured(
                    backend, configs[arm], texts, arm)
                call["rep"] = rep
                entry["calls"].append(call)
                longest[arm] = max(longest.get(arm, 0.0), call["s"])
                entry["summary"] = ratios(entry["calls"], ARMS)
                run.write()
                print(f"max_num_seqs {seqs} rep {rep} {arm:<11} {call['tok_s']:9.0f} tok/s "
                      f"{call['s']:6.2f} s  TTFT p50 {call['ttft_ms_p50']}  "
                      f"{call['timing_method']}", flush=True)
        return len(texts)
    finally:
        backend.release()
        run.write()


def stats_off(args: argparse.Namespace, seqs: int, count: int, budget: Budget,
              run: Run) -> None:
    """The bare arm on an engine with vLLM's stats off (LLM()'s own default)."""
    on = next(e for e in run.data["engines"] if e["max_num_seqs"] == seqs and e["stats"])
    bare_s = max((c["s"] for c in on["calls"] if c["arm"] == "bare"), default=0.0)
    if not budget.allows(args.load_estimate_s + (args.reps + 2) * bare_s):
        run.data["skipped"].append(f"stats off at max_num_seqs {seqs}: no budget")
        return
    backend, load_s = load(experiment(args.model, seqs, stats=False))
    entry: dict[str, Any] = {"max_num_seqs": seqs, "stats": False, "load_s": round(load_s, 1),
                             "prompts": count, "calls": []}
    run.data["engines"].append(entry)
    try:
        warm = truncated_token_ids(backend._tokenizer, prompts(2 * seqs), TOKENS)
        entry["calibration"] = [bare(backend, warm) for _ in range(2)]
        token_ids = truncated_token_ids(backend._tokenizer, prompts(count), TOKENS)
        for rep in range(args.reps):
            if not budget.allows(bare_s):
                entry["stopped"] = f"budget: rep {rep}"
                break
            call = {**bare(backend, token_ids), "rep": rep}
            entry["calls"].append(call)
            print(f"max_num_seqs {seqs} stats off rep {rep} bare {call['tok_s']:9.0f} tok/s",
                  flush=True)
            run.write()
        off = ratios(entry["calls"], ("bare",))["median_tok_s"].get("bare")
        base = on.get("summary", {}).get("median_tok_s", {}).get("bare")
        entry["stats_off_over_on"] = off / base if off and base else None
    finally:
        backend.release()
        run.write()


def table(data: dict[str, Any]) -> str:
    lines = ["| max_num_seqs | stats | arm | median tok/s | / bare | per rep | TTFT p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for e in data["engines"]:
        summary = e.get("summary") or ratios(e["calls"], ARMS)
        for arm in ARMS:
            calls = [c for c in e["calls"] if c["arm"] == arm]
            if not calls:
                continue
            ratio = summary.get("ratio_to_bare", {}).get(arm)
            reps = summary.get("ratio_to_bare_per_rep", {}).get(arm, [])
            ttft = [c["ttft_ms_p50"] for c in calls if c["ttft_ms_p50"] is not None]
            lines.append(
                f"| {e['max_num_seqs']} | {'on' if e['stats'] else 'off'} | {arm} | "
                f"{summary['median_tok_s'][arm]:.0f} | {'-' if ratio is None else f'{ratio:.3f}'}"
                f" | {' '.join(f'{r:.3f}' for r in reps) or '-'} | "
                f"{f'{statistics.median(ttft):.1f}' if ttft else '-'} |")
        if not e["stats"] and e.get("stats_off_over_on"):
            lines.append(f"| {e['max_num_seqs']} | off/on | bare | | "
                         f"{e['stats_off_over_on']:.3f} | | |")
    notes = [f"max_num_seqs {e['max_num_seqs']} (stats {'on' if e['stats'] else 'off'}): "
             f"{e.get('prompts', '-')} prompts, engine start "
             f"{e['load_s']} s, stopped early: {e.get('stopped') or 'no'}"
             for e in data["engines"]]
    notes += [f"skipped: {s}" for s in data["skipped"]]
    if data["stopped"]:
        notes.append(f"stopped: {data['stopped']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="256,64",
                        help="max_num_seqs values, one engine each, in this order")
    parser.add_argument("--model", default="builtin:llama-1b")
    parser.add_argument("--window-s", type=float, default=10.0,
                        help="the bare arm's shortest window; the others take longer")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--load-estimate-s", type=float, default=90.0,
                        help="an engine start, for the budget checks")
    parser.add_argument("--stats-off-seqs", type=int, default=None,
                        help="max_num_seqs of the stats-off engine (default: the first of "
                        "--seqs; 0: none)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    seqs_list = [int(s) for s in args.seqs.split(",") if s.strip()]
    stats_off_seqs = seqs_list[0] if args.stats_off_seqs is None else args.stats_off_seqs
    if stats_off_seqs and stats_off_seqs not in seqs_list:
        parser.error(f"--stats-off-seqs {stats_off_seqs} must be one of --seqs {args.seqs}")
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out / "vllm_overhead.json", args)
    counts: dict[int, int] = {}
    status = 0
    try:
        for seqs in seqs_list:
            count = compare(args, seqs, budget, run)
            if count is not None:
                counts[seqs] = count
        if stats_off_seqs in counts:
            stats_off(args, stats_off_seqs, counts[stats_off_seqs], budget, run)
        elif stats_off_seqs:
            run.data["skipped"].append(f"stats off at max_num_seqs {stats_off_seqs}: "
                                       "its stats-on engine did not run")
    except KeyboardInterrupt:
        run.data["stopped"] = "SIGINT (budget)"
        status = 124
    run.write()
    text = table(run.data)
    (out / "vllm_overhead.md").write_text(text)
    print(text, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
