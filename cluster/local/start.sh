#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine: a head node and one worker
# node, both driven by `ray start`, sharing one temp dir; optionally more worker
# nodes (start_worker.sh) and GCS fault tolerance on an external Redis.
#
# Environment (all optional):
#   CAREGPT_RAY_PORT               GCS port of the head node            (6390)
#   CAREGPT_DASHBOARD_PORT         dashboard / job API port, 127.0.0.1  (8275)
#   CAREGPT_RAY_NUM_CPUS           logical CPUs of the head node        (2)
#   CAREGPT_RAY_WORKER_NUM_CPUS    logical CPUs of the worker node      (2)
#   CAREGPT_RAY_TMP                Ray --temp-dir and state dir         (/tmp/caregpt-ray)
#   CAREGPT_RAY_OBJECT_STORE_BYTES object store size per node           (2147483648)
#   CAREGPT_RAY_AUTH_MODE          token | disabled                     (token)
#   CAREGPT_RAY_START_TIMEOUT      seconds to wait for both nodes       (60)
#   CAREGPT_RAY_START_ATTEMPTS     tries per `ray start` that times out  (3)
#   CAREGPT_RAY_CLIENT_PORT, CAREGPT_RAY_HEAD_AGENT_PORT, CAREGPT_RAY_WORKER_AGENT_PORT
#                                  fixed ports for Ray Client and the dashboard agents
#                                  (default: free ports picked at start)
#   CAREGPT_RAY_METRICS_PORT, CAREGPT_RAY_WORKER_METRICS_PORT
#                                  Prometheus endpoints (`--metrics-export-port`) of the
#                                  head and the worker node (default: free ports)
#   CAREGPT_RAY_EXTRA_NODES        names of more worker nodes to add, e.g. "node_b": each
#                                  is started by start_worker.sh NAME (resource NAME=1)
#   CAREGPT_RAY_REDIS_ADDRESS      host:port of an external Redis: turns on GCS fault
#                                  tolerance (the head can be restarted, see restart_head.sh)
#   CAREGPT_RAY_REDIS_PASSWORD_FILE file holding that Redis' password (optional)
#   CAREGPT_RAY_GCS_RECONNECT_TIMEOUT_S  with Redis: how long nodes wait for a lost GCS (300)
#   RAY_BIN                        the `ray` executable (default: .venv/bin/ray, else PATH)
#   RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN
#                                  use this token instead of generating one (token mode)
#
# Exit codes: 0 up, 1 failed to start, 2 already running / port taken, 64 bad config.
# See cluster/local/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

port="${CAREGPT_RAY_PORT:-6390}"
dash_port="${CAREGPT_DASHBOARD_PORT:-8275}"
head_cpus="${CAREGPT_RAY_NUM_CPUS:-2}"
worker_cpus="${CAREGPT_RAY_WORKER_NUM_CPUS:-2}"
tmp="${CAREGPT_RAY_TMP:-/tmp/caregpt-ray}"
store_bytes="${CAREGPT_RAY_OBJECT_STORE_BYTES:-2147483648}"
auth_mode="${CAREGPT_RAY_AUTH_MODE:-token}"
start_timeout="${CAREGPT_RAY_START_TIMEOUT:-60}"
start_attempts="${CAREGPT_RAY_START_ATTEMPTS:-3}"
client_port="${CAREGPT_RAY_CLIENT_PORT:-}"
head_agent_port="${CAREGPT_RAY_HEAD_AGENT_PORT:-}"
worker_agent_port="${CAREGPT_RAY_WORKER_AGENT_PORT:-}"
head_metrics_port="${CAREGPT_RAY_METRICS_PORT:-}"
worker_metrics_port="${CAREGPT_RAY_WORKER_METRICS_PORT:-}"
extra_nodes="${CAREGPT_RAY_EXTRA_NODES:-}"
redis_address="${CAREGPT_RAY_REDIS_ADDRESS:-}"
redis_password_file="${CAREGPT_RAY_REDIS_PASSWORD_FILE:-}"
gcs_reconnect_s="${CAREGPT_RAY_GCS_RECONNECT_TIMEOUT_S:-300}"

exec 3>&2   # the caller's stderr, for messages from traps
say() { echo "start.sh: $*"; }
die() { local code="$1"; shift; echo "start.sh: error: $*" >&2; exit "$code"; }

