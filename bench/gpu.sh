#!/usr/bin/env bash
# The GPU checks of the GPU issue, in one call on a lent GPU machine (no Rust
# there): build here, carry the binaries, run this there.
#
# Here (builds the CUDA binaries into target/cuda, packs them with this script):
#   bench/gpu.sh pack            -> gpu-pack.tar.xz (sweep, device_check, this script, the torch script)
# There (in the unpacked folder; writes gpu-results/*):
#   bash bench/gpu.sh run
#
# What it does there, all on the same GPU:
#   1. the quickstart sweep on CUDA (`sweep submit` on the embedded default, --device cuda:0);
#   2. CPU vs CUDA: loss and gradient norm of one batch, f32 and bf16 (device_check);
#   3. one epoch of ResNet18 at 224x224, batch 50, generated data, in f32, tf32 and bf16
#      (sweep), next to torchvision's ResNet18 with the same settings (bench/gpu_torch.py).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
    eval "$(scripts/cuda-toolchain.sh)"
    CARGO_TARGET_DIR=target/cuda cargo build --release --locked --features cuda --bin sweep --example device_check
    mkdir -p target/gpu-pack/bench target/gpu-pack/experiments
    cp target/cuda/release/sweep target/cuda/release/examples/device_check target/gpu-pack/
    cp bench/gpu.sh bench/gpu_torch.py target/gpu-pack/bench/
    tar -C target/gpu-pack -cJf gpu-pack.tar.xz .
    ls -la gpu-pack.tar.xz
    ;;
run)
    out=${OUT:-gpu-results}
    mkdir -p "$out"
    # cuBLAS, cuRAND, cudart and NVRTC 13 from the system python's packages (see ../shared/notes/cuda-build.md).
    lib=$(python3 -c "import nvidia, os; print(os.path.join(os.path.dirname(nvidia.__path__[0]), 'nvidia', 'cu13', 'lib'))" 2>/dev/null || true)
    export LD_LIBRARY_PATH="${lib}:${LD_LIBRARY_PATH:-}"
    bin=./sweep
    [ -x "$bin" ] || bin=target/cuda/release/sweep
    dc=./device_check
    [ -x "$dc" ] || dc=target/cuda/release/examples/device_check
    nvidia-smi | tee "$out/nvidia-smi.txt" || true
    echo "== 1. quickstart on CUDA" | tee "$out/summary.txt"
    home=$(mktemp -d)
    ( time "$bin" --home "$home" submit --device cuda:0 ) >"$out/quickstart.txt" 2>&1 || echo "quickstart FAILED" | tee -a "$out/summary.txt"
    "$bin" --home "$home" results --format json >"$out/quickstart.json" || true
    "$bin" --home "$home" status --format json | python3 -c "import json,sys; r=json.load(sys.stdin)['runs']; print([(x['name'], x['status'], x['device'], x['peak_memory_bytes']) for x in r])" | tee -a "$out/summary.txt" || true
    echo "== 2. CPU vs CUDA, one batch" | tee -a "$out/summary.txt"
    "$dc" smallcnn 32 cuda:0 2>&1 | tee -a "$out/summary.txt" || echo "device_check smallcnn FAILED" | tee -a "$out/summary.txt"
    "$dc" resnet18 64 cuda:0 2>&1 | tee -a "$out/summary.txt" || echo "device_check resnet18 FAILED" | tee -a "$out/summary.txt"
    echo "== 3. ResNet18 at 224, batch 50, one epoch of generated data" | tee -a "$out/summary.txt"
    n=${IMAGES:-5000}
    for precision in f32 tf32 bf16; do
        cat >"$home/r18-$precision.toml" <<TOML
name = "r18-$precision"
dataset = { name = "synthetic", train_size = $n, test_size = 500 }
device = "cuda:0"
[defaults]
model = "resnet18"
batch_size = 50
epochs = 1
precision = "$precision"
optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 }
[augment.up]
train = [{ resize = { size = 224 } }, { normalize = "cifar10" }]
test = [{ resize = { size = 224 } }, { normalize = "cifar10" }]
[[run]]
augment = "up"
TOML
        "$bin" --home "$home" -q submit "$home/r18-$precision.toml" >"$out/r18-$precision.txt" 2>&1 || echo "r18 $precision FAILED" | tee -a "$out/summary.txt"
        "$bin" --home "$home" results --sweep "r18-$precision" --columns name,img/s,time,test_acc --format csv | tee -a "$out/summary.txt"
    done
    python3 bench/gpu_torch.py "$n" 2>&1 | tee -a "$out/summary.txt" || echo "torch baseline FAILED" | tee -a "$out/summary.txt"
    ;;
*)
    echo "usage: bench/gpu.sh pack | run" >&2
    exit 2
    ;;
esac
