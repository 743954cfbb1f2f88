# syntax=docker/dockerfile:1
# One image per backend, each on the cluster's Ray and Python (Ray refuses workers whose Ray
# or Python differ from the cluster's): build with the same RAY_IMAGE the cluster runs.
#   docker build --target vllm     -t <registry>/lem-ray:vllm .
#   docker build --target tensorrt -t <registry>/lem-ray:tensorrt .
#   docker build --target pytorch  -t <registry>/lem-ray:pytorch .
# runtime_envs/<backend>.yaml then names the tag (kind: image_uri); docs/backends.md says how
# the nodes' container runtime is given the GPUs.

ARG RAY_IMAGE=rayproject/ray:2.60.0-py312-gpu

# ---- base: Ray from the image, lem-ray's core on top of it --------------------------------
FROM ${RAY_IMAGE} AS base
ARG RAY_VERSION=2.60.0
USER root
RUN mkdir -p /opt/lem-ray && chown ray /opt/lem-ray
# rayproject images run as the non-root user `ray`; so does every stage below.
USER ray
WORKDIR /opt/lem-ray
# Never let a dependency move Ray away from the cluster's version.
RUN echo "ray==${RAY_VERSION}" > /opt/lem-ray/constraints.txt \
 && python -c "import ray, sys; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
COPY --chown=ray pyproject.toml README.md ./
COPY --chown=ray lem_ray ./lem_ray
RUN pip install --no-cache-dir -c constraints.txt .
ENV CUDA_DEVICE_ORDER=PCI_BUS_ID \
    TOKENIZERS_PARALLELISM=false \
    VLLM_NO_USAGE_STATS=1 \
    PYTHONUNBUFFERED=1

# ---- pytorch: torch and transformers -------------------------------------------------------
FROM base AS pytorch
RUN pip install --no-cache-dir -c constraints.txt ".[pytorch]"

# ---- vllm: vLLM brings the torch build it pins ---------------------------------------------
FROM base AS vllm
ARG VLLM_VERSION=0.26.0
RUN pip install --no-cache-dir -c constraints.txt "vllm==${VLLM_VERSION}" ".[vllm]"

# ---- tensorrt: TensorRT-LLM from NVIDIA's index (it pins its own torch and needs MPI) -------
FROM base AS tensorrt
ARG TENSORRT_LLM_VERSION=1.2.0
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenmpi-dev openmpi-bin \
 && rm -rf /var/lib/apt/lists/*
USER ray
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://pypi.nvidia.com \
      "tensorrt-llm==${TENSORRT_LLM_VERSION}" ".[tensorrt]"
