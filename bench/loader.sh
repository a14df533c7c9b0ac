#!/usr/bin/env bash
# Loader throughput, sweep next to torchvision's DataLoader, on the real CIFAR-10 JPEGs.
#   bench/loader.sh [ARCHIVE] [threads] [batches]
# ARCHIVE defaults to ../shared/datasets/cifar10-jpeg.tar.gz (ImageFolder layout).
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-../shared/datasets/cifar10-jpeg.tar.gz}
threads=${2:-2}
batches=${3:-20}
cargo build --release --quiet --example loader
./target/release/examples/loader "$archive" "$threads" "$batches"
if python3 -c "import torchvision" 2>/dev/null; then
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    tar xzf "$archive" -C "$dir"
    python3 bench/loader_torch.py "$dir/train" "$threads" "$batches"
else
    echo "torchvision: not installed (pip install torchvision) - skipped"
fi
