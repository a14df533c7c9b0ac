#!/usr/bin/env bash
# Training throughput of sweep's quickstart model next to PyTorch on this machine.
#   bench/run.sh            (needs `pip install torch` for the PyTorch line)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
threads=${RAYON_NUM_THREADS:-$(nproc)}
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
RUST_LOG=sweep=info ./target/release/sweep --home "$home" -q submit bench/smallcnn.toml 2>&1 >/dev/null \
  | grep -o 'time: .*s' | sed 's/^/  sweep /' || true
./target/release/sweep --home "$home" report --format json | THREADS=$threads python3 -c '
import json, os, sys
for e in json.load(sys.stdin)["runs"][0]["epochs"]:
    print("sweep threads=%s epoch %d: %.0f img/s" % (os.environ["THREADS"], e["epoch"], e["img_per_s"]))'
if python3 -c "import torch" 2>/dev/null; then
    python3 bench/smallcnn_torch.py "$threads"
else
    echo "pytorch: not installed (pip install torch) - skipped"
fi
