"""The three tables' columns as typed records, one per group, in the order the columns are
written. schema.py builds the Arrow schemas from them and docs/results.md's column tables are
generated from them (`python -m lem_ray.results.column_docs`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lem_ray.results.fields import column


@dataclass(frozen=True, kw_only=True)
class Ids:
    """The five ids every row of every table starts with: a join on them needs no guessing."""

    campaign_name: str = column("`campaign_name` of the campaign file")
    experiment_id: str = column(
        "12 hex digits, a hash of the resolved experiment config: the same on every machine "
        "and every rerun")
    run_id: str = column("`<experiment_id>-c<cycle>`: one experiment in one cycle")
    cycle: int = column("1 .. `execution.cycles`")
    attempt: int = column(
        "1 for the first try of a run, +1 for each retry (a failure, a dead worker, "
        "`--retry-failed`)")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How the attempt ended."""

    status: str = column("`ok` or `failed`")
    error: str | None = column(
        "for a failure, what went wrong: the backend's `ExceptionType: message`, `timed out: "
        "...`, `worker died: ...`, `internal error: ...` or `could not store the run's rows: "
        "...` (the write of its rows failed, e.g. `OSError: [Errno 28] No space left on "
        "device`; such a row carries the ids, the config and where it ran, nothing measured)")


@dataclass(frozen=True, kw_only=True)
class ConfigKeys:
    """The resolved config's key settings (all of it is in `config_json`)."""

    backend: str = column("`pytorch`, `vllm` or `tensorrt`")
    model_name: str = column("the model, as the config names it")
    load_format: str = column("how the weights load (`dummy`: random weights of the model's shape)")
    fp_precision: str = column("the weights' precision")
    batch_size: int = column(
        "the most requests the backend runs at once: `pytorch.batch_size`, "
        "`vllm.max_num_seqs` or `tensorrt.max_batch_size`", "requests")
    gpus_per_experiment: int = column("GPUs the run holds", "GPUs")
    max_input_tokens: int = column("from the config", "tokens")
    max_output_tokens: int = column("from the config", "tokens")


