"""PyTorch / transformers backend: generate() over batches, timing every decoding step."""

from __future__ import annotations

import gc
import time
from itertools import pairwise
from typing import Any

from typing_extensions import override

from lem_ray import __version__
from lem_ray.assets import resolve_model
from lem_ray.backends.base import Backend, BackendUnavailable, RequestRecord
from lem_ray.backends.pytorch.batching import make_batches
from lem_ray.backends.pytorch.config import PyTorchConfig
from lem_ray.backends.pytorch.decode_loop import DecodeLoop
from lem_ray.backends.pytorch.dummy import build_dummy
from lem_ray.backends.pytorch.streamer import StepTimer
from lem_ray.backends.pytorch.timing import CUDA_EVENT, HOST_CLOCK, StepClock


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendUnavailable(
            f"the pytorch backend needs torch and transformers ({exc}); "
            "install them with: pip install 'lem-ray[pytorch]'"
        ) from None
    return torch, transformers


def fx_graph_cache_counts(torch: Any) -> dict[str, int]:
    """Inductor's FX-graph cache lookups in this process so far: a compile served from cached
    artifacts counts a hit, one that generated and tuned its own kernels a miss, a graph the
    cache cannot hold a bypass (compiled every time)."""
    from torch._dynamo.utils import counters

    return {name: counters["inductor"][f"fxgraph_cache_{name}"]
            for name in ("hit", "miss", "bypass")}


def generation_kwargs(config: Any, pad_token_id: int, eos_token_id: Any) -> dict[str, Any]:
    """Decoder settings as generate() names them; sampling knobs only when sampling."""
    decoder = config.decoder
    kwargs: dict[str, Any] = {
        "max_new_tokens": config.max_output_tokens,
        "do_sample": decoder.do_sample,
        "repetition_penalty": decoder.repetition_penalty,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "num_beams": 1,
    }
    if config.min_output_tokens:
        kwargs["min_new_tokens"] = config.min_output_tokens
    if decoder.do_sample:
        kwargs.update(temperature=decoder.temperature, top_k=decoder.top_k, top_p=decoder.top_p)
    else:
        # None overrides the model's generation_config defaults, which would warn under greedy.
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if config.pytorch.cache_implementation == "static" and config.pytorch.torch_compile is None:
        # transformers compiles the decoding step by itself whenever the cache is static:
        # without torch_compile the user asked for eager decode, so say so.
        kwargs["cache_implementation"] = "static"
        kwargs["disable_compile"] = True
    return kwargs


def output_lengths(generated: Any, eos_ids: set[int], min_tokens: int) -> list[int]:
    """Tokens each row really produced: up to and including its first EOS.

    generate() keeps padding finished rows with pad tokens until the whole batch is done, so
    the row length alone overstates short answers. EOS before min_tokens cannot occur
    (generate suppresses it), so the first EOS is the end.
    """
    lengths = []
    for row in generated.tolist():
        n = len(row)
        for pos, tok in enumerate(row):
            if tok in eos_ids and pos + 1 >= min_tokens:
                n = pos + 1
                break
        lengths.append(n)
    return lengths


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _sampling(config: Any) -> dict[str, Any] | None:
    decoder = config.decoder
    if not decoder.do_sample:
        return None
    return {"temperature": decoder.temperature, "top_k": decoder.top_k, "top_p": decoder.top_p}


def request_record(
    input_tokens: int, output_tokens: int, times_s: list[float], start_s: float, done_s: float
) -> RequestRecord:
    """A row's timings from the batch's step times: its first `output_tokens` steps are its
    tokens (a row that ended early only receives padding afterwards)."""
    stamps = times_s[:output_tokens] if len(times_s) >= output_tokens else []
    return RequestRecord(
        index=0,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        e2e_ms=((stamps[-1] if stamps else done_s) - start_s) * 1000,
        ttft_ms=(stamps[0] - start_s) * 1000 if stamps else None,
        itl_ms=[(b - a) * 1000 for a, b in pairwise(stamps)],
        start_s=start_s,
    )


