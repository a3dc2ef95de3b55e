#!/usr/bin/env bash
# The upstream killed under load: continuous requests through a tunnel (up.test) and the bump
# (bump.test, new sessions and keep-alive sessions) while the upstream process is killed for
# OUTAGE_S seconds and restarted on the same port. Failures during the outage must be clean
# refusals (502 upstream_connect); prints their counts and the time to recover after restart.
#   cargo build --release && sudo bench/soak/upstream-kill.sh [OUTAGE_S] [WORKERS]
# Defaults: OUTAGE_S=5, WORKERS=3 per kind of client. Runs in a private network namespace
# (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init upstream-kill "$@"
OUTAGE=${1:-5}
WORKERS=${2:-3}
soak_pki up.test bump.test
soak_tunnel_bump_config ""
soak_start_proxy
echo "upstream-kill: outage ${OUTAGE}s, $WORKERS workers per kind, proxy pid $PID"
python3 bench/soak/upstream_kill.py "$PID" "$PPORT" "$APORT" "$UPORT" "$W/state/ca.pem" "$W/pki" "$OUTAGE" "$WORKERS" \
  || { soak_proxy_log_tail; exit 1; }
