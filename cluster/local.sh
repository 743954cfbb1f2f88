#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine, for trying lem-ray's cluster path:
# a head and N worker nodes, each with its own GPUs (logical ones, or real ones split with
# CUDA_VISIBLE_DEVICES), token authentication on.
#
#   cluster/local.sh start [--workers N] [--gpus-per-node G] [--cpus-per-node C] [--real-gpus]
#   source <dir>/env           # RAY_ADDRESS, RAY_API_SERVER_ADDRESS, RAY_AUTH_MODE, token path
#   cluster/local.sh status
#   cluster/local.sh stop
#
# Everything lives in $LEMRAY_LOCAL_DIR (default /tmp/lemray-local): Ray's temp dir, the auth
# token (never ~/.ray/auth_token, which other Ray instances of this machine may use), the env
# file. The head's dashboard (Ray Jobs) port is printed. `stop` stops only this cluster's
# processes (those whose command line names its directory), never other Ray instances.
set -euo pipefail

DIR="${LEMRAY_LOCAL_DIR:-/tmp/lemray-local}"
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

free_ports() {  # N free TCP ports on 127.0.0.1
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

node_ports() {  # the ports one Ray node binds, all free, so several nodes share one host
  local p; read -r -a p <<<"$(free_ports 6)"
  echo "--node-manager-port=${p[0]} --object-manager-port=${p[1]}" \
       "--dashboard-agent-listen-port=${p[2]} --dashboard-agent-grpc-port=${p[3]}" \
       "--runtime-env-agent-port=${p[4]} --metrics-export-port=${p[5]}"
}

start() {
  local workers=1 gpus=1 cpus=2 real=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --workers) workers="$2"; shift 2 ;;
      --gpus-per-node) gpus="$2"; shift 2 ;;
      --cpus-per-node) cpus="$2"; shift 2 ;;
      --real-gpus) real=1; shift ;;
      *) usage ;;
    esac
  done
  if [[ -e "$DIR/env" ]]; then
    echo "local.sh: a cluster is already running from $DIR (stop it first)" >&2; exit 1
  fi
  if [[ $real == 1 ]]; then
    local have; have="$(nvidia-smi --list-gpus | wc -l)"
    if (( have < (workers + 1) * gpus )); then
      echo "local.sh: --real-gpus needs $(( (workers + 1) * gpus )) GPUs, this machine has $have" >&2
      exit 1
    fi
  fi
  # Ray gives a node 30 s to register with the head; on an overloaded machine that can pass.
  # Such a start is stopped in full and tried once more; any other failure ends it.
  local try rc
  for try in 1 2; do
    set +e
    (set -e; launch "$workers" "$gpus" "$cpus" "$real")
    rc=$?
    set -e
    [[ $rc == 0 ]] && return 0
    if [[ $try == 1 ]] && grep -qs "timed out during startup" "$DIR"/start-*.log; then
      echo "local.sh: a node did not register with the head within Ray's 30 s" \
           "(an overloaded machine?); stopping it all and starting once more" >&2
      stop >/dev/null
    else
      exit 1
    fi
  done
}

launch() {  # the nodes, head first, and the env file
  local workers=$1 gpus=$2 cpus=$3 real=$4
  mkdir -p "$DIR/ray"
  chmod 700 "$DIR"
  "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$DIR/auth_token"
  chmod 600 "$DIR/auth_token"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token"

  local head_ports; read -r -a head_ports <<<"$(free_ports 3)"
  local gcs="127.0.0.1:${head_ports[0]}" dashboard="http://127.0.0.1:${head_ports[2]}"
  for node in $(seq 0 "$workers"); do
    local visible=() role=()
    if [[ $real == 1 ]]; then
      visible=(env "CUDA_VISIBLE_DEVICES=$(seq -s, $(( node * gpus )) $(( node * gpus + gpus - 1 )))")
    fi
    if [[ $node == 0 ]]; then
      role=(--head "--port=${head_ports[0]}" "--ray-client-server-port=${head_ports[1]}"
            "--dashboard-port=${head_ports[2]}" --dashboard-host=127.0.0.1 --include-dashboard=true)
    else
      role=("--address=$gcs")
    fi
    # shellcheck disable=SC2046
    "${visible[@]}" ray start "${role[@]}" --temp-dir="$DIR/ray" --node-ip-address=127.0.0.1 \
      $(node_ports) --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats \
      > "$DIR/start-$node.log" 2>&1 || { cat "$DIR/start-$node.log" >&2; return 1; }
    echo "node $node started ($gpus $( [[ $real == 1 ]] && echo real || echo logical ) GPUs)"
  done
  cat > "$DIR/env" <<EOF
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$DIR/auth_token
export RAY_ADDRESS=$gcs
export RAY_API_SERVER_ADDRESS=$dashboard
EOF
  echo "cluster up: Ray at $gcs, dashboard and Ray Jobs at $dashboard"
  echo "use it:     source $DIR/env && lem-ray doctor && ray job submit -- lem-ray campaign"
}

status() {
  [[ -e "$DIR/env" ]] || { echo "local.sh: no cluster running from $DIR" >&2; exit 1; }
  # shellcheck disable=SC1091
  source "$DIR/env"
  ray status --address="$RAY_ADDRESS"
}

stop() {
  "$PYTHON" - "$DIR" <<'EOF'
import sys
import psutil

marker = sys.argv[1].rstrip("/") + "/"
me = psutil.Process()
spared = {me.pid, *(p.pid for p in me.parents())}
roots = [p for p in psutil.process_iter(["cmdline"])
         if p.pid not in spared and any(marker in a for a in p.info["cmdline"] or ())]
procs = {p.pid: p for p in roots}
for root in roots:
    try:
        procs.update({c.pid: c for c in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
for p in procs.values():
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
gone, alive = psutil.wait_procs(list(procs.values()), timeout=15)
for p in alive:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
print(f"stopped {len(procs)} processes of the cluster in {marker}")
EOF
  rm -rf "$DIR"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  status) status ;;
  stop) stop ;;
  *) usage ;;
esac
