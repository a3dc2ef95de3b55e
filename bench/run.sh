#!/usr/bin/env bash
# Runs egress-bench (release build, own target dir). Arguments go to the benchmark,
# e.g. `bench/run.sh --quick` or `bench/run.sh --secs 6 --only keepalive,newconn`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-bench}
exec cargo run --release -p egress-bench -- "$@"