@dataclass(frozen=True, kw_only=True)
class Times:
    """When the attempt ran."""

    started_at: datetime = column(
        "the attempt's start (before its worker starts and loads the model)", "UTC, µs")
    finished_at: datetime = column("the attempt's end (when its rows were built)", "UTC, µs")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where it ran (null where the worker never started)."""

    node_ip: str | None = column("the node's IP address")
    node_id: str | None = column("Ray's node id")
    hostname: str | None = column("the node's host name")
    device: str | None = column("`cuda` or `cpu`")
    gpu_ids: list[str] | None = column("the run's GPUs: Ray's ids")
    gpu_uuids: list[str] | None = column("the run's GPUs: NVML UUIDs")
    gpu_names: list[str] | None = column("the run's GPUs: product names")


@dataclass(frozen=True, kw_only=True)
class EngineWarmup:
    """The engine that served the run, how it got ready, and its warmup."""

    engine_reused: bool | None = column(
        "true when the run used an engine its worker had loaded for an earlier run and kept "
        "(equal engine config; a worker keeps up to `execution.max_engines_per_worker`, see "
        "README \"Warm engines\"); false when it loaded one")
    engine_id: str | None = column(
        "the loaded engine instance that served the run (a new id at each load): runs with one "
        "id ran the same compiled kernels; engines loaded apart may not (the PyTorch fast path "
        "tunes its kernels per compile, docs/measurement.md). Null on rows written before it "
        "existed")
    engine_load_s: float | None = column(
        "time this run spent getting its engine ready before warmup: loading it (for the "
        "PyTorch fast path this includes compilation and CUDA-graph capture for the run's "
        "batch shapes) or, when it reused one, applying the run's options and capturing batch "
        "shapes the engine had not run yet (near 0 when there were none)", "s")
    compile_cache: str | None = column(
        "the compile cache (docs/backends.md, \"Compile cache\") for this run's engine: `hit` "
        "it loaded what an earlier engine of the same compile key compiled, `miss` it compiled "
        "(and published) its own, `off` the campaign set `execution.compile_cache: off`; null "
        "when the engine compiles nothing the cache holds (eager PyTorch, the fast path on the "
        "CPU, `torch_compile` over a dynamic cache, vLLM with `enforce_eager`, TensorRT-LLM's "
        "PyTorch runtime or an engine from `tensorrt.engine_dir` / `engine_cache_dir`) and on "
        "rows written before the column")
    compile_cache_hash: str | None = column(
        "SHA-256 of the compiled artifact the run's engine ran (for TensorRT-LLM the built "
        "engine's tar): the one it loaded, or the one "
        "it compiled (even when another worker's entry won the race to publish). Equal hashes: "
        "the same kernels")
    compile_cache_key: str | None = column(
        "the compile key it was filed under: the engine config, the runtime fields that shape "
        "compiled code (the fast path's batching), the GPU model and the compiler stack's "
        "versions")
    timing_method: str | None = column(
        "how per-token times (TTFT, inter-token gaps) were taken: `cuda_event` (an event "
        "recorded on the GPU stream after each decoding step, read once the batch is done: no "
        "host sync, no cost to throughput), `host_clock` (`time.perf_counter` at each step on "
        "the host: CPU runs, and vLLM without its stats), `vllm_engine_stats` (vLLM's own "
        "per-request stats read after every engine step: TTFT from its frontend, inter-token "
        "gaps from its engine core's per-step stamps; docs/backends.md), `vllm_request_stats` "
        "(`vllm.token_timing: per_request`: one plain `LLM.generate` call, each request's "
        "final stats only: TTFT, e2e and the mean inter-token gap; `itl_ms_mean` is "
        "comparable, `itl_ms_p50/p90/p99` are null; a vLLM that kept no stats there gives "
        "`host_clock`: e2e is the call's span, TTFT null); null where the backend does not "
        "state it (TensorRT-LLM times streamed chunks on the host, see its docs)")
    warmup_s: float | None = column("time spent warming up", "s")
    warmup_requests: int | None = column("warmup requests run", "requests")
    warmup_steps: int | None = column("warmup requests in full steps of the run's batch shape",
                                      "steps")
    warmup_converged: bool | None = column(
        "whether the CV of the last `warmup.window` step latencies (the first step never "
        "counted) fell under the threshold (null in fixed mode: not judged)")
    warmup_final_cv: float | None = column("that CV", "ratio")


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """Counts, throughput and latency over the measured requests."""

    num_requests: int | None = column("measured requests", "requests")
    input_tokens: int | None = column("input tokens over the measured requests", "tokens")
    output_tokens: int | None = column("output tokens over the measured requests", "tokens")
    duration_s: float | None = column("wall time of the measured generation", "s")
    throughput_tok_s: float | None = column("`output_tokens / duration_s`", "tokens/s")
    requests_per_s: float | None = column("`num_requests / duration_s`", "requests/s")
    ttft_ms_mean: float | None = column("time to first token per request: mean", "ms")
    ttft_ms_p50: float | None = column("time to first token per request: median", "ms")
    ttft_ms_p90: float | None = column("time to first token per request: 90th percentile", "ms")
    ttft_ms_p99: float | None = column("time to first token per request: 99th percentile", "ms")
    itl_ms_mean: float | None = column(
        "gaps between consecutive output tokens, pooled over requests: mean. Under "
        "`timing_method` `vllm_request_stats` only each request's mean gap is known: this "
        "weighs each request's mean by its gap count (equal to the pooled mean)", "ms")
    itl_ms_p50: float | None = column(
        "the same gaps: median (null under `vllm_request_stats`)", "ms")
    itl_ms_p90: float | None = column(
        "the same gaps: 90th percentile (null under `vllm_request_stats`)", "ms")
    itl_ms_p99: float | None = column(
        "the same gaps: 99th percentile (null under `vllm_request_stats`)", "ms")
    e2e_ms_mean: float | None = column("request start to last token: mean", "ms")
    e2e_ms_p50: float | None = column("request start to last token: median", "ms")
    e2e_ms_p90: float | None = column("request start to last token: 90th percentile", "ms")
    e2e_ms_p99: float | None = column("request start to last token: 99th percentile", "ms")


@dataclass(frozen=True, kw_only=True)
class Energy:
    """The GPUs' energy over the measured window, its ratios, baseline and split."""

    energy_j: float | None = column(
        "energy of the measure window summed over the run's GPUs (null without NVML)", "J")
    energy_j_per_output_token: float | None = column("`energy_j / output_tokens`", "J/token")
    energy_j_per_request: float | None = column("`energy_j / num_requests`", "J/request")
    output_tokens_per_j: float | None = column("`output_tokens / energy_j`", "tokens/J")
    avg_power_w: float | None = column("`energy_j / energy_window_s`", "W")
    energy_source: str | None = column(
        "`nvml_counter` or `nvml_power_integrated`; null when energy was not measured")
    energy_unavailable_reason: str | None = column(
        "why energy was not measured (e.g. \"ran on CPU\"); null when it was")
    energy_by_gpu_json: str | None = column("`{gpu_uuid: J}`")
    energy_integrated_j: float | None = column(
        "instant power integrated over the same window: the cross-check", "J")
    energy_window_s: float | None = column("length of the measure window", "s")
    measure_start_epoch_s: float | None = column(
        "the measure window's start, epoch seconds (`time.time()`, the same clock as "
        "`timeseries.t_s`); null in files written before these columns existed", "s")
    measure_end_epoch_s: float | None = column("the measure window's end, epoch seconds", "s")
    energy_warmup_j: float | None = column(
        "energy of the warmup window (never in the headline figures)", "J")
    baseline_power_w: float | None = column("idle power of the run's GPUs, summed", "W")
    baseline_age_s: float | None = column("age of the oldest GPU's idle baseline", "s")
    baseline_method: str | None = column("how the idle baseline was measured")
    energy_adjusted_j: float | None = column(
        "energy above idle over the window: `energy_j - baseline_power_w x energy_window_s`",
        "J")
    energy_adjusted_j_per_output_token: float | None = column(
        "`energy_adjusted_j / output_tokens`", "J/token")
    energy_prefill_j: float | None = column("one prefill pass of the prompts", "J")
    energy_decode_j: float | None = column("the rest of the run", "J")
    prefill_passes: int | None = column("passes in the prefill window", "passes")
    prefill_window_s: float | None = column("length of the prefill window", "s")
    energy_methods_gap: float | None = column(
        "`(energy_j - energy_integrated_j) / energy_j`: how far the counter and the integral "
        "of instant power disagree, as a fraction of the counter's figure (positive: the "
        "counter read more). Null unless `energy_source` is `nvml_counter` and both figures "
        "exist (docs/metrics.md)", "ratio")


