"""Traffic: arrival processes, the steady-state window, the vLLM engine loop under arrivals
(against a simulated engine) and the row's steady-state columns."""

from __future__ import annotations

import json
import statistics
import sys
import types
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.traffic import (
    RequestTrace,
    SteadyWindow,
    arrival_offsets_s,
    in_flight_from_traces,
    read_trace,
    steady_window,
)
from lem_ray.backends.vllm.arrivals import drive_arrivals
from lem_ray.backends.vllm.backend import VLLMBackend
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.results.columns import Sample
from lem_ray.results.rows import _steady
from tests.fakes.clock import ManualClock
from tests.fakes.llm_apis import check_vllm_llm_kwargs, vllm_config
from tests.fakes.vllm_engine import SimulatedEngine

# ---- arrival processes ---------------------------------------------------------------------


def test_offline_sends_everything_at_once_and_constant_is_evenly_spaced() -> None:
    assert arrival_offsets_s("offline", 3) == [0.0, 0.0, 0.0]
    assert arrival_offsets_s("constant", 4, rate_rps=2.0) == [0.0, 0.5, 1.0, 1.5]


def test_poisson_has_the_asked_rate_and_exponential_gaps() -> None:
    offsets = arrival_offsets_s("poisson", 20_001, rate_rps=8.0, seed=1)
    gaps = [b - a for a, b in pairwise(offsets)]
    assert offsets[0] == 0.0 and all(g >= 0 for g in gaps)
    assert 20_000 / offsets[-1] == pytest.approx(8.0, rel=0.03)
    # exponential: standard deviation equals the mean
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)


def test_poisson_is_stable_per_seed() -> None:
    first = arrival_offsets_s("poisson", 50, rate_rps=4.0, seed=7)
    assert first == arrival_offsets_s("poisson", 50, rate_rps=4.0, seed=7)
    assert first != arrival_offsets_s("poisson", 50, rate_rps=4.0, seed=8)
    # a longer run starts with the same arrivals
    assert arrival_offsets_s("poisson", 80, rate_rps=4.0, seed=7)[:50] == first


def test_traffic_config_rules() -> None:
    with pytest.raises(ValidationError, match="needs rate_rps"):
        vllm_config(traffic={"mode": "poisson"})
    with pytest.raises(ValidationError, match="only applies to constant, poisson or gamma"):
        vllm_config(traffic={"rate_rps": 2.0})
    with pytest.raises(ValidationError, match="rate_rps"):
        vllm_config(traffic={"mode": "constant", "rate_rps": 0})
    with pytest.raises(ValidationError, match="traffic"):
        ExperimentConfig.model_validate({"model_name": "m", "backend": "pytorch",
                                         "pytorch": {"traffic": {"mode": "poisson"}}})


# ---- steady-state window -------------------------------------------------------------------


def test_steady_window_opens_when_the_engine_is_full() -> None:
    window = steady_window(
        in_flight=[(1.0, 2), (2.0, 4), (3.0, 4), (9.0, 1)], finished_s=[5.0, 6.0],
        last_arrival_s=8.0, token_times_s=[1.5, 2.0, 4.0, 8.0, 8.5],
        max_num_seqs=4, after_responses=16,
    )
    assert window == SteadyWindow(2.0, 8.0, "4 requests in flight (max_num_seqs)", 3)


def test_steady_window_opens_after_n_responses_when_never_full() -> None:
    window = steady_window(
        in_flight=[(1.0, 1), (2.0, 2)], finished_s=[3.0, 1.5, 2.5], last_arrival_s=6.0,
        token_times_s=[2.0, 2.5, 3.0], max_num_seqs=64, after_responses=2,
    )
    assert window == SteadyWindow(2.5, 6.0, "2 responses", 2)


def test_no_steady_window_when_it_would_open_after_the_last_arrival() -> None:
    assert steady_window([(1.0, 1)], [9.0], 5.0, [9.0], 4, 1) is None
    assert steady_window([(1.0, 1)], [], 5.0, [], 4, 1) is None


def test_in_flight_from_request_lifetimes() -> None:
    assert in_flight_from_traces([0.0, 1.0, 2.0], [1.0, 3.0, 4.0]) == [
        (0.0, 1), (1.0, 0), (1.0, 1), (2.0, 2), (3.0, 1), (4.0, 0)]


# ---- the engine loop under arrivals ----------------------------------------------------------


