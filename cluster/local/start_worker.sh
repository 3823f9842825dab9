#!/usr/bin/env bash
# Add one more worker node to the local cluster that start.sh started in
# $CAREGPT_RAY_TMP: a separate `ray start --address ...` (own raylet, object store,
# dashboard agent and Prometheus port) with its own custom resource NAME=1, joined
# with the same token auth. stop.sh and status.sh pick it up like the others.
#
# Usage: start_worker.sh NAME          e.g. start_worker.sh node_b
#
# Environment (all optional):
#   CAREGPT_RAY_TMP                 the running cluster's temp dir       (/tmp/caregpt-ray)
#   CAREGPT_RAY_NODE_NUM_CPUS       logical CPUs of the new node         (2)
#   CAREGPT_RAY_NODE_RESOURCES      custom resources as JSON             ({"NAME": 1})
#   CAREGPT_RAY_NODE_METRICS_PORT   its `--metrics-export-port`          (a free port)
#   CAREGPT_RAY_START_TIMEOUT       seconds to wait for it to be ALIVE   (60)
#   RAY_BIN                         the `ray` executable
#
# Exit codes: 0 up, 1 failed (what it started is stopped again), 2 no cluster or
# the name is taken, 64 bad arguments.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
say() { echo "start_worker.sh: $*"; }
die() { local code="$1"; shift; echo "start_worker.sh: error: $*" >&2; exit "$code"; }

name="${1:-}"
[[ $# -eq 1 && "$name" =~ ^[A-Za-z][A-Za-z0-9_]{0,31}$ ]] \
  || die 64 "usage: start_worker.sh NAME   (NAME: letters, digits, _; it becomes the node's custom resource)"
case "$name" in head|worker|head_node|worker_node) die 64 "'$name' is reserved for the nodes start.sh starts" ;; esac

tmp="${CAREGPT_RAY_TMP:-/tmp/caregpt-ray}"
cpus="${CAREGPT_RAY_NODE_NUM_CPUS:-2}"
resources="${CAREGPT_RAY_NODE_RESOURCES:-{\"$name\": 1\}}"
metrics_port="${CAREGPT_RAY_NODE_METRICS_PORT:-}"
start_timeout="${CAREGPT_RAY_START_TIMEOUT:-60}"
for pair in "CAREGPT_RAY_NODE_NUM_CPUS=$cpus" "CAREGPT_RAY_NODE_METRICS_PORT=${metrics_port:-0}" \
            "CAREGPT_RAY_START_TIMEOUT=$start_timeout"; do
  [[ "${pair#*=}" =~ ^[0-9]+$ ]] || die 64 "${pair%%=*} must be a non-negative integer, got '${pair#*=}'"
done

[[ -d "$tmp" ]] || die 2 "no cluster in $tmp (start one with $here/start.sh)"
tmp="$(cd "$tmp" && pwd -P)"
state="$tmp/caregpt-local"
for f in head.sid node.env common.args port dashboard_port nodes; do
  [[ -f "$state/$f" ]] || die 2 "no cluster started by start.sh in $tmp (missing $state/$f)"
done
[[ ! -f "$state/$name.sid" ]] || die 2 "a node named '$name' was already started in $tmp (stop.sh stops the whole cluster)"

# shellcheck source=lib.sh
source "$here/lib.sh"
resolve_ray
"$py" -c 'import json, sys; r = json.loads(sys.argv[1]); assert isinstance(r, dict) and all(
    isinstance(v, (int, float)) and v >= 0 for v in r.values())' "$resources" 2>/dev/null \
  || die 64 "CAREGPT_RAY_NODE_RESOURCES must be a JSON object of non-negative numbers, got '$resources'"
first_resource="$("$py" -c 'import json, sys; print(next(iter(json.loads(sys.argv[1])), ""))' "$resources")"

port="$(cat "$state/port")"
dash_port="$(cat "$state/dashboard_port")"
port_open "$port" || die 2 "the cluster's GCS (127.0.0.1:$port) does not answer; is it running? ($here/status.sh)"

# The same environment every node of this cluster got from start.sh (auth token,
# marker for stop.sh, GCS reconnect timeout), so the node joins and is found again.
# shellcheck disable=SC1091
source "$state/node.env"
mapfile -t common_args < "$state/common.args"

# Every agent port fixed: the raylet then does not block on the agents' port files,
# which a slow agent on a loaded machine may write too late (see start.sh).
read -r agent_port p2 grpc_port env_agent_port < <(free_ports 4) || die 1 "could not run $py to pick free ports"
[[ -n "$metrics_port" ]] || metrics_port="$p2"

args=(start --address "127.0.0.1:$port"
      --dashboard-agent-listen-port "$agent_port" --dashboard-agent-grpc-port "$grpc_port"
      --runtime-env-agent-port "$env_agent_port"
      --metrics-export-port "$metrics_port"
      --num-cpus "$cpus" --resources "$resources"
      --include-log-monitor false "${common_args[@]}")

stop_this_node() {  # only the processes of this node's session
  kill_session "$state/$name.sid" term 10 || true
  rm -f "$state/$name.sid"
}

# From here on, an interrupted start takes down what it started (this node only).
trap 'echo "start_worker.sh: interrupted; stopping node $name" >&2 2>/dev/null; stop_this_node; exit 130' INT TERM HUP PIPE

say "starting worker node '$name' ($cpus CPUs, resources $resources, metrics port $metrics_port)"
if ! start_node "$state/$name.sid" "$state/$name-start.log" "${CAREGPT_RAY_START_ATTEMPTS:-3}" "$ray_bin" "${args[@]}"; then
  tail -n 30 "$state/$name-start.log" >&2 || true
  stop_this_node
  die 1 "'ray start --address 127.0.0.1:$port' (node $name) failed; full log: $state/$name-start.log"
fi
save_args "$state/$name.args" "${args[@]}"

wanted=()
[[ -z "$first_resource" ]] || wanted=("$first_resource")
if ! wait_for_nodes "http://127.0.0.1:$dash_port" "$start_timeout" "$state" ${wanted[@]+"${wanted[@]}"}; then
  tail -n 15 "$state/$name-start.log" >&2 || true
  stop_this_node
  die 1 "node '$name' did not come up within ${start_timeout}s (stopped it again)"
fi
echo "$name $cpus ${first_resource:--} $metrics_port" >> "$state/nodes"
trap - INT TERM HUP PIPE
say "node '$name' is up: ${cpus} CPU, resources $resources, metrics http://127.0.0.1:$metrics_port/metrics"