@dataclass(frozen=True, kw_only=True)
class Host:
    """The node's CPU and DRAM energy over the same window edges (docs/measurement.md)."""

    cpu_energy_j: float | None = column(
        "the node's CPU package energy: RAPL counters (`/sys/class/powercap/intel-rapl:*`) "
        "summed over packages; null where not readable", "J")
    dram_energy_j: float | None = column("the node's DRAM energy, as `cpu_energy_j`", "J")
    host_energy_j: float | None = column(
        "`cpu_energy_j + dram_energy_j` (the package alone where the node has no DRAM zone, "
        "e.g. AMD)", "J")
    host_energy_source: str | None = column(
        "`rapl:package+dram` or `rapl:package`; null when not measured")
    host_energy_unavailable_reason: str | None = column(
        "why (no powercap: a VM or a container without the mount; `energy_uj` not readable; a "
        "zone that vanished during the window). A reason beside a figure says what is missing "
        "from it (no DRAM zone)")
    host_baseline_power_w: float | None = column(
        "idle power of the host (CPU + DRAM), taken with the GPUs' baseline and cached per "
        "node", "W")
    host_energy_adjusted_j: float | None = column(
        "`host_energy_j - host_baseline_power_w x energy_window_s`", "J")
    host_shared_by_runs: int | None = column(
        "other runs of the campaign active (from their worker taking them to handing them "
        "back) on the same node during this run's measured window: their work is in "
        "`host_energy_j` too. Null where the worker could not ask", "runs")
    energy_with_host_j_per_output_token: float | None = column(
        "`(energy_j + host_energy_j) / output_tokens`: GPU + host. Only when "
        "`host_shared_by_runs` is 0, else null (the host energy was not this run's alone)",
        "J/token")


@dataclass(frozen=True, kw_only=True)
class Validity:
    """Whether anything casts doubt on the energy figure, and the conditions judged."""

    valid: bool | None = column(
        "true when nothing casts doubt on the energy figure, false with the reasons in "
        "`validity_flags`, null when there is no energy to judge (`[\"no_energy\"]`)")
    validity_flags: list[str] | None = column("the reasons (list)")
    temperature_start_c: float | None = column("hottest GPU at the window start", "°C")
    temperature_max_c: float | None = column("hottest sample in the window", "°C")
    sm_clock_mhz_mean: float | None = column(
        "SM clock over every sample of every GPU of the run inside the `measure` window: mean. "
        "Two rows of one group whose throughput differs with these differing ran at different "
        "clocks (power cap, heat, another tenant); with these equal, look elsewhere. Null "
        "without NVML samples", "MHz")
    sm_clock_mhz_min: float | None = column("the same samples' lowest SM clock", "MHz")
    throttle_reasons: int | None = column("OR of NVML clocks-event bits seen (bitmask)")
    throttle_s_json: str | None = column("seconds under each reason (`{reason: s}`)")
    other_process_pids: list[int] | None = column(
        "other compute processes on the run's GPUs (list of PIDs)")
    max_cycle_cv: float | None = column(
        "the campaign's `execution.validity.max_cycle_cv` when the run was measured: the limit "
        "`lem-ray report` applies unless given `--max-cycle-cv`; null in failed rows and in "
        "files written before this column existed", "ratio")