def test_requests_enter_the_engine_at_their_arrival_times() -> None:
    clock = ManualClock(t_s=100.0)
    engine = SimulatedEngine(clock)
    run = drive_arrivals(engine, ["a", "b", "c"], [0.0, 1.0, 1.05], params=None,
                         clock=clock, sleep=clock.sleep)
    assert [rid for rid, _ in engine.added] == ["0", "1", "2"]
    assert [round(t - 100.0, 6) for _, t in engine.added] == [0.0, 1.0, 1.1]
    first = run.traces[0]
    assert first.start_s == 100.0 and first.end_s == pytest.approx(100.3)
    assert first.token_times == pytest.approx([100.1, 100.2, 100.3])
    assert all(len(t.token_times) == 3 for t in run.traces)
    assert run.last_arrival_s == pytest.approx(101.1)
    assert len(run.finished_s) == 3 and run.in_flight[0] == (pytest.approx(100.1), 1)


def test_records_take_vllms_own_times_and_the_window_the_local_clock() -> None:
    """The engine core stamps a step 30 ms before the frontend sees it: TTFT is vLLM's
    first-token latency (frontend clock), the gaps its engine-core stamps, never mixed with
    the local clock; the local traces keep the times the steady window needs."""
    clock = ManualClock(t_s=100.0)
    engine = SimulatedEngine(clock, length=3, step_s=0.1, stats=True, core_lag_s=0.03)
    run = drive_arrivals(engine, ["a", "b"], [0.0, 0.15], params=None,
                         clock=clock, sleep=clock.sleep)
    assert run.engine_timed
    records = run.records([4, 5])
    assert [(r.index, r.input_tokens, r.output_tokens) for r in records] == [(0, 4, 3), (1, 5, 3)]
    assert records[0].ttft_ms == pytest.approx(100.0)
    assert records[0].itl_ms == pytest.approx([100.0, 100.0])
    assert records[0].e2e_ms == pytest.approx(300.0)
    # b is sent when the step running at its arrival returns (100.2): its first token at 100.3
    assert records[1].ttft_ms == pytest.approx(100.0)
    assert records[1].start_s == pytest.approx(100.2)
    assert run.traces[1].token_times == pytest.approx([100.3, 100.4, 100.5])


def test_without_engine_stats_the_local_clock_times_the_records() -> None:
    clock = ManualClock(t_s=100.0)
    run = drive_arrivals(SimulatedEngine(clock, length=2), ["a"], [0.0], params=None,
                         clock=clock, sleep=clock.sleep)
    assert not run.engine_timed
    (record,) = run.records([1])
    assert record.ttft_ms == pytest.approx(100.0) and record.itl_ms == pytest.approx([100.0])


def test_prompts_and_arrivals_must_pair() -> None:
    with pytest.raises(ValueError, match="2 prompts for 1 arrival"):
        drive_arrivals(SimulatedEngine(ManualClock(t_s=100.0)), ["a", "b"], [0.0], None)


def test_backend_measures_under_constant_traffic_with_a_steady_window(
        simulated_vllm: ManualClock) -> None:
    cfg = vllm_config(max_num_seqs=8, traffic={"mode": "constant", "rate_rps": 8.0,
                                               "steady_after_responses": 2})
    backend = VLLMBackend(cfg, DeviceInfo("cuda", 1))
    backend.load()
    records = backend.measure(["a b", "c", "d e f", "g", "h"])
    assert [(r.index, r.input_tokens, r.output_tokens) for r in records] == [
        (0, 2, 2), (1, 1, 2), (2, 3, 2), (3, 1, 2), (4, 1, 2)]
    assert [r.start_s - 100.0 for r in records] == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert all(r.ttft_ms == pytest.approx(125.0) and r.itl_ms == pytest.approx([125.0])
               and r.e2e_ms == pytest.approx(250.0) for r in records)
    # responses at 100.25, 100.375, ...: open at the 2nd, close at the last arrival (100.5)
    assert backend.steady_window() == SteadyWindow(100.375, 100.5, "2 responses", 4)


def test_offline_traffic_sends_everything_before_the_first_step_and_has_no_window(
    simulated_vllm: ManualClock,
) -> None:
    backend = VLLMBackend(vllm_config(max_num_seqs=2), DeviceInfo("cuda", 1))
    assert backend.timing_method is None
    backend.load()
    engine = backend._llm.llm_engine
    records = backend.measure(["a", "b c", "d"])
    assert [t for _, t in engine.added] == [100.0, 100.0, 100.0]
    assert [(r.index, r.input_tokens, r.output_tokens) for r in records] == [
        (0, 1, 2), (1, 2, 2), (2, 1, 2)]
    assert backend.steady_window() is None
    assert backend.timing_method == "host_clock"  # the simulated engine keeps no stats
    engine.stats = True
    backend.measure(["a"])
    assert backend.timing_method == "vllm_engine_stats"


# ---- the row's steady-state columns --------------------------------------------------------


