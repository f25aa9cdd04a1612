#!/usr/bin/env bash
# Builds CUDA-enabled binaries of candle-swag on a machine with no GPU, for running on a GPU machine.
# candle-core 0.11's cudarc links libcuda/libcublas/libcurand/libnvrtc when the program is BUILT
# (feature dynamic-linking), so a build here needs those libraries to link against:
#   - nvcc 13.0 (the same pins as the project's scripts/check_cuda.sh) for candle-kernels' PTX;
#   - cublas, curand and nvrtc 13.0 shared libraries, from their PyPI wheels;
#   - a stub libcuda.so.1 (soname of the driver library) exporting the driver symbols that cudarc
#     binds, each returning CUDA_ERROR_NO_DEVICE (100). At run time the real driver is used.
# Usage:  source scripts/cuda_env.sh   (then: cargo build --release --features cuda ...)
# It sets CUDA_HOME, PATH, CUDA_COMPUTE_CAP=90 (H100/H200), RUSTFLAGS and CARGO_TARGET_DIR
# (target/cuda, so the CPU build is not rebuilt). Everything it makes lives under target/cuda-env.
set -e
root=$(git rev-parse --show-toplevel)
env_dir=$root/target/cuda-env
mkdir -p "$env_dir"
if [ ! -x "$env_dir/venv/bin/nvcc-ok" ]; then
  python3 -m venv "$env_dir/venv"
  "$env_dir/venv/bin/pip" install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*" "nvidia-cuda-nvrtc==13.0.*"
  touch "$env_dir/venv/bin/nvcc-ok"
fi
cu=$(cd "$env_dir"/venv/lib/python3*/site-packages/nvidia/cu13 && pwd)
link=$env_dir/link
mkdir -p "$link"
for pair in cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 curand:libcurand.so.10 nvrtc:libnvrtc.so.13 cudart:libcudart.so.13; do
  name=${pair%%:*}; file=${pair#*:}
  ln -sf "$cu/lib/$file" "$link/lib$name.so"
done
if [ ! -f "$link/libcuda.so" ]; then
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | tail -1)
  if [ -z "$sys" ]; then (cd "$root" && cargo fetch --quiet); sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs | tail -1); fi
  grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys" | awk '{print $4}' | sort -u |
    sed 's/.*/int &(void){return 100;}/' >"$link/cudastub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cudastub.c"
  ln -sf libcuda.so "$link/libcuda.so.1"
fi
export CUDA_HOME=$cu PATH="$cu/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$link" CARGO_TARGET_DIR=${CARGO_TARGET_DIR_CUDA:-$root/target/cuda}
echo "CUDA build environment ready: nvcc $(nvcc --version | tail -1 | awk '{print $NF}'), stub driver in $link, target dir $CARGO_TARGET_DIR"
set +e
