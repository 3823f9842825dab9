#!/usr/bin/env bash
# Head-node failure drill for a local cluster started with GCS fault tolerance
# (start.sh with CAREGPT_RAY_REDIS_ADDRESS): kill every process of the head node at
# once, as a crash or an OOM kill would, then start the head again with exactly the
# arguments start.sh used. The new GCS reloads the cluster state from Redis and the
# worker nodes, which kept running, reconnect to it.
#
# Usage: restart_head.sh [kill|start|both]     (default: both)
#   kill   SIGKILL the head node's processes (GCS, raylet, dashboard, Serve controller,
#          the head's Serve proxy, ...); the worker nodes are not touched
#   start  start the head again and wait until it and every recorded node are ALIVE
#
# Environment: CAREGPT_RAY_TMP (/tmp/caregpt-ray), CAREGPT_RAY_START_TIMEOUT (120), RAY_BIN.
# Exit codes: 0 done, 1 failed, 2 no such cluster, 64 bad usage or no GCS fault tolerance.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
say() { echo "restart_head.sh: $*"; }
die() { local code="$1"; shift; echo "restart_head.sh: error: $*" >&2; exit "$code"; }

action="${1:-both}"
case "$action" in kill|start|both) ;; *) die 64 "usage: restart_head.sh [kill|start|both]" ;; esac
tmp="${CAREGPT_RAY_TMP:-/tmp/caregpt-ray}"
start_timeout="${CAREGPT_RAY_START_TIMEOUT:-120}"
[[ "$start_timeout" =~ ^[0-9]+$ ]] || die 64 "CAREGPT_RAY_START_TIMEOUT must be an integer"

[[ -d "$tmp" ]] || die 2 "no cluster in $tmp"
tmp="$(cd "$tmp" && pwd -P)"
state="$tmp/caregpt-local"
for f in head.sid head.args node.env nodes port dashboard_port redis_address; do
  [[ -f "$state/$f" ]] || die 2 "no cluster started by start.sh in $tmp (missing $state/$f)"
done
redis_address="$(cat "$state/redis_address")"
# Without Redis the restarted head would be a brand-new cluster: the worker nodes would
# be treated as unknown and shut down, and every actor, job and Serve app would be lost.
[[ -n "$redis_address" ]] || die 64 "the cluster in $tmp runs without GCS fault tolerance;
  start it with CAREGPT_RAY_REDIS_ADDRESS=host:port (see cluster/README.md) to survive a head restart"

# shellcheck source=lib.sh
source "$here/lib.sh"
resolve_ray
port="$(cat "$state/port")"
dash_port="$(cat "$state/dashboard_port")"

if [[ "$action" != start ]]; then
  n="$(kill_session "$state/head.sid" kill 0)" || die 1 "some head processes survived SIGKILL"
  say "killed the head node ($n processes); GCS 127.0.0.1:$port is down, worker nodes keep running"
fi

if [[ "$action" != kill ]]; then
  if port_open "$port"; then
    die 2 "127.0.0.1:$port already accepts connections: the head is running (kill it first)"
  fi
  # shellcheck disable=SC1091
  source "$state/node.env"
  mapfile -t head_args < "$state/head.args"
  # `ray start --head` refuses to start when the address last started from this temp
  # dir ($tmp/ray_current_cluster) appears in a local raylet's command line. On one
  # machine the surviving worker raylets carry it; on a real cluster they live on
  # other machines. The file is only that "last cluster started here" record, and
  # the new head writes it again.
  rm -f "$tmp/ray_current_cluster"
  export RAY_REDIS_ADDRESS="$redis_address"
  say "starting the head again (state from Redis $redis_address)"
  if ! start_node "$state/head.sid" "$state/head-restart.log" "${CAREGPT_RAY_START_ATTEMPTS:-3}" \
       "$ray_bin" "${head_args[@]}"; then
    tail -n 30 "$state/head-restart.log" >&2 || true
    die 1 "'ray start --head' failed; full log: $state/head-restart.log"
  fi
  unset RAY_REDIS_ADDRESS
  mapfile -t wanted < <(awk '!/^#/ && $3 != "head_node" && $3 != "-" { print $3 }' "$state/nodes")
  if ! wait_for_nodes "http://127.0.0.1:$dash_port" "$start_timeout" "$state" ${wanted[@]+"${wanted[@]}"}; then
    tail -n 15 "$state/head-restart.log" >&2 || true
    die 1 "the head or a worker node is not ALIVE ${start_timeout}s after the restart"
  fi
  say "head is back; nodes alive again: head ${wanted[*]}"
fi
