# Helpers shared by start.sh, start_worker.sh and restart_head.sh (sourced, not run).
#
# The callers set `here` (this directory) and `repo` before sourcing, and define say/die.
# Everything here is about running `ray start` so that stop.sh can later find exactly
# the processes it created: each node runs in its own session, recorded in a *.sid file.

# resolve_ray: sets ray_bin (absolute), ray_bin_dir and py (the interpreter that owns
# that Ray install, so helper snippets can `import ray`).
resolve_ray() {
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
    py="$ray_bin_dir/python"
  else
    py="$(command -v python3 || true)"
    [[ -n "$py" ]] || die 64 "no python next to $ray_bin and no python3 on PATH"
  fi
}

port_open() {  # port_open PORT -> 0 if something accepts TCP connections on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

free_ports() {  # free_ports N -> N currently free TCP ports on one line
  "$py" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
}

# Run a command as the leader of a new session and record the session id: every
# process `ray start` spawns (gcs, raylet, dashboard, agents, workers) stays in
# that session, which is how stop.sh (and restart_head.sh) find exactly this node.
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

# wait_for_nodes DASH_URL TIMEOUT_S STATE_DIR RESOURCE...
# Waits until the head and, for each RESOURCE, a node offering that custom resource are
# ALIVE (asked through the dashboard's state API, with the auth env already exported),
# then refreshes STATE_DIR/pids. Exit 1 with the last status on timeout.
wait_for_nodes() {
  "$py" - "$@" <<'PY'
import glob, os, sys, time

url, timeout, state, wanted = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
from ray.util.state import list_nodes

deadline = time.time() + timeout
last = "no answer yet"
while True:
    try:
        nodes = list_nodes(address=url, filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False, timeout=5)
        heads = [n for n in nodes if n.is_head_node]
        missing = [r for r in wanted if not any(n.resources_total.get(r) for n in nodes)]
        if heads and not missing:
            break
        last = f"{len(nodes)} alive node(s), head={len(heads)}, missing resources: {missing}"
    except Exception as exc:  # dashboard still booting, auth problems, ...
        last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if time.time() > deadline:
        print(f"timed out after {timeout:.0f}s waiting for the head and nodes with "
              f"{wanted} to be ALIVE; last status: {last}", file=sys.stderr)
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
}

# save_args FILE ARG... : one argument per line, so a later script can replay a `ray start`.
save_args() {
  local file="$1"; shift
  (umask 077; printf '%s\n' "$@" > "$file")
}

# kill_session SID_FILE term|kill GRACE_S : signal every process of one node's session
# (recorded by new_session) that was created after the cluster's recorded start time,
# and wait for them; `kill` is SIGKILL at once (a crash), `term` escalates after GRACE_S.
# Prints how many processes it signalled; exit 1 if some survived.
kill_session() {
  "$py" - "$@" <<'PY'
import os, sys
import psutil

sid_file, mode, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
state = os.path.dirname(sid_file)
try:
    sid = int(open(sid_file).read().strip())
except (OSError, ValueError):
    print(0)
    sys.exit(0)
try:
    started_at = float(open(os.path.join(state, "started_at")).read().strip())
except (OSError, ValueError):
    started_at = None
protected = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
procs = []
for p in psutil.process_iter():
    try:
        if p.pid in protected or os.getsid(p.pid) != sid or p.status() == psutil.STATUS_ZOMBIE:
            continue
        if started_at is None or p.create_time() >= started_at - 2:  # recycled session ids
            procs.append(p)
    except (OSError, psutil.Error):
        pass
for p in procs:
    try:
        p.kill() if mode == "kill" else p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(procs, timeout=grace if mode == "term" else 5)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(alive, timeout=5)
print(len(procs))
sys.exit(1 if alive else 0)
PY
}

# start_node SID_FILE LOG ATTEMPTS CMD... : run one `ray start` in a new session; retry
# (after killing what the failed attempt left) only when Ray reports the node "timed
# out during startup". On a loaded machine that is the raylet aborting because its
# dashboard agent wrote its port files after Ray 2.60's fixed ~15 s wait; a second try
# usually wins the race. Any other failure returns 1 at once.
start_node() {
  local sid_file="$1" log="$2" attempts="$3" i
  shift 3
  for ((i = 1; i <= attempts; i++)); do
    if new_session "$sid_file" "$@" > "$log" 2>&1 3>&-; then
      return 0
    fi
    if (( i < attempts )) && grep -q "timed out during startup" "$log"; then
      echo "ray start timed out during startup (attempt $i/$attempts, see $log.$i); retrying"
      kill_session "$sid_file" kill 0 > /dev/null || true
      mv -f "$log" "$log.$i"
      continue
    fi
    return 1
  done
  return 1
}