def test_steady_columns_integrate_power_inside_the_window() -> None:
    cfg = vllm_config(traffic={"mode": "poisson", "rate_rps": 5.0})
    window = SteadyWindow(start_s=10.0, end_s=14.0, opened_by="16 responses", output_tokens=800)
    series = [Sample(gpu_uuid=gpu, t_s=1000.0 + t, power_w=200.0)
              for gpu in ("GPU-a", "GPU-b") for t in range(0, 21)]
    columns = _steady(cfg, window, 992.0, series)
    assert columns.traffic_mode == "poisson"
    assert columns.steady_start_epoch_s == 1002.0 and columns.steady_duration_s == 4.0
    assert columns.steady_energy_j == pytest.approx(2 * 200.0 * 4.0)
    assert columns.steady_avg_power_w == pytest.approx(400.0)
    assert columns.steady_throughput_tok_s == 200.0
    assert columns.steady_energy_j_per_output_token == pytest.approx(2.0)
    offline = _steady(vllm_config(), None, 0.0, series)
    assert offline.traffic_mode == "offline" and offline.steady_energy_j is None


# ---- gamma arrivals and trace replay -------------------------------------------------------


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_has_the_asked_rate_and_burstiness(burstiness: float) -> None:
    """Gaps of mean 1/rate and CV^2 = 1/burstiness: 1 is Poisson, below 1 burstier."""
    offsets = arrival_offsets_s("gamma", 40_001, rate_rps=10.0, seed=3, burstiness=burstiness)
    gaps = [b - a for a, b in pairwise(offsets)]
    assert offsets[0] == 0.0 and all(g >= 0 for g in gaps)
    assert 40_000 / offsets[-1] == pytest.approx(10.0, rel=0.03)
    cv = statistics.stdev(gaps) / statistics.mean(gaps)
    assert cv ** 2 == pytest.approx(1 / burstiness, rel=0.08)


def test_gamma_is_reproducible_from_its_seed() -> None:
    first = arrival_offsets_s("gamma", 60, rate_rps=4.0, seed=11, burstiness=0.5)
    assert first == arrival_offsets_s("gamma", 60, rate_rps=4.0, seed=11, burstiness=0.5)
    assert first != arrival_offsets_s("gamma", 60, rate_rps=4.0, seed=12, burstiness=0.5)
    assert first != arrival_offsets_s("gamma", 60, rate_rps=4.0, seed=11, burstiness=2.0)
    assert arrival_offsets_s("gamma", 90, rate_rps=4.0, seed=11, burstiness=0.5)[:60] == first


def test_gamma_and_trace_config_rules() -> None:
    assert vllm_config(traffic={"mode": "gamma", "rate_rps": 2.0, "burstiness": 0.5}
                       ).backend_options.traffic.burstiness == 0.5
    with pytest.raises(ValidationError, match="burstiness only applies to gamma"):
        vllm_config(traffic={"mode": "poisson", "rate_rps": 2.0, "burstiness": 0.5})
    with pytest.raises(ValidationError, match="gamma needs rate_rps"):
        vllm_config(traffic={"mode": "gamma"})
    with pytest.raises(ValidationError, match=r"trace and traffic\.trace go together"):
        vllm_config(traffic={"mode": "trace"})
    with pytest.raises(ValidationError, match=r"trace and traffic\.trace go together"):
        vllm_config(traffic={"mode": "poisson", "rate_rps": 1.0, "trace": "t.jsonl"})
    with pytest.raises(ValidationError, match="rate_rps only applies"):
        vllm_config(traffic={"mode": "trace", "trace": "t.jsonl", "rate_rps": 1.0})
    with pytest.raises(ValidationError, match="implemented for vllm only"):
        ExperimentConfig.model_validate({"model_name": "m", "backend": "tensorrt", "tensorrt": {
            "traffic": {"mode": "trace", "trace": "t.jsonl"}}})


TRACE = [(0.0, 3, 2), (0.1, 5, 1), (0.1, 2, 3), (0.75, 4, 2)]


