#!/usr/bin/env bash
# Rehearse overhead.py or run.sh on a machine without a GPU: runs COMMAND with the CPU stand-in
# for vLLM's offline API (tests/fakes/vllm_standin) importable as `vllm`, from a temp dir made
# for this run only, so no directory named vllm sits in the tree to shadow the real package.
#   dev/gpu-vllm/rehearse.sh python3 dev/gpu-vllm/overhead.py --window-s 1 --budget-s 60
#   OUT=/tmp/ov OVERHEAD_ARGS="--window-s 1 --load-estimate-s 2" \
#     dev/gpu-vllm/rehearse.sh dev/gpu-vllm/run.sh overhead:90
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
cp -r "$root/tests/fakes/vllm_standin" "$site/vllm"
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$@"
