"""TensorRT-LLM: engines built (or read from a cache) per experiment, offline or at a rate."""
