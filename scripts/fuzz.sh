#!/usr/bin/env bash
# make fuzz: runs every fuzz target with libFuzzer for FUZZ_SECONDS (default 60) each,
# starting from valid seed inputs, then replays the corpus and every saved crash.
# A crash found is copied to fuzz/regressions/<target>/ (commit it: `cargo test` replays
# it from then on) and the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
targets=(grpc_messages chunk_frames invite_codes tokens certificates csrs records paths)
if [ "$#" -gt 0 ]; then targets=("$@"); fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "make fuzz needs a nightly toolchain for libFuzzer's instrumentation: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (once)..."
    cargo install cargo-fuzz --locked
fi

echo "writing seed inputs to fuzz/corpus/"
cargo test -q -p collective-fuzzing -- --ignored write_seed_corpus >/dev/null

failed=()
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>"fuzz/artifacts/$t.log"; then
        failed+=("$t")
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "fuzz/artifacts/$t.log" | sed "s/^/   $t /" || true
    for crash in fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/oom-* fuzz/artifacts/"$t"/timeout-*; do
        [ -e "$crash" ] || continue
        mkdir -p "fuzz/regressions/$t"
        cp "$crash" "fuzz/regressions/$t/"
        echo "   saved $crash to fuzz/regressions/$t/" >&2
    done
done

echo "== replaying the corpus and saved crashes"
cargo test -q -p collective-fuzzing

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (logs in fuzz/artifacts/, inputs in fuzz/regressions/)" >&2
    exit 1
fi
echo "fuzzing found nothing in ${#targets[@]} targets x ${seconds}s"
