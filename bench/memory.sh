#!/usr/bin/env bash
# Peak memory (max RSS) and time of training steps at batch 8, 224x224, on the
# CPU: sweep (examples/train_step.rs) next to PyTorch (bench/train_step_torch.py),
# one process per model and implementation. Needs python3 with torch and
# torchvision. Usage: bench/memory.sh [models...]
set -euo pipefail
cd "$(dirname "$0")/.."
models=("${@:-resnet18 resnet50 resnet152 densenet169 vgg16}")
read -r -a models <<< "${models[*]}"
cargo build --release --example train_step >&2
threads=$(nproc)
for m in "${models[@]}"; do
  RAYON_NUM_THREADS=$threads target/release/examples/train_step "$m" 8 224 2
  THREADS=$threads python3 bench/train_step_torch.py "$m" 8 224 2
done
