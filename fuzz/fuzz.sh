#!/bin/bash
# Runs one libFuzzer target built by ./build.sh (stable toolchain), at the lowest priority,
# one process, with the memory and time bounds of the recorded runs.
#
#   ./fuzz.sh run TARGET [CPU_S [WALL_S]]  fuzz until the fuzzer has used CPU_S seconds of
#                                    CPU (default 600) or WALL_S seconds have passed (default
#                                    3600), from corpus/TARGET and seeds/TARGET into a scratch
#                                    corpus work/TARGET; crashes go to artifacts/TARGET/, the
#                                    log to logs/TARGET.log
#   ./fuzz.sh merge TARGET           minimise seeds/ + corpus/ + work/ into corpus/TARGET
#   ./fuzz.sh replay TARGET FILE...  run the target on the given inputs once
set -euo pipefail
cd "$(dirname "$0")"
bin_dir="${CARGO_TARGET_DIR:-/work/fuzz-target}/x86_64-unknown-linux-gnu/release"

dicts() {
  case "$1" in
    posterior_file | checkpoint) echo safetensors json_common ;;
    shard_index) echo shard safetensors json_common ;;
    array_input) echo npy csv safetensors json_common ;;
    table_csv) echo csv ;;
    idx) echo idx csv ;;
    run_dir) echo run shard safetensors json_common ;;
    model_config) echo model_config json_common ;;
    tokenizer_json) echo tokenizer json_common ;;
    adapter_file) echo safetensors adapter json_common ;;
    text_table) echo csv ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

dict_file() {
  local out="work/$1.dict"
  mkdir -p work
  : > "$out"
  for d in $(dicts "$1"); do cat "dicts/$d.dict" >> "$out"; done
  echo "$out"
}

# Common bounds: 2 GiB of RSS, no single allocation above 2 GiB, 10 s per input. No -jobs,
# -workers or -fork: plain libFuzzer is already one process on one core (with -jobs=1 it
# would fork one worker and write its log to fuzz-0.log instead).
bounds=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10)

cmd="$1"; target="$2"; shift 2
bin="$bin_dir/$target"
mkdir -p "corpus/$target" "seeds/$target" "work/$target" "artifacts/$target" logs
case "$cmd" in
  run)
    # Stops at CPU_SECONDS of the fuzzer's own CPU time (user + system, polled every 5 s and
    # ended with SIGINT, after which libFuzzer prints its final stats), or at WALL_SECONDS of
    # wall-clock time (-max_total_time), whichever comes first: at nice 19 on a shared
    # machine, wall time says little about how much fuzzing was done.
    cpu="${1:-600}"; wall="${2:-3600}"
    nice -n 19 "$bin" "${bounds[@]}" -dict="$(dict_file "$target")" \
      -max_total_time="$wall" -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
      "work/$target" "corpus/$target" "seeds/$target" < /dev/null > "logs/$target.log" 2>&1 &
    pid=$!
    hz=$(getconf CLK_TCK)
    start=$(date +%s)
    ticks=0
    while kill -0 "$pid" 2> /dev/null; do
      t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2> /dev/null || true)
      [ -n "$t" ] && ticks=$t
      if [ "$ticks" -ge $((cpu * hz)) ]; then kill -INT "$pid" 2> /dev/null || true; break; fi
      sleep 5
    done
    rc=0; wait "$pid" || rc=$?
    echo "target=$target cpu_s=$((ticks / hz)) wall_s=$(($(date +%s) - start)) rc=$rc" \
      | tee -a "logs/$target.log"
    ;;
  merge)
    mkdir -p "work/merged-$target"
    nice -n 19 "$bin" "${bounds[@]}" -merge=1 "work/merged-$target" \
      "seeds/$target" "corpus/$target" "work/$target" < /dev/null
    rm -rf "corpus/$target"
    mv "work/merged-$target" "corpus/$target"
    ;;
  replay)
    exec nice -n 19 "$bin" "${bounds[@]}" "$@" < /dev/null
    ;;
  *) echo "usage: $0 run|merge|replay TARGET ..." >&2; exit 2 ;;
esac
