#!/usr/bin/env bash
# CPU against GPU, on a machine with an NVIDIA GPU: the agreement tests (moments, columns and
# noise bit-equal; device-store samples bit-equal; host-store samples and log-density within
# the tolerances tests/gpu_agreement.rs documents), then `swag bench` on the GPU (f32, bf16, f16
# columns) and on the CPU at the same size, then one summary.
#
# Usage: scripts/gpu_check.sh [BIN_DIR]
#   BIN_DIR holds `swag` and `gpu_agreement` built with --features cuda (README, "GPU"), plain
#   or xz-compressed; without it, both are built here with cargo (needs nvcc).
# Environment: PARAMS (default 50000000), RANK (20), REPEATS (20), OUT (target/gpu-check),
#   CPU_BENCH=0 to skip the CPU bench.
set -euo pipefail
cd "$(dirname "$0")/.."
params=${PARAMS:-50000000}
rank=${RANK:-20}
repeats=${REPEATS:-20}
out=${OUT:-target/gpu-check}
mkdir -p "$out"

# The driver's and the CUDA run-time libraries, where a GPU machine usually keeps them.
for d in /usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH

bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release -p candle-swag-cli --features cuda --bin swag
  test_bin=$(cargo test --release -p candle-swag --features cuda --test gpu_agreement --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_agreement" and m.get("executable"):
        print(m["executable"])' | tail -1)
  bin=$out/bin
  mkdir -p "$bin"
  cp "${CARGO_TARGET_DIR:-target}/release/swag" "$test_bin" "$bin/"
  mv "$bin/$(basename "$test_bin")" "$bin/gpu_agreement"
fi
unxz_to() { # FILE.xz OUT (python's lzma where xz is missing)
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
for f in swag gpu_agreement; do
  if [ -f "$bin/$f.xz" ]; then unxz_to "$bin/$f.xz" "$out/$f.new"; else cp "$bin/$f" "$out/$f.new"; fi
  chmod +x "$out/$f.new" && mv "$out/$f.new" "$out/$f"
done

echo "=== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "=== agreement tests (CPU against CUDA)"
agree=pass
"$out/gpu_agreement" --test-threads 1 2>&1 | tee "$out/agreement.log" || agree=FAIL

echo "=== swag bench on the GPU, d = $params, K = $rank"
"$out/swag" bench --device cuda --params 1000000 --rank 4 --repeats 1 >/dev/null # warm-up: the driver compiles the PTX once
: >"$out/bench.jsonl"
for dt in f32 bf16 f16; do
  "$out/swag" bench --device cuda --params "$params" --rank "$rank" --repeats "$repeats" --dtype "$dt" --json |
    sed "s/^{/{\"dtype\":\"$dt\",/" | tee -a "$out/bench.jsonl"
done
if [ "${CPU_BENCH:-1}" != 0 ]; then
  echo "=== swag bench on the CPU ($(nproc) cores), same size, f32"
  "$out/swag" bench --device cpu --params "$params" --rank "$rank" --repeats 5 --json |
    sed 's/^{/{"dtype":"f32",/' | tee -a "$out/bench.jsonl"
fi

echo "=== summary"
echo "agreement tests: $agree"
python3 - "$out/bench.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"op"' in l]
print(f"{'device':<10} {'dtype':<5} {'op':<15} {'ms':>9} {'floor ms':>9} {'ratio':>6}")
for r in rows:
    print(f"{r['device']:<10} {r['dtype']:<5} {r['op']:<15} {r['seconds']*1e3:>9.3f} "
          f"{r['floor_seconds']*1e3:>9.3f} {r['ratio_to_floor']:>6.2f}")
EOF
[ "$agree" = pass ]
