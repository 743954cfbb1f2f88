"""How an experiment is named wherever it is shown (the `--dry-run` table, the live run lines,
the end-of-campaign table, the report and its HTML), and the batch-size plot its lines: by what
differs between them, in the words a reader uses
(`batch 16 · 2 GPUs · bf16 · torch_compile=reduce-overhead`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from lem_ray.backend_table import BACKEND_NAMES, BATCH_KEYS

if TYPE_CHECKING:
    from lem_ray.config.experiment import ExperimentConfig

PRECISION_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# The engine and runtime settings outside the backend's section: a line of the batch-size plot
# is one value of each of these and of every option of the backend's section.
ENGINE_COLUMNS = ("model_name", "backend", "load_format", "fp_precision", "gpus_per_experiment")
# Read first in a label, in this order; any other differing config key follows.
LABEL_ORDER = ("model_name", "backend", "batch_size", "gpus_per_experiment", "fp_precision")
PART_SEPARATOR = " · "
# Where a part longer than a line may break: after a space, `=`, `/`, `-`, `,`, `:`, or a `.`
# not inside a number (`decoder.` `temperature=` `0.7`); never inside `batch_size`.
_BREAK = re.compile(r"(?<=[ =/,:-])|(?<=\.)(?!\d)")


def hashable(value: Any) -> Any:
    """A list from config_json as a tuple, so that it can key a group."""
    return tuple(value) if isinstance(value, list) else value


def value_text(value: Any) -> str:
    """A value as a label shows it: null for None, a tuple's items joined by commas."""
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def common_value(runs: list[dict[str, Any]], column: str) -> Any:
    """The group's value of a column when all its runs that have one agree, else null."""
    present = {r.get(column) for r in runs} - {None}
    return present.pop() if len(present) == 1 else None


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: hashable(config)}
    found: dict[str, Any] = {}
    for key, value in config.items():
        found.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return found


def _config(run: dict[str, Any]) -> dict[str, Any]:
    return _flat(json.loads(run["config_json"])) if run.get("config_json") else {}


def _part(key: str, value: Any) -> str:
    """One key's value as a reader says it: `batch 16`, `2 GPUs`, `bf16`, else key=value
    (a backend option without its section: `torch_compile=reduce-overhead`)."""
    if key == "batch_size" or key in BATCH_KEYS:
        return f"batch {value_text(value)}"
    if key == "gpus_per_experiment":
        return f"{value} GPU" + ("" if value == 1 else "s")
    if key == "fp_precision":
        return PRECISION_SHORT.get(value, value_text(value))
    if key in ("backend", "model_name"):
        return value_text(value)
    return f"{key.partition('.')[2] if _in_backend_section(key) else key}={value_text(value)}"


def _shared(bucket: list[dict[str, Any]]) -> dict[str, Any]:
    """The flattened settings all of a group's runs share."""
    configs = [_config(r) for r in bucket]
    common = {k: v for k, v in configs[0].items() if all(c.get(k, v) == v for c in configs)}
    for column in ("batch_size", "gpus_per_experiment"):
        value = common_value(bucket, column)
        if value is not None:
            common[column] = value
    return common


def _in_backend_section(key: str) -> bool:
    section, dot, _ = key.partition(".")
    return bool(dot) and section in BACKEND_NAMES


def _varies(key: str, shared: list[dict[str, Any]]) -> bool:
    """A backend's option varies when it differs between the groups of that backend: in a
    campaign of several backends, every pytorch option is absent from the vLLM groups, and
    the backend already names that difference."""
    having = [c for c in shared if key in c] if _in_backend_section(key) else shared
    return len({value_text(c.get(key)) for c in having}) > 1


def _by_difference(shared: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for common in shared for k in common})
    varying = [k for k in keys if _varies(k, shared)]
    if "batch_size" in varying:
        varying = [k for k in varying if k not in BATCH_KEYS]
    ordered = ([k for k in LABEL_ORDER if k in varying]
               + [k for k in varying if k not in LABEL_ORDER])
    labels = [PART_SEPARATOR.join(_part(k, c[k]) for k in ordered if k in c) for c in shared]
    return labels if len(shared) > 1 and all(labels) else [
        PART_SEPARATOR.join(_part(k, c[k]) for k in LABEL_ORDER if k in c) for c in shared]


def group_labels(buckets: list[list[dict[str, Any]]]) -> list[str]:
    """Name each group by what differs between the groups (e.g. `batch 16 · 2 GPUs · bf16`),
    from the settings its runs share; a key that varies inside a group is left out."""
    return _by_difference([_shared(bucket) for bucket in buckets])


def label_row(config: ExperimentConfig) -> dict[str, Any]:
    """The columns of an experiments-table row that its label is read from, before any run:
    a planned experiment is named as its rows will be."""
    return {"config_json": config.model_dump_json(),
            "batch_size": config.backend_options.concurrency,
            "gpus_per_experiment": config.gpus_per_experiment}


def experiment_labels(experiments: Iterable[tuple[str, ExperimentConfig]]) -> dict[str, str]:
    """(experiment id, config) pairs -> each experiment's label among them: the name the dry
    run, the live lines and the end-of-campaign table give it, and `lem-ray report` (grouping
    by experiment) gives it from the rows of the same experiments."""
    pairs = list(experiments)
    labels = group_labels([[label_row(config)] for _, config in pairs])
    return {experiment_id: label for (experiment_id, _), label in zip(pairs, labels, strict=True)}


def engine_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The options of the runs' backend sections that differ between runs (the fast path's
    pytorch.torch_compile and cache_implementation, vllm.enforce_eager, ...), batch sizes apart."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        section = run.get("backend")
        for key, value in _config(run).items():
            if section and key.startswith(f"{section}.") and key not in BATCH_KEYS:
                seen.setdefault(key, set()).add(value_text(value))
    return sorted(k for k, values in seen.items() if len(values) > 1)


def series_labels(buckets: list[list[dict[str, Any]]], keys: Sequence[str]) -> list[str]:
    """Name each group's line on the batch-size plot by the settings among `keys` that differ
    between lines (never the batch size: it is the x axis); with one line, by model, backend,
    GPUs and precision."""
    wanted = set(keys) - BATCH_KEYS - {"batch_size"}
    return _by_difference([{k: v for k, v in _shared(bucket).items() if k in wanted}
                           for bucket in buckets])


def wrap_label(text: str, width: int, separator: str = PART_SEPARATOR) -> list[str]:
    """A label's lines, at most `width` long, broken between its parts (`batch 8 ·`); a part
    longer than a line breaks where _BREAK allows, so a word is cut only where it alone is
    longer than a line. A terminal table's own wrapping breaks at any space (`batch` / `8`)
    and folds words (`decoder.temper` / `ature=0.7`)."""
    parts = text.split(separator)
    mark = separator.rstrip()
    lines: list[str] = []
    line = ""
    for index, part in enumerate(parts):
        token = part + mark if index < len(parts) - 1 else part
        if line and len(line) + 1 + len(token) <= width:
            line += " " + token
            continue
        if line:
            lines.append(line)
            line = ""
        for piece in (p for whole in _BREAK.split(token) if whole
                      for p in (whole[i:i + width] for i in range(0, len(whole), width))):
            if line and len(line) + len(piece.rstrip()) > width:
                lines.append(line.rstrip())
                line = ""
            line += piece
    return [*lines, line.rstrip()] if line else lines
