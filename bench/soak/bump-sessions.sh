#!/usr/bin/env bash
# N concurrent bump sessions (CONNECT, TLS with a minted leaf, one request each, then held
# open) against a real egress-edge process and a local TLS upstream whose CA the proxy trusts
# through upstream.extra_roots: RSS idle / all open / peak / after the sessions end, failures,
# and the check that each idle session is cut at proxy.idle_timeout after its request.
#   cargo build --release && sudo bench/soak/bump-sessions.sh [N] [IDLE_S] [WAVES]
# Defaults: N=2000, IDLE_S=30 (long enough for every session to be open before the first
# is cut), WAVES=2. Runs in a private network namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init bump-sessions "$@"
N=${1:-2000}
IDLE=${2:-30}
WAVES=${3:-2}
MAXN=$(( ($(ulimit -Hn) - 300) / 3 ))
if [ "$N" -gt "$MAXN" ]; then
  echo "bump-sessions: RLIMIT_NOFILE $(ulimit -Hn) fits $MAXN sessions, not $N: using $MAXN" >&2
  N=$MAXN
fi
soak_pki bump.test
cat > "$W/config.yaml" <<CONF
proxy: { listen: 127.0.0.1:$PPORT, max_connections: $((N + 1000)), idle_timeout: ${IDLE}s }
admin: { listen: 127.0.0.1:$APORT }
log: { level: warn }
state_dir: $W/state
upstream: { extra_roots: [$W/pki/ca.pem] }
network: { allow: [127.0.0.1/32], hosts: { bump.test: 127.0.0.1 } }
destinations:
  - { host: bump.test, ports: [$UPORT], rung: bump }
CONF
soak_start_proxy
echo "bump-sessions: N=$N idle_timeout=${IDLE}s, $WAVES waves, proxy pid $PID"
python3 bench/soak/bump_sessions.py "$PID" "$PPORT" "$APORT" "$UPORT" "$W/state/ca.pem" "$W/pki" "$N" "$IDLE" "$WAVES" \
  || { soak_proxy_log_tail; exit 1; }
