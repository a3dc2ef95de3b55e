#!/usr/bin/env bash
# The SDS server killed under load: `egress-edge sds serve` is the secret source of a
# bump+credential destination; requests with a handle run continuously while the SDS server
# is killed (SIGKILL) for OUTAGE_S seconds and started again. Counts failed requests
# (expected 0) and prints how long the proxy took to reconnect (egress_edge_sds_stream_connected).
#   cargo build --release && sudo bench/soak/sds-kill.sh [OUTAGE_S] [WORKERS]
# Defaults: OUTAGE_S=10, WORKERS=8. Runs in a private network namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init sds-kill "$@"
OUTAGE=${1:-10}
WORKERS=${2:-8}
SECRET=sk-soak-0123456789
soak_pki api.test
mkdir -p "$W/sds"
printf 'secrets:\n  api-key: { value: %s }\n' "$SECRET" > "$W/sds/secrets.yaml"
soak_bg "$BIN" sds serve --listen "127.0.0.1:$SPORT" --secrets "$W/sds/secrets.yaml" 2>"$W/sds/sds.log"
SDSPID=$!
disown "$SDSPID"  # the driver kills it: no "Killed" notice from bash
soak_wait_port "$SPORT"
cat > "$W/config.yaml" <<CONF
proxy: { listen: 127.0.0.1:$PPORT }
admin: { listen: 127.0.0.1:$APORT }
log: { level: warn }
state_dir: $W/state
upstream: { extra_roots: [$W/pki/ca.pem] }
network: { allow: [127.0.0.1/32], hosts: { api.test: 127.0.0.1 } }
secrets:
  sds: { target: 'http://127.0.0.1:$SPORT', node_id: soak-edge, initial_fetch_timeout: 5s }
destinations:
  - { host: api.test, ports: [$UPORT], credential: { secret: api-key } }
CONF
soak_start_proxy
echo "sds-kill: outage ${OUTAGE}s, $WORKERS workers, proxy pid $PID, sds pid $SDSPID"
python3 bench/soak/sds_kill.py "$PID" "$PPORT" "$APORT" "$UPORT" "$W/state/ca.pem" "$W/pki" "$SECRET" \
  "$SDSPID" "$BIN" "$SPORT" "$W/sds/secrets.yaml" "$OUTAGE" "$WORKERS" \
  || { soak_proxy_log_tail; exit 1; }