class PyTorchBackend(Backend[PyTorchConfig]):
    """transformers' generate() or lem-ray's compiled decode loop, in batches, on GPUs or CPU."""

    name = "pytorch"

    @override
    def load(self) -> None:
        torch, transformers = _import_torch()
        cfg = self.config
        torch.manual_seed(cfg.random_seed)
        model_path = resolve_model(cfg.model_name)
        self._torch = torch
        self._transformers = transformers
        self._device = "cuda" if self.device.kind == "cuda" else "cpu"
        self._devices = (
            [torch.device("cuda", i) for i in range(self.device.gpu_count)]
            if self._device == "cuda" else [torch.device("cpu")]
        )
        dtype = getattr(torch, cfg.fp_precision)
        tok = transformers.AutoTokenizer.from_pretrained(
            resolve_model(cfg.tokenizer or cfg.model_name)
        )
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tokenizer = tok
        options = self.options
        common: dict[str, Any] = {
            "dtype": dtype,
            "attn_implementation": options.attn_implementation,
        }
        if cfg.load_format == "dummy":
            self._model = build_dummy(torch, transformers, model_path, common, self._devices)
        else:
            self._model = self._from_pretrained(transformers, model_path, common, options)
        self._model.eval()
        self._loop: DecodeLoop | None = None
        self._fx_graph_cache = {"hit": 0, "miss": 0, "bypass": 0}
        if options.cache_implementation == "static" and options.torch_compile:
            self._loop = DecodeLoop(
                torch, transformers, self._model, options.torch_compile, _sampling(cfg),
                _eos_ids(self._model, tok), tok.pad_token_id, cfg.max_output_tokens,
                compile_prefill=options.compile_prefill,
            )
        elif options.torch_compile:
            self._model.forward = torch.compile(self._model.forward, mode=options.torch_compile)
        self._assistant = None
        if options.assistant_model:
            self._assistant = transformers.AutoModelForCausalLM.from_pretrained(
                resolve_model(options.assistant_model), dtype=dtype
            ).to(self._input_device).eval()
        self._eos_ids = _eos_ids(self._model, tok)
        self._gen_kwargs = generation_kwargs(cfg, tok.pad_token_id, sorted(self._eos_ids))

    def configure(self, config: Any) -> None:
        """Decoder, token counts and batching are generate() arguments (the compiled loop,
        which bakes them in, declares them engine fields); the seed is reset so a sampled run
        draws the same tokens warm as cold."""
        super().configure(config)
        self._torch.manual_seed(config.random_seed)
        self._gen_kwargs = generation_kwargs(
            config, self._tokenizer.pad_token_id, sorted(self._eos_ids)
        )
        if self._device == "cuda":
            for index in range(self._torch.cuda.device_count()):
                self._torch.cuda.reset_peak_memory_stats(index)

    def _from_pretrained(
        self, transformers: Any, model_path: str, common: dict[str, Any], options: PyTorchConfig
    ) -> Any:
        kwargs = dict(common)
        if options.load_in_4bit or options.load_in_8bit:
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=options.load_in_4bit,
                load_in_8bit=options.load_in_8bit,
                bnb_4bit_quant_type=options.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=common["dtype"],
            )
        if self._device == "cuda":
            kwargs["device_map"] = "auto" if self.device.gpu_count > 1 else "cuda:0"
        return transformers.AutoModelForCausalLM.from_pretrained(model_path, **kwargs)

    @property
    def _input_device(self) -> Any:
        return self._model.device if hasattr(self, "_model") else self._device

    @property
    @override
    def warmup_batch_size(self) -> int:
        return self.options.batch_size

    @property
    def timing_method(self) -> str:
        """Assisted generation is timed by a streamer (a step may yield several tokens)."""
        if self._assistant is not None or self._device != "cuda":
            return HOST_CLOCK
        return CUDA_EVENT

    @property
    def _output_device(self) -> Any:
        """Where the logits are computed: the last part of a model spread over GPUs."""
        return self._model.get_output_embeddings().weight.device

    def prepare(self, prompts: list[str]) -> None:
        """Fast path: compile the decoding step and capture its CUDA graph for each batch shape
        these prompts make (the longest prompt first, so it fixes the cache length), so neither
        happens in the warmup or measured windows."""
        if self._loop is None:
            return
        encoded = self._encode(prompts)
        sizes = {len(b) for b in make_batches([len(e) for e in encoded], self.options)}
        shapes = [max(encoded, key=len)]
        if self.options.compile_prefill:
            # A compiled prefill may specialise on a short prompt (length 1): meet it here.
            shapes.append(min(encoded, key=len))
        before = fx_graph_cache_counts(self._torch)
        for size in sorted(sizes, reverse=True):
            for ids in shapes:
                self._run_batch([ids] * size, {"max_new_tokens": 2}, 0)
        for name, count in fx_graph_cache_counts(self._torch).items():
            self._fx_graph_cache[name] += count - before[name]

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        tok = self._tokenizer
        return [
            tok(p, truncation=True, max_length=self.config.max_input_tokens)["input_ids"]
            for p in prompts
        ]

    @override
    def generate(
        self, prompts: list[str], max_output_tokens: int | None = None
    ) -> list[RequestRecord]:
        most, least = self.output_bounds(max_output_tokens)
        gen_kwargs = {k: v for k, v in self._gen_kwargs.items() if k != "min_new_tokens"}
        gen_kwargs["max_new_tokens"] = most
        if least:
            gen_kwargs["min_new_tokens"] = least
        encoded = self._encode(prompts)
        records: list[RequestRecord | None] = [None] * len(prompts)
        for batch in make_batches([len(e) for e in encoded], self.options):
            batch_ids = [encoded[i] for i in batch]
            for index, record in zip(batch, self._run_batch(batch_ids, gen_kwargs, least)):
                record.index = index
                records[index] = record
        return [r for r in records if r is not None]

    def _run_batch(
        self, token_ids: list[list[int]], gen_kwargs: dict[str, Any], min_tokens: int
    ) -> list[RequestRecord]:
        torch = self._torch
        inputs = self._tokenizer.pad({"input_ids": token_ids}, return_tensors="pt")
        inputs = {k: v.to(self._input_device) for k, v in inputs.items()}
        if self._loop is not None:
            clock = StepClock(torch, self._output_device)
            clock.start()
            generated = self._loop.run(
                inputs["input_ids"], inputs["attention_mask"], gen_kwargs["max_new_tokens"],
                min_tokens, clock,
            )
            self.synchronize()
            return self._records(token_ids, generated, min_tokens, clock.token_times_s(),
                                 clock.start_s, time.perf_counter())
        extra: dict[str, Any] = {}
        if self._assistant is not None:
            extra["assistant_model"] = self._assistant
            timer: Any = StepTimer()
            extra["streamer"] = timer
        else:
            timer = StepClock(torch, self._output_device)
            extra["logits_processor"] = self._transformers.LogitsProcessorList([timer])
        if isinstance(timer, StepClock):
            timer.start()
            start_s = timer.start_s
        else:
            start_s = time.perf_counter()
        with torch.inference_mode():
            out = self._model.generate(**inputs, **gen_kwargs, **extra)
        self.synchronize()
        done_s = time.perf_counter()
        times = timer.token_times_s() if isinstance(timer, StepClock) else timer.token_times_s
        generated = out[:, inputs["input_ids"].shape[1]:]
        return self._records(token_ids, generated, min_tokens, times, start_s, done_s)

    def _records(
        self, token_ids: list[list[int]], generated: Any, min_tokens: int, times_s: list[float],
        start_s: float, done_s: float,
    ) -> list[RequestRecord]:
        lengths = output_lengths(generated.cpu(), self._eos_ids, min_tokens)
        return [request_record(len(ids), n, times_s, start_s, done_s)
                for ids, n in zip(token_ids, lengths)]

    @override
    def synchronize(self) -> None:
        if self._device == "cuda":
            self._torch.cuda.synchronize()

    @override
    def peak_memory_mib(self) -> float | None:
        if self._device != "cuda":
            return None
        cuda = self._torch.cuda
        return sum(cuda.max_memory_allocated(i) for i in range(cuda.device_count())) / 2**20

    @override
    def versions(self) -> dict[str, str]:
        torch, transformers = _import_torch()
        found = {"torch": torch.__version__, "transformers": transformers.__version__}
        if self._device == "cuda" and torch.version.cuda:
            found["cuda_runtime"] = torch.version.cuda
        return found

    def compiler_versions(self) -> dict[str, str] | None:
        """The compiled loop compiles its step on CUDA, in prepare(). The other paths compile
        nothing (eager), or compile inside the warmup (torch_compile over a dynamic cache),
        which the cache does not hold."""
        if not (self.options.compiled_loop and self.device.kind == "cuda"):
            return None
        torch, transformers = _import_torch()
        found = {"torch": str(torch.__version__), "transformers": transformers.__version__,
                 "cuda": str(torch.version.cuda), "lem_ray": __version__}
        try:
            import triton
        except ImportError:
            return found
        return {**found, "triton": triton.__version__}

    def use_compiled(self, artifact: bytes) -> None:
        """Inductor's Mega-Cache: FX graphs, AOTAutograd entries and autotuning results go
        into this process's caches, so the step compiles from them: the same kernels, with
        the same tuned launch configurations, and no tuning."""
        torch, _ = _import_torch()
        torch.compiler.load_cache_artifacts(artifact)

    def compiled_artifact(self) -> bytes | None:
        """Everything this process has compiled so far (Inductor's Mega-Cache is per
        process): a superset of this engine's kernels, keyed inside by content."""
        torch, _ = _import_torch()
        saved = torch.compiler.save_cache_artifacts()
        return saved[0] if saved else None

    @override
    def details(self) -> dict[str, Any]:
        model = getattr(self, "_model", None)
        if model is None:
            return {}
        found: dict[str, Any] = {
            "parameters": sum(p.numel() for p in model.parameters()), "device": self._device,
        }
        if self._loop is not None:
            found["cuda_graphs"] = self._loop.graphs
            found["inductor_tuning"] = self._loop.inductor_tuning
            found["fx_graph_cache"] = dict(self._fx_graph_cache)
        return found

    @override
    def release(self) -> None:
        for attr in ("_loop", "_model", "_assistant"):
            if hasattr(self, attr):
                delattr(self, attr)
        gc.collect()
        if getattr(self, "_device", None) == "cuda":
            self._torch.cuda.empty_cache()


def engine_args(config: Any) -> dict[str, Any]:
    """What generate() will be given, for `--dry-run`; the token ids come from the tokenizer."""
    generate = generation_kwargs(config, pad_token_id=0, eos_token_id=0)
    for name in ("pad_token_id", "eos_token_id"):
        del generate[name]
    return {
        "library": "transformers",
        "sampling": {"call": "model.generate", "kwargs": generate,
                     "resolved_at_load": ["pad_token_id", "eos_token_id"]},
    }