for pair in "CAREGPT_RAY_PORT=$port" "CAREGPT_DASHBOARD_PORT=$dash_port" \
            "CAREGPT_RAY_NUM_CPUS=$head_cpus" "CAREGPT_RAY_WORKER_NUM_CPUS=$worker_cpus" \
            "CAREGPT_RAY_OBJECT_STORE_BYTES=$store_bytes" "CAREGPT_RAY_START_TIMEOUT=$start_timeout" \
            "CAREGPT_RAY_START_ATTEMPTS=$start_attempts" \
            "CAREGPT_RAY_CLIENT_PORT=${client_port:-0}" "CAREGPT_RAY_HEAD_AGENT_PORT=${head_agent_port:-0}" \
            "CAREGPT_RAY_WORKER_AGENT_PORT=${worker_agent_port:-0}" \
            "CAREGPT_RAY_METRICS_PORT=${head_metrics_port:-0}" \
            "CAREGPT_RAY_WORKER_METRICS_PORT=${worker_metrics_port:-0}" \
            "CAREGPT_RAY_GCS_RECONNECT_TIMEOUT_S=$gcs_reconnect_s"; do
  [[ "${pair#*=}" =~ ^[0-9]+$ ]] || die 64 "${pair%%=*} must be a non-negative integer, got '${pair#*=}'"
done
[[ "$port" != "$dash_port" ]] || die 64 "CAREGPT_RAY_PORT and CAREGPT_DASHBOARD_PORT must differ"
for name in $extra_nodes; do
  [[ "$name" =~ ^[A-Za-z][A-Za-z0-9_]{0,31}$ && ! "$name" =~ ^(head|worker)(_node)?$ ]] \
    || die 64 "CAREGPT_RAY_EXTRA_NODES: '$name' is not a valid node name (letters, digits, _; not head/worker)"
