"""Matched comparison: runs that sent the same requests, differing only in one key, as pairs.

Two runs pair when they are of the same cycle and their configs are equal but for the paired
key (for `backend`: but for the backend and its section, at the same `batch_size`), and, where
both recorded it, they sent the same request stream (`stream_sha256`). The paired difference
in J per output token cancels what the two share (prompts, arrivals, the cycle's GPU state);
its confidence interval is the bootstrap over pairs (results/bootstrap.py), and the
difference is significant when that interval excludes 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from lem_ray.errors import ConfigError
from lem_ray.results.bootstrap import bootstrap_ci
from lem_ray.results.labels import group_labels, value_text
from lem_ray.results.report import group_values, latest_attempts

PAIR_METRIC = "energy_j_per_output_token"
ALL = "all configurations"


def _counted(run: dict[str, Any]) -> bool:
    """As the report counts: finished, not flagged invalid, with a J/output token figure."""
    return (run["status"] == "ok" and run.get("valid") is not False
            and run.get(PAIR_METRIC) is not None)


def _order(value: Any) -> tuple[Any, ...]:
    """Numbers in numeric order, then text, then nulls."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (value is None, not number, value if number else value_text(value))


def _without(config: dict[str, Any], dotted: str) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    if head not in config:
        return config
    if not rest:
        return {k: v for k, v in config.items() if k != head}
    inner = config[head]
    return {**config, head: _without(inner, rest) if isinstance(inner, dict) else inner}


def _signature(run: dict[str, Any], key: str, sections: set[str]) -> str:
    """Everything the run was configured with but the paired key."""
    config = json.loads(run["config_json"]) if run.get("config_json") else {}
    if key == "backend":
        config = {k: v for k, v in config.items() if k not in sections | {"backend"}}
        config["batch_size"] = run.get("batch_size")
    else:
        config = _without(config, key)
    return json.dumps(config, sort_keys=True, default=str)


def pair_runs(rows: list[dict[str, Any]], key: str) -> tuple[list[dict[str, Any]], int]:
    """(one row per pair of key values and configuration, plus a row pooling every
    configuration; runs left out because their streams differed)."""
    runs = [r for r in latest_attempts(rows) if _counted(r)]
    try:
        values = [v[0] for v in group_values(runs, [key])] if runs else []
    except ConfigError as exc:
        raise ConfigError(exc.message, path="--pair") from None
    sections = {r["backend"] for r in runs if r.get("backend")}
    cells: dict[tuple[str, int], dict[Any, dict[str, Any]]] = {}
    for run, value in zip(runs, values):
        cells.setdefault((_signature(run, key, sections), run["cycle"]), {})[value] = run
    signatures = sorted({s for s, _ in cells})
    labels = dict(zip(signatures, group_labels(
        [[r for (s, _), cell in cells.items() if s == sig for r in cell.values()]
         for sig in signatures])))
    seen = sorted({v for cell in cells.values() for v in cell}, key=_order)
    answers: list[dict[str, Any]] = []
    mismatched = 0
    for a, b in combinations(seen, 2):
        pooled: list[tuple[float, float]] = []
        configurations = 0
        for sig in signatures:
            pairs = []
            for (s, _), cell in sorted(cells.items()):
                if s != sig or a not in cell or b not in cell:
                    continue
                first, second = cell[a], cell[b]
                streams = first.get("stream_sha256"), second.get("stream_sha256")
                if None not in streams and streams[0] != streams[1]:
                    mismatched += 1
                    continue
                pairs.append((first[PAIR_METRIC], second[PAIR_METRIC]))
            if pairs:
                answers.append(_difference(key, a, b, labels[sig], pairs))
                pooled += pairs
                configurations += 1
        if configurations > 1:
            answers.append(_difference(key, a, b, ALL, pooled))
    return answers, mismatched


def _difference(key: str, a: Any, b: Any, configuration: str,
                pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """b minus a, per pair, its mean and the bootstrap CI of that mean."""
    diffs = [second - first for first, second in pairs]
    mean_a = sum(p[0] for p in pairs) / len(pairs)
    mean = sum(diffs) / len(diffs)
    ci = bootstrap_ci(diffs)
    return {
        "key": key, "a": value_text(a), "b": value_text(b), "configuration": configuration,
        "pairs": len(pairs), "a_mean": mean_a, "b_mean": mean_a + mean,
        "difference_mean": mean, "relative": mean / mean_a if mean_a else None,
        "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
        "significant": None if ci is None else not ci[0] <= 0.0 <= ci[1],
    }
