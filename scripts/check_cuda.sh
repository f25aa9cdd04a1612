#!/usr/bin/env bash
# Type-checks and lints the CUDA build (the core and the CLI, `--features cuda`) on a machine without a GPU, with
# nvcc from PyPI (see CANDLE_NOTES: every part pinned to one CUDA release). Linking is not
# possible without the driver's libcuda, so this checks compilation only.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/cuda-venv
if [ ! -x "$venv/bin/nvcc-ok" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
  touch "$venv/bin/nvcc-ok"
fi
CUDA_HOME="$(cd "$venv"/lib/python3*/site-packages/nvidia/cu13 && pwd)"
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=90
nvcc --version | tail -1
# candle-kernels' own PTX and GGUF/MoE library are not built for a type-check (see
# nvcc_typecheck_stub.sh: over 20 minutes of nvcc on 2 cores, never loaded here); our kernels
# are, with the real nvcc.
export REAL_NVCC="$CUDA_HOME/bin/nvcc" NVCC="$PWD/scripts/nvcc_typecheck_stub.sh"
# The CUDA code paths live in the core (the CLI adds only the GPU bench's floor). The shared
# target dir reuses the check-mode dependencies clippy built; only the candle crates and their
# CUDA dependencies are new.
# clippy type-checks and lints the CUDA glue (src/swag/cuda.rs), the CPU-against-GPU tests and
# the CLI's GPU bench; build.rs compiles src/swag/kernels.cu to PTX with this nvcc on the way.
cargo clippy -p candle-swag --features cuda --lib --test gpu_agreement -- -D warnings
cargo clippy -p candle-swag-cli --features cuda --lib -- -D warnings
echo "CUDA type-check passed"
