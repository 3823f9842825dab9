#!/usr/bin/env bash
# Stop exactly the Ray cluster that cluster/local/start.sh started in
# $CAREGPT_RAY_TMP (default /tmp/caregpt-ray), and nothing else: the head, the
# worker node and every node start_worker.sh added (each has its *.sid file).
#
# `ray stop` cannot be used: in Ray 2.60 it has no address/temp-dir scope and kills
# every raylet/gcs_server/dashboard of the current user on the machine.
#
# How processes are found (all of them, before any is signalled):
#   1. every process in the sessions recorded by start.sh / start_worker.sh /
#      restart_head.sh ($tmp/caregpt-local/*.sid, each `ray start` runs with setsid)
#      created after the recorded start;
#   2. every process whose environment carries CAREGPT_RAY_CLUSTER_TAG=$tmp
#      (start.sh exports it; Ray processes inherit it);
#   3. every Ray process whose command line points into $tmp/session_* ;
#   plus all descendants of those.
# Then: SIGTERM raylets, then the rest, then gcs_server (the order `ray stop` uses),
# SIGKILL whatever outlives the grace period, re-scan, repeat.
#
# Usage: stop.sh [--purge]     --purge also deletes $CAREGPT_RAY_TMP (logs included)
# Environment: CAREGPT_RAY_TMP, CAREGPT_RAY_STOP_GRACE (seconds, default 10), RAY_BIN.
# Safe to run twice; exits 0 when nothing is left running.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tmp="${CAREGPT_RAY_TMP:-/tmp/caregpt-ray}"
grace="${CAREGPT_RAY_STOP_GRACE:-10}"
purge=0
for arg in "$@"; do
  case "$arg" in
    --purge) purge=1 ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "stop.sh: unknown argument '$arg'" >&2; exit 64 ;;
  esac
done
[[ "$grace" =~ ^[0-9]+$ ]] || { echo "stop.sh: CAREGPT_RAY_STOP_GRACE must be an integer" >&2; exit 64; }

if [[ ! -d "$tmp" ]]; then
  echo "stop.sh: $tmp does not exist; nothing to stop"
  exit 0
fi
tmp="$(cd "$tmp" && pwd -P)"
state="$tmp/caregpt-local"

# python with psutil: the one that owns the ray install (psutil ships with ray)
if [[ -n "${RAY_BIN:-}" ]]; then
  ray_bin="$RAY_BIN"
elif [[ -x "$repo/.venv/bin/ray" ]]; then
  ray_bin="$repo/.venv/bin/ray"
else
  ray_bin="$(command -v ray || true)"
fi
[[ -z "$ray_bin" || "$ray_bin" == */* ]] || ray_bin="$(command -v "$ray_bin" || true)"
py=""
if [[ -n "$ray_bin" && -x "$(dirname "$ray_bin")/python" ]]; then
  py="$(dirname "$ray_bin")/python"
else
  py="$(command -v python3 || true)"
fi
[[ -n "$py" ]] || { echo "stop.sh: no python found" >&2; exit 1; }

"$py" - "$tmp" "$grace" <<'PY'
import glob
import os
import sys
import time

try:
    import psutil
except ImportError:
    sys.exit("stop.sh: psutil is required (it is installed with ray)")

tmp, grace = sys.argv[1], float(sys.argv[2])
state = os.path.join(tmp, "caregpt-local")

sids = set()
for path in glob.glob(os.path.join(state, "*.sid")):
    try:
        sids.add(int(open(path).read().strip()))
    except (OSError, ValueError):
        pass
try:
    started_at = float(open(os.path.join(state, "started_at")).read().strip())
except (OSError, ValueError):
    started_at = None

# Never signal ourselves or whoever called us.
protected = {os.getpid()}
try:
    protected.update(p.pid for p in psutil.Process().parents())
except psutil.Error:
    pass

session_marker = f"={tmp}/session_"
dir_args = {f"--temp-dir={tmp}", f"--temp_dir={tmp}"}


def is_ours(p):
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if sids:
            try:
                sid = os.getsid(p.pid)
            except OSError:
                sid = None
            # the time check guards against a recycled session id
            if sid in sids and (started_at is None or p.create_time() >= started_at - 2):
                return True
        try:
            if p.environ().get("CAREGPT_RAY_CLUSTER_TAG") == tmp:
                return True
        except (psutil.AccessDenied, psutil.ZombieProcess):
            pass
        return any(session_marker in a or a in dir_args for a in p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def scan():
    found = {}
    for p in psutil.process_iter():
        if p.pid not in protected and is_ours(p):
            found[p.pid] = p
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                if c.pid not in protected:
                    found.setdefault(c.pid, c)
        except psutil.Error:
            pass
    alive = []
    for p in found.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def name(p):
    try:
        return p.name()
    except psutil.Error:
        return "?"


def signal_and_wait(procs, timeout):
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


total = 0
for round_ in range(3):
    procs = scan()
    if not procs:
        break
    total += len(procs)
    raylets = [p for p in procs if name(p) == "raylet"]
    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = [p for p in procs if p not in raylets and p not in gcs]
    leftovers = []
    for bucket in (raylets, rest, gcs):
        if bucket:
            leftovers += signal_and_wait(bucket, grace)
    for p in leftovers:
        try:
            p.kill()
        except psutil.Error:
            pass
    if leftovers:
        psutil.wait_procs(leftovers, timeout=3)
        print(f"stop.sh: {len(leftovers)} process(es) needed SIGKILL")

remaining = scan()
if remaining:
    desc = ", ".join(f"{p.pid}({name(p)})" for p in remaining)
    sys.exit(f"stop.sh: could not stop: {desc}")
if total:
    print(f"stop.sh: stopped {total} Ray process(es) of the cluster in {tmp}")
else:
    print(f"stop.sh: no running cluster processes for {tmp}")
PY

# Bookkeeping: nothing of ours runs any more.
if [[ -f "$state/token_generated" ]]; then
  rm -f "$tmp/auth_token"
fi
rm -f "$tmp/cluster.env" "$state"/*.sid "$state/started_at" "$state/pids" \
      "$state/token_generated" "$state/port" "$state/dashboard_port" \
      "$state"/*.args "$state/node.env" "$state/nodes" "$state/redis_address"

if (( purge )); then
  if [[ -f "$state/.caregpt-local-cluster" ]]; then
    rm -rf -- "$tmp"
    echo "stop.sh: removed $tmp"
  else
    echo "stop.sh: not purging $tmp: it was not created by cluster/local/start.sh" >&2
  fi
fi
