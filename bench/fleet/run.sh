#!/usr/bin/env bash
# Fleet benchmarks, against real processes on 127.0.0.1 (see bench/README.md, "Fleet"):
#   propagation  bench/fleet/propagation.py: revocation propagation to 1, 3 and 10 edges
#   churn        egress-bench --only fleet: bump keep-alive req/s on a fleet edge with no
#                updates vs 10 control-plane writes per second
# Builds the release binaries first (cargo build --release -p egress-edge -p egress-bench,
# into $CARGO_TARGET_DIR, default target-bench/), under `nice`.
#   bench/fleet/run.sh                        # both, at their defaults (~2 minutes)
#   bench/fleet/run.sh propagation [ARGS]     # ARGS go to propagation.py (--help)
#   bench/fleet/run.sh churn [ARGS]           # ARGS go to egress-bench, e.g. --secs 8 --rounds 4
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-bench}
what=${1:-all}
case "$what" in
  propagation | churn | all) [ $# -eq 0 ] || shift ;;
  *) echo "usage: $0 [propagation|churn] [ARGS...]   (no ARGS with both)" >&2; exit 2 ;;
esac
if [ "$what" = all ] && [ $# -gt 0 ]; then
  echo "$0: arguments go to one benchmark: $0 propagation ARGS or $0 churn ARGS" >&2
  exit 2
fi
nice cargo build --release -p egress-edge -p egress-bench
BIN=$CARGO_TARGET_DIR/release
status=0
if [ "$what" = propagation ] || [ "$what" = all ]; then
  python3 bench/fleet/propagation.py --bin "$BIN/egress-edge" "$@" || status=$?
fi
if [ "$what" = churn ] || [ "$what" = all ]; then
  [ "$what" = churn ] || echo
  "$BIN/egress-bench" --only fleet --edge-bin "$BIN/egress-edge" "$@" || status=$?
fi
exit "$status"
