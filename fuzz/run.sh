#!/usr/bin/env bash
# Runs fuzz targets for a bounded time each, starting from their seeds (fuzz/seeds/TARGET)
# and what earlier runs found (fuzz/corpus/TARGET), and prints the executions per target.
# Fails when a target crashes: the input is kept in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30 s, every target)
#
# CI runs it with the defaults (.ci/run); run it with more seconds to fuzz longer.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, the coverage passes);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. AddressSanitizer works this way
# (its runtime ships with stable's rust-std); only the standard library itself is not
# instrumented (that would need -Zbuild-std and nightly's rust-src).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets: release optimizations with debug assertions and overflow
# checks (cargo fuzz's default), AddressSanitizer.
cargo fuzz build --sanitizer address

status=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/last-run.log"
    dictionary=()
    case $target in
    stun_message | stream_frames | turn_core) dictionary=(-dict=stun.dict) ;;
    signal_rooms) dictionary=(-dict=signal.dict) ;;
    esac
    echo "== $target: ${seconds}s"
    # libFuzzer stops itself after max_total_time; the outer timeout is for a hang it
    # cannot interrupt. -timeout: one input taking over 10 s is a failure too.
    if timeout --kill-after=10 $((seconds + 120)) \
        cargo fuzz run --sanitizer address "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        "${dictionary[@]}" \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log")
        coverage=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$log" | tail -n 1)
        summary+=("$target: ${runs:-? runs}, ${coverage:-no coverage line}")
    else
        status=1
        summary+=("$target: FAILED (log: fuzz/$log)")
        tail -n 40 "$log"
        ls -l "artifacts/$target" || true
    fi
done

echo "== fuzzing summary (executions per target, coverage: edges, features, corpus)"
printf '%s\n' "${summary[@]}"
exit $status
