#!/bin/sh
# Builds the fuzz targets on the STABLE toolchain: libfuzzer-sys links libFuzzer, and these
# flags (the ones cargo-fuzz passes, minus its nightly-only sanitizer) turn on SanitizerCoverage.
# Usage (from fuzz/): ./build.sh [cargo build args...]
set -e
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/fuzz-target}"
exec nice -n 19 cargo build --release --target x86_64-unknown-linux-gnu "$@"
