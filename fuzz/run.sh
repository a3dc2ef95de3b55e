#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another, and prints per
# target the executions, the coverage (cov/ft from libFuzzer's last stats line) and the
# crashes found. Crash inputs are copied to fuzz/regressions/<target>/, where the stable replay
# test (`cargo test --test it fuzz_replay`) picks them up.
#
# Builds are release with debug assertions and overflow checks, under AddressSanitizer
# (cargo-fuzz defaults). Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The seed corpus in
# fuzz/corpus/<target>/ is only read; inputs libFuzzer finds go to fuzz/target/work/<target>/.
# Environment: TARGETS="a b" to run only some targets, FUZZ_JOBS=N to run N targets at once
# (default 1), FUZZ_ARGS for extra libFuzzer flags.
set -uo pipefail

SECONDS_EACH=${1:-600}
cd "$(dirname "$0")"
FUZZ_DIR=$PWD
TARGETS=${TARGETS:-$(cargo +nightly fuzz list)}
JOBS=${FUZZ_JOBS:-1}
mkdir -p target/logs

cargo +nightly fuzz build >/dev/null || exit 1

run_one() {
    local t=$1
    local work=target/work/$t art=target/artifacts/$t/ log=target/logs/$t.log
    rm -rf "$art"
    mkdir -p "$work" "$art" "corpus/$t"
    # shellcheck disable=SC2086
    cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -artifact_prefix="$FUZZ_DIR/$art" \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
    echo "$?" >"target/logs/$t.rc"
}

running=0
for t in $TARGETS; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

status=0
printf '%-18s %12s %8s %8s %8s\n' target execs cov ft crashes
for t in $TARGETS; do
    log=target/logs/$t.log
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
    [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
    crashes=0
    for f in target/artifacts/"$t"/*; do
        [ -f "$f" ] || continue
        mkdir -p "regressions/$t"
        cp "$f" "regressions/$t/"
        crashes=$((crashes + 1))
    done
    rc=$(cat "target/logs/$t.rc" 2>/dev/null || echo '?')
    if [ "$rc" != 0 ] && [ "$crashes" = 0 ]; then
        crashes="rc=$rc"
    fi
    [ "$rc" = 0 ] || status=1
    printf '%-18s %12s %8s %8s %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
done
exit $status