done
(( start_attempts >= 1 )) || die 64 "CAREGPT_RAY_START_ATTEMPTS must be at least 1"
if [[ -n "$redis_address" ]]; then
  [[ "$redis_address" =~ ^(redis://)?[A-Za-z0-9._-]+:[0-9]+$ ]] \
    || die 64 "CAREGPT_RAY_REDIS_ADDRESS must be host:port, got '$redis_address'"
fi
if [[ -n "$redis_password_file" ]]; then
  [[ -n "$redis_address" ]] || die 64 "CAREGPT_RAY_REDIS_PASSWORD_FILE needs CAREGPT_RAY_REDIS_ADDRESS"
  [[ -s "$redis_password_file" ]] || die 64 "CAREGPT_RAY_REDIS_PASSWORD_FILE=$redis_password_file is missing or empty"
fi

# --- which ray / python -------------------------------------------------------
# shellcheck source=lib.sh
source "$here/lib.sh"
resolve_ray

# --- already running? ---------------------------------------------------------
state="$tmp/caregpt-local"          # our bookkeeping (Ray never writes here)
env_file="$tmp/cluster.env"
if port_open "$port"; then
  if [[ -f "$state/head.sid" && "$(cat "$state/port" 2>/dev/null)" == "$port" ]]; then
    die 2 "a caregpt local Ray cluster is already running on 127.0.0.1:$port (temp dir $tmp).
  Use it:   source $env_file
  Stop it:  CAREGPT_RAY_TMP=$tmp $here/stop.sh"
  fi
  die 2 "127.0.0.1:$port already accepts connections: another Ray head (or another program) owns this port.
  Pick another port with CAREGPT_RAY_PORT=..., or stop that cluster with the tool that started it
  (do NOT run a bare 'ray stop': it kills every Ray process on this machine)."
fi
if port_open "$dash_port"; then
  die 2 "dashboard port 127.0.0.1:$dash_port is already in use; pick another with CAREGPT_DASHBOARD_PORT=..."
fi

# --- temp dir and state files -------------------------------------------------
mkdir -p "$tmp" || die 64 "cannot create CAREGPT_RAY_TMP=$tmp"
tmp="$(cd "$tmp" && pwd -P)"
state="$tmp/caregpt-local"
env_file="$tmp/cluster.env"
mkdir -p "$state"
touch "$state/.caregpt-local-cluster"
if (( ${#tmp} > 42 )); then
  # Ray puts unix sockets at <tmp>/session_<date>_<pid>/sockets/plasma_store.N and
  # AF_UNIX paths are limited to 107 bytes.
  say "warning: CAREGPT_RAY_TMP ($tmp) is long; Ray may fail with an AF_UNIX path length error"
fi

if compgen -G "$state/*.sid" >/dev/null; then
  # An earlier start from this temp dir: refuse while any of its processes live
  # (it may serve another port), otherwise clear its leftovers.
  live_sids="$(ps -e -o sid= | tr -d ' ' | sort -u)"
  for sid_file in "$state"/*.sid; do
    sid="$(cat "$sid_file" 2>/dev/null || true)"
    if [[ "$sid" =~ ^[0-9]+$ ]] && grep -qx "$sid" <<<"$live_sids"; then
      die 2 "a cluster started from $tmp (port $(cat "$state/port" 2>/dev/null || echo '?')) is still running.
  Stop it first:  CAREGPT_RAY_TMP=$tmp $here/stop.sh
  or use another CAREGPT_RAY_TMP for a second cluster."
    fi
  done
  say "clearing leftovers of an earlier cluster in $tmp"
  CAREGPT_RAY_TMP="$tmp" RAY_BIN="$ray_bin" "$here/stop.sh" >/dev/null 2>&1 || true
fi
rm -f "$state"/*.sid "$state"/*.args "$state/pids" "$state/token_generated" \
      "$state/node.env" "$state/nodes" "$state/redis_address" "$env_file"

# --- free ports for the pieces Ray would otherwise put on fixed defaults ------
# (Ray Client 10001 and the dashboard agent 52365 would collide with other
#  clusters on this machine and between our own two nodes; Ray would pick a
#  random metrics port, which Prometheus could not be pointed at in advance.)
read -r client_ok p1 p2 p3 p4 p5 p6 p7 p8 p9 p10 p11 < <("$py" - <<'PY'
import socket
try:
    from ray._private.utils import get_ray_client_dependency_error
    ok = get_ray_client_dependency_error() is None
except Exception:
    ok = True
socks = []
for _ in range(11):
    s = socket.socket()
    s.bind(("", 0))
    socks.append(s)
print(int(ok), *(s.getsockname()[1] for s in socks))
PY
) || die 1 "could not run $py to pick free ports"
[[ -n "$client_port" ]] || client_port="$p1"
[[ -n "$head_agent_port" ]] || head_agent_port="$p2"
[[ -n "$worker_agent_port" ]] || worker_agent_port="$p3"
[[ -n "$head_metrics_port" ]] || head_metrics_port="$p4"
[[ -n "$worker_metrics_port" ]] || worker_metrics_port="$p5"
# Fixed agent gRPC / runtime-env ports also keep each raylet from blocking on the
# agents' port files: Ray 2.60's raylet aborts when a slow agent (a loaded 2-core
# machine: imports alone can take 20 s) has not written them within ~20 s.
head_agent_ports=(--dashboard-agent-grpc-port "$p6" --runtime-env-agent-port "$p7")
worker_agent_ports=(--dashboard-agent-grpc-port "$p8" --runtime-env-agent-port "$p9")
# The dashboard's and the autoscaler's own Prometheus endpoints (Ray's fixed 44227 / 44217
# would collide between clusters, and Prometheus would scrape another cluster's numbers).
export DASHBOARD_METRIC_PORT="$p10" AUTOSCALER_METRIC_PORT="$p11"

# --- authentication -----------------------------------------------------------
# Ray 2.60 token auth: servers and clients read RAY_AUTH_MODE=token and the token
# from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
# `ray start --head` only turns auth on by itself when such a token already exists,
# so we decide explicitly and keep our token out of ~/.ray (other users' clusters).
case "$auth_mode" in
  token)
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
      [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || die 64 "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty"
      token_file="$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd -P)/$(basename "$RAY_AUTH_TOKEN_PATH")"
    else
      token_file="$tmp/auth_token"
      if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        (umask 077; printf '%s' "$RAY_AUTH_TOKEN" > "$token_file")
      else
        (umask 077; "$py" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' > "$token_file")
      fi
      touch "$state/token_generated"
    fi
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
    unset RAY_AUTH_TOKEN
    ;;
  disabled)
    export RAY_AUTH_MODE=disabled
    unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
    token_file=""
    ;;
  *) die 64 "CAREGPT_RAY_AUTH_MODE must be 'token' or 'disabled', got '$auth_mode'" ;;
esac

# --- environment inherited by every Ray process (and every job) ---------------
export PATH="$ray_bin_dir:$PATH"    # `python` in job entrypoints = the venv python
export RAY_USAGE_STATS_ENABLED=0
export CAREGPT_RAY_CLUSTER_TAG="$tmp"   # marker stop.sh can look for
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS RAY_REDIS_ADDRESS

# GCS fault tolerance: the head keeps cluster state in Redis; every node (and every
# worker process) waits up to gcs_reconnect_s for a lost GCS instead of Ray's 60 s,
# long enough for a head restart on a loaded laptop. The namespace keeps two clusters
# on one Redis apart and stays the same when the head restarts.
head_ft_args=()
if [[ -n "$redis_address" ]]; then
  export RAY_gcs_rpc_server_reconnect_timeout_s="$gcs_reconnect_s"
  export RAY_external_storage_namespace="caregpt-$port-$(printf '%s' "$tmp" | cksum | cut -d' ' -f1)"
  if [[ -n "$redis_password_file" ]]; then
    # Ray takes the password only as a flag: it shows in `ps` to users of this machine, and
    # state/head.args keeps it (mode 600) for restart_head.sh. Use a password for this cluster only.
    head_ft_args=(--redis-username default --redis-password "$(cat "$redis_password_file")")
  fi
fi

cleanup_failed_start() {
  CAREGPT_RAY_TMP="$tmp" RAY_BIN="$ray_bin" "$here/stop.sh" >/dev/null 2>&1 || true
}

# From here on, an interrupted or failed start takes down what it started.
trap 'echo "start.sh: interrupted; stopping what was started" >&3 2>/dev/null; cleanup_failed_start; exit 130' INT TERM HUP PIPE

"$py" -c 'import time; print(time.time())' > "$state/started_at"
echo "$port" > "$state/port"
echo "$dash_port" > "$state/dashboard_port"

common_args=(--temp-dir "$tmp" --object-store-memory "$store_bytes"
             --min-worker-port 0 --max-worker-port 0 --disable-usage-stats
             --log-style record --log-color false)

head_args=(start --head --port "$port"
           --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dash_port"
           --dashboard-agent-listen-port "$head_agent_port" "${head_agent_ports[@]}"
           --metrics-export-port "$head_metrics_port"
           --num-cpus "$head_cpus" --resources '{"head_node": 1}' "${common_args[@]}"
           ${head_ft_args[@]+"${head_ft_args[@]}"})
if [[ "$client_ok" == 1 ]]; then
  head_args+=(--ray-client-server-port "$client_port")
fi

# What start_worker.sh and restart_head.sh replay: the environment every node gets,
# the arguments common to all nodes, and the head's own (mode 600: the Redis password).
{
  echo "export PATH=$(printf '%q' "$PATH")"
  for var in RAY_USAGE_STATS_ENABLED CAREGPT_RAY_CLUSTER_TAG RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH \
             RAY_gcs_rpc_server_reconnect_timeout_s RAY_external_storage_namespace \
             DASHBOARD_METRIC_PORT AUTOSCALER_METRIC_PORT; do
    if [[ -n "${!var:-}" ]]; then echo "export $var=$(printf '%q' "${!var}")"; fi
  done
  echo "unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_API_SERVER_ADDRESS"
  if [[ "$RAY_AUTH_MODE" == disabled ]]; then echo "unset RAY_AUTH_TOKEN_PATH"; fi
} > "$state/node.env"
save_args "$state/common.args" "${common_args[@]}"
save_args "$state/head.args" "${head_args[@]}"
echo "$redis_address" > "$state/redis_address"
{
  echo "# name cpus resource metrics_port"
  echo "head $head_cpus head_node $head_metrics_port"
  echo "worker $worker_cpus worker_node $worker_metrics_port"
} > "$state/nodes"

say "starting head node (GCS 127.0.0.1:$port, dashboard 127.0.0.1:$dash_port, $head_cpus CPUs, auth=$RAY_AUTH_MODE${redis_address:+, GCS state in Redis $redis_address})"
# Only the head reads RAY_REDIS_ADDRESS (an empty value would not mean "unset" to every reader).
[[ -z "$redis_address" ]] || export RAY_REDIS_ADDRESS="$redis_address"
if ! start_node "$state/head.sid" "$state/head-start.log" "$start_attempts" "$ray_bin" "${head_args[@]}"; then
  tail -n 30 "$state/head-start.log" >&2 || true
  cleanup_failed_start
  die 1 "'ray start --head' failed; full log: $state/head-start.log"
fi

unset RAY_REDIS_ADDRESS

worker_args=(start --address "127.0.0.1:$port"
             --dashboard-agent-listen-port "$worker_agent_port" "${worker_agent_ports[@]}"
             --metrics-export-port "$worker_metrics_port"
             --num-cpus "$worker_cpus" --resources '{"worker_node": 1}'
             --include-log-monitor false "${common_args[@]}")

say "starting worker node ($worker_cpus CPUs, custom resource worker_node=1)"
if ! start_node "$state/worker.sid" "$state/worker-start.log" "$start_attempts" "$ray_bin" "${worker_args[@]}"; then
  tail -n 30 "$state/worker-start.log" >&2 || true
  cleanup_failed_start
  die 1 "'ray start --address 127.0.0.1:$port' (worker node) failed; full log: $state/worker-start.log"
fi

# --- wait until both nodes are ALIVE (through the dashboard's state API) ------
say "waiting up to ${start_timeout}s for 2 alive nodes"
if ! wait_for_nodes "http://127.0.0.1:$dash_port" "$start_timeout" "$state" worker_node
then
  echo "--- head-start.log (tail) ---" >&2; tail -n 15 "$state/head-start.log" >&2 || true
  echo "--- worker-start.log (tail) ---" >&2; tail -n 15 "$state/worker-start.log" >&2 || true
  echo "--- Ray logs: $tmp/session_latest/logs ---" >&2
  cleanup_failed_start
  die 1 "the cluster did not come up within ${start_timeout}s (stopped what was started)"
fi

# --- client env file ------------------------------------------------------------
{
  echo "# Written by cluster/local/start.sh on $(date -Is). Source it to use this cluster:"
  echo "#   source $env_file"
  echo "export RAY_ADDRESS=127.0.0.1:$port"
  echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dash_port"
  echo "export RAY_AUTH_MODE=$RAY_AUTH_MODE"
  echo "unset RAY_AUTH_TOKEN   # it would take precedence over RAY_AUTH_TOKEN_PATH"
  if [[ -n "$token_file" ]]; then
    echo "export RAY_AUTH_TOKEN_PATH=$token_file"
  fi
  echo "export CAREGPT_RAY_TMP=$tmp"
  echo "export CAREGPT_RAY_PORT=$port"
  echo "export CAREGPT_DASHBOARD_PORT=$dash_port"
  echo "export CAREGPT_RAY_DASHBOARD_URL=http://127.0.0.1:$dash_port"
  # Prometheus file_sd targets of every alive node, kept up to date by the head
  echo "export CAREGPT_RAY_PROMETHEUS_SD=$tmp/session_latest/prom_metrics_service_discovery.json"
} > "$env_file"

# --- more worker nodes ------------------------------------------------------------
for name in $extra_nodes; do
  if ! CAREGPT_RAY_TMP="$tmp" RAY_BIN="$ray_bin" CAREGPT_RAY_START_TIMEOUT="$start_timeout" \
       "$here/start_worker.sh" "$name" 3>&-; then
    cleanup_failed_start
    die 1 "could not add worker node '$name' (stopped the whole cluster)"
  fi
done
trap - INT TERM HUP PIPE

node_count=$(grep -vc '^#' "$state/nodes")
cat <<EOF

caregpt local Ray cluster is up: $node_count nodes
$(awk '!/^#/ { printf "  %-12s : %s CPU, resource %s=1, metrics http://127.0.0.1:%s/metrics\n", $1, $2, $3, $4 }' "$state/nodes")
  address      : 127.0.0.1:$port        (ray.init(address=...), RAY_ADDRESS)
  dashboard    : http://127.0.0.1:$dash_port   (also the job/REST API)
  auth         : RAY_AUTH_MODE=$RAY_AUTH_MODE${token_file:+, token file $token_file}
  client env   : $env_file
  logs         : $tmp/session_latest/logs
  GCS state    : ${redis_address:-in memory (no fault tolerance)}

Connect (the env file sets RAY_ADDRESS and the auth variables; set them before python starts):
  source $env_file
  python -c 'import ray; ray.init(); print(ray.cluster_resources())'

Submit a job:
  source $env_file
  ray job submit --address http://127.0.0.1:$dash_port --working-dir . -- python jobs/train.py --help
EOF
if [[ -n "$token_file" ]]; then
  echo "  (dashboard in a browser asks for the token: cat $token_file)"
fi
cat <<EOF

Add a worker node:  CAREGPT_RAY_TMP=$tmp $here/start_worker.sh node_b
Stop:               CAREGPT_RAY_TMP=$tmp $here/stop.sh
EOF
