"""Experiment and campaign validation: what is accepted, and how refusals read."""

from __future__ import annotations

import importlib
from typing import get_args

import pytest
from pydantic import ValidationError

from lem_ray.backend_table import BACKEND_NAMES, BACKENDS
from lem_ray.backends.registry import missing_modules, options_class
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.config.loading import error_from_validation, load_campaign, parse_campaign
from lem_ray.errors import ConfigError

BASE = {"model_name": "m", "backend": "pytorch"}


def _error(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(data)
    return str(error_from_validation(info.value, ExperimentConfig, "base"))


def test_defaults_fill_only_the_chosen_backend_section() -> None:
    cfg = ExperimentConfig.model_validate(BASE)
    assert cfg.pytorch is not None and cfg.pytorch.batch_size == 1
    assert cfg.vllm is None and cfg.tensorrt is None
    assert cfg.decoder.do_sample is False


def test_other_backend_section_is_refused() -> None:
    msg = _error({**BASE, "vllm": {"max_num_seqs": 8}})
    assert "vllm: section set but backend is 'pytorch'" in msg


def test_unknown_key_names_path_and_allowed_keys() -> None:
    msg = _error({**BASE, "pytorch": {"batchsize": 4}})
    assert msg.startswith(
        "base.pytorch.batchsize: unknown key 'batchsize'; allowed keys: batch_size"
    )


def test_unknown_key_inside_tagged_union() -> None:
    msg = _error({**BASE, "prompts": {"source": "synthetic", "count": 2, "cnt": 3}})
    assert msg.startswith("base.prompts.cnt: unknown key 'cnt'; allowed keys: source, count")


def test_wrong_type_and_value_name_the_field() -> None:
    assert _error({**BASE, "max_output_tokens": "many"}).startswith("base.max_output_tokens:")
    msg = _error({**BASE, "fp_precision": "float64"})
    assert msg.startswith("base.fp_precision:") and "float64" in msg


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            {"backend": "tensorrt", "fp_precision": "float32"},
            "fp_precision: float32 is not supported",
        ),
        ({"pytorch": {"load_in_4bit": True, "load_in_8bit": True}}, "are exclusive"),
        ({"min_output_tokens": 9, "max_output_tokens": 8}, "min_output_tokens (9) must be <="),
        (
            {"backend": "vllm", "gpus_per_experiment": 2},
            "(1 x 1) must equal gpus_per_experiment (2)",
        ),
        (
            {
                "backend": "tensorrt",
                "gpus_per_experiment": 4,
                "tensorrt": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
            },
            None,
        ),
    ],
)
def test_hard_rules(data: dict, reason: str | None) -> None:
    merged = {**BASE, **data}
    if reason is None:
        ExperimentConfig.model_validate(merged)
        return
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(merged)
    err = info.value.errors()[0]
    assert err["type"] == "invalid_combination" and reason in err["msg"]


def test_decoder_preset_fills_unset_fields_only() -> None:
    cfg = ExperimentConfig.model_validate({**BASE, "decoder": {"preset": "factual", "top_k": 7}})
    assert cfg.decoder.do_sample is True
    assert cfg.decoder.temperature == 0.3
    assert cfg.decoder.top_k == 7


def test_campaign_top_level_keys_are_exact() -> None:
    with pytest.raises(ConfigError) as info:
        parse_campaign({"campaign_name": "x", "gird": {}}, "c.yaml")
    assert str(info.value).startswith(
        "c.yaml: gird: unknown key 'gird'; allowed keys: campaign_name"
    )


def test_yaml_syntax_error_names_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("campaign_name: x\ngrid: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert "YAML syntax error: line" in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_campaign(tmp_path / "nope.yaml")


def test_non_mapping_file(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping, got list"):
        load_campaign(path)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_the_backend_table_drives_the_config() -> None:
    assert get_args(ExperimentConfig.model_fields["backend"].annotation) == BACKEND_NAMES
    for name in BACKEND_NAMES:
        assert ExperimentConfig.model_fields[name].annotation == options_class(name) | None
    assert missing_modules("pytorch") == []
    assert missing_modules("tensorrt") == ([] if _importable("tensorrt_llm") else ["tensorrt_llm"])


def test_the_backend_tables_batch_option_is_what_concurrency_reads() -> None:
    """Labels read a backend's batch size by the table's option name; a backend whose options
    model reads another field would be labelled by the wrong key."""
    for e in BACKENDS:
        assert options_class(e.name)(**{e.batch_option: 7}).concurrency == 7, e.name


@pytest.mark.parametrize(("backend", "key"), [
    ("pytorch", "batch_size"), ("vllm", "max_num_seqs"), ("tensorrt", "max_batch_size"),
])
def test_each_backend_states_its_concurrency(backend: str, key: str) -> None:
    cfg = ExperimentConfig.model_validate(
        {"model_name": "m", "backend": backend, backend: {key: 7}}
    )
    assert cfg.backend_options.concurrency == 7
