#!/usr/bin/env bash
# Overload of a real egress-edge process: proxy.max_connections M held by M idle tunnels, then
# K more connections must each get 503 proxy_overloaded quickly (p50/p99 of the refusal), and
# once the holders close, new connections must work again (time to recovery, M new requests).
#   cargo build --release && sudo bench/soak/overload.sh [M] [K]
# Defaults: M=1000, K=1000. Runs in a private network namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init overload "$@"
M=${1:-1000}
K=${2:-1000}
SILENT=$((UPORT + 1))
soak_pki up.test
cat > "$W/config.yaml" <<CONF
proxy: { listen: 127.0.0.1:$PPORT, max_connections: $M }
admin: { listen: 127.0.0.1:$APORT }
log: { level: warn }
state_dir: $W/state
network: { allow: [127.0.0.1/32], hosts: { up.test: 127.0.0.1 } }
destinations:
  - { host: up.test, ports: [$UPORT, $SILENT] }
CONF
soak_start_proxy
echo "overload: max_connections M=$M, K=$K over it, proxy pid $PID"
python3 bench/soak/overload.py "$PID" "$PPORT" "$APORT" "$UPORT" "$SILENT" "$W/pki" "$M" "$K" \
  || { soak_proxy_log_tail; exit 1; }
