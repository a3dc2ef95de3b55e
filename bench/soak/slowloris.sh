#!/usr/bin/env bash
# N slowloris connections (a CONNECT head trickled one byte a second, never finished) against
# a real egress-edge process: every one must be cut at proxy.header_read_timeout, while a
# normal client (tunnel and bump, a new connection per request) keeps working with 0 failures.
#   cargo build --release && sudo bench/soak/slowloris.sh [N] [TIMEOUT_S]
# Defaults: N=2000, TIMEOUT_S=5. Runs in a private network namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init slowloris "$@"
N=${1:-2000}
TIMEOUT=${2:-5}
soak_pki up.test bump.test
soak_tunnel_bump_config "max_connections: $((N + 1000)), header_read_timeout: ${TIMEOUT}s"
soak_start_proxy
echo "slowloris: N=$N header_read_timeout=${TIMEOUT}s, proxy pid $PID"
python3 bench/soak/slowloris.py "$PID" "$PPORT" "$APORT" "$UPORT" "$W/state/ca.pem" "$W/pki" "$N" "$TIMEOUT" \
  || { soak_proxy_log_tail; exit 1; }
