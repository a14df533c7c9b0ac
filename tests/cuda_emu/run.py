#!/usr/bin/env python3
"""Runs sweep's own CUDA kernels on the CPU: the CUDA C sources of
src/train/layers/*.rs (exactly what NVRTC compiles on a GPU) are compiled by
g++ under a small shim (one OS thread per CUDA thread of a block, a barrier for
__syncthreads, blocks one after another) and checked by harness.cpp.

The channels-last kernels are checked against the NCHW ones (run on the same
data transposed), which ran on an H200 against the CPU (BENCHMARKS.md); the NCHW
BatchNorm and max-pool, ReLU, `relu(a + b)`, the optimisers' and the cross-entropy's kernels
against PyTorch's definitions, a resident split's batch kernel against the
host pipeline's arithmetic; the weight layout kernels against their index
definition. Blocks run last first. No GPU needed.

    python3 tests/cuda_emu/run.py
"""
import pathlib, re, subprocess, sys, tempfile

here = pathlib.Path(__file__).resolve().parent
layers = here.parent.parent / "src" / "train" / "layers"


def raw(path, name):
    """The raw string constant `name` of a Rust file (r"..." or r#"..."#)."""
    text = (layers / path).read_text()
    m = re.search(r'const ' + name + r': &str = r(#?)"(.*?)"\1;', text, re.S)
    if not m:
        sys.exit(f"cuda_emu: no {name} in {path}")
    return m.group(2)


SHIM = r'''
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
struct uint3_ { unsigned x = 0, y = 0, z = 0; };
thread_local uint3_ threadIdx, blockIdx;
uint3_ blockDim, gridDim;
std::barrier<>* g_bar = nullptr;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() g_bar->arrive_and_wait()
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
using std::sqrt;

// Runs f as a kernel over grid x block: one OS thread per CUDA thread of a block, which run
// the blocks in turn (a barrier between blocks, so __shared__ statics are one block's at a time).
template <class F> void launch(uint3_ grid, uint3_ block, F f) {
    gridDim = grid; blockDim = block;
    unsigned nt = block.x * block.y * block.z;
    std::barrier<> bar(nt);
    g_bar = &bar;
    std::vector<std::thread> ts;
    for (unsigned tz = 0; tz < block.z; tz++) for (unsigned ty = 0; ty < block.y; ty++) for (unsigned tx = 0; tx < block.x; tx++)
        ts.emplace_back([=, &bar] {
            threadIdx = {tx, ty, tz};
            // the last block first: a kernel may not depend on the order of its blocks
            for (unsigned bz = grid.z; bz-- > 0;) for (unsigned by = grid.y; by-- > 0;) for (unsigned bx = grid.x; bx-- > 0;) {
                blockIdx = {bx, by, bz};
                f();
                bar.arrive_and_wait();
            }
        });
    for (auto& t : ts) t.join();
}
'''

parts = [SHIM, raw("cuda.rs", "PRELUDE")]
for ns, path in [("bn", "bn_cuda.rs"), ("pool", "pool_cuda.rs"), ("relu", "relu_cuda.rs"), ("conv", "krsc_cuda.rs"), ("optim", "optim_cuda.rs"), ("ce", "ce_cuda.rs"), ("pixels", "pixels_cuda.rs")]:
    parts.append(f"namespace {ns} {{\n{raw(path, 'SOURCE')}\n}}\n")
parts.append((here / "harness.cpp").read_text())

with tempfile.TemporaryDirectory() as d:
    src, exe = pathlib.Path(d) / "emu.cpp", pathlib.Path(d) / "emu"
    src.write_text("\n".join(parts))
    cc = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-w", "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        sys.stderr.write(cc.stderr[-6000:])
        sys.exit("cuda_emu: the kernels did not compile under the CPU shim")
    sys.exit(subprocess.run([str(exe)]).returncode)
