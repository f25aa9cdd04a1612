#!/usr/bin/env bash
# An nvcc for the CUDA *type-check* only (scripts/check_cuda.sh), given to candle-kernels'
# build script through cudaforge's NVCC variable: its PTX and its GGUF/MoE kernel library are
# what candle's own CI builds, a type-check of this project never loads them, and compiling
# them took over 20 minutes of the 2-core CI machine. Queries (--version, --list-gpu-code)
# go to the real nvcc ($REAL_NVCC); a compilation writes its output file empty (`--lib`: an
# empty archive). The project's own kernels (src/swag/kernels.cu) are still compiled by the
# real nvcc: build.rs takes $CUDA_HOME/bin/nvcc, not $NVCC.
set -euo pipefail
out=""
lib=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -o) out="${args[$((i + 1))]}" ;;
    --lib) lib=1 ;;
  esac
done
if [ -z "$out" ]; then
  exec "$REAL_NVCC" "$@"
fi
mkdir -p "$(dirname "$out")"
if [ "$lib" = 1 ]; then
  rm -f "$out"
  ar rc "$out"
else
  : > "$out"
fi
