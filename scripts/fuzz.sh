#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS, one after another, one job
# each (the machine is shared), and prints how long each ran and what it found.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (SECONDS defaults to 300; all targets by default)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Builds with the address sanitizer on
# the stable toolchain through RUSTC_BOOTSTRAP=1 (or on FUZZ_TOOLCHAIN, e.g. nightly, if set).
# Corpora grow in fuzz/corpus/<target> (ignored by git), seeded from the test fixtures and
# fuzz/seeds/; a crash leaves its input in fuzz/artifacts/<target>/ and the log in
# fuzz/logs/<target>.log. docs/FUZZING.md says how to turn a crash into a regression test.
set -euo pipefail

seconds=${1:-300}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
toolchain=()
if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=(haiku_pickle config_safetensors fill_mask_text media)
fi

seed() {
    local target=$1 corpus=$root/fuzz/corpus/$1
    mkdir -p "$corpus"
    case $target in
        haiku_pickle)
            cp -n "$root"/tests/fixtures/haiku/*.pickle "$root"/tests/fixtures/hostile/haiku/*.pickle \
                "$root"/fuzz/seeds/haiku_pickle/* "$corpus"/
            ;;
        media)
            # The first byte picks the reader (2: pictures): the test pictures behind it.
            cp -n "$root"/fuzz/seeds/media/* "$corpus"/
            shopt -s nullglob
            for picture in "$root"/tests/fixtures/images/*.{png,jpg,webp,bmp,gif,tif}; do
                [[ -e $corpus/picture_${picture##*/}.bin ]] ||
                    { printf '\x02'; cat "$picture"; } >"$corpus/picture_${picture##*/}.bin"
            done
            shopt -u nullglob
            ;;
        *)
            cp -n "$root"/fuzz/seeds/"$target"/* "$corpus"/
            ;;
    esac
}

args() {
    case $1 in
        haiku_pickle) echo "-max_len=8192 -dict=$root/fuzz/dict/haiku_pickle.dict" ;;
        # The seed model is some 20 KB; room to grow it.
        config_safetensors) echo "-max_len=65536" ;;
        fill_mask_text) echo "-max_len=4096" ;;
        # Room for the test pictures and a few y4m frames.
        media) echo "-max_len=16384" ;;
    esac
}

mkdir -p "$root/fuzz/logs"
summary=()
status=0
for target in "${targets[@]}"; do
    seed "$target"
    cargo "${toolchain[@]}" fuzz build --release "$target"
    log=$root/fuzz/logs/$target.log
    start=$(date +%s)
    # shellcheck disable=SC2046 # args are words
    if cargo "${toolchain[@]}" fuzz run --release "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=4096 -timeout=10 \
        -print_final_stats=1 $(args "$target") >"$log" 2>&1; then
        result="no crash"
    else
        result="FAILED (see $log and fuzz/artifacts/$target/)"
        status=1
    fi
    # With -jobs=1 libFuzzer runs the job in a child that logs to fuzz-0.log.
    if [[ -f fuzz-0.log ]]; then
        cat fuzz-0.log >>"$log"
        rm -f fuzz-0.log
        grep -qE "ERROR: libFuzzer|panicked|SUMMARY: AddressSanitizer" "$log" && {
            result="FAILED (see $log and fuzz/artifacts/$target/)"
            status=1
        }
    fi
    elapsed=$(($(date +%s) - start))
    runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | tail -1 | grep -oE "[0-9]+$" || echo "?")
    cov=$(grep -oE "cov: [0-9]+" "$log" | tail -1 || echo "cov: ?")
    corpus=$(find "corpus/$target" -type f | wc -l)
    summary+=("$target: ${elapsed}s, $runs runs, $cov, corpus $corpus files: $result")
done

echo
printf '%s\n' "${summary[@]}"
exit $status