@dataclass(frozen=True, kw_only=True)
class Conditions:
    """The GPUs' state before the run and their driver."""

    cooldown_wait_s: float | None = column("time waited for the GPUs to cool", "s")
    cooldown_temp_c: float | None = column("hottest GPU temperature at start", "°C")
    power_limit_w: float | None = column("enforced power limit summed over the run's GPUs", "W")
    driver_version: str | None = column("NVIDIA driver version")
    cuda_driver_version: str | None = column("CUDA driver version")


@dataclass(frozen=True, kw_only=True)
class Software:
    """What the run's engine and libraries were."""

    sampler_cpu_s: float | None = column("CPU time the energy sampler used", "s")
    peak_memory_mib: float | None = column("peak device memory the backend reports", "MiB")
    versions_json: str | None = column("library versions (`{library: version}`)")
    environment_json: str | None = column(
        "GPU environment (`gpus`: NVML's facts per UUID) and backend details")
    engine_config_json: str | None = column(
        "the engine's own resolved settings, read back after it started (vLLM: "
        "`LLM.llm_engine.vllm_config`; TensorRT-LLM: `LLM.args`), so what ran sits beside what "
        "was asked (`config_json`); null for pytorch")


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """The environment the backend ran in."""

    python_executable: str | None = column(
        "the worker's interpreter (`sys.executable`): where the backend ran")
    runtime_env_json: str | None = column(
        "the backend's runtime_env as the campaign gave it (`{\"kind\": \"none\"}` for the "
        "driver's environment)")


@dataclass(frozen=True, kw_only=True)
class Steady:
    """The steady-state window under traffic (vLLM, TensorRT-LLM), beside the whole run."""

    traffic_mode: str | None = column(
        "`offline` (every prompt at once), `constant`, `poisson`, `gamma` or `trace` "
        "(`vllm.traffic`, `tensorrt.traffic`; pytorch is always offline)")
    steady_start_epoch_s: float | None = column(
        "when the steady-state window opened, Unix seconds (the sampler's clock); null "
        "offline or when it never opened before the last arrival", "s")
    steady_duration_s: float | None = column("its length", "s")
    steady_opened_by: str | None = column(
        "`N requests in flight (max_num_seqs)` (TensorRT-LLM: `max_batch_size`) or "
        "`N responses`")
    steady_output_tokens: int | None = column("output tokens that arrived inside it", "tokens")
    steady_throughput_tok_s: float | None = column("those per second", "tokens/s")
    steady_energy_j: float | None = column(
        "energy inside it, integrated from instant power over the run's GPUs", "J")
    steady_avg_power_w: float | None = column("its mean power", "W")
    steady_energy_j_per_output_token: float | None = column(
        "J per output token inside it", "J/token")


@dataclass(frozen=True, kw_only=True)
class Load:
    """How full the engine ran: its scheduler's per-step stats (vLLM)."""

    running_batch_mean: float | None = column(
        "requests the scheduler ran after each engine step (`SchedulerStats.num_running_reqs`): "
        "mean over the steady window under traffic, over the whole measured window offline; "
        "null for other backends, with stats off, or under traffic without a steady window",
        "requests")
    running_batch_p10: float | None = column("the same: 10th percentile", "requests")
    waiting_step_share: float | None = column(
        "share of those steps after which requests waited in the scheduler's queue "
        "(`num_waiting_reqs` > 0)", "ratio")
    kv_preemptions: int | None = column(
        "requests vLLM preempted in those steps (KV cache full; "
        "`IterationStats.num_preempted_reqs`, summed)", "requests")
    scheduler_steps: int | None = column("how many engine steps those figures cover", "steps")


