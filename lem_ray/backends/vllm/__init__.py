"""vLLM: offline batches or requests arriving at a rate, timed by the engine's own stats."""
