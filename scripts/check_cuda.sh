#!/usr/bin/env bash
# The CUDA build compiled without a GPU, so the `cuda` feature cannot rot unseen: PyPI's CUDA 13
# wheels (pinned below) ship nvcc, the runtime headers, CCCL, the CRT and NVVM; installed once
# into target/cuda-toolkit (kept, like the build, between runs: a warm run costs seconds), then
# `cargo check -p classifier-svc --features cuda` (candle's kernels compiled to PTX by nvcc).
# cudarc 0.19 knows CUDA up to 13.4 by name, hence 13.4 and CUDARC_CUDA_VERSION.
# Usage: scripts/check_cuda.sh   (CUDA_COMPUTE_CAP, default 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=target/cuda-toolkit
cu="$PWD/$prefix/nvidia/cu13"
if [ ! -x "$cu/bin/nvcc" ]; then
  echo "== CUDA 13.4 toolkit wheels into $prefix"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$prefix" \
    nvidia-cuda-nvcc==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-cuda-crt==13.4.92 \
    nvidia-nvvm==13.4.92 nvidia-cuda-cccl==13.3.5.0.6
fi
export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13040
nvcc --version | tail -1
cargo check -p classifier-svc --features cuda --locked
