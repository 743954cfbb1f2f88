"""Service-level objectives: which requests a run served in time, its goodput, and which
configuration serves within the SLO for the least energy.

A request meets the SLO when its TTFT is at most `slo.ttft_ms` and its TPOT, (e2e - TTFT) /
(output tokens - 1), at most `slo.tpot_ms` (a limit left unset is not judged; a one-token
answer has no TPOT and meets that limit). Goodput counts the output tokens of the requests
that meet it over the measured window, as throughput counts all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lem_ray.config.experiment import SLOConfig
from lem_ray.records import RequestRecord
from lem_ray.results.columns import Slo
from lem_ray.results.fields import names

SLO_COLUMNS = names(Slo)


def tpot_ms(record: RequestRecord) -> float | None:
    """Mean time per output token after the first; None for a one-token answer or when the
    request's first token time is unknown."""
    if record.output_tokens < 2 or record.ttft_ms is None:
        return None
    return (record.e2e_ms - record.ttft_ms) / (record.output_tokens - 1)


def meets(record: RequestRecord, slo: SLOConfig) -> bool | None:
    """None when a limit is set that this request's timings cannot be judged against."""
    if slo.ttft_ms is not None:
        if record.ttft_ms is None:
            return None
        if record.ttft_ms > slo.ttft_ms:
            return False
    if slo.tpot_ms is not None:
        per_token = tpot_ms(record)
        if per_token is None and record.output_tokens >= 2:
            return None
        if per_token is not None and per_token > slo.tpot_ms:
            return False
    return True


def slo_columns(slo: SLOConfig | None, records: Sequence[RequestRecord], duration_s: float,
                energy_j: float | None) -> dict[str, Any]:
    """The row's SLO columns; null without an SLO, or where some request's timings cannot be
    judged (e.g. no TTFT): a share of the judgeable ones would not be the run's."""
    columns: dict[str, Any] = dict.fromkeys(SLO_COLUMNS)
    if slo is None:
        return columns
    columns.update(slo_ttft_ms=slo.ttft_ms, slo_tpot_ms=slo.tpot_ms,
                   slo_min_attainment=slo.min_attainment)
    verdicts = [meets(r, slo) for r in records]
    if not records or None in verdicts:
        return columns
    good_tokens = sum(r.output_tokens for r, ok in zip(records, verdicts) if ok)
    columns["slo_attainment"] = sum(verdicts) / len(records)
    columns["goodput_tok_s"] = good_tokens / duration_s if duration_s > 0 else None
    if energy_j is not None and good_tokens:
        columns["energy_j_per_goodput_token"] = energy_j / good_tokens
    return columns


def meets_slo(runs: Sequence[dict[str, Any]]) -> bool:
    """A configuration meets its SLO when every counted cycle's attainment reaches the
    SLO's min_attainment: a cycle that missed it is a real outcome, not noise to average out."""
    return bool(runs) and all(
        r.get("slo_attainment") is not None and r.get("slo_min_attainment") is not None
        and r["slo_attainment"] >= r["slo_min_attainment"] for r in runs)


def best_under_slo(groups: Sequence[dict[str, Any]],
                   members: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per model and backend whose runs carry an SLO: the group (a report's configuration)
    with the least mean J per output token among those meeting it, or none (best None)."""
    by_pair: dict[tuple[Any, Any], list[tuple[dict[str, Any], Sequence[dict[str, Any]]]]] = {}
    for group, runs in zip(groups, members):
        if any(r.get("slo_min_attainment") is not None for r in runs):
            by_pair.setdefault((group["model_name"], group["backend"]), []).append((group, runs))
    answers = []
    for (model, backend), candidates in by_pair.items():
        meeting = [(g, runs) for g, runs in candidates if meets_slo(runs)
                   and g["energy_j_per_output_token_mean"] is not None]
        best = min(meeting, key=lambda c: c[0]["energy_j_per_output_token_mean"], default=None)
        answer: dict[str, Any] = {"model_name": model, "backend": backend,
                                  "configurations": len(candidates), "meeting": len(meeting),
                                  "best": None}
        if best is not None:
            group, runs = best
            answer["best"] = {
                "group": group["group"], "label": group["label"],
                "energy_j_per_output_token_mean": group["energy_j_per_output_token_mean"],
                "slo_attainment_min": min(r["slo_attainment"] for r in runs),
                "goodput_tok_s_mean": _mean([r.get("goodput_tok_s") for r in runs]),
            }
        answers.append(answer)
    return answers


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
