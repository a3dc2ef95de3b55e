#!/usr/bin/env bash
# SIGTERM in the middle of K large downloads (MIB MiB each, half through a tunnel, half through
# the bump) from a real egress-edge process: every download must complete intact within
# proxy.shutdown_grace, new connections must be refused meanwhile, and the process must exit 0.
#   cargo build --release && sudo bench/soak/sigterm-download.sh [K] [MIB] [GRACE_S]
# Defaults: K=8, MIB=64, GRACE_S=30. Runs in a private network namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init sigterm-download "$@"
K=${1:-8}
MIB=${2:-64}
GRACE=${3:-30}
soak_pki up.test bump.test
soak_tunnel_bump_config "shutdown_grace: ${GRACE}s" info
soak_start_proxy
echo "sigterm-download: $K downloads of $MIB MiB, shutdown_grace ${GRACE}s, proxy pid $PID"
rc=0
python3 bench/soak/sigterm_download.py "$PID" "$PPORT" "$UPORT" "$W/state/ca.pem" "$W/pki" "$K" "$MIB" "$GRACE" || rc=1
status=0
wait "$PID" || status=$?
echo "proxy exit status: $status (want 0)"
grep -E 'shutting down|grace period over|stopped' "$W/proxy.log" | sed 's/^/  log: /' | cut -c1-200 || true
if [ "$rc" -ne 0 ] || [ "$status" -ne 0 ]; then
  echo "sigterm-download: FAILED"
  soak_proxy_log_tail
  exit 1
fi
echo "sigterm-download: ok"
