#!/usr/bin/env bash
# N distinct SNIs (s0.sni.test ...) through one `*.sni.test` bump rule of a real egress-edge
# process, one new connection and one request each, CONC at a time: failures, leaf mints,
# egress_edge_leaf_cache_entries (the cache holds at most 10,000 leaves) and RSS.
#   cargo build --release && sudo bench/soak/many-snis.sh [N] [CONC]
# Defaults: N=12000, CONC=32. network.hosts takes exact names only, so the config lists all N
# names (-> 127.0.0.1); the upstream's leaf is for `*.sni.test`. upstream.pool_idle_timeout is
# 5s so the pooled upstream connection of each name (one per host) does not pile up to N
# descriptors. Runs in a private network namespace (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init many-snis "$@"
N=${1:-12000}
CONC=${2:-32}
soak_pki '*.sni.test'
# Upstream connections kept for reuse across all names (the default, written out).
POOLED=512
{
  cat <<CONF
proxy: { listen: 127.0.0.1:$PPORT }
admin: { listen: 127.0.0.1:$APORT }
log: { level: warn }
state_dir: $W/state
upstream: { extra_roots: [$W/pki/ca.pem], max_pooled_total: $POOLED }
destinations:
  - { host: '*.sni.test', ports: [$UPORT], rung: bump }
network:
  allow: [127.0.0.1/32]
  hosts:
CONF
  seq 0 $((N - 1)) | sed 's/.*/    s&.sni.test: 127.0.0.1/'
} > "$W/config.yaml"
soak_start_proxy
echo "many-snis: N=$N CONC=$CONC, proxy pid $PID"
python3 bench/soak/many_snis.py "$PID" "$PPORT" "$APORT" "$UPORT" "$W/state/ca.pem" "$W/pki" "$N" "$CONC" "$POOLED" \
  || { soak_proxy_log_tail; exit 1; }