def write_trace(path: Path, rows: list[tuple[float, int, int]] = TRACE) -> Path:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    table = pa.table({"arrival_s": [r[0] for r in rows], "input_tokens": [r[1] for r in rows],
                      "output_tokens": [r[2] for r in rows]})
    if path.suffix == ".parquet":
        pyarrow.parquet.write_table(table, path)
    elif path.suffix == ".csv":
        pyarrow.csv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(dict(zip(table.column_names, r))) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_trace_reads_exactly(tmp_path: Path, suffix: str) -> None:
    trace = read_trace(str(write_trace(tmp_path / f"t{suffix}")))
    assert trace == RequestTrace([0.0, 0.1, 0.1, 0.75], [3, 5, 2, 4], [2, 1, 3, 2])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(0.5, 3, 2), (0.1, 3, 2)], "non-decreasing"),
        ([(-1.0, 3, 2)], "non-decreasing"),
        ([(0.0, 0, 2)], "input_tokens must be whole numbers >= 1"),
        ([(0.0, 3, 1.5)], "output_tokens must be whole numbers >= 1"),
    ],
)
def test_trace_refuses_what_it_cannot_replay(tmp_path: Path, rows: list, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(dict(zip(("arrival_s", "input_tokens", "output_tokens"), r)))
                            + "\n" for r in rows))
    with pytest.raises(ValueError, match=message):
        read_trace(str(path))
    with pytest.raises(ValueError, match="missing \\['output_tokens'\\]"):
        (tmp_path / "m.jsonl").write_text('{"arrival_s": 0, "input_tokens": 1}\n')
        read_trace(str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match="unsupported file type"):
        read_trace(str(tmp_path / "t.txt"))


class LengthEngine(SimulatedEngine):
    """Finishes each request after its own SamplingParams' max_tokens; keeps what it was sent."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock, length=0, step_s=0.05)
        self.sent: list[tuple[str, list[int], int, int]] = []
        self.lengths: dict[str, int] = {}

    def add_request(self, request_id: str, prompt: Any, params: Any, *,
                    lora_request: Any = None) -> None:
        super().add_request(request_id, prompt, params, lora_request=lora_request)
        self.sent.append((request_id, prompt["prompt_token_ids"], params.max_tokens,
                          params.min_tokens))
        self.lengths[request_id] = params.max_tokens

    def step(self) -> list[Any]:
        self.clock.t_s += self.step_s
        outputs = []
        for rid in list(self.running):
            self.running[rid] += 1
            finished = self.running[rid] == self.lengths[rid]
            if finished:
                del self.running[rid]
            outputs.append(types.SimpleNamespace(
                request_id=rid, finished=finished, metrics=None,
                outputs=[types.SimpleNamespace(token_ids=[7])]))
        return outputs


@pytest.fixture
def length_vllm(
        simulated_vllm: ManualClock, monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    def llm(**kwargs: Any) -> Any:
        check_vllm_llm_kwargs(kwargs)
        return types.SimpleNamespace(
            llm_engine=LengthEngine(simulated_vllm),
            get_tokenizer=lambda: types.SimpleNamespace(
                encode=lambda text: [len(w) for w in text.split()]))

    monkeypatch.setattr(sys.modules["vllm"], "LLM", llm)
    return simulated_vllm


def test_trace_replay_sends_its_arrivals_and_lengths_exactly(length_vllm: ManualClock,
                                                             tmp_path: Path) -> None:
    trace = str(write_trace(tmp_path / "t.csv"))
    backend = VLLMBackend(vllm_config(traffic={"mode": "trace", "trace": trace}),
                          DeviceInfo("cuda", 1))
    backend.load()
    engine = backend._llm.llm_engine
    records = backend.measure(["a bb", "ccc", "dddd ee f", "g"])
    assert [round(t - 100.0, 6) for _, t in engine.added] == [0.0, 0.1, 0.1, 0.75]
    # prompt tokens cut or repeated to the trace's input lengths; output lengths fixed
    assert [(ids, most, least) for _, ids, most, least in engine.sent] == [
        ([1, 2, 1], 2, 2), ([3, 3, 3, 3, 3], 1, 1), ([4, 2], 3, 3), ([1, 1, 1, 1], 2, 2)]
    assert [(r.input_tokens, r.output_tokens) for r in records] == [(3, 2), (5, 1), (2, 3), (4, 2)]
    first = backend.stream_sha256()
    # a second engine replaying the same trace sees the identical stream
    other = VLLMBackend(vllm_config(traffic={"mode": "trace", "trace": trace}, max_num_seqs=64),
                        DeviceInfo("cuda", 1))
    other.load()
    other.measure(["a bb", "ccc", "dddd ee f", "g"])
    assert other.stream_sha256() == first
    with pytest.raises(ValueError, match="4 requests for 3 measured prompts"):
        backend.measure(["a", "b", "c"])


def test_stream_hash_tells_streams_apart(length_vllm: ManualClock) -> None:
    def stream(seed: int, burstiness: float = 0.5) -> str:
        backend = VLLMBackend(vllm_config(max_num_seqs=4, traffic={
            "mode": "gamma", "rate_rps": 20.0, "seed": seed, "burstiness": burstiness}),
            DeviceInfo("cuda", 1))
        backend.load()
        backend.measure(["a b", "c", "d e f"])
        return backend.stream_sha256()

    assert stream(1) == stream(1)
    assert len({stream(1), stream(2), stream(1, 2.0)}) == 3
