"""A synthetic results directory written through the real writer, with known figures: five
experiments (retries, an invalid run, failures, a run without energy), per-request energies
and power samples. The report's statistics are checked by hand against it."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lem_ray.records import RunKey
from lem_ray.results.schema import empty_row
from lem_ray.results.store import write_rows

T0_S = 1_700_000_000.0
# experiment -> backend, precision, batch, temperature, gpus,
#               [(cycle, attempt, status, valid, J/tok)]
SYNTHETIC: dict[
    str, tuple[str, str, int, float, int, list[tuple[int, int, str, Any, float | None]]]
] = {
    "aaaa": (
        "pytorch",
        "float16",
        1,
        1.0,
        1,
        [
            (1, 1, "ok", True, 0.50),
            (2, 1, "ok", True, 9.9),
            (2, 2, "ok", True, 0.54),
            (3, 1, "ok", True, 0.52),
        ],
    ),
    "bbbb": (
        "pytorch",
        "float16",
        8,
        1.0,
        1,
        [(1, 1, "ok", True, 0.20), (2, 1, "ok", False, 0.90), (3, 1, "failed", None, None)],
    ),
    "cccc": (
        "pytorch",
        "bfloat16",
        8,
        0.7,
        1,
        [(1, 1, "ok", True, 0.18), (2, 1, "ok", True, 0.19), (3, 1, "ok", None, None)],
    ),
    "dddd": (
        "vllm",
        "float16",
        64,
        0.7,
        2,
        [(1, 1, "ok", True, 0.08), (2, 1, "ok", True, 0.085), (3, 1, "ok", True, 0.09)],
    ),
    "eeee": (
        "pytorch",
        "float32",
        2,
        1.0,
        1,
        [(1, 1, "failed", None, None), (1, 2, "failed", None, None)],
    ),
}
WINDOW_S = 20.0


def metrics(batch: int, cycle: int, jpt: float | None) -> dict[str, Any]:
    """Known, distinct figures per run: throughput and latency grow with the batch size."""
    throughput = 100.0 * batch ** 0.8 + 7.0 * cycle
    return {
        "energy_j_per_output_token": jpt,
        "energy_adjusted_j_per_output_token": None if jpt is None else jpt - 0.01 * cycle,
        "avg_power_w": None if jpt is None else jpt * throughput,
        "throughput_tok_s": throughput,
        "ttft_ms_p50": 20.0 * batch ** 0.5 + cycle,
        "ttft_ms_p99": 40.0 * batch ** 0.5 + 2 * cycle,
        "e2e_ms_p50": 300.0 * batch ** 0.3 + 3 * cycle,
        "itl_ms_p50": 5.0 + 0.1 * batch + 0.01 * cycle,
        "itl_ms_p99": 9.0 + 0.2 * batch + 0.02 * cycle,
        "sm_clock_mhz_mean": None if jpt is None else 1980.0 - 10 * cycle - batch,
    }


def request_energies(cycle: int) -> list[float]:
    return [1.0 * cycle, 2.0 * cycle, 3.0 * cycle, 4.0 * cycle]


def write_synthetic(results_dir: Path, recorded_max_cycle_cv: float | None = None) -> None:
    """A results directory through the real writer: experiments (with retries, an invalid run,
    failures, a run without energy) and power samples for the first cycles; ok rows record
    `recorded_max_cycle_cv` as the campaign's limit."""
    for i, (eid, (backend, precision, batch, temperature, gpus, runs)) in enumerate(
        SYNTHETIC.items()
    ):
        config = {
            "backend": backend,
            "fp_precision": precision,
            "decoder": {"temperature": temperature},
            "pytorch": {"batch_size": batch} if backend == "pytorch" else None,
            "vllm": {"max_num_seqs": batch} if backend == "vllm" else None,
        }
        for cycle, attempt, status, valid, jpt in runs:
            ids = {"campaign_name": "synth", "experiment_id": eid, "run_id": f"{eid}-c{cycle}",
                   "cycle": cycle, "attempt": attempt}
            start_s = T0_S + 100 * (10 * i + cycle) + 3
            row = {**ids, "status": status, "backend": backend, "model_name": "builtin:llama-1b",
                   "fp_precision": precision, "batch_size": batch, "gpus_per_experiment": gpus,
                   "config_json": json.dumps(config)}
            if status == "failed":
                row["error"] = "RuntimeError: CUDA out of memory\nTraceback (most recent call last)"
            else:
                row.update(device="cuda", valid=valid, energy_source="nvml_counter",
                           validity_flags=["throttled"] if valid is False else [],
                           measure_start_epoch_s=start_s, measure_end_epoch_s=start_s + WINDOW_S,
                           energy_window_s=WINDOW_S, max_cycle_cv=recorded_max_cycle_cv,
                           **metrics(batch, cycle, jpt))
                if recorded_max_cycle_cv is not None:
                    row["finished_at"] = datetime.fromtimestamp(start_s + WINDOW_S, timezone.utc)
            stem = RunKey(eid, cycle).stem(attempt)
            write_rows(results_dir, "experiments", stem, [{**empty_row("experiments"), **row}])
            if eid == "dddd":
                write_rows(results_dir, "requests", stem, [
                    {**empty_row("requests"), **ids, "request_index": k, "output_tokens": 10,
                     "energy_j": energy_j, "energy_attribution": "step"}
                    for k, energy_j in enumerate(request_energies(cycle))])
            if status == "ok" and cycle == 1:
                t_s = np.arange(start_s - 3, start_s + WINDOW_S + 3, 0.1)
                busy = (t_s >= start_s) & (t_s <= start_s + WINDOW_S)
                samples = [
                    {
                        **empty_row("timeseries"),
                        **ids,
                        "gpu_uuid": f"GPU-{eid}-{g}",
                        "t_s": float(t),
                        "power_w": float(80 + (220 + 30 * math.sin(t) + 10 * g) * b),
                    }
                    for g in range(gpus)
                    for t, b in zip(t_s, busy)
                ]
                write_rows(results_dir, "timeseries", stem, samples)


def write_legacy_manifest(results_dir: Path, campaign_name: str) -> Path:
    """A manifest as lem-ray wrote it before the journal: one state.json."""
    path = results_dir / "manifest" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"campaign_name": campaign_name, "runs": {}}))
    return path


def synthetic_with_legacy_manifest(results_dir: Path) -> Path:
    """The synthetic results with the manifest an older lem-ray left: what `status` and
    `report` must read around when damaged."""
    write_synthetic(results_dir)
    write_legacy_manifest(results_dir, "synth")
    return results_dir
