"""Stand-ins shared by the tests, one module per thing they replace: llm_apis (vLLM's and
TensorRT-LLM's Python APIs, strict about parameter names), vllm_engine (vLLM's engine loop),
gpu_node (a two-GPU node answering as NVML does, and an engine on its clock), powercap (the
RAPL sysfs tree), clock (time that moves only when told), run_result (what a run's actors hand
the driver). vllm_standin is vLLM's offline API on a CPU for dev/gpu-vllm/rehearse.sh, which
makes it the package `vllm` in a temp dir of its own; the tests never import it."""
