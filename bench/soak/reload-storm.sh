#!/usr/bin/env bash
# A reload storm under load: the config of a real egress-edge process rewritten RELOADS times,
# one every INTERVAL_S seconds (renamed into place, then SIGHUP), alternating between two
# valid configs, while tunnel and bump clients run continuously. Counts failed requests
# (expected 0) and egress_edge_config_reloads_total{result="ok"}.
#   cargo build --release && sudo bench/soak/reload-storm.sh [RELOADS] [INTERVAL_S] [WORKERS]
# Defaults: RELOADS=60, INTERVAL_S=0.5, WORKERS=2 per kind. Runs in a private network
# namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init reload-storm "$@"
RELOADS=${1:-60}
INTERVAL=${2:-0.5}
WORKERS=${3:-2}
soak_pki up.test bump.test other.test
config() { # config OTHER_RUNG IDLE
  cat <<CONF
proxy: { listen: 127.0.0.1:$PPORT, idle_timeout: $2 }
admin: { listen: 127.0.0.1:$APORT }
log: { level: warn }
state_dir: $W/state
upstream: { extra_roots: [$W/pki/ca.pem] }
network: { allow: [127.0.0.1/32], hosts: { up.test: 127.0.0.1, bump.test: 127.0.0.1, other.test: 127.0.0.1 } }
destinations:
  - { host: up.test, ports: [$UPORT] }
  - { host: bump.test, ports: [$UPORT], rung: bump }
  - { host: other.test, ports: [$UPORT], rung: $1 }
CONF
}
config deny 5m > "$W/a.yaml"
config passthrough 4m > "$W/b.yaml"
cp "$W/a.yaml" "$W/config.yaml"
soak_start_proxy
echo "reload-storm: $RELOADS reloads every ${INTERVAL}s, $WORKERS workers per kind, proxy pid $PID"
python3 bench/soak/reload_storm.py "$PID" "$PPORT" "$APORT" "$UPORT" "$W/state/ca.pem" "$W/pki" \
  "$W/config.yaml" "$W/a.yaml" "$W/b.yaml" "$RELOADS" "$INTERVAL" "$WORKERS" \
  || { soak_proxy_log_tail; exit 1; }
