#!/usr/bin/env bash
# On the H200 machine, from the project root, after
#   source .gpu/setup.sh && source /tmp/vparts/install.sh
# runs parts of the vLLM live run, one after the other, and leaves their output in $OUT (at
# most 8 files: what does not fit goes into rest.tgz). Keep a call's parts under 600 s:
#   dev/gpu-vllm/run.sh tests             pytest -m gpu on tests/backends/test_vllm*.py   (~120-200 s)
#   dev/gpu-vllm/run.sh campaign          configs/h200-vllm-llama1b.yaml + table (~480-630 s)
#   dev/gpu-vllm/run.sh traffic           configs/h200-vllm-traffic.yaml + table (~120-220 s)
#   dev/gpu-vllm/run.sh tp2               configs/h200-vllm-tp2.yaml on 2 GPUs + table (~250-350 s)
#   dev/gpu-vllm/run.sh llama8b           configs/gpu-vllm-llama8b.yaml + table (several calls; resumes)
#   dev/gpu-vllm/run.sh overhead          overhead.py: bare LLM.generate vs lem-ray's window
#                                         (OVERHEAD_ARGS="--seqs 64 ..." passes options)
#   dev/gpu-vllm/run.sh tests:240 traffic:300    two parts in one call, each with its budget
# A part's budget (seconds; defaults: tests 240, campaign 520, traffic 300, tp2 380, overhead 570)
# bounds it (overhead.py plans within it and stops itself 30 s before): lem-ray
# then gets SIGINT, records what finished, stops its workers and exits (exit 124); running the
# same part again resumes its campaign where it stopped. See README.md beside this file.
set -uo pipefail
(($#)) || { echo "usage: run.sh PART[:BUDGET_S]... (PART: tests, campaign, traffic, tp2, llama8b, overhead)" >&2; exit 2; }
OUT=${OUT:-$PWD/gpu-vllm-out}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export VLLM_NO_USAGE_STATS=1 RAY_DEDUP_LOGS=0
stamp() { date -u +%H:%M:%S; }
keep=()   # files that stay in $OUT, most wanted first

# A part stopped by its budget may leave a vLLM engine-core process holding GPU memory (its
# parent killed before it could stop it); the next engine would then find too little free.
# Once the part has exited, every process still on the GPU is one it started: stop those.
stop_leftovers() {
  local pid
  for pid in $(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null); do
    echo "run.sh: stopping leftover GPU process $pid ($(ps -o comm= -p "$pid"))" >&2
    kill "$pid" 2>/dev/null
  done
}

run_tests() {  # BUDGET_S
  local rc
  echo "[$(stamp)] pytest -m gpu tests/backends/test_vllm*.py (budget ${1}s)"
  timeout -s INT -k 30 "$1" python3 -m pytest -m gpu tests/backends/test_vllm*.py -q -rs \
    -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
  rc=${PIPESTATUS[0]}
  stop_leftovers
  echo "[$(stamp)] pytest exit $rc"
  keep+=(tests.log)
  return "$rc"
}

run_campaign() {  # GRID NAME BUDGET_S
  local grid=$1 name=$2 budget=$3 results rc
  results=results/$name
  echo "[$(stamp)] $name: lem-ray campaign (budget ${budget}s)"
  timeout -s INT -k 60 "$budget" python3 -m lem_ray.cli campaign "$grid" 2>&1 \
    | tee "$OUT/$name.campaign.log"
  rc=${PIPESTATUS[0]}
  echo "[$(stamp)] $name: campaign exit $rc (124: stopped by the budget; run this part again to resume)"
  stop_leftovers
  python3 -m lem_ray.cli status "$results" --json > "$OUT/$name.status.json" 2> "$OUT/$name.status.err"
  python3 -m lem_ray.cli report "$results" --html "$OUT/$name.report.html" \
    --csv "$OUT/$name.report.csv" > "$OUT/$name.report.txt" 2>&1
  python3 "$here/summarize.py" "$results" "$OUT/$name.summary" || true
  tar czf "$OUT/$name.results.tgz" "$results" 2>/dev/null
  echo "[$(stamp)] $name: done"
  keep+=("$name.summary.md" "$name.report.html" "$name.summary.json" "$name.campaign.log"
         "$name.status.json" "$name.report.txt")
  return "$rc"
}

run_overhead() {  # BUDGET_S
  local rc
  echo "[$(stamp)] overhead.py ${OVERHEAD_ARGS:-} (budget ${1}s)"
  # shellcheck disable=SC2086  # OVERHEAD_ARGS is a list of options
  timeout -s INT -k 30 "$1" python3 "$here/overhead.py" --budget-s "$(($1 - 30))" \
    --out "$OUT" ${OVERHEAD_ARGS:-} 2>&1 | tee "$OUT/overhead.log"
  rc=${PIPESTATUS[0]}
  stop_leftovers
  echo "[$(stamp)] overhead.py exit $rc"
  keep+=(vllm_overhead.md vllm_overhead.json overhead.log)
  return "$rc"
}

# $OUT keeps at most 8 files: the first 7 wanted ones, and rest.tgz with everything else.
pack() {
  local f k kept=() extra=()
  for k in "${keep[@]}"; do
    [[ -f $OUT/$k ]] && ((${#kept[@]} < 7)) && kept+=("$k")
  done
  for f in "$OUT"/*; do
    [[ -f $f ]] || continue
    for k in "${kept[@]}"; do [[ $(basename "$f") == "$k" ]] && continue 2; done
    extra+=("$(basename "$f")")
  done
  if ((${#extra[@]})); then
    tar czf "$OUT/rest.tgz" -C "$OUT" "${extra[@]}" && (cd "$OUT" && rm -f "${extra[@]}")
  fi
  ls -l "$OUT"
}

status=0
for arg in "$@"; do
  part=${arg%%:*}; budget=${arg#*:}; [[ $budget == "$arg" ]] && budget=
  case $part in
    tests) run_tests "${budget:-240}" ;;
    campaign) run_campaign configs/h200-vllm-llama1b.yaml h200-vllm-llama1b "${budget:-520}" ;;
    traffic) run_campaign configs/h200-vllm-traffic.yaml h200-vllm-traffic "${budget:-300}" ;;
    tp2) run_campaign configs/h200-vllm-tp2.yaml h200-vllm-tp2 "${budget:-380}" ;;
    llama8b) run_campaign configs/gpu-vllm-llama8b.yaml gpu-vllm-llama8b "${budget:-560}" ;;
    overhead) run_overhead "${budget:-570}" ;;
    *) echo "run.sh: unknown part $part (tests, campaign, traffic, tp2, llama8b, overhead)" >&2; status=2; continue ;;
  esac
  rc=$?; ((rc && !status)) && status=$rc
done
pack
exit "$status"
