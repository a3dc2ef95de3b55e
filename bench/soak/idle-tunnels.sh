#!/usr/bin/env bash
# RSS of a real egress-edge process holding N idle pass-through tunnels, over WAVES waves,
# and after they close; ratios against the idle baseline of the same run.
#   cargo build --release && sudo bench/soak/idle-tunnels.sh [N] [WAVES]
# Root for the private network namespace (see lib.sh) and to raise the descriptor limits
# (each tunnel holds 4 sockets across the two processes).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
soak_init idle-tunnels "$@"
WAVES=${2:-3}
# Each tunnel holds two descriptors in each process; a container may cap the hard limit
# (20,000 on the machine this was written on), which caps N just under 10,000.
MAXN=$(( ($(ulimit -Hn) - 150) / 2 ))
N=${1:-10000}
if [ "$N" -gt "$MAXN" ]; then
  echo "idle-tunnels: RLIMIT_NOFILE $(ulimit -Hn) fits $MAXN tunnels, not $N: using $MAXN" >&2
  N=$MAXN
fi
cat > "$W/config.yaml" <<CONF
proxy: { listen: 127.0.0.1:$PPORT, max_connections: $((N + 1000)) }
admin: { listen: 127.0.0.1:$APORT }
log: { level: warn }
state_dir: $W/state
network: { allow: [127.0.0.1/32], hosts: { up.test: 127.0.0.1 } }
destinations:
  - { host: up.test, ports: [$UPORT] }
CONF
soak_start_proxy
python3 bench/soak/idle_tunnels.py "$PID" "$PPORT" "$UPORT" "$N" "$WAVES" "$APORT" \
  || { soak_proxy_log_tail; exit 1; }
