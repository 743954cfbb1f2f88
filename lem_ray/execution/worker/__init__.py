"""Code that runs on the GPUs' nodes: workers, engines, the sampler actor."""
