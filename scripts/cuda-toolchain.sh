#!/usr/bin/env bash
# Installs a CUDA 13.0 toolchain from PyPI (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC) into a cache
# folder, plus link-time stubs of libcuda and libcudnn (the real one comes with the NVIDIA driver on a GPU machine),
# so that `cargo build --features cuda` works on a machine without a GPU or a system CUDA toolkit.
#
#   eval "$(scripts/cuda-toolchain.sh)"     # installs once, then prints the exports
#   cargo build --release --features cuda
#
# CUDA 13.0 on purpose: the lent GPU machines run driver 580 (CUDA 13.0); PTX from a newer nvcc
# would not load there. CUDA_COMPUTE_CAP=90 targets H100/H200; override it before eval for other GPUs.
set -euo pipefail
root=${CUDA_PYPI_HOME:-$HOME/.cache/cuda-pypi-13.0}
site=$root/venv/lib/python3*/site-packages/nvidia/cu13
if ! ls $site/bin/nvcc >/dev/null 2>&1; then
  python3 -m venv "$root/venv" >&2
  "$root/venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" >&2
fi
cu=$(echo $site)
link=$root/link
if [ ! -f "$link/libcuda.so" ]; then
  mkdir -p "$link"
  for l in cudart nvrtc curand cublas cublasLt; do
    f=$(ls "$cu/lib/lib$l.so."* | grep -v -e builtins -e '\.alt\.' | head -n1)
    ln -sf "$f" "$link/lib$l.so"
  done
  # every driver-API name the header mentions becomes an empty function: enough to link, never run
  { grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$cu/include/"*.h; printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop; } | sort -u | awk '{print "void "$1"(void){}"}' >"$link/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"
fi
# cuDNN (`--features cudnn`): a link-time stub of libcudnn.so.9 with every function cudarc's bindings
# name (the real library, 9.x, comes with PyTorch's nvidia-cudnn-cu13 on the GPU machine; PyPI's wheel
# is 600 MB, and nothing here runs it).
if [ ! -f "$link/libcudnn.so" ]; then
  cargo fetch --locked -q >&2 || true
  sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/cudnn/sys/mod.rs' 2>/dev/null | sort | tail -n1)
  if [ -n "$sys" ]; then
    grep -ohE 'fn cudnn[A-Za-z0-9_]*' "$sys" | sed 's/^fn //' | sort -u | awk '{print "void "$1"(void){}"}' >"$link/cudnn-stub.c"
    cc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$link/libcudnn.so" "$link/cudnn-stub.c"
  fi
fi
cat <<EOS
export PATH="$cu/bin:\$PATH"
export CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="\${RUSTFLAGS:-} -L $link"
# at run time on a GPU machine: LD_LIBRARY_PATH must reach libcublas.so.13, libcurand.so.10, libcudart.so.13
# (and libcudnn.so.9 for --features cudnn)
# (on the lent machines they are in the system python's site-packages/nvidia/cu13/lib)
EOS