@dataclass(frozen=True, kw_only=True)
class Slo:
    """The experiment's SLO and how the run met it (docs/metrics.md, "SLOs and goodput");
    null without an SLO."""

    slo_ttft_ms: float | None = column("the SLO's time-to-first-token limit", "ms")
    slo_tpot_ms: float | None = column("the SLO's time-per-output-token limit", "ms")
    slo_min_attainment: float | None = column(
        "the share of requests that must meet it for the configuration to meet the SLO", "ratio")
    slo_attainment: float | None = column("the share of requests that met it", "ratio")
    goodput_tok_s: float | None = column(
        "output tokens of the requests that met it, per second", "tokens/s")
    energy_j_per_goodput_token: float | None = column(
        "`energy_j` over those requests' output tokens", "J/token")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """What was sent and what was asked."""

    stream_sha256: str | None = column(
        "vLLM step-driven windows: a hash of the request stream sent (arrival offsets to the "
        "µs, prompt token ids, trace output lengths); equal for runs that sent the identical "
        "stream")
    config_json: str = column(
        "the whole resolved experiment config as JSON (every key, e.g. `decoder.temperature`, "
        "`pytorch.attn_implementation`)")


@dataclass(frozen=True, kw_only=True)
class Request:
    """One measured request."""

    request_index: int = column("the prompt's position, 0 .. `num_requests - 1`")
    input_tokens: int = column("tokens of this request's prompt", "tokens")
    output_tokens: int = column("tokens this request generated", "tokens")
    ttft_ms: float | None = column("time to first token", "ms")
    itl_ms_mean: float | None = column(
        "this request's inter-token gaps: mean (`vllm_request_stats`: from its first and last "
        "token's engine stamps)", "ms")
    itl_ms_p50: float | None = column(
        "this request's inter-token gaps: median (null under `vllm_request_stats`)", "ms")
    itl_ms_max: float | None = column(
        "this request's inter-token gaps: largest (null under `vllm_request_stats`)", "ms")
    e2e_ms: float = column("time to last token", "ms")
    start_s: float = column("start, from the measure window's start", "s")
    energy_j: float | None = column(
        "this request's share of the run's GPU energy (an attribution, see `docs/metrics.md`)",
        "J")
    energy_attribution: str | None = column(
        "how `energy_j` was attributed: `step` (engine step by step, from every token's time "
        "stamp and the power series) or `token_share` (in proportion to tokens); null with no "
        "energy. Rows written before the column were all `token_share`")


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One sample of one GPU, or of the host (`gpu_uuid` null): each has its own readings, the
    other's are null."""

    gpu_uuid: str | None = column(
        "the GPU; null on the host's rows (so that a sum of `power_w` over rows stays a sum "
        "over GPUs)", optional=True)
    t_s: float = column("sample time, epoch seconds (`time.time()`)", "s")
    power_w: float | None = column("instant power", "W", optional=True)
    energy_j: float | None = column(
        "power integrated since the sampler's first sample of this GPU (a trace for plots; the "
        "reported figure is the counter's)", "J", optional=True)
    temperature_c: float | None = column("GPU temperature", "°C", optional=True)
    sm_clock_mhz: float | None = column("SM clock", "MHz", optional=True)
    mem_clock_mhz: float | None = column("memory clock", "MHz", optional=True)
    memory_used_mib: float | None = column("device memory used", "MiB", optional=True)
    utilization_pct: float | None = column("GPU utilisation", "%", optional=True)
    throttle_reasons: int | None = column("NVML clocks-event bitmask of the sample",
                                          optional=True)
    cpu_power_w: float | None = column(
        "host rows only: CPU package power over the interval since the previous host sample "
        "(RAPL counter delta / seconds)", "W", optional=True)
    dram_power_w: float | None = column("host rows only: DRAM power, as `cpu_power_w`", "W",
                                        optional=True)
    cpu_energy_j: float | None = column(
        "host rows only: CPU package counter energy since the run's first host sample", "J",
        optional=True)
    dram_energy_j: float | None = column(
        "host rows only: DRAM counter energy since the run's first host sample", "J",
        optional=True)


EXPERIMENT_GROUPS: tuple[type, ...] = (
    Ids, Outcome, ConfigKeys, Times, Placement, EngineWarmup, Throughput, Energy, Host,
    Validity, Conditions, Software, Runtime, Steady, Load, Slo, Provenance,
)
GROUPS: dict[str, tuple[type, ...]] = {
    "experiments": EXPERIMENT_GROUPS,
    "requests": (Ids, Request),
    "timeseries": (Ids, Sample),
}
