"""Grid expansion, rejection, collapsing, stable ids, run order and prompt sources."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from lem_ray.config.prompts import LengthDistribution, SyntheticPrompts
from lem_ray.errors import ConfigError
from lem_ray.planning.order import order_runs
from lem_ray.planning.plan import plan_campaign
from lem_ray.planning.prompts import synthetic_lengths, synthetic_prompts

GRID = {
    "campaign_name": "g",
    "base": {"model_name": "builtin:tiny-llama", "load_format": "dummy"},
    "grid": {
        "backends": ["pytorch", "vllm", "tensorrt"],
        "shared": {"fp_precision": ["float32", "bfloat16"], "max_output_tokens": [32, 64]},
        "backend_overrides": {
            "pytorch": {"batch_size": [1, 4]},
            "vllm": {"max_num_seqs": [16, 64]},
        },
    },
    "experiments": [{"backend": "pytorch", "pytorch": {"batch_size": 16}}],
    "execution": {"cycles": 3},
}


def test_expansion_counts_and_rejections() -> None:
    plan = plan_campaign(GRID)
    backends = Counter(e.backend for e in plan.experiments)
    # pytorch 2x2x2 + 1 explicit, vllm 2x2x2, tensorrt 2x2 minus its two float32 combinations.
    assert backends == {"pytorch": 9, "vllm": 8, "tensorrt": 2}
    assert len(plan.rejected) == 2
    assert all(r.backend == "tensorrt" and "float32" in r.reason for r in plan.rejected)
    assert {r.combination["max_output_tokens"] for r in plan.rejected} == {32, 64}
    assert len(plan.runs) == 19 * 3


def test_backend_axes_land_in_their_section() -> None:
    plan = plan_campaign(GRID)
    seqs = {e.config.vllm.max_num_seqs for e in plan.experiments if e.backend == "vllm"}
    assert seqs == {16, 64}
    sizes = {e.config.pytorch.batch_size for e in plan.experiments if e.backend == "pytorch"}
    assert sizes == {1, 4, 16}


def test_identical_experiments_collapse() -> None:
    data = {**GRID, "grid": {"backends": ["pytorch"], "shared": {"fp_precision": ["bfloat16"]}},
            "experiments": [{"backend": "pytorch", "fp_precision": "bfloat16"}]}
    assert len(plan_campaign(data).experiments) == 1


def test_experiment_id_is_stable_across_processes() -> None:
    ids = [e.experiment_id for e in plan_campaign(GRID).experiments]
    code = (
        "import json,sys; sys.path.insert(0, '.');"
        "from lem_ray.planning.plan import plan_campaign;"
        f"print(json.dumps([e.experiment_id for e in plan_campaign({GRID!r}).experiments]))"
    )
    other = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert other == ids
    assert len(set(ids)) == len(ids)


def test_experiment_id_pinned() -> None:
    # A changed id orphans every stored result of a campaign: change this only on purpose.
    plan = plan_campaign({"campaign_name": "p", "base": {"model_name": "m", "backend": "pytorch"}})
    assert plan.experiments[0].experiment_id == "edfdccd21db2"
    served = {"model_name": "m", "backend": "vllm",
              "vllm": {"traffic": {"mode": "poisson", "rate_rps": 2.0}}}
    assert plan_campaign({"campaign_name": "p", "base": served}).experiments[0].experiment_id \
        == "007fb8218328", "traffic options added later (burstiness, trace) keep vLLM ids"


def test_an_option_added_later_keeps_the_ids_of_experiments_that_leave_it_at_its_default() -> None:
    """Options added after results were stored (ID_OMITTED_AT_DEFAULT) change no stored id,
    and still tell apart the experiments that set them; each has the default it claims."""
    from lem_ray.config.experiment import ExperimentConfig
    from lem_ray.planning.expand import ID_OMITTED_AT_DEFAULT

    fast = {"cache_implementation": "static", "torch_compile": "reduce-overhead"}
    base = {"model_name": "m", "backend": "pytorch"}
    ids = [
        plan_campaign({"campaign_name": "p", "base": {**base, "pytorch": pytorch}})
        .experiments[0]
        .experiment_id
        for pytorch in (fast, {**fast, "compile_prefill": False}, {**fast, "compile_prefill": True})
    ]
    assert ids[0] == ids[1] != ids[2]
    for dotted, default in ID_OMITTED_AT_DEFAULT.items():
        head = dotted.split(".")[0]
        backend = head if head in ("pytorch", "vllm", "tensorrt") else "pytorch"
        owner: Any = ExperimentConfig.model_validate({**base, "backend": backend})
        for part in dotted.split("."):
            owner = getattr(owner, part)
        assert owner == default, dotted


def test_typo_in_grid_is_an_error_not_a_rejection() -> None:
    bad = {**GRID, "grid": {**GRID["grid"], "shared": {"fp_precison": ["float16"]}}}
    with pytest.raises(ConfigError) as info:
        plan_campaign(bad)
    assert str(info.value).startswith("grid.shared.fp_precison: unknown key")


def test_bad_value_in_backend_axis_names_its_yaml_path() -> None:
    bad = {**GRID, "grid": {**GRID["grid"], "backend_overrides": {"vllm": {"max_num_seqs": [0]}}}}
    with pytest.raises(ConfigError) as info:
        plan_campaign(bad)
    assert str(info.value).startswith("grid.backend_overrides.vllm.max_num_seqs:")


def test_empty_grid_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no experiments to run"):
        plan_campaign({"campaign_name": "e"})
    everything_rejected = {
        "campaign_name": "r",
        "base": {"model_name": "m", "fp_precision": "float32"},
        "grid": {"backends": ["tensorrt"]},
    }
    with pytest.raises(ConfigError, match="1 rejected; first: fp_precision: float32"):
        plan_campaign(everything_rejected)


def test_overrides_for_unlisted_backend() -> None:
    bad = {
        **GRID,
        "grid": {"backends": ["pytorch"], "backend_overrides": {"vllm": {"max_num_seqs": [1]}}},
    }
    with pytest.raises(ConfigError, match=r"not in grid\.backends"):
        plan_campaign(bad)


def test_run_orders() -> None:
    ids = ["a", "b", "c"]
    inter = order_runs(ids, 2, "interleaved", 0)
    assert [(r.experiment_id, r.cycle) for r in inter] == [
        ("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("c", 2)]
    grouped = order_runs(ids, 2, "grouped", 0)
    assert [(r.experiment_id, r.cycle) for r in grouped] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2)]
    shuffled = order_runs(list("abcdefgh"), 3, "shuffled", 7)
    assert shuffled == order_runs(list("abcdefgh"), 3, "shuffled", 7)
    cycles = [[r.experiment_id for r in shuffled if r.cycle == c] for c in (1, 2, 3)]
    assert all(sorted(c) == list("abcdefgh") for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1, "each cycle draws its own order"
    assert shuffled != order_runs(list("abcdefgh"), 3, "shuffled", 8)


@pytest.mark.parametrize("dist", ["fixed", "uniform", "normal", "lognormal"])
def test_synthetic_lengths_respect_bounds(dist: str) -> None:
    spec = LengthDistribution(distribution=dist, mean=40, std=15, min=10, max=60)
    lengths = synthetic_lengths(spec, 500, seed=3)
    assert min(lengths) >= 10 and max(lengths) <= 60
    assert lengths == synthetic_lengths(spec, 500, seed=3)
    # uniform draws over [min, max] whatever the mean says; the others centre on the mean
    expected_mean = (10 + 60) / 2 if dist == "uniform" else 40
    assert abs(sum(lengths) / len(lengths) - expected_mean) < 3
    assert (len(set(lengths)) == 1) is (dist == "fixed")


def test_synthetic_prompts_are_seeded_words() -> None:
    cfg = SyntheticPrompts(source="synthetic", count=5, input_len=LengthDistribution(
        distribution="fixed", mean=12, min=1, max=100))
    first = synthetic_prompts(cfg, default_seed=1)
    assert first == synthetic_prompts(cfg, default_seed=1)
    assert first != synthetic_prompts(cfg, default_seed=2)
    assert all(len(p.split()) == 12 for p in first)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_prompts(tmp_path, suffix: str) -> None:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    texts = ["first prompt", "second, with a comma", "third"]
    path = tmp_path / f"p{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    elif suffix == ".csv":
        pyarrow.csv.write_csv(pa.table({"text": texts}), path)
    else:
        pyarrow.parquet.write_table(pa.table({"text": texts}), path)
    data = {"campaign_name": "f", "base": {"model_name": "m", "backend": "pytorch", "prompts": {
        "source": "file", "path": path.name, "column": "text", "count": 2}}}
    campaign = tmp_path / "c.yaml"
    import yaml

    campaign.write_text(yaml.safe_dump(data))
    plan = plan_campaign(campaign)
    assert list(plan.load_prompts().values()) == [texts[:2]]


def test_file_prompts_wrong_column(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x"}\n')
    plan = plan_campaign({"campaign_name": "f", "base": {"model_name": "m", "backend": "pytorch",
                          "prompts": {"source": "file", "path": str(path), "column": "text"}}})
    with pytest.raises(ConfigError, match=r"column 'text' not in p.jsonl; columns: \['prompt'\]"):
        plan.load_prompts()


def test_prompts_are_read_once_per_prompts_section_and_seed() -> None:
    """Two seeds, two prompt sets; experiments that differ in anything else share one list;
    prompts.seed, when set, decides the texts whatever the experiment's seed."""
    plan = plan_campaign({
        "campaign_name": "seeds",
        "base": {"model_name": "builtin:tiny-llama", "backend": "pytorch",
                 "prompts": {"source": "synthetic", "count": 6}},
        "grid": {"backends": ["pytorch"],
                 "shared": {"random_seed": [1, 2], "max_output_tokens": [8, 16]}},
    })
    loaded = plan.load_prompts()
    by_seed: dict[int, list[list[str]]] = {}
    for e in plan.experiments:
        by_seed.setdefault(e.config.random_seed, []).append(loaded[e.experiment_id])
    assert sorted(by_seed) == [1, 2] and all(len(v) == 2 for v in by_seed.values())
    one, two = by_seed[1], by_seed[2]
    assert one[0] is one[1] and two[0] is two[1], "one read per prompts section and seed"
    assert one[0] != two[0]
    cfg = plan.experiments[0].config.prompts
    assert one[0] == synthetic_prompts(cfg, 1) and two[0] == synthetic_prompts(cfg, 2)
    assert plan.load_prompts() == loaded

    fixed = plan_campaign({
        "campaign_name": "fixed",
        "base": {"model_name": "builtin:tiny-llama", "backend": "pytorch",
                 "prompts": {"source": "synthetic", "count": 6, "seed": 5}},
        "grid": {"backends": ["pytorch"], "shared": {"random_seed": [1, 2]}},
    }).load_prompts()
    first, second = fixed.values()
    assert first == second == synthetic_prompts(SyntheticPrompts(source="synthetic", count=6,
                                                                 seed=5), 0)
