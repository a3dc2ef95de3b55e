# shellcheck shell=bash
# Shared by the soak scripts; sourced, never run. Each script calls `soak_init NAME "$@"`
# first, which:
#   - re-executes the script inside a private network namespace (`unshare -n`), with only
#     its own loopback up, so every connection a soak makes stays inside that namespace
#     (and fixed ports cannot clash with anything else on the machine);
#   - refuses to run without root (creating the namespace needs it), saying so;
#   - checks for the release binary, raises the descriptor limit, makes a scratch dir $W
#     and arranges for everything started through `soak_bg` to be stopped on exit.
# Fixed ports are safe because the namespace is new: PPORT (proxy), APORT (admin), UPORT
# (upstream), SPORT (SDS).

# shellcheck disable=SC2034 # used by the scripts that source this
PPORT=3128 APORT=9901 UPORT=8443 SPORT=18000
SOAK_PIDS=()

soak_init() {
  SOAK_NAME=$1
  shift
  if [ -z "${IN_NS:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "$SOAK_NAME: needs root: it runs in a private network namespace (unshare -n) so all of its traffic stays inside; run it with sudo" >&2
      exit 1
    fi
    if ! command -v unshare >/dev/null || ! command -v ip >/dev/null; then
      echo "$SOAK_NAME: needs unshare (util-linux) and ip (iproute2)" >&2
      exit 1
    fi
    exec unshare -n env IN_NS=1 "$0" "$@"
  fi
  ip link set lo up
  cd "$(dirname "$0")/../.." || exit 1
  BIN=${BIN:-target/release/egress-edge}
  [ -x "$BIN" ] || { echo "$SOAK_NAME: build first: cargo build --release" >&2; exit 1; }
  BIN=$(realpath "$BIN")
  ulimit -Hn 262144 2>/dev/null || true
  ulimit -Sn "$(ulimit -Hn)"
  W=$(mktemp -d "/tmp/soak-$SOAK_NAME.XXXXXX")
  trap soak_cleanup EXIT
}

soak_cleanup() {
  local p
  for p in "${SOAK_PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${SOAK_PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then echo "$SOAK_NAME: scratch dir kept: $W" >&2; else rm -rf "$W"; fi
}

# soak_bg CMD...: starts CMD in the background, remembers it for cleanup; its pid is in $!.
soak_bg() {
  "$@" &
  SOAK_PIDS+=("$!")
}

# soak_wait_port PORT: waits up to 10 s for something to accept on 127.0.0.1:PORT.
soak_wait_port() {
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$SOAK_NAME: nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

# soak_start_proxy: runs `egress-edge run --config $W/config.yaml` (stderr in $W/proxy.log),
# sets PID, and waits until the proxy and admin ports accept and /readyz says ready.
soak_start_proxy() {
  soak_bg "$BIN" run --config "$W/config.yaml" 2>"$W/proxy.log"
  PID=$!
  soak_wait_port "$PPORT" || { tail -20 "$W/proxy.log" >&2; return 1; }
  soak_wait_port "$APORT" || { tail -20 "$W/proxy.log" >&2; return 1; }
  local i
  for i in $(seq 150); do
    curl -sf --noproxy '*' "http://127.0.0.1:$APORT/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "$SOAK_NAME: /readyz not ready after 15 s" >&2
  tail -20 "$W/proxy.log" >&2
  return 1
}

# soak_pki NAME...: a throwaway upstream CA and one leaf for NAMEs (wildcards allowed) in
# $W/pki/{ca,leaf,leaf-key}.pem.
soak_pki() {
  python3 bench/soak/soaklib.py pki "$W/pki" "$@"
}

# soak_tunnel_bump_config PROXY_EXTRA [LOG_LEVEL]: writes $W/config.yaml for the scripts that
# drive a pass-through destination (up.test) and a bumped one (bump.test) on the same upstream,
# with `, PROXY_EXTRA` appended inside the `proxy:` map (empty for none) and log level warn
# unless given. Run soak_pki up.test bump.test first.
soak_tunnel_bump_config() {
  local extra=${1:+, $1}
  cat > "$W/config.yaml" <<CONF
proxy: { listen: 127.0.0.1:$PPORT$extra }
admin: { listen: 127.0.0.1:$APORT }
log: { level: ${2:-warn} }
state_dir: $W/state
upstream: { extra_roots: [$W/pki/ca.pem] }
network: { allow: [127.0.0.1/32], hosts: { up.test: 127.0.0.1, bump.test: 127.0.0.1 } }
destinations:
  - { host: up.test, ports: [$UPORT] }
  - { host: bump.test, ports: [$UPORT], rung: bump }
CONF
}

# soak_proxy_log_tail: the last warnings and errors of the proxy, for a failed run.
soak_proxy_log_tail() {
  echo "--- last lines of the proxy log ($W/proxy.log):" >&2
  tail -15 "$W/proxy.log" >&2 || true
}
