#!/usr/bin/env bash
# On the 2-GPU H200 machine (nvidia-h200-x2), from the project root, after `source .gpu/setup.sh`:
# the runs that only two GPUs can show, one part after the other, output in $OUT.
#   dev/gpu-x2/run.sh load2        dummy-weight load of builtin:llama-1b on 2 GPUs (bench/gpu.py)  ~60 s
#   dev/gpu-x2/run.sh batch        configs/h200-llama1b-batch.yaml + where its GPU time went       ~450-600 s
#   dev/gpu-x2/run.sh cluster      a real two-node Ray cluster (one GPU per node, token auth on),
#                                  doctor, `ray job submit` of configs/h200-two-node.yaml, each
#                                  row's GPU checked against its node's (check_nodes.py)          ~150-250 s
#   dev/gpu-x2/run.sh load2 cluster:300    several parts in one call, each with its budget (s)
# vLLM with tensor parallelism 2 is dev/gpu-vllm/run.sh's `tests` and `tp2` parts (after its
# transfers). Rehearsal on a machine without GPUs: X2_LOGICAL=1 starts the cluster with logical
# GPUs and TWO_NODE_CAMPAIGN=quickstart submits the embedded tiny campaign instead.
set -uo pipefail
(($#)) || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
OUT=${OUT:-$PWD/gpu-x2-out}
mkdir -p "$OUT"
root=$PWD
here=$(cd "$(dirname "$0")" && pwd)
stamp() { date -u +%H:%M:%S; }
status=0

run_load2() {  # BUDGET_S
  echo "[$(stamp)] load2: bench/gpu.py --path none --no-cv"
  timeout -s INT -k 20 "$1" python3 bench/gpu.py --path none --no-cv --budget-s "$(($1 - 20))" \
    --out "$OUT/load2.json" 2>&1 | tail -5 | tee "$OUT/load2.log"
  return "${PIPESTATUS[0]}"
}

run_batch() {  # BUDGET_S
  local results=results/h200-llama1b-batch rc
  echo "[$(stamp)] batch: lem-ray campaign configs/h200-llama1b-batch.yaml (budget ${1}s)"
  timeout -s INT -k 60 "$1" python3 -m lem_ray.cli campaign configs/h200-llama1b-batch.yaml \
    > "$OUT/batch.campaign.log" 2>&1
  rc=$?
  echo "[$(stamp)] batch: campaign exit $rc (124: stopped by the budget; run the part again to resume)"
  python3 -m lem_ray.cli status "$results" --json > "$OUT/batch.status.json" 2>&1
  python3 -m lem_ray.cli report "$results" > "$OUT/batch.report.txt" 2>&1
  python3 - "$OUT/batch.status.json" <<'PY' | tee "$OUT/batch.phases.txt"
import json, sys
s = json.load(open(sys.argv[1]))
g = s["gpu_seconds"]
total = sum(g.values())
print("GPU-seconds by phase:", ", ".join(f"{k} {v:.1f} ({v / total:.1%})" for k, v in g.items()))
print(f"measuring share: {g['measuring'] / total:.1%} of {total:.1f} GPU-s (issue 10's goal: 70%)")
PY
  tail -3 "$OUT/batch.campaign.log"
  return "$rc"
}

run_cluster() {  # BUDGET_S
  local dir=/tmp/lemray-x2 results=$root/results/h200-two-node rc gpus=(--real-gpus) campaign
  [[ ${X2_LOGICAL:-0} == 1 ]] && gpus=()
  campaign=${TWO_NODE_CAMPAIGN:-configs/h200-two-node.yaml}
  [[ $campaign == quickstart ]] && campaign=
  export LEMRAY_LOCAL_DIR=$dir
  echo "[$(stamp)] cluster: cluster/local.sh start --workers 1 --gpus-per-node 1 ${gpus[*]}"
  cluster/local.sh start --workers 1 --gpus-per-node 1 --cpus-per-node 4 "${gpus[@]}" \
    2>&1 | tee "$OUT/cluster.start.log" || return 1
  (
    # shellcheck disable=SC1091
    source "$dir/env"
    ray status --address="$RAY_ADDRESS" > "$OUT/cluster.ray-status.txt" 2>&1
    python3 -m lem_ray.cli doctor --results-dir "$results" > "$OUT/doctor.txt" 2>&1
    python3 -m lem_ray.cli doctor --results-dir "$results" --json > "$OUT/doctor.json" 2>&1
    echo "[$(stamp)] cluster: ray job submit"
    timeout -s INT -k 30 "$(($1 - 60))" ray job submit --entrypoint-num-cpus 1 -- \
      bash -c "cd '$root' && python3 -m lem_ray.cli campaign $campaign --results-dir '$results'" \
      > "$OUT/cluster.job.log" 2>&1
    echo "[$(stamp)] cluster: job exit $?"
    tail -4 "$OUT/cluster.job.log"
  )
  python3 "$here/check_nodes.py" "$results" "$dir" --out "$OUT/cluster.check.json" \
    | tee "$OUT/cluster.check.txt"
  rc=${PIPESTATUS[0]}
  nvidia-smi --query-gpu=index,uuid,name --format=csv > "$OUT/nvidia-smi.csv" 2>&1
  cluster/local.sh stop
  return "$rc"
}

for arg in "$@"; do
  part=${arg%%:*}; budget=${arg#*:}; [[ $budget == "$arg" ]] && budget=
  case $part in
    load2) run_load2 "${budget:-120}" ;;
    batch) run_batch "${budget:-540}" ;;
    cluster) run_cluster "${budget:-300}" ;;
    *) echo "run.sh: unknown part $part (load2, batch, cluster)" >&2; status=2; continue ;;
  esac
  rc=$?; ((rc && !status)) && status=$rc
done
ls -la "$OUT"
exit "$status"
