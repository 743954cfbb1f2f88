"""Static KV cache + compiled decode (CUDA graphs with torch_compile: reduce-overhead).

transformers compiles the decoding step itself when generate() runs with a static cache
(`compile_config`); prefill stays eager. CUDA graphs replay only while every input keeps
its address, so the cache must outlive the generate() call: transformers would build a new
cache per call (new addresses, a re-recorded graph each batch). Here one cache per batch size
lives as long as the engine and is reset before each use, and `prepare` compiles and records
the graphs for every batch shape of the run before the warmup, so that time is load time.
"""

from __future__ import annotations

from typing import Any


def cache_argument_name(transformers: Any) -> str:
    """generate()'s name for a user-supplied cache: `cache` from transformers 5.2x on (the old
    `past_key_values` still works there, with a deprecation warning), `past_key_values` before."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


class StaticCaches:
    """One static KV cache per batch size, each sized for the longest prompt plus the answer."""

    def __init__(self, transformers: Any, model_config: Any) -> None:
        self._transformers = transformers
        self._config = model_config.get_text_config(decoder=True)
        self._caches: dict[int, tuple[int, Any]] = {}
        self.argument = cache_argument_name(transformers)

    def for_batch(self, batch_size: int, needed_len: int) -> Any:
        """The cache for this batch size, emptied; a new one only when none is long enough
        (a new cache means new addresses: the graphs are recorded again)."""
        length, cache = self._caches.get(batch_size, (0, None))
        if cache is None or length < needed_len:
            cache = self._transformers.StaticCache(config=self._config, max_cache_len=needed_len)
            self._caches[batch_size] = (needed_len, cache)
        else:
            cache.reset()
        return cache

    def clear(self) -> None:
        self._caches.clear()


def captured_graphs(torch: Any) -> int:
    """CUDA graphs inductor's cudagraph trees recorded so far, over all devices: the evidence
    that the fast path really replays graphs instead of running eagerly."""
    from torch._inductor import cudagraph_trees

    total = 0
    for index in range(torch.cuda.device_count()):
        manager = cudagraph_trees.get_manager(index, create_if_none_exists=False)
        if manager is None:
            continue
        pending = [node for nodes in manager.roots.values() for node in nodes]
        while pending:
            node = pending.pop()
            total += 1
            pending.extend(child for nodes in node.children.values() for child in nodes)
    return total


def cudagraph_skips(torch: Any) -> int:
    """How often inductor declined to use CUDA graphs (and ran the compiled code without)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])
