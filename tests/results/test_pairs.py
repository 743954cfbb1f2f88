"""Matched comparison: `lem-ray report --pair KEY` on a synthetic campaign with known paired
differences (two backends on the same prompts and arrivals, cycle by cycle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lem_ray.errors import ConfigError
from lem_ray.records import RunKey
from lem_ray.results.bootstrap import bootstrap_ci
from lem_ray.results.pairs import ALL, pair_runs
from lem_ray.results.schema import empty_row
from lem_ray.results.store import write_rows
from tests.cli.support import lem_ray

# tensorrt minus vllm, per cycle: at batch 8 always above (a known +0.0115 J), at 64 around 0
DIFF_8 = [0.010, 0.012, 0.011, 0.013]
DIFF_64 = [0.002, -0.003, 0.001, -0.001]
VLLM_8 = [0.20, 0.23, 0.19, 0.21]       # cycle-to-cycle noise the pairing cancels
VLLM_64 = [0.080, 0.070, 0.090, 0.075]


def row(backend: str, batch: int, cycle: int, jpt: float, temperature: float = 1.0,
        stream: str | None = "s", **extra: Any) -> dict[str, Any]:
    eid = f"{backend[:2]}{batch}t{temperature}"
    config = {"backend": backend, "model_name": "builtin:llama-8b",
              "prompts": {"source": "synthetic", "count": 64},
              "decoder": {"temperature": temperature},
              "vllm": {"max_num_seqs": batch} if backend == "vllm" else None,
              "tensorrt": {"max_batch_size": batch} if backend == "tensorrt" else None}
    return {**empty_row("experiments"), "campaign_name": "pairs", "experiment_id": eid,
            "run_id": f"{eid}-c{cycle}", "cycle": cycle, "attempt": 1, "status": "ok",
            "valid": True, "backend": backend, "model_name": "builtin:llama-8b",
            "batch_size": batch, "energy_j_per_output_token": jpt,
            "stream_sha256": f"{stream}{batch}-{cycle}" if stream else None,
            "config_json": json.dumps(config), **extra}


def campaign() -> list[dict[str, Any]]:
    rows = []
    for cycle in range(1, 5):
        for batch, base, diffs in ((8, VLLM_8, DIFF_8), (64, VLLM_64, DIFF_64)):
            rows.append(row("vllm", batch, cycle, base[cycle - 1]))
            rows.append(row("tensorrt", batch, cycle, base[cycle - 1] + diffs[cycle - 1]))
    rows.append(row("vllm", 8, 5, 0.2))                                   # no partner
    rows.append(row("tensorrt", 8, 6, 0.3, valid=False))                  # invalid: not counted
    rows.append(row("vllm", 8, 6, 0.2))
    rows.append(row("vllm", 64, 7, 0.08, stream="x"))                     # another stream sent
    rows.append(row("tensorrt", 64, 7, 0.09, stream="y"))
    return rows


def test_paired_difference_by_backend_with_its_ci() -> None:
    answers, mismatched = pair_runs(campaign(), "backend")
    assert mismatched == 1
    by_config = {a["configuration"]: a for a in answers}
    assert set(by_config) == {"batch 8", "batch 64", ALL}
    eight = by_config["batch 8"]
    assert (eight["a"], eight["b"], eight["pairs"]) == ("tensorrt", "vllm", 4)
    # b - a = vllm - tensorrt: minus the known difference
    assert eight["difference_mean"] == pytest.approx(-0.0115)
    assert eight["a_mean"] == pytest.approx(sum(VLLM_8) / 4 + 0.0115)
    low, high = bootstrap_ci([-d for d in DIFF_8])
    assert (eight["ci_low"], eight["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert high < 0 and eight["significant"] is True
    sixty_four = by_config["batch 64"]
    assert sixty_four["difference_mean"] == pytest.approx(-sum(DIFF_64) / 4)
    assert sixty_four["ci_low"] < 0 < sixty_four["ci_high"] and sixty_four["significant"] is False
    pooled = by_config[ALL]
    assert pooled["pairs"] == 8
    assert pooled["difference_mean"] == pytest.approx(-(sum(DIFF_8) + sum(DIFF_64)) / 8)


def test_pairs_by_a_config_key_and_refusals() -> None:
    rows = [row("vllm", 8, c, 0.2 + 0.01 * c, temperature=t) for c in (1, 2, 3) for t in (0.5, 1.0)]
    rows = [{**r, "energy_j_per_output_token": r["energy_j_per_output_token"]
             + (0.05 if '"temperature": 1.0' in r["config_json"] else 0.0)} for r in rows]
    (answer,) = pair_runs(rows, "decoder.temperature")[0]
    assert (answer["a"], answer["b"], answer["pairs"]) == ("0.5", "1.0", 3)
    assert answer["difference_mean"] == pytest.approx(0.05)
    assert answer["ci_low"] == pytest.approx(0.05) and answer["significant"] is True
    one = pair_runs(rows[:2], "decoder.temperature")[0][0]
    assert one["pairs"] == 1 and one["ci_low"] is None and one["significant"] is None
    with pytest.raises(ConfigError, match="unknown key 'nope'") as info:
        pair_runs(rows, "nope")
    assert info.value.path == "--pair"


def test_report_cli_pair(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for r in campaign():
        write_rows(results, "experiments", RunKey(r["experiment_id"], r["cycle"]).stem(1), [r])
    out = lem_ray("report", str(results), "--pair", "backend", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "pairs by backend: vllm - tensorrt (batch 8, 4 pairs): -0.0115 J/out tok" in text
    assert ", significant" in text and ", not significant" in text
    assert "1 candidate pairs left out: their runs sent different request streams" in text
    payload = json.loads(lem_ray("report", str(results), "--pair", "backend", "--json",
                                 cwd=tmp_path).stdout)
    assert len(payload["pairs"]) == 3 and payload["pairs_mismatched_streams"] == 1
    bad = lem_ray("report", str(results), "--pair", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--pair" in bad.stderr
