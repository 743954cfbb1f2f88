"""How the PyTorch backend groups prompts into generate() calls."""

from __future__ import annotations

from lem_ray.backends.pytorch.config import PyTorchConfig


def make_batches(lengths: list[int], options: PyTorchConfig) -> list[list[int]]:
    """Indices of prompts per batch.

    static keeps the given order; sorted orders by input length (less padding, the
    common trick); dynamic is sorted and also closes a batch once its padded size
    (longest x count) would pass max_tokens_per_batch.
    """
    order = list(range(len(lengths)))
    if options.batching_strategy != "static":
        order.sort(key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        widest = max([lengths[j] for j in current] + [lengths[i]])
        over_budget = (
            options.batching_strategy == "dynamic"
            and options.max_tokens_per_batch is not None
            and current
            and widest * (len(current) + 1) > options.max_tokens_per_batch
        )
        if len(current) == options.batch_size or over_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
