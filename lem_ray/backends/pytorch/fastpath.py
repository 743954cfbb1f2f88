"""Static KV caches that outlive a batch.

A CUDA graph replays fixed addresses, so the cache must outlive each batch: one cache per
batch size lives as long as the engine and is reset before each use.
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
        """Drop every cache, so their GPU memory is freed with the engine."""
        self._caches.clear()
