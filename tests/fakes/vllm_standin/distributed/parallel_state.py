"""Stand-in (see vllm/__init__.py here): nothing to free on a CPU."""


def cleanup_dist_env_and_memory() -> None:
    return None
