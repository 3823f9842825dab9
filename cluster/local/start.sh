#!/usr/bin/env bash
# Start a real two-node Ray cluster on this machine: a head node and one worker
# node, both driven by `ray start`, sharing one temp dir.
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
#   CAREGPT_RAY_CLIENT_PORT, CAREGPT_RAY_HEAD_AGENT_PORT, CAREGPT_RAY_WORKER_AGENT_PORT
#                                  fixed ports for Ray Client and the dashboard agents
#                                  (default: free ports picked at start)
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
client_port="${CAREGPT_RAY_CLIENT_PORT:-}"
head_agent_port="${CAREGPT_RAY_HEAD_AGENT_PORT:-}"
worker_agent_port="${CAREGPT_RAY_WORKER_AGENT_PORT:-}"

exec 3>&2   # the caller's stderr, for messages from traps
say() { echo "start.sh: $*"; }
die() { local code="$1"; shift; echo "start.sh: error: $*" >&2; exit "$code"; }

for pair in "CAREGPT_RAY_PORT=$port" "CAREGPT_DASHBOARD_PORT=$dash_port" \
            "CAREGPT_RAY_NUM_CPUS=$head_cpus" "CAREGPT_RAY_WORKER_NUM_CPUS=$worker_cpus" \
            "CAREGPT_RAY_OBJECT_STORE_BYTES=$store_bytes" "CAREGPT_RAY_START_TIMEOUT=$start_timeout" \
            "CAREGPT_RAY_CLIENT_PORT=${client_port:-0}" "CAREGPT_RAY_HEAD_AGENT_PORT=${head_agent_port:-0}" \
            "CAREGPT_RAY_WORKER_AGENT_PORT=${worker_agent_port:-0}"; do
  [[ "${pair#*=}" =~ ^[0-9]+$ ]] || die 64 "${pair%%=*} must be a non-negative integer, got '${pair#*=}'"
done
[[ "$port" != "$dash_port" ]] || die 64 "CAREGPT_RAY_PORT and CAREGPT_DASHBOARD_PORT must differ"

# --- which ray / python -------------------------------------------------------
if [[ -n "${RAY_BIN:-}" ]]; then
  ray_bin="$RAY_BIN"
elif [[ -x "$repo/.venv/bin/ray" ]]; then
  ray_bin="$repo/.venv/bin/ray"
else
  ray_bin="ray"
