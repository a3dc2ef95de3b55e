#!/usr/bin/env bash
# Transparent listener vs explicit CONNECT, through the same proxy process, in one run.
#
# Builds two network namespaces of its own (nothing on the host's network is touched): an
# "edge" namespace holding an nginx TLS upstream (on 10.99.0.2, an address of the edge's
# loopback) and egress-edge (`run`, with the ruleset `nft-rules` prints loaded there), and a
# "guest" namespace whose only link is a veth into the edge. oha runs in the guest:
#   explicit:    oha -x http://<edge>:3128 https://up.test/small      (CONNECT, pass-through)
#   transparent: oha --connect-to up.test:443:10.99.0.2:443 https://up.test/small
#                (no proxy settings; nftables redirects to the transparent listener)
# each with keep-alive and with a new connection per request, alternating A/B for ROUNDS
# rounds of DUR, and prints transparent / explicit ratios (target >= 0.95).
#
# Needs root, nft, ip, nginx, openssl, oha, python3 and a release build:
#   cargo build --release && sudo bench/transparent.sh [DUR] [ROUNDS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5s}
ROUNDS=${2:-3}
C=${3:-8}
BIN=${BIN:-target/release/egress-edge}
[ "$(id -u)" = 0 ] || { echo "transparent.sh: needs root (network namespaces, nftables)" >&2; exit 1; }
for t in ip nft nginx openssl oha python3; do
  command -v "$t" >/dev/null || { echo "transparent.sh: $t is missing" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "transparent.sh: build first: cargo build --release" >&2; exit 1; }

TAG=eeb$$
EDGE=$TAG-edge
GUEST=$TAG-guest
VE=${TAG}e
VG=${TAG}g
W=$(mktemp -d)
cleanup() {
  [ -f "$W/nginx.pid" ] && ip netns exec "$EDGE" kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
  ip netns del "$GUEST" 2>/dev/null || true
  ip netns del "$EDGE" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

ip netns add "$EDGE"
ip netns add "$GUEST"
ip -n "$EDGE" link set lo up
ip -n "$GUEST" link set lo up
ip -n "$EDGE" link add "$VE" type veth peer name "$VG" netns "$GUEST"
ip -n "$EDGE" addr add 10.88.0.1/24 dev "$VE"
ip -n "$GUEST" addr add 10.88.0.2/24 dev "$VG"
ip -n "$EDGE" link set "$VE" up
ip -n "$GUEST" link set "$VG" up
ip -n "$GUEST" route add default via 10.88.0.1
ip -n "$EDGE" addr add 10.99.0.2/32 dev lo

# The upstream: nginx with a self-signed certificate for up.test, 100-byte /small.
mkdir -p "$W/www" "$W/state"
head -c 100 /dev/zero | tr '\0' 'x' > "$W/www/small"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=up.test -addext subjectAltName=DNS:up.test \
  -keyout "$W/up.key" -out "$W/up.pem" 2>/dev/null
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 10.99.0.2:443 ssl;
    ssl_certificate $W/up.pem;
    ssl_certificate_key $W/up.key;
    root $W/www;
  }
}
CONF
ip netns exec "$EDGE" nginx -c "$W/nginx.conf"

cat > "$W/config.yaml" <<CONF
proxy:
  listen: 10.88.0.1:3128
  transparent: 0.0.0.0:3129
dns:
  listen: 0.0.0.0:5353
admin:
  listen: 127.0.0.1:9901
log: { level: warn }
state_dir: $W/state
network:
  allow: [10.99.0.2/32]
  hosts: { up.test: 10.99.0.2 }
destinations:
  - host: up.test
default_rung: deny
CONF
"$BIN" nft-rules --config "$W/config.yaml" --interface "$VE" > "$W/rules.nft"
ip netns exec "$EDGE" nft -f "$W/rules.nft"
ip netns exec "$EDGE" "$BIN" run --config "$W/config.yaml" &
PROXY_PID=$!
for _ in $(seq 50); do
  ip netns exec "$EDGE" bash -c 'exec 3<>/dev/tcp/10.88.0.1/3128' 2>/dev/null && break
  sleep 0.1
done

run() { # $1 label, rest: oha args
  local label=$1; shift
  ip netns exec "$GUEST" oha -z "$DUR" -c "$C" --insecure --no-tui --output-format json "$@" \
    https://up.test/small 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin); s = d["summary"]; l = d["latencyPercentiles"]
print("%.0f %.3f %.2f" % (s["requestsPerSec"], s["successRate"], (l["p50"] or 0) * 1000))'
}

declare -A SUM
for mode in ka nc; do
  for r in $(seq "$ROUNDS"); do
    extra=()
    [ "$mode" = nc ] && extra=(--disable-keepalive)
    read -r e_rps e_ok e_p50 < <(run explicit "${extra[@]}" -x http://10.88.0.1:3128)
    read -r t_rps t_ok t_p50 < <(run transparent "${extra[@]}" --connect-to up.test:443:10.99.0.2:443)
    printf '%-3s round %s: explicit %6s req/s (ok %s, p50 %sms)  transparent %6s req/s (ok %s, p50 %sms)\n' \
      "$mode" "$r" "$e_rps" "$e_ok" "$e_p50" "$t_rps" "$t_ok" "$t_p50"
    SUM[$mode-e]=$(( ${SUM[$mode-e]:-0} + e_rps ))
    SUM[$mode-t]=$(( ${SUM[$mode-t]:-0} + t_rps ))
  done
done
echo
echo "transparent / explicit (sum of $ROUNDS alternating rounds, $DUR each, -c $C):"
python3 - "${SUM[ka-t]}" "${SUM[ka-e]}" "${SUM[nc-t]}" "${SUM[nc-e]}" <<'PY'
import sys
kt, ke, nt, ne = map(float, sys.argv[1:])
print("  keep-alive       %.2fx  (target >= 0.95)" % (kt / ke))
print("  new connections  %.2fx  (target >= 0.95)" % (nt / ne))
PY
