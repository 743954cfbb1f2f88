"""PyTorch / transformers backend: generate() over batches, timing every decoding step."""

from __future__ import annotations

import gc
import time
from typing import Any

from lem_ray.assets import resolve_model
from lem_ray.backends.base import Backend, BackendUnavailable, RequestRecord
from lem_ray.backends.pytorch.batching import make_batches
from lem_ray.backends.pytorch.config import PyTorchConfig
from lem_ray.backends.pytorch.streamer import StepTimer


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
    if config.pytorch.cache_implementation == "static":
        kwargs["cache_implementation"] = "static"
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


class PyTorchBackend(Backend):
    name = "pytorch"

    def load(self) -> None:
        torch, transformers = _import_torch()
        cfg = self.config
        torch.manual_seed(cfg.random_seed)
        model_path = resolve_model(cfg.model_name)
        self._torch = torch
        self._device = "cuda" if self.device.kind == "cuda" else "cpu"
        dtype = getattr(torch, cfg.fp_precision)
        tok = transformers.AutoTokenizer.from_pretrained(resolve_model(cfg.tokenizer or cfg.model_name))
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tokenizer = tok
        options: PyTorchConfig = cfg.pytorch
        common: dict[str, Any] = {"dtype": dtype, "attn_implementation": options.attn_implementation}
        if cfg.load_format == "dummy":
            self._model = self._build_dummy(transformers, model_path, common)
        else:
            self._model = self._from_pretrained(transformers, model_path, common, options)
        self._model.eval()
        if options.torch_compile:
            self._model.forward = torch.compile(self._model.forward, mode=options.torch_compile)
        self._assistant = None
        if options.assistant_model:
            self._assistant = transformers.AutoModelForCausalLM.from_pretrained(
                resolve_model(options.assistant_model), dtype=dtype
            ).to(self._input_device).eval()
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        self._gen_kwargs = generation_kwargs(cfg, tok.pad_token_id, eos)

    def _build_dummy(self, transformers: Any, model_path: str, common: dict[str, Any]) -> Any:
        """Random weights from the architecture's config, built straight on the device.

        Building on the GPU avoids the CPU init + copy (0.6 s instead of 17 s for 1 B params).
        Several GPUs: layers are spread with accelerate's device map, as from_pretrained does.
        """
        torch = self._torch
        config = transformers.AutoConfig.from_pretrained(model_path)
        if self._device == "cuda" and self.device.gpu_count > 1:
            model = transformers.AutoModelForCausalLM.from_config(config, **common)
            try:
                from accelerate import dispatch_model, infer_auto_device_map
                from accelerate.utils import get_balanced_memory
            except ImportError:
                raise BackendUnavailable(
                    "spreading a pytorch model over several GPUs needs accelerate: "
                    "pip install 'lem-ray[pytorch]'"
                ) from None
            no_split = model._no_split_modules
            # Balanced, as from_pretrained's device_map="auto": a model that fits one GPU would
            # otherwise land whole on the first and leave the others idle.
            max_memory = get_balanced_memory(model, no_split_module_classes=no_split)
            device_map = infer_auto_device_map(
                model, max_memory=max_memory, no_split_module_classes=no_split
            )
            return dispatch_model(model, device_map=device_map)
        with torch.device(self._device):
            return transformers.AutoModelForCausalLM.from_config(config, **common)

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
    def warmup_batch_size(self) -> int:
        return self.config.pytorch.batch_size

    def generate(
        self, prompts: list[str], max_output_tokens: int | None = None
    ) -> list[RequestRecord]:
        tok = self._tokenizer
        most, least = self.output_bounds(max_output_tokens)
        gen_kwargs = {k: v for k, v in self._gen_kwargs.items() if k != "min_new_tokens"}
        gen_kwargs["max_new_tokens"] = most
        if least:
            gen_kwargs["min_new_tokens"] = least
        encoded = [
            tok(p, truncation=True, max_length=self.config.max_input_tokens)["input_ids"]
            for p in prompts
        ]
        records: list[RequestRecord | None] = [None] * len(prompts)
        for batch in make_batches([len(e) for e in encoded], self.config.pytorch):
            batch_ids = [encoded[i] for i in batch]
            for index, record in zip(batch, self._generate_batch(batch_ids, gen_kwargs, least)):
                record.index = index
                records[index] = record
        return [r for r in records if r is not None]

    def _generate_batch(
        self, token_ids: list[list[int]], gen_kwargs: dict[str, Any], min_tokens: int
    ) -> list[RequestRecord]:
        torch = self._torch
        inputs = self._tokenizer.pad({"input_ids": token_ids}, return_tensors="pt")
        inputs = {k: v.to(self._input_device) for k, v in inputs.items()}
        timer = StepTimer()
        extra = {"assistant_model": self._assistant} if self._assistant is not None else {}
        start_s = time.perf_counter()
        with torch.inference_mode():
            out = self._model.generate(**inputs, **gen_kwargs, **extra, streamer=timer)
        self.synchronize()
        done_s = time.perf_counter()
        generated = out[:, inputs["input_ids"].shape[1]:]
        lengths = output_lengths(generated.cpu(), self._eos_ids, min_tokens)
        times = timer.token_times_s
        records = []
        for ids, n in zip(token_ids, lengths):
            stamps = times[:n] if len(times) >= n else []
            records.append(
                RequestRecord(
                    index=0,
                    input_tokens=len(ids),
                    output_tokens=n,
                    e2e_ms=((stamps[-1] if stamps else done_s) - start_s) * 1000,
                    ttft_ms=(stamps[0] - start_s) * 1000 if stamps else None,
                    itl_ms=[(b - a) * 1000 for a, b in zip(stamps, stamps[1:])],
                    start_s=start_s,
                )
            )
        return records

    def synchronize(self) -> None:
        if self._device == "cuda":
            self._torch.cuda.synchronize()

    def peak_memory_mb(self) -> float | None:
        if self._device != "cuda":
            return None
        cuda = self._torch.cuda
        return sum(cuda.max_memory_allocated(i) for i in range(cuda.device_count())) / 2**20

    def versions(self) -> dict[str, str]:
        torch, transformers = _import_torch()
        found = {"torch": torch.__version__, "transformers": transformers.__version__}
        if self._device == "cuda" and torch.version.cuda:
            found["cuda_runtime"] = torch.version.cuda
        return found

    def details(self) -> dict[str, Any]:
        model = getattr(self, "_model", None)
        if model is None:
            return {}
        return {"parameters": sum(p.numel() for p in model.parameters()), "device": self._device}

    def release(self) -> None:
        for attr in ("_model", "_assistant"):
            if hasattr(self, attr):
                delattr(self, attr)
        gc.collect()
        if getattr(self, "_device", None) == "cuda":
            self._torch.cuda.empty_cache()