fi
if [[ "$ray_bin" != */* ]]; then
  ray_bin="$(command -v "$ray_bin" || true)"
fi
[[ -n "$ray_bin" && -x "$ray_bin" ]] \
  || die 64 "no 'ray' executable found (set RAY_BIN, or create $repo/.venv)"
ray_bin_dir="$(cd "$(dirname "$ray_bin")" && pwd)"
ray_bin="$ray_bin_dir/$(basename "$ray_bin")"
if [[ -x "$ray_bin_dir/python" ]]; then
  py="$ray_bin_dir/python"          # the interpreter that owns this ray install
else
  py="$(command -v python3 || true)"
  [[ -n "$py" ]] || die 64 "no python next to $ray_bin and no python3 on PATH"
fi

port_open() {  # port_open PORT -> 0 if something accepts TCP connections on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

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
rm -f "$state"/*.sid "$state/pids" "$state/token_generated" "$env_file"

# --- free ports for the pieces Ray would otherwise put on fixed defaults ------
# (Ray Client 10001 and the dashboard agent 52365 would collide with other
#  clusters on this machine and between our own two nodes.)
read -r client_ok p1 p2 p3 < <("$py" - <<'PY'
import socket
try:
    from ray._private.utils import get_ray_client_dependency_error
    ok = get_ray_client_dependency_error() is None
except Exception:
    ok = True
socks = []
for _ in range(3):
    s = socket.socket()
    s.bind(("", 0))
    socks.append(s)
print(int(ok), *(s.getsockname()[1] for s in socks))
PY
) || die 1 "could not run $py to pick free ports"
[[ -n "$client_port" ]] || client_port="$p1"
[[ -n "$head_agent_port" ]] || head_agent_port="$p2"
[[ -n "$worker_agent_port" ]] || worker_agent_port="$p3"

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
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS

# Run a command as the leader of a new session and record the session id: every
# process `ray start` spawns (gcs, raylet, dashboard, agents, workers) stays in
# that session, which is how stop.sh finds exactly this cluster.
new_session() {  # new_session SID_FILE CMD...
  "$py" -c '
import os, sys
sid_file, argv = sys.argv[1], sys.argv[2:]
if os.getpgrp() == os.getpid():      # a group leader cannot setsid(); fork first
    pid = os.fork()
    if pid:
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
os.setsid()
with open(sid_file, "w") as f:
    f.write(str(os.getsid(0)))
os.execv(argv[0], argv)
' "$@"
}

cleanup_failed_start() {
  CAREGPT_RAY_TMP="$tmp" RAY_BIN="$ray_bin" "$here/stop.sh" >/dev/null 2>&1 || true
}

# From here on, an interrupted or failed start takes down what it started.
trap 'echo "start.sh: interrupted; stopping what was started" >&3; cleanup_failed_start; exit 130' INT TERM

"$py" -c 'import time; print(time.time())' > "$state/started_at"
echo "$port" > "$state/port"
echo "$dash_port" > "$state/dashboard_port"

common_args=(--temp-dir "$tmp" --object-store-memory "$store_bytes"
             --min-worker-port 0 --max-worker-port 0 --disable-usage-stats
             --log-style record --log-color false)

head_args=(start --head --port "$port"
           --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dash_port"
           --dashboard-agent-listen-port "$head_agent_port"
           --num-cpus "$head_cpus" --resources '{"head_node": 1}' "${common_args[@]}")
if [[ "$client_ok" == 1 ]]; then
  head_args+=(--ray-client-server-port "$client_port")
fi

say "starting head node (GCS 127.0.0.1:$port, dashboard 127.0.0.1:$dash_port, $head_cpus CPUs, auth=$RAY_AUTH_MODE)"
if ! new_session "$state/head.sid" "$ray_bin" "${head_args[@]}" > "$state/head-start.log" 2>&1 3>&-; then
  tail -n 30 "$state/head-start.log" >&2 || true
  cleanup_failed_start
  die 1 "'ray start --head' failed; full log: $state/head-start.log"
fi

worker_args=(start --address "127.0.0.1:$port"
             --dashboard-agent-listen-port "$worker_agent_port"
             --num-cpus "$worker_cpus" --resources '{"worker_node": 1}'
             --include-log-monitor false "${common_args[@]}")

say "starting worker node ($worker_cpus CPUs, custom resource worker_node=1)"
if ! new_session "$state/worker.sid" "$ray_bin" "${worker_args[@]}" > "$state/worker-start.log" 2>&1 3>&-; then
  tail -n 30 "$state/worker-start.log" >&2 || true
  cleanup_failed_start
  die 1 "'ray start --address 127.0.0.1:$port' (worker node) failed; full log: $state/worker-start.log"
fi

# --- wait until both nodes are ALIVE (through the dashboard's state API) ------
say "waiting up to ${start_timeout}s for 2 alive nodes"
if ! "$py" - "http://127.0.0.1:$dash_port" "$start_timeout" "$state" <<'PY'
import glob, os, sys, time

url, timeout, state = sys.argv[1], float(sys.argv[2]), sys.argv[3]
from ray.util.state import list_nodes

deadline = time.time() + timeout
last = "no answer yet"
while True:
    try:
        nodes = list_nodes(address=url, filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False, timeout=5)
        heads = [n for n in nodes if n.is_head_node]
        workers = [n for n in nodes if n.resources_total.get("worker_node")]
        if heads and workers:
            break
        last = f"{len(nodes)} alive node(s): head={len(heads)} worker={len(workers)}"
    except Exception as exc:  # dashboard still booting, auth problems, ...
        last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if time.time() > deadline:
        print(f"timed out after {timeout:.0f}s waiting for the head and the worker "
              f"node to be ALIVE; last status: {last}", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)

# Record the processes of this cluster (informational; stop.sh re-scans).
try:
    import psutil
    sids = {int(open(p).read()) for p in glob.glob(os.path.join(state, "*.sid"))}
    with open(os.path.join(state, "pids"), "w") as f:
        for p in psutil.process_iter(["pid", "name"]):
            try:
                if os.getsid(p.pid) in sids:
                    f.write(f"{p.pid} {p.info['name']}\n")
            except OSError:
                pass
except Exception:
    pass
PY
then
  echo "--- head-start.log (tail) ---" >&2; tail -n 15 "$state/head-start.log" >&2 || true
  echo "--- worker-start.log (tail) ---" >&2; tail -n 15 "$state/worker-start.log" >&2 || true
  echo "--- Ray logs: $tmp/session_latest/logs ---" >&2
  cleanup_failed_start
  die 1 "the cluster did not come up within ${start_timeout}s (stopped what was started)"
fi

trap - INT TERM

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
} > "$env_file"

cat <<EOF

caregpt local Ray cluster is up: 2 nodes
  head node    : $head_cpus CPU, resource head_node=1
  worker node  : $worker_cpus CPU, resource worker_node=1
  address      : 127.0.0.1:$port        (ray.init(address=...), RAY_ADDRESS)
  dashboard    : http://127.0.0.1:$dash_port   (also the job/REST API)
  auth         : RAY_AUTH_MODE=$RAY_AUTH_MODE${token_file:+, token file $token_file}
  client env   : $env_file
  logs         : $tmp/session_latest/logs

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

Stop:
  CAREGPT_RAY_TMP=$tmp $here/stop.sh
EOF
