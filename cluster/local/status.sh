#!/usr/bin/env bash
# Show the state of the local cluster started by cluster/local/start.sh in
# $CAREGPT_RAY_TMP (default /tmp/caregpt-ray): its nodes (start_worker.sh ones
# included), their processes and `ray status`.
# Exit code: 0 running, 3 not running.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tmp="${CAREGPT_RAY_TMP:-/tmp/caregpt-ray}"
state="$tmp/caregpt-local"
env_file="$tmp/cluster.env"

if [[ -n "${RAY_BIN:-}" ]]; then
  ray_bin="$RAY_BIN"
elif [[ -x "$repo/.venv/bin/ray" ]]; then
  ray_bin="$repo/.venv/bin/ray"
else
  ray_bin="$(command -v ray || echo ray)"
fi

if ! compgen -G "$state/*.sid" >/dev/null || [[ ! -f "$env_file" ]]; then
  echo "status.sh: no cluster started from $tmp (start one with $here/start.sh)"
  exit 3
fi

live_sids="$(ps -e -o sid= | tr -d ' ' | sort -u)"
sids=()
for f in "$state"/*.sid; do
  sid="$(cat "$f")"
  grep -qx "$sid" <<<"$live_sids" && sids+=("$sid")
done
if (( ${#sids[@]} == 0 )); then
  echo "status.sh: the cluster started from $tmp is not running any more (clean up: $here/stop.sh)"
  exit 3
fi

echo "== environment ($env_file)"
grep '^export' "$env_file"
echo
if [[ -f "$state/nodes" ]]; then
  echo "== nodes (started by start.sh / start_worker.sh)"
  awk '!/^#/ { printf "%-12s %s CPU, resource %s, metrics http://127.0.0.1:%s/metrics\n", $1, $2, $3, $4 }' "$state/nodes"
  redis="$(cat "$state/redis_address" 2>/dev/null || true)"
  echo "GCS state: ${redis:-in memory (no fault tolerance)}"
  echo
fi
echo "== processes (sessions ${sids[*]})"
ps -e -o pid=,sid=,etime=,comm= | awk -v s=" ${sids[*]} " 'index(s, " " $2 " ") { print }'
echo
echo "== ray status"
# shellcheck disable=SC1090
( source "$env_file"; "$ray_bin" status --address "$RAY_ADDRESS" )
