#!/usr/bin/env bash
# On the H200 machine, from the project root, after
#   source .gpu/setup.sh && source /tmp/vparts/install.sh
# runs one part of the vLLM live run and leaves its output in $OUT (at most 8 files: the logs
# that do not fit are tarred). Each part fits in one call of at most 600 s:
#   dev/gpu-vllm/run.sh tests     [BUDGET_S]   pytest -m gpu on tests/test_vllm*.py     (~150 s)
#   dev/gpu-vllm/run.sh campaign  [BUDGET_S]   configs/h200-vllm-llama1b.yaml + table  (~550 s)
#   dev/gpu-vllm/run.sh traffic   [BUDGET_S]   configs/h200-vllm-traffic.yaml + table  (~200 s)
# BUDGET_S (default 540, 520 for the campaign) bounds the part: lem-ray gets SIGINT then,
# records what finished, stops its workers and exits; running the same part again resumes
# the campaign where it stopped (finished runs are kept). See README.md beside this file.
set -uo pipefail
part=${1:?usage: run.sh tests|campaign|traffic [BUDGET_S]}
OUT=${OUT:-$PWD/gpu-vllm-out}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export VLLM_NO_USAGE_STATS=1 RAY_DEDUP_LOGS=0
lemray() { python3 -m lem_ray.cli "$@"; }
stamp() { date -u +%H:%M:%S; }

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

run_campaign() {  # GRID NAME BUDGET_S
  local grid=$1 name=$2 budget=$3 results rc
  results=results/$name
  echo "[$(stamp)] $name: lem-ray campaign (budget ${budget}s)"
  timeout -s INT -k 60 "$budget" python3 -m lem_ray.cli campaign "$grid" 2>&1 \
    | tee "$OUT/$name.campaign.log"
  rc=${PIPESTATUS[0]}
  echo "[$(stamp)] $name: campaign exit $rc (124: stopped by the budget; run this part again to resume)"
  stop_leftovers
  lemray status "$results" --json > "$OUT/$name.status.json" 2> "$OUT/$name.status.err"
  lemray report "$results" --html "$OUT/$name.report.html" --csv "$OUT/$name.report.csv" \
    > "$OUT/$name.report.txt" 2>&1
  python3 "$here/summarize.py" "$results" "$OUT/$name.summary" || true
  tar czf "$OUT/$name.results.tgz" "$results" 2>/dev/null
  echo "[$(stamp)] $name: done"
  return "$rc"
}

# $OUT keeps at most 8 files: the summaries, the HTML report and the part's main log stay;
# everything else goes into one archive.
pack() {  # KEEP...
  local keep=("$@") f k extra=()
  for f in "$OUT"/*; do
    [[ -f $f ]] || continue
    for k in "${keep[@]}"; do [[ $(basename "$f") == "$k" ]] && continue 2; done
    extra+=("$(basename "$f")")
  done
  if ((${#extra[@]})); then
    tar czf "$OUT/rest.tgz" -C "$OUT" "${extra[@]}" && (cd "$OUT" && rm -f "${extra[@]}")
  fi
  ls -l "$OUT"
}

case $part in
  tests)
    budget=${2:-540}
    echo "[$(stamp)] pytest -m gpu tests/test_vllm*.py (budget ${budget}s)"
    timeout -s INT -k 30 "$budget" python3 -m pytest -m gpu tests/test_vllm*.py -q -rs \
      -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
    rc=${PIPESTATUS[0]}
    stop_leftovers
    echo "[$(stamp)] pytest exit $rc"
    pack tests.log
    exit "$rc" ;;
  campaign)
    run_campaign configs/h200-vllm-llama1b.yaml h200-vllm-llama1b "${2:-520}"
    rc=$?
    pack h200-vllm-llama1b.summary.md h200-vllm-llama1b.summary.json \
      h200-vllm-llama1b.report.html h200-vllm-llama1b.status.json \
      h200-vllm-llama1b.campaign.log h200-vllm-llama1b.report.txt
    exit "$rc" ;;
  traffic)
    run_campaign configs/h200-vllm-traffic.yaml h200-vllm-traffic "${2:-540}"
    rc=$?
    pack h200-vllm-traffic.summary.md h200-vllm-traffic.summary.json \
      h200-vllm-traffic.report.html h200-vllm-traffic.status.json \
      h200-vllm-traffic.campaign.log h200-vllm-traffic.report.txt
    exit "$rc" ;;
  *)
    echo "usage: run.sh tests|campaign|traffic [BUDGET_S]" >&2; exit 2 ;;
esac
