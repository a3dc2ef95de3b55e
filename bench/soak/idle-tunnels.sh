#!/usr/bin/env bash
# RSS of a real egress-edge process holding N idle pass-through tunnels, over WAVES waves,
# and after they close; ratios against the idle baseline of the same run.
#   cargo build --release && sudo bench/soak/idle-tunnels.sh [N] [WAVES]
# Root only to raise the descriptor limits (each tunnel holds 4 sockets across the two
# processes). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
WAVES=${2:-3}
BIN=${BIN:-target/release/egress-edge}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
ulimit -Hn 262144 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
# Each tunnel holds two descriptors in each process; a container may cap the hard limit
# (20,000 on the machine this was written on), which caps N just under 10,000.
MAXN=$(( ($(ulimit -Hn) - 150) / 2 ))
N=${1:-10000}
if [ "$N" -gt "$MAXN" ]; then
  echo "idle-tunnels: RLIMIT_NOFILE $(ulimit -Hn) fits $MAXN tunnels, not $N: using $MAXN" >&2
  N=$MAXN
fi
W=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PPORT=$(free_port)
UPORT=$(free_port)
cat > "$W/config.yaml" <<CONF
proxy: { listen: 127.0.0.1:$PPORT, max_connections: $((N + 1000)) }
admin: { listen: 127.0.0.1:0 }
log: { level: warn }
state_dir: $W/state
network: { allow: [127.0.0.1/32], hosts: { up.test: 127.0.0.1 } }
destinations:
  - { host: up.test, ports: [$UPORT] }
CONF
"$BIN" run --config "$W/config.yaml" &
PID=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PPORT") 2>/dev/null && break
  sleep 0.1
done
python3 bench/soak/idle_tunnels.py "$PID" "$PPORT" "$UPORT" "$N" "$WAVES"
